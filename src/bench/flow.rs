//! Throughput scenarios: fan-in (N publishers -> 1 subscriber) and fan-out (1
//! publisher -> N subscribers) at QoS 0, 1 or 2. Subscribers connect and subscribe
//! first; publishers then run until the measured window ends or their message count
//! is reached. Counters are sampled at the start and the end of the window (and with
//! them, when asked, the broker's CPU time and what the subscribers read off the
//! wire); the run then drains (bounded) so the whole-run counts can be compared.
//! Optionally every payload carries its send time (latency percentiles), and one
//! extra slow subscriber, paced to a fixed rate, shows what it costs the others.

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

pub async fn fan_in(args: &FanInArgs) -> Result<Report, BenchError> {
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

pub async fn fan_out(args: &FanOutArgs) -> Result<Report, BenchError> {
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
            topic: topic_of(i),
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

/// A subscriber's settings.
struct Receiver {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    /// Read at most this many messages per second (the slow subscriber).
    pace: Option<u32>,
    /// Payloads carry send times: keep up to `samples` latencies.
    clock: Option<Clock>,
    samples: usize,
}

impl Receiver {
    /// Counts PUBLISHes and answers the QoS 1/2 flow, until told to stop; returns
    /// the latency samples (none without a clock).
    async fn run(
        self,
        mut reader: PacketReader,
        mut writer: PacketWriter,
    ) -> Result<Samples, BenchError> {
        let mut samples = Samples::with_capacity(self.samples);
        // The pace counts from the first message, not from setup.
        let mut paced_from: Option<Instant> = None;
        let mut seen = 0u64;
        loop {
            let first = match tokio::time::timeout(POLL, reader.recv()).await {
                Err(_) if self.stop.load(Ordering::Relaxed) => return Ok(samples),
                Err(_) => continue,
                Ok(packet) => packet?,
            };
            let Some(mut packet) = first else {
                return if self.stop.load(Ordering::Relaxed) {
                    Ok(samples)
                } else {
                    Err(ClientError::Closed.into())
                };
            };
            let mut publishes = 0u64;
            loop {
                if let Some(p) = writer.answer(packet)? {
                    publishes += 1;
                    if let Some(clock) = &self.clock {
                        let sent_at = payload_stamp(&p)?;
                        if (clock.from..clock.to).contains(&sent_at) {
                            samples.record(clock.now().saturating_sub(sent_at) / 1000);
                        }
                    }
                    if let Some(rate) = self.pace {
                        // Ahead of the pace: report, acknowledge, then wait.
                        let from = *paced_from.get_or_insert_with(Instant::now);
                        let due = from
                            + Duration::from_secs_f64((seen + publishes) as f64 / f64::from(rate));
                        if due > Instant::now() + PACE_SLACK {
                            seen += publishes;
                            self.counters
                                .received
                                .fetch_add(publishes, Ordering::Relaxed);
                            publishes = 0;
                            // Told to stop: leave what is still queued for it.
                            if self.stop.load(Ordering::Relaxed) {
                                return Ok(samples);
                            }
                            writer.flush().await?;
                            tokio::time::sleep_until(due.into()).await;
                        }
                    }
                }
                match reader.try_recv()? {
                    Some(next) => packet = next,
                    None => break,
                }
            }
            seen += publishes;
            self.counters
                .received
                .fetch_add(publishes, Ordering::Relaxed);
            if writer.queued_bytes() > 0 {
                writer.flush().await?;
            }
        }
    }
}

/// One publisher's work: a PUBLISH template sent until stopped or `max` is reached.
struct PublishJob {
    template: Publish,
    max: u64,
    window: u16,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    finished: Arc<AtomicUsize>,
    /// Stamp payloads with their send time.
    clock: Option<Clock>,
    /// Messages per second this publisher offers at most (None: as fast as it can).
    pace: Option<f64>,
}

/// A fixed schedule: message n is due n / per_sec seconds after the start.
struct Pace {
    start: Instant,
    per_sec: f64,
}

impl Pace {
    fn starting_now(per_sec: f64) -> Pace {
        Pace {
            start: Instant::now(),
            per_sec,
        }
    }

    fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.per_sec)
    }

    /// How many messages are due by `now` (the first one at once).
    fn due_by(&self, now: Instant) -> u64 {
        (now.duration_since(self.start).as_secs_f64() * self.per_sec) as u64 + 1
    }
}

impl PublishJob {
    async fn run(self, client: Connection) -> Result<(), BenchError> {
        let outcome = match self.template.qos {
            QoS::AtMostOnce => self.at_most_once(client).await,
            _ => self.acknowledged(client).await,
        };
        self.finished.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    /// QoS 0: batches of PUBLISH as fast as the socket takes them.
    async fn at_most_once(&self, client: Connection) -> Result<(), BenchError> {
        let (_reader, mut writer) = client.split();
        let packet = Packet::Publish(self.template.clone());
        let size = self.template.payload.len() + self.template.topic.len() + 8;
        let batch = (WRITE_BATCH_BYTES / size).clamp(1, 256) as u64;
        let mut sent = 0u64;
        let pace = self.pace.map(Pace::starting_now);
        while sent < self.max && !self.stop.load(Ordering::Relaxed) {
            let mut n = batch.min(self.max - sent);
            if let Some(pace) = &pace {
                n = n.min(pace.due_by(Instant::now()).saturating_sub(sent));
                if n == 0 {
                    tokio::time::sleep_until(pace.due(sent).into()).await;
                    continue;
                }
            }
            for _ in 0..n {
                match &self.clock {
                    Some(clock) => queue_stamped(
                        &mut writer,
                        &packet,
                        self.template.payload.len(),
                        clock.now(),
                    )?,
                    None => writer.queue(&packet)?,
                }
            }
            writer.flush().await?;
            sent += n;
            self.counters.sent.fetch_add(n, Ordering::Relaxed);
            self.counters.acked.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// QoS 1/2: keeps `window` messages unacknowledged; stops sending when told and
    /// then waits for the acknowledgements still owed.
    async fn acknowledged(&self, client: Connection) -> Result<(), BenchError> {
        let window = self.window.min(client.receive_maximum()).max(1);
        let (mut reader, mut writer) = client.split();
        let qos = self.template.qos;
        let mut in_flight = vec![false; usize::from(u16::MAX) + 1];
        let mut open = 0u16;
        let mut next_id = 0u16;
        let mut sent = 0u64;
        let mut publish = self.template.clone();
        let pace = self.pace.map(Pace::starting_now);
        let is_due = |sent: u64| pace.as_ref().is_none_or(|p| p.due(sent) <= Instant::now());
        loop {
            let mut queued = 0u64;
            while open < window
                && sent < self.max
                && !self.stop.load(Ordering::Relaxed)
                && is_due(sent)
            {
                next_id = if next_id == u16::MAX { 1 } else { next_id + 1 };
                if in_flight[usize::from(next_id)] {
                    break; // Wrapped onto an id still owed: wait for its ack.
                }
                publish.packet_id = next_id;
                let packet = Packet::Publish(publish.clone());
                match &self.clock {
                    Some(clock) => {
                        queue_stamped(&mut writer, &packet, publish.payload.len(), clock.now())?
                    }
                    None => writer.queue(&packet)?,
                }
                in_flight[usize::from(next_id)] = true;
                open += 1;
                sent += 1;
                queued += 1;
            }
            if queued > 0 || writer.queued_bytes() > 0 {
                writer.flush().await?;
                self.counters.sent.fetch_add(queued, Ordering::Relaxed);
            }
            if open == 0 && (sent >= self.max || self.stop.load(Ordering::Relaxed)) {
                return Ok(());
            }
            if open == 0 {
                // Paced and nothing owed: wait for the next message's turn.
                if let Some(pace) = &pace {
                    tokio::time::sleep_until(pace.due(sent).into()).await;
                }
                continue;
            }
            let first = tokio::time::timeout(ACK_TIMEOUT, reader.recv())
                .await
                .map_err(|_| ClientError::Timeout("acknowledgements"))??;
            let Some(mut packet) = first else {
                return Err(ClientError::Closed.into());
            };
            let mut acked = 0u64;
            loop {
                match (&packet, qos) {
                    (Packet::PubAck(ack), QoS::AtLeastOnce)
                    | (Packet::PubComp(ack), QoS::ExactlyOnce) => {
                        if ack.reason.is_error() {
                            return Err(ClientError::Rejected(ack.reason).into());
                        }
                        let slot = &mut in_flight[usize::from(ack.packet_id)];
                        if !*slot {
                            return Err(ClientError::Unexpected(
                                "acknowledgement of an unknown packet id",
                            )
                            .into());
                        }
                        *slot = false;
                        open -= 1;
                        acked += 1;
                    }
                    (Packet::PubRec(ack), QoS::ExactlyOnce) => {
                        if ack.reason.is_error() {
                            return Err(ClientError::Rejected(ack.reason).into());
                        }
                        writer.queue(&Packet::PubRel(Ack::new(
                            ack.packet_id,
                            ReasonCode::Success,
                        )))?;
                    }
                    (Packet::Disconnect(d), _) => {
                        return Err(ClientError::Disconnected(d.reason).into());
                    }
                    (Packet::PingResp, _) => {}
                    (other, _) => return Err(ClientError::Unexpected(packet_name(other)).into()),
                }
                match reader.try_recv()? {
                    Some(next) => packet = next,
                    None => break,
                }
            }
            self.counters.acked.fetch_add(acked, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_spreads_messages_evenly() {
        let start = Instant::now();
        let pace = Pace {
            start,
            per_sec: 1000.0,
        };
        assert_eq!(pace.due(0), start);
        assert_eq!(pace.due(500), start + Duration::from_millis(500));
        assert_eq!(pace.due_by(start), 1);
        assert_eq!(pace.due_by(start + Duration::from_millis(10)), 11);
    }
}
