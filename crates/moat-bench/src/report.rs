//! What a scenario measured, as one JSON object (`--json`) or a small human table.

use serde::Serialize;

use super::histogram::Percentiles;

/// One scenario's outcome. `scenario` names it; the remaining fields depend on it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub tls: bool,
    pub protocol: u8,
    #[serde(flatten)]
    pub result: Measured,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Measured {
    Flow(FlowResult),
    Latency(LatencyResult),
    ConnectRate(ConnectRateResult),
    Idle(IdleResult),
}

/// Fan-in and fan-out. Rates are over the measured window; counts over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FlowResult {
    pub publishers: usize,
    pub subscribers: usize,
    /// Subscribers kept their sessions (the broker had to store their messages).
    pub persistent_subscribers: bool,
    pub qos: u8,
    pub payload_bytes: usize,
    pub window_secs: f64,
    /// Deliveries per second summed over subscribers.
    pub received_per_sec: f64,
    /// Publications per second: written (QoS 0) or acknowledged (QoS 1/2).
    pub published_per_sec: f64,
    /// Publications written to the socket.
    pub sent: u64,
    /// Publications the broker acknowledged (PUBACK / PUBCOMP); equals `sent` for QoS 0.
    pub acked: u64,
    /// Deliveries counted by the subscribers over the whole run.
    pub received: u64,
    /// Deliveries a lossless broker would make: acked x subscribers.
    pub expected: u64,
    /// expected - received (QoS 0 may legitimately drop).
    pub missing: u64,
    /// Broker CPU time (user + system) inside the window, with --broker-pid.
    pub broker_cpu_secs: Option<f64>,
    /// That CPU time per message delivered inside the window (all subscribers).
    pub broker_cpu_us_per_delivered: Option<f64>,
    /// This generator's own CPU time inside the window.
    pub generator_cpu_secs: Option<f64>,
    /// What the (not slow) subscribers read off the wire inside the window.
    #[serde(flatten)]
    pub wire: Wire,
    /// Latency of messages sent inside the window, with --measure-latency.
    pub latency: Option<Percentiles>,
    pub latency_samples_dropped: u64,
    /// The extra paced subscriber, with --slow-subscriber.
    pub slow_subscriber: Option<SlowSubscriber>,
}

/// Socket-level reads of the subscribers, per message delivered to them.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Wire {
    #[serde(rename = "sub_bytes_per_delivered")]
    pub bytes_per_delivered: f64,
    /// TLS records (None on plaintext connections).
    #[serde(rename = "sub_tls_records_per_delivered")]
    pub tls_records_per_delivered: Option<f64>,
    /// read(2)-level reads that returned data.
    #[serde(rename = "sub_reads_per_delivered")]
    pub reads_per_delivered: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowSubscriber {
    /// Messages per second it reads at most.
    pub rate: u32,
    pub received_per_sec: f64,
    pub received: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub qos: u8,
    pub payload_bytes: usize,
    pub offered_per_sec: u32,
    /// Rate the publisher achieved over the measured window.
    pub sent_per_sec: f64,
    pub sent: u64,
    pub received: u64,
    pub latency: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectRateResult {
    pub parallel: usize,
    pub window_secs: f64,
    pub connections_per_sec: f64,
    pub completed: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Mean time from TCP connect to CONNACK, in microseconds.
    pub mean_setup_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub connections: usize,
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub setup_secs: f64,
    pub broker_pid: Option<u32>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_connection: Option<f64>,
}

impl Report {
    /// Label/value rows for the human table.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("scenario", self.scenario.to_owned()),
            (
                "target",
                format!(
                    "{} ({}, MQTT {})",
                    self.target,
                    if self.tls { "TLS" } else { "plaintext" },
                    if self.protocol == 5 { "5" } else { "3.1.1" }
                ),
            ),
        ];
        match &self.result {
            Measured::Flow(r) => rows.extend([
                (
                    "publishers -> subscribers",
                    format!(
                        "{} -> {}{}",
                        r.publishers,
                        r.subscribers,
                        if r.persistent_subscribers {
                            " (persistent sessions)"
                        } else {
                            ""
                        }
                    ),
                ),
                (
                    "qos / payload",
                    format!("{} / {} B", r.qos, r.payload_bytes),
                ),
                ("window", format!("{:.2} s", r.window_secs)),
                ("received msg/s", format!("{:.0}", r.received_per_sec)),
                ("published msg/s", format!("{:.0}", r.published_per_sec)),
                ("sent / acked", format!("{} / {}", r.sent, r.acked)),
                (
                    "received / expected",
                    format!("{} / {}", r.received, r.expected),
                ),
                ("missing", r.missing.to_string()),
                (
                    "broker CPU us/delivered",
                    r.broker_cpu_us_per_delivered
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_else(|| "-".into()),
                ),
                (
                    "wire B / TLS records / reads per delivered",
                    format!(
                        "{:.1} / {} / {:.3}",
                        r.wire.bytes_per_delivered,
                        r.wire
                            .tls_records_per_delivered
                            .map(|v| format!("{v:.3}"))
                            .unwrap_or_else(|| "-".into()),
                        r.wire.reads_per_delivered
                    ),
                ),
                (
                    "p50 / p99 / max us",
                    r.latency
                        .map(|l| format!("{} / {} / {}", l.p50_us, l.p99_us, l.max_us))
                        .unwrap_or_else(|| "-".into()),
                ),
                (
                    "slow subscriber msg/s (paced at)",
                    r.slow_subscriber
                        .as_ref()
                        .map(|s| format!("{:.0} ({})", s.received_per_sec, s.rate))
                        .unwrap_or_else(|| "-".into()),
                ),
            ]),
            Measured::Latency(r) => rows.extend([
                (
                    "qos / payload",
                    format!("{} / {} B", r.qos, r.payload_bytes),
                ),
                (
                    "offered / achieved msg/s",
                    format!("{} / {:.0}", r.offered_per_sec, r.sent_per_sec),
                ),
                ("sent / received", format!("{} / {}", r.sent, r.received)),
                ("samples", r.latency.samples.to_string()),
                (
                    "p50 / p90 / p99 / p99.9 us",
                    format!(
                        "{} / {} / {} / {}",
                        r.latency.p50_us, r.latency.p90_us, r.latency.p99_us, r.latency.p999_us
                    ),
                ),
                (
                    "min / mean / max us",
                    format!(
                        "{} / {:.0} / {}",
                        r.latency.min_us, r.latency.mean_us, r.latency.max_us
                    ),
                ),
            ]),
            Measured::ConnectRate(r) => rows.extend([
                ("parallel", r.parallel.to_string()),
                ("window", format!("{:.2} s", r.window_secs)),
                ("connections/s", format!("{:.1}", r.connections_per_sec)),
                (
                    "completed / failed",
                    format!("{} / {}", r.completed, r.failed),
                ),
                ("mean setup", format!("{:.0} us", r.mean_setup_us)),
                (
                    "first error",
                    r.first_error.clone().unwrap_or_else(|| "-".into()),
                ),
            ]),
            Measured::Idle(r) => {
                let kib =
                    |v: Option<u64>| v.map(|v| format!("{v} KiB")).unwrap_or_else(|| "-".into());
                rows.extend([
                    (
                        "connections opened / asked",
                        format!("{} / {}", r.opened, r.connections),
                    ),
                    ("failed", r.failed.to_string()),
                    ("setup", format!("{:.2} s", r.setup_secs)),
                    ("broker RSS before", kib(r.rss_before_kib)),
                    ("broker RSS after", kib(r.rss_after_kib)),
                    (
                        "KiB per connection",
                        r.kib_per_connection
                            .map(|v| format!("{v:.2}"))
                            .unwrap_or_else(|| "-".into()),
                    ),
                    (
                        "first error",
                        r.first_error.clone().unwrap_or_else(|| "-".into()),
                    ),
                ])
            }
        }
        rows
    }

    pub fn to_table(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(label, value)| format!("{label:<width$}  {value}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_flat_and_names_the_scenario() {
        let report = Report {
            scenario: "fan-in",
            target: "127.0.0.1:1883".into(),
            tls: false,
            protocol: 5,
            result: Measured::Flow(FlowResult {
                publishers: 8,
                subscribers: 1,
                persistent_subscribers: false,
                qos: 0,
                payload_bytes: 64,
                window_secs: 1.0,
                received_per_sec: 10.0,
                published_per_sec: 12.0,
                sent: 12,
                acked: 12,
                received: 10,
                expected: 12,
                missing: 2,
                broker_cpu_secs: Some(0.5),
                broker_cpu_us_per_delivered: Some(2.5),
                generator_cpu_secs: None,
                wire: Wire {
                    bytes_per_delivered: 90.0,
                    tls_records_per_delivered: Some(0.1),
                    reads_per_delivered: 0.01,
                },
                latency: None,
                latency_samples_dropped: 0,
                slow_subscriber: None,
            }),
        };
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scenario"], "fan-in");
        assert_eq!(json["received"], 10);
        assert_eq!(json["broker_cpu_us_per_delivered"], 2.5);
        assert_eq!(json["sub_bytes_per_delivered"], 90.0);
        assert!(report.to_table().contains("received msg/s"));
    }
}
