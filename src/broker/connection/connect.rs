//! The CONNECT phase: reads the CONNECT within the deadline (refusing anything
//! else with the right code), validates the client id and what it asks for,
//! authenticates it through the [`Gatekeeper`], checks its will with the one
//! publish check, attaches the session (durably, before CONNACK promises it) and
//! answers CONNACK with what the broker grants. Nothing after CONNACK.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use moat_protocol::{
    Codec, ConnAck, Connect, DecodeError, Packet, Properties, ProtocolVersion, ReasonCode, Role,
    TopicName, text,
};

use super::driver::{IDLE_READ_CHUNK, READ_CHUNK};
use super::handler::{check_topic_limits, will_refused};
use super::{Connection, TopicAliases};
use crate::broker::mailbox::QueueLimits;
use crate::broker::permissions::{
    Admission, Gatekeeper, PeerInfo, PublishDenied, may_publish_topic,
};
use crate::broker::session::Kick;
use crate::broker::stats::RefusalReason;
use crate::broker::{AttachRequest, Attached, Broker, BrokerConfig};

/// Reads the CONNECT before the deadline, authenticates it and attaches the
/// session: the connection, its codec and any bytes read past the CONNECT.
pub(super) async fn establish<S>(
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
            broker.stats.refused_for(match reason {
                EarlyEnd::Closed | EarlyEnd::Io(_) => RefusalReason::NoConnect,
                EarlyEnd::Decode(_) | EarlyEnd::Protocol(_) => RefusalReason::Malformed,
            });
            refuse_early(stream, &mut codec, &reason).await;
            return None;
        }
        Err(_) => {
            tracing::debug!(peer = %peer.addr, "no CONNECT before the deadline");
            broker.stats.refused_for(RefusalReason::NoConnect);
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
        let checked = TopicName::new(&will.topic)
            .map_err(|_| PublishDenied::Topic)
            .and_then(|topic| {
                check_topic_limits(topic, config).map_err(|_| PublishDenied::Topic)?;
                may_publish_topic(&*permissions, &connect.client_id, topic, will.retain)
            });
        if let Err(denied) = checked {
            will_refused(
                &broker.stats,
                &identity,
                &connect.client_id,
                will,
                denied,
                Some(peer.addr),
            );
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
    let room = broker.journal().reserve().await;
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
        room,
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
        durable,
    ) = attached;
    // The session the CONNACK promises must be durable first.
    durable.settle("session").await;

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
    // Boxed: most connections have none, and this struct lives as long as they do.
    let will = connect.will.take().map(Box::new);
    Some(Connection {
        version,
        session,
        connection_id,
        kick,
        // 1.5 times the keepalive (MQTT-3.1.2-24).
        keepalive_grace: Duration::from_millis(u64::from(keep_alive) * 1500),
        peer: peer.addr,
        will,
        expiry_on_connect: connect.properties.session_expiry_interval.unwrap_or(0),
        aliases: TopicAliases::default(),
        replies: VecDeque::new(),
        congested: None,
        config: broker.config(),
        broker: Arc::clone(broker),
    })
}
