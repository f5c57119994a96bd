//! What `/metrics` shows: at each scrape, a `prometheus-client` [`Collector`] reads
//! the counters the broker, the authenticator, admission and the store already keep
//! (the same ones `$SYS` reads) and encodes them. Nothing here counts an event: one
//! source of truth, so `/metrics` and `$SYS` cannot disagree.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::broker::stats::RefusalReason;
use crate::latency::LatencySnapshot;
use crate::net::AdmissionControl;
use crate::store::Store;

/// Everything the endpoint reads.
#[derive(Clone)]
pub struct Sources {
    pub broker: Arc<Broker>,
    pub auth: Arc<Authenticator>,
    pub admission: Arc<AdmissionControl>,
    /// `None` when the broker runs without a durable store.
    pub store: Option<Arc<Store>>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("metrics::Sources")
    }
}

/// The registry `/metrics` encodes: one collector over [`Sources`].
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources));
    registry
}

/// The exposition, in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> Result<String> {
    let mut out = String::with_capacity(8 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

type Result<T = ()> = std::result::Result<T, fmt::Error>;

/// A counter family: one value per label value.
struct CounterFamily<'a> {
    name: &'a str,
    help: &'a str,
    label: &'a str,
}

impl CounterFamily<'_> {
    fn write(&self, encoder: &mut DescriptorEncoder, values: &[(&str, u64)]) -> Result {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (label, value) in values {
            let labels = [(self.label, *label)];
            ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &LatencySnapshot,
) -> Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
}

fn by_qos(counts: [u64; 3]) -> [(&'static str, u64); 3] {
    [("0", counts[0]), ("1", counts[1]), ("2", counts[2])]
}

/// A count as a gauge value (saturating: no count here comes near `i64::MAX`).
fn level(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Collector for Sources {
    fn encode(&self, mut e: DescriptorEncoder) -> Result {
        let broker = &self.broker;
        let s = broker.stats.snapshot();
        let (sessions, subscriptions, retained) = broker.counts();
        let auth = self.auth.stats();
        let counter_family = |name, help, label| CounterFamily { name, help, label };

        gauge(
            &mut e,
            "moat_uptime_seconds",
            "Seconds since the broker started.",
            level(broker.uptime().as_secs()),
        )?;
        gauge(
            &mut e,
            "moat_connections_open",
            "TCP connections holding an admission slot (logged in or not yet).",
            level(self.admission.open_connections()),
        )?;
        gauge(
            &mut e,
            "moat_clients_connected",
            "MQTT clients logged in now ($SYS/broker/clients/connected).",
            s.connected,
        )?;
        counter(
            &mut e,
            "moat_connections_accepted",
            "TCP connections admitted (allowed network, under the caps).",
            s.connections_accepted,
        )?;
        let refused: Vec<(&str, u64)> = RefusalReason::ALL
            .iter()
            .zip(s.refused_by_reason)
            .map(|(reason, n)| (reason.as_str(), n))
            .collect();
        counter_family(
            "moat_connections_refused",
            "Connections refused, by the check that refused them.",
            "reason",
        )
        .write(&mut e, &refused)?;
        counter_family(
            "moat_messages_received",
            "PUBLISH packets received from clients, by QoS.",
            "qos",
        )
        .write(&mut e, &by_qos(s.received_by_qos))?;
        counter_family(
            "moat_messages_sent",
            "PUBLISH packets sent to clients, by QoS.",
            "qos",
        )
        .write(&mut e, &by_qos(s.sent_by_qos))?;
        counter(
            &mut e,
            "moat_received_bytes",
            "Payload bytes received.",
            s.bytes_received,
        )?;
        counter(
            &mut e,
            "moat_sent_bytes",
            "Payload bytes sent.",
            s.bytes_sent,
        )?;
        counter_family(
            "moat_messages_dropped",
            "Messages not delivered to a subscriber, by reason.",
            "reason",
        )
        .write(
            &mut e,
            &[
                ("queue-full", s.dropped),
                ("too-large", s.dropped_too_large),
            ],
        )?;
        counter(
            &mut e,
            "moat_publishers_paused",
            "Times a publisher waited for a congested QoS 1/2 subscriber.",
            s.publishers_paused,
        )?;
        counter(
            &mut e,
            "moat_subscribers_lagging",
            "Times a subscriber was found slower than its publishers or peers: known slow until it keeps up, not waited for, its overflow dropped for it alone.",
            s.subscribers_lagging,
        )?;
        counter(
            &mut e,
            "moat_subscriptions_refused",
            "SUBSCRIBE filters refused (any reason).",
            s.subscriptions_refused,
        )?;
        let denials: Vec<(&str, u64)> = broker
            .stats
            .denials
            .by_kind()
            .iter()
            .map(|(kind, n)| (kind.as_str(), *n))
            .collect();
        counter_family(
            "moat_denials",
            "Refusals by the access rules, and messages dropped for a full queue (kind queue-full), by kind (`moat denials` lists them by identity and topic).",
            "kind",
        )
        .write(&mut e, &denials)?;
        counter_family(
            "moat_auth_attempts",
            "Password logins by outcome (throttled: refused by the lockout without hashing).",
            "outcome",
        )
        .write(
            &mut e,
            &[
                ("accepted", auth.accepted),
                ("denied", auth.denied),
                ("busy", auth.busy),
                ("throttled", auth.throttled),
            ],
        )?;
        counter(
            &mut e,
            "moat_auth_cache_hits",
            "Logins accepted from the success cache, without hashing.",
            auth.cache_hits,
        )?;
        counter(
            &mut e,
            "moat_auth_verifications",
            "Password hashes computed.",
            auth.verifications,
        )?;
        histogram(
            &mut e,
            "moat_auth_queue_wait_seconds",
            "Time a login waited for an argon2 verification slot.",
            &self.auth.queue_wait(),
        )?;
        gauge(
            &mut e,
            "moat_sessions",
            "Sessions, online and offline.",
            level(sessions),
        )?;
        gauge(
            &mut e,
            "moat_subscriptions",
            "Subscriptions of all sessions.",
            level(subscriptions),
        )?;
        gauge(
            &mut e,
            "moat_retained_messages",
            "Retained messages held.",
            level(retained),
        )?;
        if let Some(store) = &self.store {
            self.encode_store(&mut e, store)?;
        }
        Ok(())
    }
}

impl Sources {
    fn encode_store(&self, e: &mut DescriptorEncoder, store: &Store) -> Result {
        let stats = store.stats();
        histogram(
            e,
            "moat_store_commit_seconds",
            "Time of each store transaction, from BEGIN to the end of COMMIT (fsync included).",
            &store.commit_latency(),
        )?;
        counter(
            e,
            "moat_store_commits",
            "Store transactions committed.",
            stats.commits,
        )?;
        counter(
            e,
            "moat_store_failed_ops",
            "Store operations whose write failed (disk full or another error).",
            stats.failed_ops,
        )?;
        gauge(
            e,
            "moat_store_disk_full",
            "1 while durable writes are refused for lack of space.",
            i64::from(store.is_disk_full()),
        )?;
        if let Some(bytes) = store.database_bytes() {
            gauge(
                e,
                "moat_store_database_bytes",
                "Bytes the database and its write-ahead log take on disk.",
                level(bytes),
            )?;
        }
        Ok(())
    }
}
