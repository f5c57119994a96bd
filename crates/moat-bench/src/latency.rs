//! End-to-end latency at a fixed offered rate: one publisher, one subscriber, both in
//! this process. Each payload carries its send time (nanoseconds since a shared
//! `Instant`) and a sequence number; the subscriber records now - send time for every
//! message sent inside the measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::client::{Target, payload_stamp, subscribe};
use super::flow::connect_all;
use super::histogram::Samples;
use super::options::LatencyArgs;
use super::report::{LatencyResult, Measured, Report};
use super::{BenchError, joined, run_tag};
use moat_client::{ClientError, Connection, PacketReader, PacketWriter, packet_name};
use moat_protocol::{Ack, Packet, Properties, Publish, QoS, ReasonCode};

const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// How long the subscriber waits for stragglers after the publisher is done.
const DRAIN: Duration = Duration::from_secs(2);
/// Unacknowledged publications the publisher allows before it sends late.
const MAX_IN_FLIGHT: u16 = 20;

pub(crate) async fn run(args: &LatencyArgs) -> Result<Report, BenchError> {
    let target = Target::from_args(&args.common)?;
    let tag = run_tag();
    target.warm_up().await?;
    let topic = format!("{}/{tag}/lat", args.common.topic_prefix);

    let mut subscriber = connect_all(&target, &format!("ls-{tag}"), 1, 0).await?;
    let mut publisher = connect_all(&target, &format!("lp-{tag}"), 1, 1).await?;
    let (Some(mut subscriber), Some(publisher)) = (subscriber.pop(), publisher.pop()) else {
        return Err(BenchError::Task("no client".into()));
    };
    subscribe(&mut subscriber, &topic, args.qos).await?;

    let base = Instant::now();
    let window_start = base + args.warmup;
    let window_end = window_start + args.duration;
    let capacity = (u64::from(args.rate) * args.duration.as_secs().saturating_add(1)) as usize;
    let stop = Arc::new(AtomicBool::new(false));

    let (reader, writer) = subscriber.split();
    let sub_task = tokio::spawn(measure(
        reader,
        writer,
        base,
        window_start.duration_since(base),
        args.duration,
        capacity,
        Arc::clone(&stop),
    ));

    let window = MAX_IN_FLIGHT.min(publisher.receive_maximum()).max(1);
    let send = Sender {
        qos: args.qos,
        topic,
        payload: args.payload,
        period: Duration::from_secs_f64(1.0 / f64::from(args.rate)),
        base,
        window,
    };
    let (sent, sent_in_window) = send.run(publisher, window_start, window_end).await?;

    tokio::time::sleep(DRAIN).await;
    stop.store(true, Ordering::Relaxed);
    let (samples, received) = joined(sub_task.await)?;
    Ok(Report {
        scenario: "latency",
        target: target.addr().to_string(),
        tls: target.is_tls(),
        protocol: target.protocol.level(),
        result: Measured::Latency(LatencyResult {
            qos: args.qos as u8,
            payload_bytes: args.payload,
            offered_per_sec: args.rate,
            sent_per_sec: sent_in_window as f64 / args.duration.as_secs_f64(),
            sent,
            received,
            latency: samples.percentiles(),
        }),
    })
}

struct Sender {
    qos: QoS,
    topic: String,
    payload: usize,
    period: Duration,
    base: Instant,
    window: u16,
}

impl Sender {
    /// Sends on schedule (late sends go out at once) until `end`; returns the total
    /// sent and the number sent inside the window.
    async fn run(
        &self,
        client: Connection,
        window_start: Instant,
        end: Instant,
    ) -> Result<(u64, u64), BenchError> {
        let (mut reader, mut writer) = client.split();
        let mut in_flight = vec![false; usize::from(u16::MAX) + 1];
        let mut open = 0u16;
        let mut next_id = 0u16;
        let mut sent = 0u64;
        let mut in_window = 0u64;
        let mut due = self.base;
        let mut buffer = BytesMut::with_capacity(self.payload);
        while due < end {
            let can_send = open < self.window;
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()), if can_send => {
                    let packet_id = if self.qos == QoS::AtMostOnce {
                        0
                    } else {
                        next_id = if next_id == u16::MAX { 1 } else { next_id + 1 };
                        if in_flight[usize::from(next_id)] {
                            return Err(ClientError::Unexpected("packet id still in flight").into());
                        }
                        in_flight[usize::from(next_id)] = true;
                        open += 1;
                        next_id
                    };
                    let now = Instant::now();
                    buffer.clear();
                    buffer.put_u64(now.duration_since(self.base).as_nanos() as u64);
                    buffer.put_u64(sent);
                    buffer.resize(self.payload, 0x5a);
                    let publish = Publish {
                        dup: false,
                        qos: self.qos,
                        retain: false,
                        topic: self.topic.as_str().into(),
                        packet_id,
                        payload: Bytes::copy_from_slice(&buffer),
                        properties: Properties::default(),
                    };
                    writer.queue(&Packet::Publish(publish))?;
                    writer.flush().await?;
                    sent += 1;
                    if now >= window_start && now < end {
                        in_window += 1;
                    }
                    due += self.period;
                }
                packet = reader.recv() => {
                    let packet = packet?.ok_or(ClientError::Closed)?;
                    self.on_ack(packet, &mut in_flight, &mut open, &mut writer)?;
                    while let Some(packet) = reader.try_recv()? {
                        self.on_ack(packet, &mut in_flight, &mut open, &mut writer)?;
                    }
                    writer.flush().await?;
                }
            }
        }
        while open > 0 {
            let packet = tokio::time::timeout(ACK_TIMEOUT, reader.recv())
                .await
                .map_err(|_| ClientError::Timeout("acknowledgements"))??
                .ok_or(ClientError::Closed)?;
            self.on_ack(packet, &mut in_flight, &mut open, &mut writer)?;
            writer.flush().await?;
        }
        Ok((sent, in_window))
    }

    fn on_ack(
        &self,
        packet: Packet,
        in_flight: &mut [bool],
        open: &mut u16,
        writer: &mut PacketWriter,
    ) -> Result<(), BenchError> {
        match (packet, self.qos) {
            (Packet::PubAck(ack), QoS::AtLeastOnce) | (Packet::PubComp(ack), QoS::ExactlyOnce) => {
                let slot = &mut in_flight[usize::from(ack.packet_id)];
                if ack.reason.is_error() {
                    return Err(ClientError::Rejected(ack.reason).into());
                }
                if !*slot {
                    return Err(
                        ClientError::Unexpected("acknowledgement of an unknown packet id").into(),
                    );
                }
                *slot = false;
                *open -= 1;
                Ok(())
            }
            (Packet::PubRec(ack), QoS::ExactlyOnce) => Ok(writer.queue(&Packet::PubRel(
                Ack::new(ack.packet_id, ReasonCode::Success),
            ))?),
            (Packet::Disconnect(d), _) => Err(ClientError::Disconnected(d.reason).into()),
            (Packet::PingResp, _) => Ok(()),
            (other, _) => Err(ClientError::Unexpected(packet_name(&other)).into()),
        }
    }
}

/// The subscriber: records the latency of every message sent inside the window.
async fn measure(
    mut reader: PacketReader,
    mut writer: PacketWriter,
    base: Instant,
    window_from: Duration,
    window_len: Duration,
    capacity: usize,
    stop: Arc<AtomicBool>,
) -> Result<(Samples, u64), BenchError> {
    let from = window_from.as_nanos() as u64;
    let to = (window_from + window_len).as_nanos() as u64;
    let mut samples = Samples::with_capacity(capacity);
    let mut received = 0u64;
    loop {
        let packet = match tokio::time::timeout(POLL, reader.recv()).await {
            Err(_) if stop.load(Ordering::Relaxed) => return Ok((samples, received)),
            Err(_) => continue,
            Ok(packet) => packet?,
        };
        let Some(packet) = packet else {
            return Err(ClientError::Closed.into());
        };
        let now = Instant::now().duration_since(base).as_nanos() as u64;
        if let Some(p) = writer.answer(packet)? {
            received += 1;
            let sent_at = payload_stamp(&p)?;
            if (from..to).contains(&sent_at) {
                samples.record(now.saturating_sub(sent_at) / 1000);
            }
        }
        if writer.queued_bytes() > 0 {
            writer.flush().await?;
        }
    }
}
