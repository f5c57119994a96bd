//! One subscriber of a flow scenario: counts the PUBLISHes it reads, answers the
//! QoS 1/2 flow, optionally reads at a fixed pace (the slow subscriber) and keeps
//! latency samples from stamped payloads. It reports through the shared counters.

use super::*;

/// A subscriber's settings.
pub(super) struct Receiver {
    pub(super) counters: Arc<Counters>,
    pub(super) stop: Arc<AtomicBool>,
    /// Read at most this many messages per second (the slow subscriber).
    pub(super) pace: Option<u32>,
    /// Payloads carry send times: keep up to `samples` latencies.
    pub(super) clock: Option<Clock>,
    pub(super) samples: usize,
}

impl Receiver {
    /// Counts PUBLISHes and answers the QoS 1/2 flow, until told to stop; returns
    /// the latency samples (none without a clock).
    pub(super) async fn run(
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
