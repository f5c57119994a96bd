//! Broker-wide counters for `$SYS` and logs: plain atomics, no locks, plus the
//! bounded denial counts ([`Denials`], one small lock taken only on a refusal).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::denials::Denials;

#[derive(Default)]
pub struct Stats {
    connected: AtomicI64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    dropped: AtomicU64,
    connections_refused: AtomicU64,
    publishers_paused: AtomicU64,
    subscriptions_refused: AtomicU64,
    /// Every refusal, per identity, kind and topic pattern.
    pub denials: Denials,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub connected: i64,
    pub messages_received: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub dropped: u64,
    pub connections_refused: u64,
    /// Times a publisher waited for a congested QoS 1/2 subscriber (backpressure).
    pub publishers_paused: u64,
    pub subscriptions_refused: u64,
    pub denials: u64,
}

impl Stats {
    pub fn connected(&self, delta: i64) {
        self.connected.fetch_add(delta, Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    pub fn sent(&self, messages: u64, bytes: usize) {
        self.messages_sent.fetch_add(messages, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
    }

    pub fn publisher_paused(&self) {
        self.publishers_paused.fetch_add(1, Relaxed);
    }

    pub fn refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// A SUBSCRIBE filter was refused (any reason).
    pub fn subscription_refused(&self) {
        self.subscriptions_refused.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connected: self.connected.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            messages_sent: self.messages_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            publishers_paused: self.publishers_paused.load(Relaxed),
            subscriptions_refused: self.subscriptions_refused.load(Relaxed),
            denials: self.denials.total(),
        }
    }
}
