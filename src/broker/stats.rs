//! Broker-wide counters for `$SYS`, `/metrics` and logs: plain atomics, no locks,
//! plus the bounded denial counts ([`Denials`], one small lock taken only on a
//! refusal). Each event is counted here once; `$SYS` and the metrics endpoint both
//! read these counters (totals are sums of the per-reason or per-QoS counts).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use moat_protocol::QoS;

use super::denials::Denials;

/// Why a connection was refused, from the first check that refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The source is outside the allowed networks.
    Network,
    /// The broker was at `max_connections`.
    MaxConnections,
    /// The source address was at `max_connections_per_ip`.
    MaxPerAddress,
    /// The TLS handshake failed or missed its deadline.
    TlsHandshake,
    /// The WebSocket upgrade was refused or missed its deadline.
    WebSocketUpgrade,
    /// The CONNECT was refused (credentials, rights, protocol, server busy).
    Connect,
    /// The peer closed, failed or stayed silent until the deadline before a CONNECT.
    NoConnect,
    /// The first packet was malformed or not a CONNECT.
    Malformed,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 8] = [
        RefusalReason::Network,
        RefusalReason::MaxConnections,
        RefusalReason::MaxPerAddress,
        RefusalReason::TlsHandshake,
        RefusalReason::WebSocketUpgrade,
        RefusalReason::Connect,
        RefusalReason::NoConnect,
        RefusalReason::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Network => "network",
            RefusalReason::MaxConnections => "max-connections",
            RefusalReason::MaxPerAddress => "max-connections-per-ip",
            RefusalReason::TlsHandshake => "tls-handshake",
            RefusalReason::WebSocketUpgrade => "websocket-upgrade",
            RefusalReason::Connect => "connect",
            RefusalReason::NoConnect => "no-connect",
            RefusalReason::Malformed => "malformed",
        }
    }
}

#[derive(Default)]
pub struct Stats {
    connected: AtomicI64,
    connections_accepted: AtomicU64,
    connections_refused: [AtomicU64; RefusalReason::ALL.len()],
    received_by_qos: [AtomicU64; 3],
    bytes_received: AtomicU64,
    sent_by_qos: [AtomicU64; 3],
    bytes_sent: AtomicU64,
    dropped: AtomicU64,
    dropped_too_large: AtomicU64,
    publishers_paused: AtomicU64,
    subscribers_lagging: AtomicU64,
    subscriptions_refused: AtomicU64,
    /// Every refusal, per identity, kind and topic pattern.
    pub denials: Denials,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub connected: i64,
    /// TCP connections admitted (network and caps passed), before TLS and CONNECT.
    pub connections_accepted: u64,
    pub messages_received: u64,
    /// PUBLISH packets received, by QoS 0, 1, 2.
    pub received_by_qos: [u64; 3],
    pub bytes_received: u64,
    pub messages_sent: u64,
    /// PUBLISH packets sent, by QoS 0, 1, 2.
    pub sent_by_qos: [u64; 3],
    pub bytes_sent: u64,
    /// Messages dropped because a subscriber's queue was full.
    pub dropped: u64,
    /// Messages not delivered because they exceed the client's maximum packet size.
    pub dropped_too_large: u64,
    pub connections_refused: u64,
    /// Refusals by [`RefusalReason`], in the order of [`RefusalReason::ALL`].
    pub refused_by_reason: [u64; RefusalReason::ALL.len()],
    /// Times a publisher waited for a congested QoS 1/2 subscriber (backpressure).
    pub publishers_paused: u64,
    /// Times a subscriber was found slow (lagging, and known slow until it has kept
    /// up for a while): publishers stopped waiting for it while a faster subscriber
    /// got the same messages, and its overflow was dropped for it alone. A known-slow
    /// subscriber lagging again is not counted again.
    pub subscribers_lagging: u64,
    pub subscriptions_refused: u64,
    pub denials: u64,
}

fn load<const N: usize>(counters: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| counters[i].load(Relaxed))
}

impl Stats {
    pub fn connected(&self, delta: i64) {
        self.connected.fetch_add(delta, Relaxed);
    }

    /// A TCP connection passed admission.
    pub fn accepted(&self) {
        self.connections_accepted.fetch_add(1, Relaxed);
    }

    pub fn received(&self, qos: QoS, bytes: usize) {
        self.received_by_qos[qos as usize].fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    /// `messages` PUBLISH packets written, by QoS 0, 1, 2.
    pub fn sent(&self, messages: [u64; 3], bytes: usize) {
        for (counter, n) in self.sent_by_qos.iter().zip(messages) {
            counter.fetch_add(n, Relaxed);
        }
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
    }

    /// A message was too large for its subscriber's maximum packet size.
    pub fn dropped_too_large(&self) {
        self.dropped_too_large.fetch_add(1, Relaxed);
    }

    pub fn publisher_paused(&self) {
        self.publishers_paused.fetch_add(1, Relaxed);
    }

    pub fn subscriber_lagging(&self) {
        self.subscribers_lagging.fetch_add(1, Relaxed);
    }

    /// A CONNECT was refused (see [`Stats::refused_for`] for the other reasons).
    pub fn refused(&self) {
        self.refused_for(RefusalReason::Connect);
    }

    pub fn refused_for(&self, reason: RefusalReason) {
        self.connections_refused[reason as usize].fetch_add(1, Relaxed);
    }

    /// A SUBSCRIBE filter was refused (any reason).
    pub fn subscription_refused(&self) {
        self.subscriptions_refused.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let received_by_qos = load(&self.received_by_qos);
        let sent_by_qos = load(&self.sent_by_qos);
        let refused_by_reason = load(&self.connections_refused);
        Snapshot {
            connected: self.connected.load(Relaxed),
            connections_accepted: self.connections_accepted.load(Relaxed),
            messages_received: received_by_qos.iter().sum(),
            received_by_qos,
            bytes_received: self.bytes_received.load(Relaxed),
            messages_sent: sent_by_qos.iter().sum(),
            sent_by_qos,
            bytes_sent: self.bytes_sent.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            dropped_too_large: self.dropped_too_large.load(Relaxed),
            connections_refused: refused_by_reason.iter().sum(),
            refused_by_reason,
            publishers_paused: self.publishers_paused.load(Relaxed),
            subscribers_lagging: self.subscribers_lagging.load(Relaxed),
            subscriptions_refused: self.subscriptions_refused.load(Relaxed),
            denials: self.denials.total(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_the_sums_of_their_parts() {
        let stats = Stats::default();
        stats.received(QoS::AtMostOnce, 3);
        stats.received(QoS::ExactlyOnce, 4);
        stats.sent([2, 1, 0], 10);
        stats.refused();
        stats.refused_for(RefusalReason::Network);
        stats.refused_for(RefusalReason::Network);
        let s = stats.snapshot();
        assert_eq!((s.messages_received, s.received_by_qos), (2, [1, 0, 1]));
        assert_eq!((s.messages_sent, s.sent_by_qos), (3, [2, 1, 0]));
        assert_eq!((s.bytes_received, s.bytes_sent), (7, 10));
        assert_eq!(s.connections_refused, 3);
        assert_eq!(s.refused_by_reason, [2, 0, 0, 0, 0, 1, 0, 0]);
    }
}
