//! Throughput scenarios: fan-in (N publishers -> 1 subscriber) and fan-out (1
//! publisher -> N subscribers) at QoS 0, 1 or 2. Subscribers connect and subscribe
//! first; publishers then run until the measured window ends or their message count
//! is reached. Counters are sampled at the start and the end of the window (and with
//! them, when asked, the broker's CPU time and what the subscribers read off the
//! wire); the run then drains (bounded) so the whole-run counts can be compared.
//! Optionally every payload carries its send time (latency percentiles), and one
//! extra slow subscriber, paced to a fixed rate, shows what it costs the others.
//! This module runs a scenario and measures it; `subscriber` and `publisher` are the
//! load tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::{Target, payload_stamp, queue_stamped, subscribe};
use super::histogram::Samples;
use super::options::{FanInArgs, FanOutArgs, FlowArgs};
use super::report::{FlowResult, Measured, Report, SlowSubscriber, Wire};
use super::system::cpu_secs;
use super::{BenchError, joined, run_tag};
use moat_client::{
    ClientError, Connection, PacketReader, PacketWriter, WireCount, WireSnapshot, packet_name,
};
use moat_protocol::{Ack, Packet, Properties, Publish, QoS, ReasonCode};

mod publisher;
mod subscriber;

use publisher::PublishJob;
use subscriber::Receiver;

/// How long a QoS 1/2 publisher waits for the next acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle subscribers look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Bytes a QoS 0 publisher queues before one write.
const WRITE_BATCH_BYTES: usize = 16 * 1024;
/// TLS handshakes and logins in progress at once while setting up.
const SETUP_PARALLEL: usize = 16;
/// Longest drain after the publishers stop.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);
/// Latency samples kept over all subscribers of a run (8 bytes each).
const MAX_SAMPLES: usize = 8_000_000;
/// The slow subscriber sleeps once it is this far ahead of its pace.
const PACE_SLACK: Duration = Duration::from_millis(1);

/// Counters shared by all tasks of one run.
#[derive(Default)]
pub(super) struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
}

/// Everything read at one edge of the measured window.
struct Snapshot {
    at: Instant,
    acked: u64,
    received: u64,
    slow_received: u64,
    wire: WireSnapshot,
    broker_cpu: Option<f64>,
    own_cpu: Option<f64>,
}

/// What the window's edges are read from.
struct Gauges {
    counters: Arc<Counters>,
    slow: Arc<Counters>,
    wire: Arc<WireCount>,
    broker_pid: Option<u32>,
}

impl Gauges {
    fn snapshot(&self) -> Result<Snapshot, BenchError> {
        Ok(Snapshot {
            at: Instant::now(),
            acked: self.counters.acked.load(Ordering::Relaxed),
            received: self.counters.received.load(Ordering::Relaxed),
            slow_received: self.slow.received.load(Ordering::Relaxed),
            wire: self.wire.snapshot(),
            broker_cpu: self.broker_pid.map(cpu_secs).transpose()?,
            own_cpu: cpu_secs(std::process::id()).ok(),
        })
    }
}

/// Send times in payloads: nanoseconds since `base`; samples are kept for messages
/// sent inside [from, to).
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
    from: u64,
    to: u64,
}

impl Clock {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

pub(crate) async fn fan_in(args: &FanInArgs) -> Result<Report, BenchError> {
    run_flow(
        "fan-in",
        &Target::from_args(&args.common)?,
        &args.common.topic_prefix,
        &args.flow,
        args.publishers,
        1,
    )
    .await
}

pub(crate) async fn fan_out(args: &FanOutArgs) -> Result<Report, BenchError> {
    run_flow(
        "fan-out",
        &Target::from_args(&args.common)?,
        &args.common.topic_prefix,
        &args.flow,
        1,
        args.subscribers,
    )
    .await
}

async fn run_flow(
    scenario: &'static str,
    target: &Target,
    prefix: &str,
    flow: &FlowArgs,
    publishers: usize,
    subscribers: usize,
) -> Result<Report, BenchError> {
    let tag = run_tag();
    let base = format!("{prefix}/{tag}");
    target.warm_up().await?;
    // Fan-in: publisher i writes base/in/i, the subscriber takes base/in/#.
    // Fan-out: the publisher writes base/out, every subscriber takes exactly that.
    let (filter, topic_of): (String, Box<dyn Fn(usize) -> String>) = if subscribers == 1 {
        let b = base.clone();
        (
            format!("{base}/in/#"),
            Box::new(move |i| format!("{b}/in/{i}")),
        )
    } else {
        let b = base.clone();
        (format!("{base}/out"), Box::new(move |_| format!("{b}/out")))
    };

    let sub_target = if flow.persistent_subscribers {
        target.persistent()
    } else {
        target.clone()
    };
    let wire = Arc::new(WireCount::default());
    let subs = connect_all(
        &sub_target.counting(Arc::clone(&wire)),
        &format!("bs-{tag}"),
        subscribers,
        0,
    )
    .await?;
    let mut subscribed = Vec::with_capacity(subs.len());
    for mut sub in subs {
        subscribe(&mut sub, &filter, flow.qos).await?;
        subscribed.push(sub);
    }
    // The slow subscriber: same topics, not in the wire counts, its own counter.
    let mut slow_sub = None;
    if let Some(rate) = flow.slow_subscriber {
        let mut slow = connect_all(&sub_target, &format!("bz-{tag}"), 1, subscribers).await?;
        if let Some(mut client) = slow.pop() {
            subscribe(&mut client, &filter, flow.qos).await?;
            slow_sub = Some((client, rate));
        }
    }
    let first_pub = subscribers + usize::from(slow_sub.is_some());
    let pubs = connect_all(target, &format!("bp-{tag}"), publishers, first_pub).await?;

    let gauges = Gauges {
        counters: Arc::new(Counters::default()),
        slow: Arc::new(Counters::default()),
        wire,
        broker_pid: flow.broker_pid,
    };
    let counters = &gauges.counters;
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let stop_receiving = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clock = flow.measure_latency.then(|| Clock {
        base: started,
        from: flow.warmup.as_nanos() as u64,
        to: (flow.warmup + flow.duration).as_nanos() as u64,
    });

    let mut sub_tasks = JoinSet::new();
    for sub in subscribed {
        let (reader, writer) = sub.split();
        let receiver = Receiver {
            counters: Arc::clone(counters),
            stop: Arc::clone(&stop_receiving),
            pace: None,
            clock,
            samples: if clock.is_some() {
                MAX_SAMPLES / subscribers
            } else {
                0
            },
        };
        sub_tasks.spawn(receiver.run(reader, writer));
    }
    let mut slow_task = None;
    if let Some((client, rate)) = slow_sub {
        let (reader, writer) = client.split();
        let receiver = Receiver {
            counters: Arc::clone(&gauges.slow),
            stop: Arc::clone(&stop_receiving),
            pace: Some(rate),
            clock: None,
            samples: 0,
        };
        slow_task = Some(tokio::spawn(receiver.run(reader, writer)));
    }

    let payload = Bytes::from(vec![0x5a; flow.payload]);
    let mut pub_tasks = JoinSet::new();
    for (i, publisher) in pubs.into_iter().enumerate() {
        let packet = Publish {
            dup: false,
            qos: flow.qos,
            retain: false,
            topic: topic_of(i).into(),
            packet_id: 0,
            payload: payload.clone(),
            properties: Properties::default(),
        };
        let job = PublishJob {
            template: packet,
            max: flow.max_messages,
            window: flow.inflight,
            counters: Arc::clone(counters),
            stop: Arc::clone(&stop_publishing),
            finished: Arc::clone(&finished),
            clock,
            pace: flow.rate.map(|r| f64::from(r) / publishers as f64),
        };
        pub_tasks.spawn(job.run(publisher));
    }

    // Warm-up, then the measured window (ended early if every publisher is done).
    tokio::time::sleep_until((started + flow.warmup).into()).await;
    let first = gauges.snapshot()?;
    let window_end = first.at + flow.duration;
    while Instant::now() < window_end && finished.load(Ordering::Relaxed) < publishers {
        tokio::time::sleep(POLL.min(window_end.saturating_duration_since(Instant::now()))).await;
    }
    let last = gauges.snapshot()?;
    stop_publishing.store(true, Ordering::Relaxed);
    while let Some(outcome) = pub_tasks.join_next().await {
        joined(outcome)?;
    }

    let sent = counters.sent.load(Ordering::Relaxed);
    let acked = counters.acked.load(Ordering::Relaxed);
    let expected = acked * subscribers as u64;
    drain(counters, expected, flow.qos).await;
    stop_receiving.store(true, Ordering::Relaxed);
    let mut samples = Samples::with_capacity(0);
    while let Some(outcome) = sub_tasks.join_next().await {
        samples.absorb(joined(outcome)?);
    }
    if let Some(task) = slow_task {
        joined(task.await)?;
    }
    let received = counters.received.load(Ordering::Relaxed);

    let window = last.at.duration_since(first.at).as_secs_f64().max(1e-9);
    let delivered = last.received - first.received;
    let slow_delivered = last.slow_received - first.slow_received;
    let broker_cpu = first
        .broker_cpu
        .zip(last.broker_cpu)
        .map(|(a, b)| (b - a).max(0.0));
    let per_delivered = |v: f64| v / (delivered.max(1) as f64);
    let wire_bytes = last.wire.bytes - first.wire.bytes;
    let dropped = samples.dropped();
    Ok(Report {
        scenario,
        target: target.addr().to_string(),
        tls: target.is_tls(),
        protocol: target.protocol.level(),
        result: Measured::Flow(FlowResult {
            publishers,
            subscribers,
            persistent_subscribers: flow.persistent_subscribers,
            qos: flow.qos as u8,
            payload_bytes: flow.payload,
            window_secs: window,
            received_per_sec: delivered as f64 / window,
            published_per_sec: (last.acked - first.acked) as f64 / window,
            sent,
            acked,
            received,
            expected,
            missing: expected.saturating_sub(received),
            broker_cpu_secs: broker_cpu,
            // Every delivery in the window, the slow subscriber's included.
            broker_cpu_us_per_delivered: broker_cpu
                .map(|cpu| cpu * 1e6 / ((delivered + slow_delivered).max(1) as f64)),
            generator_cpu_secs: first
                .own_cpu
                .zip(last.own_cpu)
                .map(|(a, b)| (b - a).max(0.0)),
            wire: Wire {
                bytes_per_delivered: per_delivered(wire_bytes as f64),
                tls_records_per_delivered: target.is_tls().then(|| {
                    per_delivered((last.wire.tls_records - first.wire.tls_records) as f64)
                }),
                reads_per_delivered: per_delivered((last.wire.reads - first.wire.reads) as f64),
            },
            latency: clock.map(|_| samples.percentiles()),
            latency_samples_dropped: dropped,
            slow_subscriber: flow.slow_subscriber.map(|rate| SlowSubscriber {
                rate,
                received_per_sec: slow_delivered as f64 / window,
                received: gauges.slow.received.load(Ordering::Relaxed),
            }),
        }),
    })
}

/// Waits until the subscribers have everything, or until deliveries stop coming.
async fn drain(counters: &Counters, expected: u64, qos: QoS) {
    let quiet_limit = if qos == QoS::AtMostOnce {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let start = Instant::now();
    let mut last_seen = counters.received.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while start.elapsed() < DRAIN_LIMIT {
        let now_seen = counters.received.load(Ordering::Relaxed);
        if now_seen >= expected {
            return;
        }
        if now_seen != last_seen {
            last_seen = now_seen;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > quiet_limit {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Connects `count` clients named `{prefix}-{i}`, a bounded number at a time.
pub(super) async fn connect_all(
    target: &Target,
    prefix: &str,
    count: usize,
    index_offset: usize,
) -> Result<Vec<Connection>, BenchError> {
    let gate = Arc::new(Semaphore::new(SETUP_PARALLEL));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let target = target.clone();
        let gate = Arc::clone(&gate);
        let id = format!("{prefix}-{i}");
        tasks.spawn(async move {
            let _permit = gate
                .acquire_owned()
                .await
                .map_err(|e| BenchError::Task(e.to_string()))?;
            target.connect(&id, index_offset + i).await.map(|c| (i, c))
        });
    }
    let mut clients: Vec<(usize, Connection)> = Vec::with_capacity(count);
    while let Some(outcome) = tasks.join_next().await {
        clients.push(joined(outcome)?);
    }
    clients.sort_by_key(|(i, _)| *i);
    Ok(clients.into_iter().map(|(_, c)| c).collect())
}
