//! `$SYS/broker/...`: the broker's own retained status topics, republished on an
//! interval. Only identities granted `$SYS` topics receive them (`#` never matches
//! `$`-topics); clients can never publish there.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use moat_protocol::QoS;

use super::journal::Reservation;
use super::mailbox::Message;
use super::{Broker, Incoming};

/// How often `$SYS` is republished (mosquitto's default `sys_interval`).
pub const SYS_INTERVAL: Duration = Duration::from_secs(10);

/// Denials shown in `$SYS/broker/denials/top` (the whole list is `moat denials`).
pub const SYS_TOP_DENIALS: usize = 10;

/// The `$SYS` topics and their current values.
pub fn sys_topics(broker: &Broker) -> Vec<(&'static str, String)> {
    let s = broker.stats.snapshot();
    let mut denials = broker.stats.denials.snapshot();
    denials.entries.truncate(SYS_TOP_DENIALS);
    let (sessions, subscriptions, retained) = broker.counts();
    vec![
        (
            "$SYS/broker/version",
            format!("moat {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", broker.uptime().as_secs()),
        ),
        ("$SYS/broker/clients/connected", s.connected.to_string()),
        ("$SYS/broker/clients/total", sessions.to_string()),
        (
            "$SYS/broker/messages/received",
            s.messages_received.to_string(),
        ),
        ("$SYS/broker/messages/sent", s.messages_sent.to_string()),
        ("$SYS/broker/messages/dropped", s.dropped.to_string()),
        (
            "$SYS/broker/publishers/paused",
            s.publishers_paused.to_string(),
        ),
        (
            "$SYS/broker/subscribers/lagging",
            s.subscribers_lagging.to_string(),
        ),
        ("$SYS/broker/bytes/received", s.bytes_received.to_string()),
        ("$SYS/broker/bytes/sent", s.bytes_sent.to_string()),
        ("$SYS/broker/subscriptions/count", subscriptions.to_string()),
        ("$SYS/broker/retained messages/count", retained.to_string()),
        (
            "$SYS/broker/connections/refused",
            s.connections_refused.to_string(),
        ),
        (
            "$SYS/broker/subscriptions/refused",
            s.subscriptions_refused.to_string(),
        ),
        ("$SYS/broker/denials/count", denials.total.to_string()),
        (
            "$SYS/broker/denials/uncounted",
            denials.uncounted.to_string(),
        ),
        (
            "$SYS/broker/denials/top",
            serde_json::to_string(&denials.entries).unwrap_or_default(),
        ),
    ]
}

/// Publishes every `$SYS` topic once, retained.
pub fn publish_sys(broker: &Broker) {
    for (topic, value) in sys_topics(broker) {
        broker.publish(
            Incoming {
                message: Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true),
                publisher: None,
                from_session: None,
                retained_quota: usize::MAX,
            },
            // `$SYS` is never stored.
            Reservation::NONE,
        );
    }
}

/// Runs housekeeping every second and `$SYS` every [`SYS_INTERVAL`], forever.
pub async fn run_periodic(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seconds = 0u64;
    loop {
        tick.tick().await;
        let room = broker.journal().reserve().await;
        broker
            .housekeeping(std::time::Instant::now(), room)
            .settle("expired sessions")
            .await;
        if seconds.is_multiple_of(SYS_INTERVAL.as_secs()) {
            publish_sys(&broker);
        }
        seconds += 1;
    }
}
