//! The packet handler: what each packet of an established connection means, the
//! MQTT state machine. PUBLISH (topic aliases, the topic checked once as a
//! `TopicName` for the size limits and the one publish permission check
//! `may_publish_topic`, routing, the QoS 1/2 flows and their acknowledgements), SUBSCRIBE and UNSUBSCRIBE (with the audit trail of every
//! refusal), DISCONNECT, and at the end the will. Every durable change is asked of
//! the broker (publish, subscribe, acknowledge, release, complete, detach), which
//! records it through its journal; this file builds no store operation and does
//! no I/O: answers go to the driver's reply queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_protocol::{
    AckKind, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe,
    TopicName, UnsubAck, Unsubscribe, Will, topic,
};

use crate::broker::denials::DenialKind;
use crate::broker::journal::{Durable, QueueFull, Reservation};
use crate::broker::mailbox::{Body, Message, forwarded_properties};
use crate::broker::permissions::{
    Permissions, PublishDenied, may_publish_message, may_publish_topic,
};
use crate::broker::stats::Stats;
use crate::broker::{BrokerConfig, Incoming};

use super::{Connection, End, Violation};

/// A will the publish check refused, at CONNECT (`peer` known) or when it is due:
/// counted against its identity (as a will, or as a retain refusal) and logged.
pub(super) fn will_refused(
    stats: &Stats,
    identity: &str,
    client_id: &str,
    will: &Will,
    denied: PublishDenied,
    peer: Option<SocketAddr>,
) {
    let kind = match denied {
        PublishDenied::Topic => DenialKind::Will,
        PublishDenied::Retain => DenialKind::Retain,
    };
    stats.denials.record(identity, kind, &will.topic);
    tracing::info!(
        target: "moat::audit",
        peer = peer.map(tracing::field::display),
        identity,
        client_id,
        topic = %will.topic,
        retain = will.retain,
        rule = kind.as_str(),
        "will denied"
    );
}

/// Checks a topic name against the broker's size limits.
pub(super) fn check_topic_limits(
    topic: TopicName<'_>,
    config: &BrokerConfig,
) -> Result<(), ReasonCode> {
    if topic.as_str().len() > config.max_topic_length || topic.levels() > config.max_topic_levels {
        return Err(ReasonCode::TopicNameInvalid);
    }
    Ok(())
}

fn check_user_properties(properties: &Properties, config: &BrokerConfig) -> Result<(), ReasonCode> {
    let count = properties.user_properties.len();
    let bytes: usize = properties
        .user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if count > config.max_user_properties || bytes > config.max_user_property_bytes {
        return Err(ReasonCode::ImplementationSpecificError);
    }
    Ok(())
}

/// What [`Connection::try_handle`] did with a packet.
pub(super) enum Handled {
    Done(Result<Option<End>, Violation>),
    /// The store's write queue is full; the packet waits for room.
    QueueFull(Box<Packet>),
}

impl Connection {
    /// Handles a packet, with room reserved in the durable store first when it may
    /// change durable state: `room` if it holds some (left by an earlier packet
    /// that recorded nothing), else reserved now; what the packet does not use
    /// stays in `room`. When the write queue is full the packet comes back: the
    /// caller waits in a boxed [`Connection::handle_when_reserved`], so the common
    /// case keeps no packet-sized state in the connection's task.
    pub(super) fn try_handle(&mut self, packet: Packet, room: &mut Reservation) -> Handled {
        if !self.may_change_durable_state(&packet) {
            let mut none = Reservation::NONE;
            return Handled::Done(self.handle(packet, &mut none));
        }
        if !room.is_reserved() {
            match self.broker.journal().try_reserve() {
                Ok(reserved) => *room = reserved,
                Err(QueueFull) => return Handled::QueueFull(Box::new(packet)),
            }
        }
        Handled::Done(self.handle(packet, room))
    }

    pub(super) async fn handle_when_reserved(
        &mut self,
        packet: Packet,
    ) -> Result<Option<End>, Violation> {
        let mut room = self.broker.journal().reserve().await;
        self.handle(packet, &mut room)
    }

    /// Whether handling `packet` may record something durable, so it needs room
    /// reserved in the journal first.
    fn may_change_durable_state(&self, packet: &Packet) -> bool {
        self.broker.journal().is_enabled()
            && match packet {
                Packet::Publish(p) => p.qos != QoS::AtMostOnce || p.retain,
                Packet::Subscribe(_)
                | Packet::Unsubscribe(_)
                | Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubRel(_)
                | Packet::PubComp(_) => self.session.is_persistent(),
                _ => false,
            }
    }

    /// Handles one packet; `Ok(Some(end))` ends the connection normally.
    /// What durable state it changes takes its room from `room`.
    fn handle(&mut self, packet: Packet, room: &mut Reservation) -> Result<Option<End>, Violation> {
        let session = &self.session;
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, room)?,
            Packet::PubAck(ack) | Packet::PubComp(ack) => {
                self.broker.acknowledge(session, ack.packet_id, room.take());
            }
            // The client refused the message: its flow ends here.
            Packet::PubRec(ack) if ack.reason.is_error() => {
                self.broker.acknowledge(session, ack.packet_id, room.take());
            }
            Packet::PubRec(ack) => match self.broker.release(session, ack.packet_id, room.take()) {
                Some(released) => self.ack_after(
                    released,
                    AckKind::PubRel,
                    ack.packet_id,
                    ReasonCode::Success,
                ),
                None => self.ack(
                    AckKind::PubRel,
                    ack.packet_id,
                    ReasonCode::PacketIdentifierNotFound,
                ),
            },
            Packet::PubRel(ack) => {
                let reason = if self.broker.complete(session, ack.packet_id, room.take()) {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.ack(AckKind::PubComp, ack.packet_id, reason);
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe, room.take())?,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe, room.take()),
            Packet::PingReq => self.reply(Packet::PingResp),
            Packet::Disconnect(disconnect) => {
                let expiry = disconnect.properties.session_expiry_interval;
                if self.expiry_on_connect == 0 && expiry.is_some_and(|e| e != 0) {
                    return Err(Violation(
                        ReasonCode::ProtocolError,
                        "session expiry set on DISCONNECT after 0 on CONNECT",
                    ));
                }
                return Ok(Some(End::Normal {
                    with_will: disconnect.reason == ReasonCode::DisconnectWithWill,
                    expiry,
                }));
            }
            Packet::Auth(_) => {
                return Err(Violation(
                    ReasonCode::ProtocolError,
                    "enhanced authentication is not supported",
                ));
            }
            // The codec refuses these on the server side; be strict anyway.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => {
                return Err(Violation(
                    ReasonCode::ProtocolError,
                    "packet not allowed here",
                ));
            }
        }
        Ok(None)
    }

    fn on_publish(
        &mut self,
        mut publish: Publish,
        room: &mut Reservation,
    ) -> Result<(), Violation> {
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > self.config.topic_alias_maximum {
                return Err(Violation(
                    ReasonCode::TopicAliasInvalid,
                    "topic alias out of range",
                ));
            }
            if publish.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        return Err(Violation(ReasonCode::ProtocolError, "unknown topic alias"));
                    }
                }
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        if publish.topic.is_empty() {
            return Err(Violation(ReasonCode::TopicNameInvalid, "empty topic"));
        }
        // Checked and counted once here for the limits, the ACL and routing.
        let topic = TopicName::new(&publish.topic)
            .map_err(|_| Violation(ReasonCode::TopicNameInvalid, "invalid topic name"))?;
        check_topic_limits(topic, &self.config)
            .map_err(|r| Violation(r, "topic too long or too deep"))?;
        check_user_properties(&publish.properties, &self.config)
            .map_err(|r| Violation(r, "too many user properties"))?;

        let packet_id = publish.packet_id;
        if publish.qos == QoS::ExactlyOnce && self.session.has_inbound_qos2(packet_id) {
            // A resend of a message we already have: acknowledge, do not route twice.
            self.ack(AckKind::PubRec, packet_id, ReasonCode::Success);
            return Ok(());
        }
        if publish.qos == QoS::ExactlyOnce
            && self.session.inbound_qos2_count() >= usize::from(self.config.max_inflight)
        {
            return Err(Violation(
                ReasonCode::ReceiveMaximumExceeded,
                "too many QoS 2 messages in flight",
            ));
        }

        let permissions = self.session.permissions();
        let client_id = &self.session.client_id;
        let checked = may_publish_topic(&*permissions, client_id, topic, publish.retain);
        let (reason, durable) = if let Err(denied) = checked {
            let kind = match denied {
                PublishDenied::Topic => DenialKind::Publish,
                PublishDenied::Retain => DenialKind::Retain,
            };
            self.broker
                .stats
                .denials
                .record(&self.session.owner, kind, &publish.topic);
            // MQTT 3.1.1 has no way to refuse a PUBLISH: its PUBACK/PUBREC carries no
            // reason code, so the client takes it for success. Say so in the log.
            let client_told = self.version == ProtocolVersion::V5 && publish.qos != QoS::AtMostOnce;
            tracing::info!(
                target: "moat::audit",
                client_id = %client_id,
                identity = %self.session.owner,
                topic = %publish.topic,
                retain = publish.retain,
                qos = ?publish.qos,
                rule = kind.as_str(),
                client_told,
                "publish denied"
            );
            (ReasonCode::NotAuthorized, Durable::default())
        } else {
            let incoming = self.incoming(
                &*permissions,
                publish.topic,
                publish.payload,
                publish.qos,
                publish.retain,
                &publish.properties,
                Duration::ZERO,
            );
            let (routed, durable) = if publish.qos == QoS::ExactlyOnce {
                self.broker
                    .publish_exactly_once(&self.session, packet_id, incoming, room.take())
            } else {
                self.broker.publish_keeping_room(incoming, room)
            };
            if routed.congested.is_some() {
                self.congested = routed.congested.clone();
            }
            let reason = if routed.retain_refused {
                ReasonCode::QuotaExceeded
            } else if routed.matched == 0 {
                ReasonCode::NoMatchingSubscribers
            } else {
                ReasonCode::Success
            };
            (reason, durable)
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack_after(durable, AckKind::PubAck, packet_id, reason),
            QoS::ExactlyOnce => self.ack_after(durable, AckKind::PubRec, packet_id, reason),
        }
        Ok(())
    }

    fn on_subscribe(&mut self, subscribe: Subscribe, room: Reservation) -> Result<(), Violation> {
        check_user_properties(&subscribe.properties, &self.config)
            .map_err(|r| Violation(r, "too many user properties"))?;
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let permissions = self.session.permissions();
        // The refusal for each filter, or `None` for one to grant.
        let mut refusals = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::new();
        for request in &subscribe.filters {
            let filter = request.filter.as_str();
            let shared = topic::parse_shared(filter).ok().flatten();
            if shared.is_some() && request.options.no_local {
                return Err(Violation(
                    ReasonCode::ProtocolError,
                    "no local on a shared subscription",
                ));
            }
            let inner = shared.map_or(filter, |(_, inner)| inner);
            let refusal = if inner.len() > self.config.max_topic_length
                || inner.split('/').count() > self.config.max_topic_levels
            {
                Some(ReasonCode::TopicFilterInvalid)
            } else if !permissions.may_subscribe(&self.session.client_id, filter) {
                Some(ReasonCode::NotAuthorized)
            } else {
                granted.push((filter, request.options));
                None
            };
            refusals.push(refusal);
        }
        // One lock and one durable batch for every granted filter of the packet.
        let (results, durable) = self
            .broker
            .subscribe(&self.session, &granted, identifier, room);
        let mut results = results.into_iter();
        let reasons: Vec<ReasonCode> = refusals
            .into_iter()
            .zip(&subscribe.filters)
            .map(|(refusal, request)| match refusal {
                Some(reason) => reason,
                None => match results.next() {
                    Some(Ok(())) => match request.options.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                    },
                    Some(Err(refused)) => refused,
                    None => ReasonCode::UnspecifiedError,
                },
            })
            .collect();
        for (reason, request) in reasons.iter().zip(&subscribe.filters) {
            if reason.is_error() {
                self.subscription_refused(&request.filter, *reason);
            }
        }
        // SUBACK first, then retained messages (they go through the mailbox, which is
        // drained after the answers are encoded).
        self.reply_after(
            durable,
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                reasons,
                properties: Properties::default(),
            }),
        );
        Ok(())
    }

    /// Every refused SUBSCRIBE filter is one audit line and one count: Home
    /// Assistant ignores SUBACK codes, so this is the only trace a user will find.
    fn subscription_refused(&self, filter: &str, reason: ReasonCode) {
        let kind = match reason {
            ReasonCode::QuotaExceeded => DenialKind::SubscribeQuota,
            ReasonCode::TopicFilterInvalid => DenialKind::SubscribeInvalid,
            _ => DenialKind::Subscribe,
        };
        self.broker.stats.subscription_refused();
        self.broker
            .stats
            .denials
            .record(&self.session.owner, kind, filter);
        tracing::info!(
            target: "moat::audit",
            client_id = %self.session.client_id,
            identity = %self.session.owner,
            filter = %filter,
            reason = ?reason,
            rule = kind.as_str(),
            "subscribe denied"
        );
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe, room: Reservation) {
        // One lock and one durable batch for every filter of the packet.
        let (existed, durable) = self
            .broker
            .unsubscribe(&self.session, &unsubscribe.filters, room);
        let reasons = existed
            .into_iter()
            .map(|existed| {
                if existed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        self.reply_after(
            durable,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                reasons,
                properties: Properties::default(),
            }),
        );
    }

    /// A message this client publishes (or its will), ready for the router; its
    /// expiry clock starts `delay` from now.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of a PUBLISH or a will"
    )]
    fn incoming(
        &self,
        permissions: &dyn Permissions,
        topic: Arc<str>,
        payload: bytes::Bytes,
        qos: QoS,
        retain: bool,
        properties: &Properties,
        delay: Duration,
    ) -> Incoming {
        Incoming {
            message: Message::with_body(
                Body {
                    topic,
                    payload,
                    properties: forwarded_properties(properties),
                    // The clock is read only for a message that expires.
                    expires_at: properties
                        .message_expiry_interval
                        .map(|secs| Instant::now() + delay + Duration::from_secs(u64::from(secs))),
                },
                qos,
                retain,
            ),
            publisher: Some(Arc::clone(&self.session.owner)),
            from_session: Some(self.session.id),
            retained_quota: permissions.retained_quota(),
        }
    }

    /// Detaches from the session and publishes the will if the connection ended
    /// without a normal DISCONNECT (or with "disconnect with will").
    pub(super) async fn finish(&mut self, end: End) {
        crate::broker::backpressure::flush_drops(&self.broker.stats, &self.session);
        let (publish_will, expiry) = match end {
            End::Normal { with_will, expiry } => (with_will, expiry),
            End::Abnormal(_) => (true, None),
        };
        let will = self.will.take().filter(|_| publish_will).and_then(|will| {
            let will = *will;
            // Rights may have changed since CONNECT (reload): the same check as any
            // PUBLISH, retain right included.
            let permissions = self.session.permissions();
            let checked = may_publish_message(
                &*permissions,
                &self.session.client_id,
                &will.topic,
                will.retain,
            );
            if let Err(denied) = checked {
                will_refused(
                    &self.broker.stats,
                    &self.session.owner,
                    &self.session.client_id,
                    &will,
                    denied,
                    None,
                );
                return None;
            }
            let delay =
                Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)));
            // A delayed will's expiry counts from when it is published.
            let incoming = self.incoming(
                &*permissions,
                Arc::from(will.topic.as_str()),
                will.payload,
                will.qos,
                will.retain,
                &will.properties,
                delay,
            );
            Some((incoming, delay))
        });
        let expiry = expiry.map(|secs| Duration::from_secs(u64::from(secs)));
        let room = self.broker.journal().reserve().await;
        self.broker
            .detach(&self.session, self.connection_id, expiry, will, room)
            .settle("session state")
            .await;
    }
}
