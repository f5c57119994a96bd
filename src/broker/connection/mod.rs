//! One client connection, from the first byte to the last, generic over the byte
//! stream (it knows nothing of TLS or sockets). Split by job:
//!
//! - `connect`: the CONNECT phase: reads it within the deadline, validates it,
//!   authenticates it through the [`Gatekeeper`], attaches the session, answers
//!   CONNACK.
//! - `driver`: the I/O loop: reads and decodes packets, keepalive, kicks,
//!   backpressure, answers in arrival order (each after its commit), and what the
//!   session's mailbox holds, batched into as few writes as it can.
//! - `acks`: the acknowledgements of what the client was sent (PUBACK, PUBREC,
//!   PUBCOMP, and PUBREL), decoded without a packet and applied to the mailbox
//!   under one lock per batch; the handler's meaning, without the handler's cost.
//! - `handler`: the packet handler, the MQTT state machine: PUBLISH (topic aliases,
//!   limits, the one publish permission check, QoS 1/2 flows), SUBSCRIBE,
//!   UNSUBSCRIBE, DISCONNECT, and the will at the end. It asks the broker for every
//!   durable change and never builds a store operation itself.
//!
//! This module owns the connection's state and its entry point, [`run`].

mod acks;
mod connect;
mod driver;
mod handler;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use moat_protocol::{AckKind, Packet, ProtocolVersion, ReasonCode, Will};

use super::journal::Durable;
use super::permissions::{Gatekeeper, PeerInfo};
use super::session::{Kick, SessionLink};
use super::{Broker, BrokerConfig};

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
    // What only the CONNECT phase needs waits on the heap and is freed after it,
    // instead of being kept in the task for the connection's life.
    let arrival = Box::new((peer, gate, connect_deadline));
    async move {
        let _held = &held;
        let (peer, gate, connect_deadline) = &*arrival;
        // Destructured at once: a named `Option` would stay in the task too.
        let Some((mut conn, mut codec, mut rbuf)) = Box::pin(connect::establish(
            &mut stream,
            peer,
            &broker,
            &**gate,
            *connect_deadline,
        ))
        .await
        else {
            return;
        };
        drop(arrival);
        let end = conn.run(&mut stream, &mut codec, &mut rbuf).await;
        let log_end = end.to_string();
        Box::pin(conn.finish(end)).await;
        tracing::info!(
            target: "moat::audit",
            peer = %conn.peer,
            client_id = %conn.session.client_id,
            identity = %conn.session.owner,
            end = %log_end,
            "disconnected"
        );
    }
}

/// An established connection: its session, the client's protocol choices, and
/// the answers not yet written.
struct Connection {
    version: ProtocolVersion,
    session: Arc<SessionLink>,
    connection_id: u64,
    kick: Arc<Kick>,
    /// How long the client may stay silent: 1.5 times its keepalive.
    keepalive_grace: Duration,
    /// Kept here, on the heap, for the last log line rather than in the task.
    peer: SocketAddr,
    will: Option<Box<Will>>,
    expiry_on_connect: u32,
    /// Topic aliases the client set (v5), bounded by topic_alias_maximum.
    aliases: TopicAliases,
    /// A subscriber that could not take this client's last message: handle nothing
    /// more until it drains (see `backpressure::wait_for_drain`).
    congested: Option<Arc<SessionLink>>,
    /// Answers in the order their packets arrived; an acknowledgement of durable
    /// data waits for its commit before it (and everything after it) is sent.
    replies: VecDeque<(Durable, Reply)>,
    config: Arc<BrokerConfig>,
    broker: Arc<Broker>,
}

/// The topics a client gave aliases to, allocated at its first alias: most
/// clients set none, and an empty map would take 48 bytes in every connection.
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "one pointer in every connection instead of an empty 48-byte map"
)]
struct TopicAliases(Option<Box<HashMap<u16, Arc<str>>>>);

impl TopicAliases {
    fn get(&self, alias: &u16) -> Option<&Arc<str>> {
        self.0.as_ref()?.get(alias)
    }

    fn insert(&mut self, alias: u16, topic: Arc<str>) {
        self.0.get_or_insert_default().insert(alias, topic);
    }
}

/// An answer waiting for its turn. Nearly every one is an acknowledgement, kept
/// as the three values it is made of and encoded without building a packet (a
/// QoS 1/2 message costs one); the rare other answers are boxed, so the queue's
/// entries stay small.
enum Reply {
    Ack(AckKind, u16, ReasonCode),
    Packet(Box<Packet>),
}

/// A protocol violation: close with this v5 reason.
struct Violation(ReasonCode, &'static str);
