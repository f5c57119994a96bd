//! One client connection, from the first byte to the last: reads CONNECT within the
//! deadline, authenticates through the [`Gatekeeper`], attaches the session, then
//! runs the MQTT state machine (QoS flows, subscriptions, keepalive, topic aliases,
//! will) and writes what the session's mailbox holds, batching frames into as few
//! writes as it can. Generic over the byte stream: it knows nothing of TLS or sockets.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::{
    Ack, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe, text, topic,
};
use crate::protocol::{Codec, DecodeError, Role};

use crate::store::{Commit, InflightOut, Op, Slot, StoredInflightOut};

use super::denials::DenialKind;
use super::journal::{Batch, QueueFull, settle, stored_message};
use super::mailbox::{InFlight, Message, Outbound, QueueLimits};
use super::permissions::{Admission, Gatekeeper, PeerInfo, PublishDenied, may_publish_message};
use super::session::{Kick, SessionLink};
use super::stats::Stats;
use super::{AttachRequest, Attached, Broker, BrokerConfig, Incoming};

/// Read buffer growth step; the codec bounds the total by the maximum packet size.
const READ_CHUNK: usize = 8 * 1024;
/// Read space an idle connection keeps: most connections are idle most of the time,
/// and 10 000 of them must fit in a Pi's memory.
const IDLE_READ_CHUNK: usize = 512;
/// Longest a publisher waits for a full subscriber queue to make progress.
const BACKPRESSURE_WAIT: Duration = Duration::from_millis(5);
/// Longest a publisher waits for a draining subscriber in all, per overflow.
const BACKPRESSURE_LIMIT: Duration = Duration::from_millis(250);
/// Answers gathered from one read before they are written.
const REPLY_BATCH: usize = 256;
/// Write buffers bigger than this are dropped when the connection goes idle.
const IDLE_BUFFER_KEEP: usize = 16 * 1024;

/// Why a connection ended, for the log line and the will.
#[derive(Debug)]
enum End {
    /// DISCONNECT from the client; `with_will` for v5 reason 0x04.
    Normal {
        with_will: bool,
        expiry: Option<u32>,
    },
    /// Anything else: the will is published.
    Abnormal(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Normal {
                with_will: false, ..
            } => write!(f, "normal disconnect"),
            End::Normal {
                with_will: true, ..
            } => write!(f, "disconnect with will"),
            End::Abnormal(why) => write!(f, "{why}"),
        }
    }
}

/// Runs one connection to completion. `connect_deadline` counts from accept, so the
/// TLS handshake and CONNECT share one deadline. `held` (the admission slot) is
/// dropped when the connection ends.
///
/// An idle connection costs little more than its task's future, which is as big
/// as its largest state for as long as the connection lives. So the CONNECT phase
/// and the teardown (large, short-lived) run in boxed futures, and this is a plain
/// `fn` around an `async move` block: an `async fn` would store the stream twice
/// (once as its argument, once as a local; rust-lang/rust#62958).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub fn run<S, H>(
    mut stream: S,
    peer: PeerInfo,
    broker: Arc<Broker>,
    gate: Arc<dyn Gatekeeper>,
    connect_deadline: Instant,
    held: H,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Send,
{
    async move {
        let _held = &held;
        let Some((mut conn, mut codec, mut rbuf)) = Box::pin(establish(
            &mut stream,
            &peer,
            &broker,
            &*gate,
            connect_deadline,
        ))
        .await
        else {
            return;
        };
        let end = conn.run(&mut stream, &mut codec, &mut rbuf).await;
        let log_end = end.to_string();
        Box::pin(conn.finish(end)).await;
        tracing::info!(
            target: "moat::audit",
            peer = %peer.addr,
            client_id = %conn.session.client_id,
            identity = %conn.session.owner,
            end = %log_end,
            "disconnected"
        );
    }
}

/// Reads the CONNECT before the deadline, authenticates it and attaches the
/// session: the connection, its codec and any bytes read past the CONNECT.
async fn establish<S>(
    stream: &mut S,
    peer: &PeerInfo,
    broker: &Arc<Broker>,
    gate: &dyn Gatekeeper,
    connect_deadline: Instant,
) -> Option<(Box<Connection>, Codec, BytesMut)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = broker.config();
    let mut codec = Codec::new(Role::Server, config.max_packet_size_before_auth);
    let mut rbuf = BytesMut::with_capacity(IDLE_READ_CHUNK);
    let connect = match tokio::time::timeout_at(
        connect_deadline.into(),
        read_connect(stream, &mut codec, &mut rbuf),
    )
    .await
    {
        Ok(Ok(connect)) => connect,
        Ok(Err(reason)) => {
            tracing::debug!(peer = %peer.addr, %reason, "connection closed before CONNECT");
            refuse_early(stream, &mut codec, &reason).await;
            return None;
        }
        Err(_) => {
            tracing::debug!(peer = %peer.addr, "no CONNECT before the deadline");
            return None;
        }
    };
    let accepted = accept(stream, &mut codec, peer, broker, gate, &config, connect).await;
    if accepted.is_none() {
        broker.stats.refused();
    }
    accepted.map(|conn| (Box::new(conn), codec, rbuf))
}

/// Reads until a CONNECT is decoded (the codec refuses anything else first).
async fn read_connect<S>(
    stream: &mut S,
    codec: &mut Codec,
    rbuf: &mut BytesMut,
) -> Result<Box<Connect>, EarlyEnd>
where
    S: AsyncRead + Unpin,
{
    loop {
        match codec.decode(rbuf) {
            Ok(Some(Packet::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => return Err(EarlyEnd::Protocol(ReasonCode::ProtocolError)),
            Ok(None) => {}
            Err(e) => return Err(EarlyEnd::Decode(e)),
        }
        rbuf.reserve(READ_CHUNK.min(1024));
        match stream.read_buf(rbuf).await {
            Ok(0) => return Err(EarlyEnd::Closed),
            Ok(_) => {}
            Err(e) => return Err(EarlyEnd::Io(e.to_string())),
        }
    }
}

#[derive(Debug)]
enum EarlyEnd {
    Closed,
    Io(String),
    Decode(DecodeError),
    Protocol(ReasonCode),
}

impl std::fmt::Display for EarlyEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EarlyEnd::Closed => write!(f, "peer closed"),
            EarlyEnd::Io(e) => write!(f, "i/o error: {e}"),
            EarlyEnd::Decode(e) => write!(f, "bad packet: {e}"),
            EarlyEnd::Protocol(r) => write!(f, "protocol error {r:?}"),
        }
    }
}

/// A CONNECT with an unsupported protocol level gets the CONNACK that says so; the
/// codec, not knowing the version yet, writes it in the 3.1.1 format every client
/// can read (MQTT-3.1.2-2). A bad v5 CONNECT gets its reason code (0x81 for a
/// control character in a string, MQTT 5 §4.13.1); 3.1.1 has no code for it, so
/// the connection just closes.
async fn refuse_early<S>(stream: &mut S, codec: &mut Codec, reason: &EarlyEnd)
where
    S: AsyncWrite + Unpin,
{
    let EarlyEnd::Decode(e) = reason else { return };
    if codec.connect_received() && codec.version() == Some(ProtocolVersion::V5) {
        refuse_connect(stream, codec, e.reason_code(), &e.to_string()).await;
    } else if e.reason_code() == ReasonCode::UnsupportedProtocolVersion {
        refuse_connect(
            stream,
            codec,
            ReasonCode::UnsupportedProtocolVersion,
            "protocol must be MQIsdp level 3, or MQTT level 4 or 5",
        )
        .await;
    }
}

/// Any identifier a real client sends (Eclipse Paho's interop suite uses "clean
/// retained"), up to the byte limit. The codec already refused control characters
/// and non-characters; `/ + #` are harmless, such an id only never fills a `%c`
/// grant (`acl::Grant::resolve`).
fn valid_client_id(id: &str, max_len: usize) -> bool {
    !id.is_empty() && id.len() <= max_len && text::first_disallowed(id).is_none()
}

fn random_client_id() -> String {
    let mut bytes = [0u8; 12];
    // Falling back to a time-based id only costs uniqueness, which attach() checks.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("moat-{hex}")
}

async fn send_connack<S>(
    stream: &mut S,
    codec: &mut Codec,
    reason: ReasonCode,
    properties: Properties,
    session_present: bool,
) where
    S: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let packet = Packet::ConnAck(ConnAck {
        session_present,
        reason,
        properties,
    });
    if codec.encode(&packet, &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
    }
}

async fn refuse_connect<S>(stream: &mut S, codec: &mut Codec, reason: ReasonCode, why: &str)
where
    S: AsyncWrite + Unpin,
{
    let properties = Properties {
        reason_string: Some(why.to_owned()),
        ..Properties::default()
    };
    send_connack(stream, codec, reason, properties, false).await;
    let _ = stream.shutdown().await;
}

/// Validates and authenticates a CONNECT, attaches the session and answers CONNACK.
async fn accept<S>(
    stream: &mut S,
    codec: &mut Codec,
    peer: &PeerInfo,
    broker: &Arc<Broker>,
    gate: &dyn Gatekeeper,
    config: &BrokerConfig,
    mut connect: Box<Connect>,
) -> Option<Connection>
where
    S: AsyncWrite + Unpin,
{
    let version = connect.protocol;
    let mut assigned_id = None;
    if connect.client_id.is_empty() {
        // 3.1 requires an id (Mosquitto refuses an empty one, handle_connect.c).
        let refused = match version {
            ProtocolVersion::V31 => true,
            ProtocolVersion::V311 => !connect.clean_start,
            ProtocolVersion::V5 => false,
        };
        if refused {
            refuse_connect(
                stream,
                codec,
                ReasonCode::ClientIdentifierNotValid,
                "empty client id needs clean session",
            )
            .await;
            return None;
        }
        connect.client_id = random_client_id();
        assigned_id = Some(connect.client_id.clone());
    }
    if !valid_client_id(&connect.client_id, config.max_client_id_length) {
        refuse_connect(
            stream,
            codec,
            ReasonCode::ClientIdentifierNotValid,
            "client id too long",
        )
        .await;
        return None;
    }
    if connect.properties.authentication_method.is_some() {
        refuse_connect(
            stream,
            codec,
            ReasonCode::BadAuthenticationMethod,
            "enhanced authentication is not supported",
        )
        .await;
        return None;
    }
    let admission = match gate.admit(&connect, peer).await {
        Ok(admission) => admission,
        Err(reason) => {
            refuse_connect(stream, codec, reason, "not authorized").await;
            return None;
        }
    };
    let Admission {
        identity,
        permissions,
        limits,
    } = admission;
    if let Some(will) = &connect.will {
        let checked = check_topic_limits(&will.topic, config)
            .map_err(|_| PublishDenied::Topic)
            .and_then(|()| {
                may_publish_message(&*permissions, &connect.client_id, &will.topic, will.retain)
            });
        if let Err(denied) = checked {
            let kind = will_denial(denied);
            broker.stats.denials.record(&identity, kind, &will.topic);
            tracing::info!(target: "moat::audit", peer = %peer.addr, %identity, client_id = %connect.client_id, topic = %will.topic, retain = will.retain, rule = kind.as_str(), "will denied");
            refuse_connect(
                stream,
                codec,
                ReasonCode::NotAuthorized,
                "will topic not authorized",
            )
            .await;
            return None;
        }
    }

    let keepalive_cap = config.max_keepalive;
    let keep_alive = if connect.keep_alive == 0 || connect.keep_alive > keepalive_cap {
        keepalive_cap
    } else {
        connect.keep_alive
    };
    let expiry = match version {
        ProtocolVersion::V5 => Duration::from_secs(u64::from(
            connect.properties.session_expiry_interval.unwrap_or(0),
        )),
        ProtocolVersion::V311 | ProtocolVersion::V31 if connect.clean_start => Duration::ZERO,
        ProtocolVersion::V311 | ProtocolVersion::V31 => config.max_session_expiry,
    };
    let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
    let queue_limits = QueueLimits {
        max_messages: limits.max_queued_messages,
        max_bytes: limits.max_queued_bytes,
        max_inflight: config.max_inflight.min(client_receive_max).max(1),
    };
    codec.set_max_outgoing_packet_size(connect.properties.maximum_packet_size);
    let kick = Kick::new();
    let slot = broker.journal().reserve().await;
    let attached = match broker.attach(
        AttachRequest {
            client_id: &connect.client_id,
            owner: &identity,
            clean_start: connect.clean_start,
            expiry,
            permissions: Arc::clone(&permissions),
            limits: queue_limits,
            kick: Arc::clone(&kick),
        },
        slot,
    ) {
        Ok(attached) => attached,
        Err(reason) => {
            tracing::info!(target: "moat::audit", peer = %peer.addr, %identity, client_id = %connect.client_id, ?reason, "session refused");
            refuse_connect(
                stream,
                codec,
                reason,
                "client id belongs to another identity or quota reached",
            )
            .await;
            return None;
        }
    };
    let (
        Attached {
            session,
            session_present,
            connection_id,
        },
        commit,
    ) = attached;
    // The session the CONNACK promises must be durable first.
    settle(commit, "session").await;

    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 {
        properties.receive_maximum = Some(config.max_inflight);
        properties.maximum_packet_size = Some(limits.max_packet_size);
        properties.topic_alias_maximum = Some(config.topic_alias_maximum);
        properties.retain_available = Some(u8::from(permissions.may_retain()));
        properties.wildcard_subscription_available = Some(1);
        properties.subscription_identifiers_available = Some(1);
        properties.shared_subscription_available = Some(1);
        properties.assigned_client_identifier = assigned_id;
        if keep_alive != connect.keep_alive {
            properties.server_keep_alive = Some(keep_alive);
        }
        if let Some(requested) = connect.properties.session_expiry_interval {
            let granted = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX);
            if granted != requested {
                properties.session_expiry_interval = Some(granted);
            }
        }
    }
    codec.set_max_incoming_packet_size(limits.max_packet_size);
    send_connack(
        stream,
        codec,
        ReasonCode::Success,
        properties,
        session_present,
    )
    .await;
    tracing::info!(
        target: "moat::audit",
        peer = %peer.addr,
        %identity,
        client_id = %session.client_id,
        protocol = ?version,
        session_present,
        "connected"
    );
    let will = connect.will.take();
    Some(Connection {
        version,
        session,
        connection_id,
        kick,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        will,
        expiry_on_connect: connect.properties.session_expiry_interval.unwrap_or(0),
        aliases: HashMap::new(),
        replies: VecDeque::new(),
        congested: None,
        config: broker.config(),
        broker: Arc::clone(broker),
    })
}

/// Backpressure for QoS 1/2: a publisher whose message filled a subscriber's queue
/// past three quarters reads nothing more until that subscriber has drained half its
/// queue, instead of reading on only for the broker to drop acknowledged messages.
/// It waits at most `BACKPRESSURE_LIMIT`, in steps of `BACKPRESSURE_WAIT`. A
/// subscriber that took nothing during the whole wait is marked stalled, and nobody
/// waits for it again until it drains: a stuck or offline client costs one
/// publisher one wait, once, and after that only its own copies are dropped.
/// QoS 0 pauses a publisher only while the subscriber's socket takes what it is
/// sent: the broker is behind, not the client (see `broker::push_to`).
async fn wait_for_drain(subscriber: &SessionLink, stats: &Stats) {
    stats.publisher_paused();
    let until = Instant::now() + BACKPRESSURE_LIMIT;
    let mut drained = false;
    while !subscriber.mailbox.half_empty() && Instant::now() < until {
        if tokio::time::timeout(BACKPRESSURE_WAIT, subscriber.mailbox.room())
            .await
            .is_ok()
        {
            drained = true;
        }
    }
    if !drained {
        subscriber.mailbox.mark_stalled();
    }
}

/// A will's refusal as counted: its topic, or its retain flag.
fn will_denial(denied: PublishDenied) -> DenialKind {
    match denied {
        PublishDenied::Topic => DenialKind::Will,
        PublishDenied::Retain => DenialKind::Retain,
    }
}

/// Checks a topic name against the broker's size limits.
fn check_topic_limits(topic: &str, config: &BrokerConfig) -> Result<(), ReasonCode> {
    if topic.len() > config.max_topic_length || topic.split('/').count() > config.max_topic_levels {
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

struct Connection {
    version: ProtocolVersion,
    session: Arc<SessionLink>,
    connection_id: u64,
    kick: Arc<Kick>,
    keep_alive: Duration,
    will: Option<crate::protocol::Will>,
    expiry_on_connect: u32,
    /// Topic aliases the client set (v5), bounded by topic_alias_maximum.
    aliases: HashMap<u16, String>,
    /// A subscriber that could not take this client's last message: handle nothing
    /// more until it drains (see `wait_for_drain`).
    congested: Option<Arc<SessionLink>>,
    /// Answers in the order their packets arrived; an acknowledgement of durable
    /// data waits for its commit before it (and everything after it) is sent.
    replies: VecDeque<(Option<Commit>, Packet)>,
    config: Arc<BrokerConfig>,
    broker: Arc<Broker>,
}

/// How a batched write to the client ended.
enum Written {
    Done(std::io::Result<()>),
    Kicked(ReasonCode),
    Stalled,
}

/// Polls `future` once: its output if it is ready now, `None` if it would wait.
async fn poll_once<F: Future>(mut future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// A protocol violation: close with this v5 reason.
struct Violation(ReasonCode, &'static str);

/// What [`Connection::try_handle`] did with a packet.
enum Handled {
    Done(Result<Option<End>, Violation>),
    /// The store's write queue is full; the packet waits for room.
    QueueFull(Box<Packet>),
}

impl Connection {
    async fn run<S>(&mut self, stream: &mut S, codec: &mut Codec, rbuf: &mut BytesMut) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut wbuf = BytesMut::new();
        // Grow the read space only while reads fill it.
        let mut read_chunk = IDLE_READ_CHUNK;
        let mut outbound = Vec::new();
        // 1.5 times the keepalive (MQTT-3.1.2-24).
        let grace = self.keep_alive + self.keep_alive / 2;
        let mut last_heard = Instant::now();
        // `rbuf` may hold packets not yet handled.
        let mut buffered = !rbuf.is_empty();
        loop {
            // Answer what was read, then drain the mailbox, in one write.
            if self.flush_replies(codec, &mut wbuf).await {
                let _ = stream.write_all(&wbuf).await;
                return End::Abnormal(
                    "durable write refused: an MQTT 3.1.1 client cannot be told, so the connection closes unacknowledged".into(),
                );
            }
            self.fill_from_mailbox(codec, &mut outbound, &mut wbuf)
                .await;
            if !wbuf.is_empty() {
                let deadline = last_heard + grace;
                let written = {
                    let mut write = std::pin::pin!(async {
                        stream.write_all(&wbuf).await?;
                        stream.flush().await
                    });
                    match poll_once(write.as_mut()).await {
                        Some(result) => Written::Done(result),
                        None => {
                            // The socket does not take it all now: the client is
                            // behind, which publishers of QoS 0 need not wait for.
                            self.session.mailbox.set_writer_blocked(true);
                            let written = tokio::select! {
                                result = &mut write => Written::Done(result),
                                reason = self.kick.kicked() => Written::Kicked(reason),
                                _ = tokio::time::sleep_until(deadline.into()) => Written::Stalled,
                            };
                            self.session.mailbox.set_writer_blocked(false);
                            written
                        }
                    }
                };
                match written {
                    Written::Done(Ok(())) => {}
                    Written::Done(Err(e)) => return End::Abnormal(format!("write failed: {e}")),
                    Written::Kicked(reason) => {
                        return Box::pin(self.kicked(stream, codec, reason)).await;
                    }
                    Written::Stalled => {
                        return End::Abnormal("client stopped reading (keepalive)".into());
                    }
                }
                wbuf.clear();
                if wbuf.capacity() > IDLE_BUFFER_KEEP {
                    wbuf = BytesMut::new();
                }
            }
            if !buffered {
                if rbuf.is_empty() && rbuf.capacity() > read_chunk {
                    *rbuf = BytesMut::new();
                }
                rbuf.reserve(read_chunk);
                let space = rbuf.capacity() - rbuf.len();
                let deadline = last_heard + grace;
                tokio::select! {
                    reason = self.kick.kicked() => return Box::pin(self.kicked(stream, codec, reason)).await,
                    read = stream.read_buf(rbuf) => match read {
                        Ok(0) => return End::Abnormal("connection closed without DISCONNECT".into()),
                        Ok(n) => {
                            last_heard = Instant::now();
                            read_chunk = if n >= space { READ_CHUNK } else { IDLE_READ_CHUNK };
                            buffered = true;
                        }
                        Err(e) => return End::Abnormal(format!("read failed: {e}")),
                    },
                    _ = self.session.mailbox.ready() => {}
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        let _ = Box::pin(self.send_disconnect(stream, codec, ReasonCode::KeepAliveTimeout, None)).await;
                        return End::Abnormal("keepalive timeout".into());
                    }
                }
            }
            if !buffered {
                continue;
            }
            // Handle what was read until a batch of answers is due or a subscriber's
            // queue overflowed; the rest stays buffered for the next turn (which reads
            // nothing new until it is handled).
            buffered = false;
            loop {
                match codec.decode(rbuf) {
                    Ok(Some(packet)) => {
                        let handled = match self.try_handle(packet) {
                            Handled::Done(result) => result,
                            Handled::QueueFull(packet) => {
                                Box::pin(self.handle_when_reserved(*packet)).await
                            }
                        };
                        match handled {
                            Ok(None) => {}
                            Ok(Some(end)) => return end,
                            Err(Violation(reason, why)) => {
                                self.flush_replies(codec, &mut wbuf).await;
                                return Box::pin(
                                    self.violation(stream, codec, &mut wbuf, reason, why),
                                )
                                .await;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let reason = e.reason_code();
                        let why = e.to_string();
                        tracing::info!(client_id = %self.session.client_id, error = %why, "malformed packet");
                        self.flush_replies(codec, &mut wbuf).await;
                        return Box::pin(self.violation(
                            stream,
                            codec,
                            &mut wbuf,
                            reason,
                            "malformed packet",
                        ))
                        .await;
                    }
                }
                if self.replies.len() >= REPLY_BATCH || self.congested.is_some() {
                    buffered = true;
                    break;
                }
            }
            if let Some(full) = self.congested.take() {
                Box::pin(wait_for_drain(&full, &self.broker.stats)).await;
            }
        }
    }

    async fn kicked<S>(&self, stream: &mut S, codec: &mut Codec, reason: ReasonCode) -> End
    where
        S: AsyncWrite + Unpin,
    {
        let _ = self.send_disconnect(stream, codec, reason, None).await;
        End::Abnormal(format!("closed by the broker: {reason:?}"))
    }

    async fn violation<S>(
        &self,
        stream: &mut S,
        codec: &mut Codec,
        wbuf: &mut BytesMut,
        reason: ReasonCode,
        why: &'static str,
    ) -> End
    where
        S: AsyncWrite + Unpin,
    {
        // Whatever was already answered goes out first.
        let _ = stream.write_all(wbuf).await;
        wbuf.clear();
        let _ = self.send_disconnect(stream, codec, reason, Some(why)).await;
        End::Abnormal(format!("protocol violation {reason:?}: {why}"))
    }

    async fn send_disconnect<S>(
        &self,
        stream: &mut S,
        codec: &mut Codec,
        reason: ReasonCode,
        why: Option<&str>,
    ) -> std::io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        if self.version == ProtocolVersion::V5 {
            let mut out = BytesMut::new();
            let packet = Packet::Disconnect(Disconnect {
                reason,
                properties: Properties {
                    reason_string: why.map(str::to_owned),
                    ..Properties::default()
                },
            });
            if codec.encode(&packet, &mut out).is_ok() {
                // A peer that stopped reading must not hold the connection open.
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        Ok(())
    }

    fn reply(&mut self, packet: Packet) {
        self.replies.push_back((None, packet));
    }

    /// Sends `packet` once `commit` (if any) is durable.
    fn reply_after(&mut self, commit: Option<Commit>, packet: Packet) {
        self.replies.push_back((commit, packet));
    }

    /// Encodes the answers in order, waiting for each one's commit. A failed commit
    /// (disk full) turns a v5 acknowledgement into the refusal it has become. MQTT
    /// 3.1.1 has no negative PUBACK/PUBREC, and a plain one would claim the message is
    /// safe: that acknowledgement is withheld and `true` returned, so the caller
    /// closes the connection and the client sends the message again later
    /// (MQTT-4.4.0-1).
    async fn flush_replies(&mut self, codec: &mut Codec, wbuf: &mut BytesMut) -> bool {
        let mut withheld = false;
        loop {
            // Only the commit is held across the wait, not the packet: this future
            // is part of every connection's task and should stay small.
            let refused = match self.replies.front_mut() {
                None => return withheld,
                Some((Some(commit), _)) => commit.await.err(),
                Some((None, _)) => None,
            };
            let Some((_, mut packet)) = self.replies.pop_front() else {
                return withheld;
            };
            if let Some(e) = refused {
                tracing::warn!(client_id = %self.session.client_id, error = %e, "durable write refused");
                if let Packet::PubAck(ack) | Packet::PubRec(ack) = &mut packet {
                    if self.version == ProtocolVersion::V311 {
                        withheld = true;
                        continue;
                    }
                    ack.reason = e.reason_code();
                }
            }
            if let Err(e) = codec.encode(&packet, wbuf) {
                tracing::debug!(client_id = %self.session.client_id, error = %e, "packet not sent");
            }
        }
    }

    /// Handles a packet, with room reserved in the durable store first when it may
    /// change durable state. When the write queue is full the packet comes back:
    /// the caller waits in a boxed [`Connection::handle_when_reserved`], so the
    /// common case keeps no packet-sized state in the connection's task.
    fn try_handle(&mut self, packet: Packet) -> Handled {
        if !self.needs_slot(&packet) {
            return Handled::Done(self.handle(packet, None));
        }
        match self.broker.journal().try_reserve() {
            Ok(slot) => Handled::Done(self.handle(packet, slot)),
            Err(QueueFull) => Handled::QueueFull(Box::new(packet)),
        }
    }

    async fn handle_when_reserved(&mut self, packet: Packet) -> Result<Option<End>, Violation> {
        let slot = self.broker.journal().reserve().await;
        self.handle(packet, slot)
    }

    fn needs_slot(&self, packet: &Packet) -> bool {
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

    /// Encodes what the mailbox lets us send now. A persistent session's new QoS 2
    /// message is recorded in flight, under its packet id, before it is sent: a
    /// resend after a crash must reuse that id or the client would see it twice.
    async fn fill_from_mailbox(
        &mut self,
        codec: &mut Codec,
        outbound: &mut Vec<Outbound>,
        wbuf: &mut BytesMut,
    ) {
        let now = Instant::now();
        let persistent = self.session.is_persistent();
        let slot = if persistent {
            self.broker.journal().reserve().await
        } else {
            None
        };
        self.session.mailbox.drain(now, outbound);
        if persistent {
            let mut batch = Batch::default();
            for item in outbound.iter() {
                if let Outbound::Publish {
                    packet_id,
                    dup: false,
                    message,
                } = item
                    && message.qos == QoS::ExactlyOnce
                    && message.seq != 0
                {
                    batch.push(Op::PutInflightOut(StoredInflightOut {
                        client_id: self.session.client_id.to_string(),
                        packet_id: *packet_id,
                        state: InflightOut::Published(stored_message(message, now)),
                    }));
                    batch.push(Op::Dequeue {
                        client_id: self.session.client_id.to_string(),
                        seq: message.seq,
                    });
                }
            }
            settle(batch.submit(slot), "in-flight state").await;
        }
        let mut sent = [0u64; 3];
        let mut bytes = 0usize;
        for item in outbound.drain(..) {
            match item {
                Outbound::Publish {
                    packet_id,
                    dup,
                    message,
                } => {
                    let qos = message.qos;
                    bytes += message.payload.len();
                    let packet = Packet::Publish(outgoing_publish(packet_id, dup, message, now));
                    if let Err(e) = codec.encode(&packet, wbuf) {
                        // Too large for the client: drop it (MQTT-3.1.2-25), and free
                        // its slot in the window.
                        tracing::debug!(client_id = %self.session.client_id, error = %e, "message not delivered");
                        self.broker.stats.dropped_too_large();
                        if qos != QoS::AtMostOnce {
                            self.session.mailbox.complete(packet_id);
                        }
                        continue;
                    }
                    sent[qos as usize] += 1;
                }
                Outbound::PubRel { packet_id } => {
                    let packet = Packet::PubRel(Ack::new(packet_id, ReasonCode::Success));
                    if let Err(e) = codec.encode(&packet, wbuf) {
                        tracing::debug!(client_id = %self.session.client_id, error = %e, "PUBREL not sent");
                    }
                }
            }
        }
        if sent.iter().any(|n| *n > 0) {
            self.broker.stats.sent(sent, bytes);
        }
    }

    /// The client acknowledged an outbound message: forget it, durably too.
    fn outbound_done(&mut self, packet_id: u16, slot: Option<Slot>) {
        let Some(entry) = self.session.mailbox.complete(packet_id) else {
            return;
        };
        let client_id = self.session.client_id.to_string();
        let op = match entry {
            InFlight::Published(message) if message.qos == QoS::AtLeastOnce && message.seq != 0 => {
                Op::Dequeue {
                    client_id,
                    seq: message.seq,
                }
            }
            InFlight::Published(message) if message.qos == QoS::AtLeastOnce => return,
            _ => Op::DeleteInflightOut {
                client_id,
                packet_id,
            },
        };
        if let Some(slot) = slot {
            // Nothing is answered on this: no need to wait for the commit.
            drop(slot.submit(op));
        }
    }

    /// Handles one packet; `Ok(Some(end))` ends the connection normally.
    fn handle(&mut self, packet: Packet, slot: Option<Slot>) -> Result<Option<End>, Violation> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, slot)?,
            Packet::PubAck(ack) | Packet::PubComp(ack) => self.outbound_done(ack.packet_id, slot),
            Packet::PubRec(ack) => {
                if ack.reason.is_error() {
                    // The client refused it: the flow ends here.
                    self.outbound_done(ack.packet_id, slot);
                    return Ok(None);
                }
                let mut commit = None;
                let reason = if self.session.mailbox.received(ack.packet_id) {
                    // PUBREL only once "released" is durable: after a crash the
                    // client must get PUBREL again, never the PUBLISH (which it
                    // would take for a new message once it has seen PUBREL).
                    commit = slot.map(|slot| {
                        slot.submit(Op::PutInflightOut(StoredInflightOut {
                            client_id: self.session.client_id.to_string(),
                            packet_id: ack.packet_id,
                            state: InflightOut::Released,
                        }))
                    });
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.reply_after(commit, Packet::PubRel(Ack::new(ack.packet_id, reason)));
            }
            Packet::PubRel(ack) => {
                let reason = if self.session.remove_inbound_qos2(ack.packet_id) {
                    if let Some(slot) = slot {
                        drop(slot.submit(Op::DeleteInflightIn {
                            client_id: self.session.client_id.to_string(),
                            packet_id: ack.packet_id,
                        }));
                    }
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.reply(Packet::PubComp(Ack::new(ack.packet_id, reason)));
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe, slot)?,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe, slot),
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

    fn on_publish(&mut self, mut publish: Publish, slot: Option<Slot>) -> Result<(), Violation> {
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
        check_topic_limits(&publish.topic, &self.config)
            .map_err(|r| Violation(r, "topic too long or too deep"))?;
        check_user_properties(&publish.properties, &self.config)
            .map_err(|r| Violation(r, "too many user properties"))?;

        let packet_id = publish.packet_id;
        if publish.qos == QoS::ExactlyOnce && self.session.has_inbound_qos2(packet_id) {
            // A resend of a message we already have: acknowledge, do not route twice.
            self.reply(Packet::PubRec(Ack::new(packet_id, ReasonCode::Success)));
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
        let checked = may_publish_message(&*permissions, client_id, &publish.topic, publish.retain);
        let (reason, commit) = if let Err(denied) = checked {
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
            (ReasonCode::NotAuthorized, None)
        } else {
            let incoming = self.incoming(
                &publish.topic,
                publish.payload,
                publish.qos,
                publish.retain,
                &publish.properties,
                Instant::now(),
            );
            let (routed, commit) = if publish.qos == QoS::ExactlyOnce {
                self.broker
                    .publish_exactly_once(&self.session, packet_id, incoming, slot)
            } else {
                self.broker.publish(incoming, slot)
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
            (reason, commit)
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.reply_after(commit, Packet::PubAck(Ack::new(packet_id, reason)))
            }
            QoS::ExactlyOnce => {
                self.reply_after(commit, Packet::PubRec(Ack::new(packet_id, reason)))
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, subscribe: Subscribe, slot: Option<Slot>) -> Result<(), Violation> {
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
        let (results, commit) = self
            .broker
            .subscribe(&self.session, &granted, identifier, slot);
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
            commit,
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

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe, mut slot: Option<Slot>) {
        let mut last_commit = None;
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                let (existed, commit) = self.broker.unsubscribe(&self.session, filter, slot.take());
                if commit.is_some() {
                    last_commit = commit;
                }
                if existed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        self.reply_after(
            last_commit,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                reasons,
                properties: Properties::default(),
            }),
        );
    }

    /// A message this client publishes (or its will), ready for the router;
    /// `published_at` starts its expiry clock.
    fn incoming(
        &self,
        topic: &str,
        payload: bytes::Bytes,
        qos: QoS,
        retain: bool,
        properties: &Properties,
        published_at: Instant,
    ) -> Incoming {
        Incoming {
            message: Message {
                topic: Arc::from(topic),
                payload,
                qos,
                retain,
                properties: passthrough_properties(properties),
                subscription_ids: Vec::new(),
                expires_at: properties
                    .message_expiry_interval
                    .map(|secs| published_at + Duration::from_secs(u64::from(secs))),
                seq: 0,
            },
            publisher: Some(Arc::clone(&self.session.owner)),
            from_session: Some(self.session.id),
            retained_quota: self.session.permissions().retained_quota(),
        }
    }

    /// Detaches from the session and publishes the will if the connection ended
    /// without a normal DISCONNECT (or with "disconnect with will").
    async fn finish(&mut self, end: End) {
        let (publish_will, expiry) = match end {
            End::Normal { with_will, expiry } => (with_will, expiry),
            End::Abnormal(_) => (true, None),
        };
        let will = self.will.take().filter(|_| publish_will).and_then(|will| {
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
                let kind = will_denial(denied);
                self.broker
                    .stats
                    .denials
                    .record(&self.session.owner, kind, &will.topic);
                tracing::info!(
                    target: "moat::audit",
                    client_id = %self.session.client_id,
                    identity = %self.session.owner,
                    topic = %will.topic,
                    retain = will.retain,
                    rule = kind.as_str(),
                    "will denied"
                );
                return None;
            }
            let delay =
                Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)));
            // A delayed will's expiry counts from when it is published.
            let incoming = self.incoming(
                &will.topic,
                will.payload,
                will.qos,
                will.retain,
                &will.properties,
                Instant::now() + delay,
            );
            Some((incoming, delay))
        });
        let expiry = expiry.map(|secs| Duration::from_secs(u64::from(secs)));
        let slot = self.broker.journal().reserve().await;
        let commit = self
            .broker
            .detach(&self.session, self.connection_id, expiry, will, slot);
        settle(commit, "session state").await;
    }
}

/// The properties a message carries from publisher to subscribers (MQTT 5 §3.3.2.3).
fn passthrough_properties(p: &Properties) -> Arc<Properties> {
    Arc::new(Properties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        ..Properties::default()
    })
}

/// Builds the PUBLISH for one subscriber, with the remaining expiry and its
/// subscription identifiers.
fn outgoing_publish(packet_id: u16, dup: bool, message: Message, now: Instant) -> Publish {
    let mut properties = (*message.properties).clone();
    properties.subscription_identifiers = message.subscription_ids;
    if let Some(expires_at) = message.expires_at {
        let left = expires_at.saturating_duration_since(now).as_secs();
        properties.message_expiry_interval = Some(u32::try_from(left.max(1)).unwrap_or(u32::MAX));
    }
    Publish {
        dup,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.to_string(),
        packet_id,
        payload: message.payload,
        properties,
    }
}
