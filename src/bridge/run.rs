//! One bridge at run time. Locally it is a session of the broker like any client's,
//! owned by the identity `$bridge/<name>` whose rights are exactly its mappings: it
//! subscribes to the local side of its `out` mappings (No Local, so nothing it
//! injected goes back out) and injects what the remote sends on its `in` mappings
//! (marked as coming from its own session). Its session is persistent, so its
//! mailbox is the bounded, durable outbound queue: a QoS 1 message for the remote
//! is journaled before the local publisher gets its PUBACK, survives a restart,
//! and leaves the queue only when the remote's PUBACK arrives (the mailbox's
//! packet ids are the remote packet ids). Remotely it keeps one MQTT 5 connection
//! (`link`), reconnecting with capped exponential backoff and jitter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::broker::journal::{self, Reservation};
use crate::broker::mailbox::{Body, Message, Outbound, QueueLimits, forwarded_properties};
use crate::broker::session::{Kick, SessionLink};
use crate::broker::{AttachRequest, Broker, Incoming, Permissions, may_publish_message};
use moat_protocol::{
    Ack, Disconnect, Packet, Properties, Publish, QoS, ReasonCode, RetainHandling, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};

use super::backoff::Backoff;
use super::link::{Link, LinkError};
use super::plan::BridgePlan;
use super::rights::BridgeRights;
use super::status::{BridgeStatus, LinkState};

/// QoS 1 messages in flight to the remote at most (lowered to its Receive Maximum).
pub const WINDOW: u16 = 20;
/// A TCP + TLS + MQTT handshake that takes longer is abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The local session outlives a moat restart for this long (capped by the broker).
const LOCAL_SESSION_EXPIRY: Duration = Duration::from_secs(u32::MAX as u64);

/// Why a connection to the remote ended.
enum End {
    /// moat is stopping, or the bridge was removed by a reload.
    Stop(ReasonCode),
    Failed(LinkError),
}

/// What woke the connection loop.
enum Event {
    Queued,
    Packet(Box<Packet>),
    Ping,
}

/// The bridge's local side: its session, and what closes it.
struct Local {
    broker: Arc<Broker>,
    plan: Arc<BridgePlan>,
    status: Arc<BridgeStatus>,
    session: Arc<SessionLink>,
    connection_id: u64,
    kick: Arc<Kick>,
    identity: Arc<str>,
}

/// Runs one bridge until moat stops or a reload closes it (`kick`).
pub async fn run(
    broker: Arc<Broker>,
    plan: Arc<BridgePlan>,
    status: Arc<BridgeStatus>,
    kick: Arc<Kick>,
) {
    let local = match Local::attach(broker, plan, Arc::clone(&status), kick).await {
        Ok(local) => local,
        Err(reason) => {
            tracing::error!(bridge = %status.name, ?reason, "bridge not started: its local session was refused");
            status.set_error(format!("local session refused: {reason:?}"));
            status.set_state(LinkState::Stopped);
            return;
        }
    };
    let mut backoff = Backoff::new();
    loop {
        local.status.set_state(LinkState::Connecting);
        let attempt = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, Link::connect(&local.plan)) => {
                r.unwrap_or(Err(LinkError::Timeout("connecting")))
            }
            reason = local.kick.kicked() => { local.finish(reason).await; return; }
        };
        let failure = match attempt {
            Ok(link) => {
                backoff.reset();
                match local.serve(link).await {
                    End::Stop(reason) => {
                        local.finish(reason).await;
                        return;
                    }
                    End::Failed(e) => e,
                }
            }
            Err(e) => e,
        };
        let wait = backoff.next_wait();
        tracing::warn!(
            bridge = %local.plan.name,
            remote = %format_args!("{}:{}", local.plan.host, local.plan.port),
            error = %failure,
            retry_in_ms = wait.as_millis() as u64,
            "bridge disconnected"
        );
        local.status.set_error(failure.to_string());
        local.status.set_state(LinkState::Retrying);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            reason = local.kick.kicked() => { local.finish(reason).await; return; }
        }
    }
}

fn queue_limits(plan: &BridgePlan, window: u16) -> QueueLimits {
    QueueLimits {
        max_messages: plan.queue_messages,
        max_bytes: plan.queue_bytes,
        max_inflight: window,
    }
}

impl Local {
    /// Attaches the bridge's persistent session and subscribes to the local side
    /// of its `out` mappings.
    async fn attach(
        broker: Arc<Broker>,
        plan: Arc<BridgePlan>,
        status: Arc<BridgeStatus>,
        kick: Arc<Kick>,
    ) -> Result<Local, ReasonCode> {
        let identity = plan.local_identity();
        let client_id = plan.local_client_id();
        let rights: Arc<dyn Permissions> = Arc::new(BridgeRights::new(&plan));
        let limits = queue_limits(&plan, WINDOW);
        let room = broker.journal().reserve().await;
        let (attached, durable) = broker.attach(
            AttachRequest {
                client_id: &client_id,
                owner: &identity,
                clean_start: false,
                expiry: LOCAL_SESSION_EXPIRY,
                permissions: Arc::clone(&rights),
                limits,
                kick: Arc::clone(&kick),
            },
            room,
        )?;
        durable.settle("bridge session").await;
        let session = attached.session;
        // Offline until the remote is there: QoS 0 is not kept, QoS 1 waits; at the
        // cap the oldest goes (counted), so the remote gets the latest state.
        session.mailbox.set_online(false, limits);
        session.mailbox.keep_newest();
        let requests: Vec<(String, SubscriptionOptions)> = plan
            .mappings
            .iter()
            .filter(|m| m.direction.carries_out())
            .map(|m| {
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(m.qos).unwrap_or(QoS::AtLeastOnce),
                    no_local: true,
                    retain_as_published: m.retain,
                    retain_handling: RetainHandling::SendIfNew,
                };
                (m.local_filter(), options)
            })
            .filter(|(filter, _)| rights.may_subscribe(&client_id, filter))
            .collect();
        let borrowed: Vec<(&str, SubscriptionOptions)> =
            requests.iter().map(|(f, o)| (f.as_str(), *o)).collect();
        let room = broker.journal().reserve().await;
        let (results, durable) = broker.subscribe(&session, &borrowed, None, room);
        durable.settle("bridge subscriptions").await;
        for ((filter, _), result) in requests.iter().zip(results) {
            if let Err(reason) = result {
                tracing::error!(bridge = %plan.name, filter, ?reason, "bridge: local subscription refused");
            }
        }
        status.set_session(Arc::clone(&session));
        tracing::info!(
            bridge = %plan.name,
            resumed = attached.session_present,
            queued = session.mailbox.depth().0,
            "bridge session attached"
        );
        Ok(Local {
            broker,
            identity: Arc::from(identity),
            plan,
            status,
            session,
            connection_id: attached.connection_id,
            kick,
        })
    }

    /// Detaches the local session (kept, with its queue) and reports the stop.
    async fn finish(&self, reason: ReasonCode) {
        self.session
            .mailbox
            .set_online(false, self.session.mailbox.limits());
        let room = self.broker.journal().reserve().await;
        self.broker
            .detach(&self.session, self.connection_id, None, None, room)
            .settle("bridge session")
            .await;
        self.status.set_state(LinkState::Stopped);
        tracing::info!(bridge = %self.plan.name, ?reason, "bridge stopped");
    }

    /// Carries messages both ways over one connection until it fails or moat stops.
    async fn serve(&self, mut link: Link) -> End {
        let result = self.serve_inner(&mut link).await;
        self.session
            .mailbox
            .set_online(false, self.session.mailbox.limits());
        match result {
            Ok(reason) => {
                // Ours to close: tell the remote, briefly.
                let _ = link.queue(&Packet::Disconnect(Disconnect {
                    reason: ReasonCode::Success,
                    properties: Properties::default(),
                }));
                let _ = link.flush_within(Duration::from_secs(1)).await;
                End::Stop(reason)
            }
            Err(e) => End::Failed(e),
        }
    }

    async fn serve_inner(&self, link: &mut Link) -> Result<ReasonCode, LinkError> {
        self.subscribe_remote(link).await?;
        let window = WINDOW.min(link.receive_maximum).max(1);
        self.session
            .mailbox
            .set_online(true, queue_limits(&self.plan, window));
        self.status.set_state(LinkState::Connected);
        tracing::info!(
            bridge = %self.plan.name,
            remote = %format_args!("{}:{}", self.plan.host, self.plan.port),
            session_present = link.session_present,
            queued = self.session.mailbox.depth().0,
            "bridge connected"
        );
        let keepalive = self.plan.keepalive;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        let mut outbound = Vec::new();
        loop {
            self.send_queued(link, &mut outbound)?;
            link.flush_within(keepalive).await?;
            let event = tokio::select! {
                _ = self.session.mailbox.ready() => Event::Queued,
                packet = link.recv() => Event::Packet(Box::new(packet?)),
                _ = ping.tick() => Event::Ping,
                reason = self.kick.kicked() => return Ok(reason),
            };
            match event {
                Event::Queued => {}
                Event::Packet(packet) => self.on_packet(link, *packet, &mut awaiting_pong).await?,
                Event::Ping if awaiting_pong => {
                    return Err(LinkError::Timeout("no PINGRESP within the keepalive"));
                }
                Event::Ping => {
                    awaiting_pong = true;
                    link.queue(&Packet::PingReq)?;
                }
            }
        }
    }

    /// Subscribes to the remote side of the `in` mappings (No Local: the remote
    /// must not send back what this bridge published there) and waits for SUBACK.
    async fn subscribe_remote(&self, link: &mut Link) -> Result<(), LinkError> {
        let filters: Vec<SubscribeFilter> = self
            .plan
            .mappings
            .iter()
            .filter(|m| m.direction.carries_in())
            .map(|m| SubscribeFilter {
                filter: m.remote_filter(),
                options: SubscriptionOptions {
                    qos: QoS::from_u8(m.qos).unwrap_or(QoS::AtLeastOnce),
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                },
            })
            .collect();
        if filters.is_empty() {
            return Ok(());
        }
        // Packet ids are shared with QoS 1 PUBLISHes, whose ids the mailbox keeps
        // across reconnects: pick one it does not hold.
        let packet_id = (1..=u16::MAX)
            .rev()
            .find(|id| !self.session.mailbox.is_in_flight(*id))
            .unwrap_or(u16::MAX);
        let count = filters.len();
        link.queue(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: filters.clone(),
            properties: Properties::default(),
        }))?;
        link.flush_within(self.plan.keepalive).await?;
        let deadline = Instant::now() + self.plan.keepalive;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let packet = tokio::time::timeout(left, link.recv())
                .await
                .map_err(|_| LinkError::Timeout("waiting for SUBACK"))??;
            match packet {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    for (filter, reason) in filters.iter().zip(ack.reasons.iter()) {
                        if reason.is_error() {
                            let e = format!(
                                "the remote refused the subscription {:?}: {reason:?}",
                                filter.filter
                            );
                            tracing::error!(bridge = %self.plan.name, "{e}");
                            self.status.set_error(e);
                        }
                    }
                    if ack.reasons.len() != count {
                        return Err(LinkError::Protocol("SUBACK count differs".into()));
                    }
                    return Ok(());
                }
                // Messages of a resumed remote session may come first.
                other => {
                    let mut ignored = false;
                    self.on_packet(link, other, &mut ignored).await?;
                    link.flush_within(self.plan.keepalive).await?;
                }
            }
        }
    }

    /// Encodes what the mailbox lets go now (the window to resend first).
    fn send_queued(&self, link: &mut Link, outbound: &mut Vec<Outbound>) -> Result<(), LinkError> {
        let now = Instant::now();
        self.session.mailbox.drain(now, outbound);
        for item in outbound.drain(..) {
            let Outbound::Publish {
                packet_id,
                dup,
                message,
            } = item
            else {
                // QoS 2 never reaches the bridge (its subscriptions ask for QoS 1).
                continue;
            };
            let Some((mapping, remote_topic)) = self.plan.outward(message.topic()) else {
                self.drop_message(packet_id, &message, "no out mapping matches");
                continue;
            };
            let mut properties = message
                .properties()
                .map(Properties::forwarded)
                .unwrap_or_default();
            if let Some(expires_at) = message.expires_at() {
                let left = expires_at.saturating_duration_since(now).as_secs().max(1);
                properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
            }
            let publish = Publish {
                dup,
                qos: message.qos,
                // A retained message sent at subscribe time carries the flag
                // whatever the subscription said: the mapping decides here.
                retain: message.retain && mapping.retain,
                topic: remote_topic.into(),
                packet_id,
                payload: message.payload().clone(),
                properties,
            };
            if let Err(e) = link.queue(&Packet::Publish(publish)) {
                self.drop_message(packet_id, &message, &e.to_string());
                continue;
            }
            if message.qos == QoS::AtMostOnce {
                self.status.sent(1);
            }
        }
        Ok(())
    }

    /// A message that cannot go to the remote: out of the queue, counted, logged.
    fn drop_message(&self, packet_id: u16, message: &Message, why: &str) {
        if message.qos != QoS::AtMostOnce {
            let room = self.broker.journal().try_reserve();
            self.forget(packet_id, room.unwrap_or(Reservation::NONE));
        }
        let n = self.status.dropped(1);
        tracing::warn!(bridge = %self.plan.name, topic = %message.topic(), dropped = n, why, "bridge: message dropped");
    }

    /// The remote has (or will never have) an outbound message: out of the window
    /// and, once journaled, out of the durable queue.
    fn forget(&self, packet_id: u16, room: Reservation) -> bool {
        let Some(entry) = self.session.mailbox.complete(packet_id) else {
            return false;
        };
        if let Some(op) = journal::acknowledged(&self.session, packet_id, &entry) {
            // Nothing waits on this commit: a lost removal only resends once.
            drop(room.record(|| op));
        }
        true
    }

    async fn on_packet(
        &self,
        link: &mut Link,
        packet: Packet,
        awaiting_pong: &mut bool,
    ) -> Result<(), LinkError> {
        match packet {
            Packet::PubAck(ack) => {
                let room = self.broker.journal().reserve().await;
                if !self.forget(ack.packet_id, room) {
                    return Ok(());
                }
                if ack.reason.is_error() {
                    let n = self.status.dropped(1);
                    tracing::warn!(bridge = %self.plan.name, reason = ?ack.reason, dropped = n, "bridge: the remote refused a message");
                } else {
                    self.status.sent(1);
                }
            }
            Packet::Publish(publish) => self.inject(link, publish).await?,
            Packet::PingResp => *awaiting_pong = false,
            Packet::Disconnect(d) => return Err(LinkError::Disconnected(d.reason)),
            Packet::SubAck(_) | Packet::UnsubAck(_) => {}
            other => {
                return Err(LinkError::Protocol(format!(
                    "unexpected packet from the remote: {other:?}"
                )));
            }
        }
        Ok(())
    }

    /// A message from the remote: translated by its `in` mapping, checked against
    /// the bridge's rights, routed here (marked as this session's, so No Local keeps
    /// it from going back out), then acknowledged once durable.
    async fn inject(&self, link: &mut Link, publish: Publish) -> Result<(), LinkError> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(LinkError::Protocol(
                "QoS 2 from the remote; the bridge subscribed with QoS 1 at most".into(),
            ));
        }
        let reason = self.route_in(&publish).await;
        if publish.qos == QoS::AtLeastOnce {
            link.queue(&Packet::PubAck(Ack::new(publish.packet_id, reason)))?;
        }
        Ok(())
    }

    async fn route_in(&self, publish: &Publish) -> ReasonCode {
        let Some((mapping, local_topic)) = self.plan.inward(&publish.topic) else {
            let n = self.status.dropped(1);
            tracing::warn!(bridge = %self.plan.name, topic = %publish.topic, dropped = n, "bridge: a remote message matches no in mapping; dropped");
            return ReasonCode::TopicNameInvalid;
        };
        let retain = publish.retain && mapping.retain;
        let rights = self.session.permissions();
        if may_publish_message(&*rights, &self.session.client_id, &local_topic, retain).is_err() {
            let n = self.status.dropped(1);
            tracing::warn!(bridge = %self.plan.name, topic = %local_topic, dropped = n, "bridge: a remote message is outside the bridge's rights; dropped");
            return ReasonCode::NotAuthorized;
        }
        let now = Instant::now();
        let body = Body {
            topic: Arc::from(local_topic.as_str()),
            payload: publish.payload.clone(),
            properties: forwarded_properties(&publish.properties),
            expires_at: publish
                .properties
                .message_expiry_interval
                .map(|secs| now + Duration::from_secs(u64::from(secs))),
        };
        let message = Message::with_body(body, publish.qos, retain);
        let room = self.broker.journal().reserve().await;
        let (routed, durable) = self.broker.publish(
            Incoming {
                message,
                retained_quota: rights.retained_quota(),
                publisher: Some(Arc::clone(&self.identity)),
                from_session: Some(self.session.id),
            },
            room,
        );
        if routed.retain_refused {
            tracing::warn!(bridge = %self.plan.name, topic = %local_topic, "bridge: retained store full; the message was routed but not retained");
        }
        if let Err(e) = durable.await {
            let n = self.status.dropped(1);
            tracing::warn!(bridge = %self.plan.name, error = %e, dropped = n, "bridge: a remote message could not be stored");
            return journal::refusal_reason(&e);
        }
        self.status.received(1);
        ReasonCode::Success
    }
}
