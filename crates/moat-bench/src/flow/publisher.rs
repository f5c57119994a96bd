//! One publisher of a flow scenario: sends a PUBLISH template until stopped or its
//! count is reached, as fast as it can or at a fixed pace; at QoS 0 in write batches,
//! at QoS 1/2 within a window of unacknowledged messages (the broker's receive
//! maximum at most). It reports through the shared counters.

use super::*;

/// One publisher's work: a PUBLISH template sent until stopped or `max` is reached.
pub(super) struct PublishJob {
    pub(super) template: Publish,
    pub(super) max: u64,
    pub(super) window: u16,
    pub(super) counters: Arc<Counters>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) finished: Arc<AtomicUsize>,
    /// Stamp payloads with their send time.
    pub(super) clock: Option<Clock>,
    /// Messages per second this publisher offers at most (None: as fast as it can).
    pub(super) pace: Option<f64>,
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
    pub(super) async fn run(self, client: Connection) -> Result<(), BenchError> {
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
            // Against a broker that reads as fast as we write, the flush never waits,
            // and a publisher would keep the thread for tokio's whole budget (128
            // writes, ~2 MB) before the runtime looks at the sockets again: the
            // generator's own subscriber, waiting there, read one receive buffer per
            // 8 such turns (17 000 of 2.6 M msg/s on one core, BENCHMARKS.md). One
            // batch, then let it and the other publishers have their turn.
            tokio::task::yield_now().await;
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
    use bytes::BytesMut;
    use moat_client::{ConnectOptions, Endpoint};
    use moat_protocol::{Codec, ConnAck, Role};
    use tokio::io::AsyncWriteExt;

    /// A connection whose writes never wait: a pipe far bigger than the run, with
    /// the broker's CONNACK already in it, as against a broker that reads as fast
    /// as it is written to.
    async fn never_full_connection() -> (Connection, tokio::io::DuplexStream) {
        let (near, mut far) = tokio::io::duplex(8 << 20);
        let options = ConnectOptions::new(
            Endpoint::tcp("127.0.0.1:1".parse().unwrap()),
            "publisher-test",
        );
        let mut codec = Codec::new(Role::Server, 1 << 20);
        codec.set_version(options.protocol);
        let mut connack = BytesMut::new();
        codec
            .encode(
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason: ReasonCode::Success,
                    properties: Properties::default(),
                }),
                &mut connack,
            )
            .unwrap();
        far.write_all(&connack).await.unwrap();
        let connection = Connection::login_over(Box::new(near), &options)
            .await
            .unwrap();
        (connection, far)
    }

    /// The regression of ffeed3a: a QoS 0 publisher whose flushes never wait must
    /// still let the generator's other tasks (its subscriber) run between batches.
    /// Counted, not timed: on one thread, another task records how far the
    /// publisher had got each time it ran. Without the yield it runs only before
    /// the first batch and after the last (64 flushes are within tokio's budget).
    #[tokio::test(flavor = "current_thread")]
    async fn a_qos0_publisher_lets_other_tasks_run_between_batches() {
        const BATCHES: u64 = 64;
        let (connection, _far) = never_full_connection().await;
        let template = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "bench/by/0".into(),
            packet_id: 0,
            payload: Bytes::from(vec![0u8; 64]),
            properties: Properties::default(),
        };
        let size = template.payload.len() + template.topic.len() + 8;
        let batch = (WRITE_BATCH_BYTES / size).clamp(1, 256) as u64;
        let counters = Arc::new(Counters::default());
        let job = PublishJob {
            template,
            max: BATCHES * batch,
            window: 0,
            counters: counters.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            finished: Arc::new(AtomicUsize::new(0)),
            clock: None,
            pace: None,
        };
        let publisher = tokio::spawn(job.run(connection));
        let watched = counters.clone();
        let watcher = tokio::spawn(async move {
            let mut seen_mid_run = 0u64;
            loop {
                let sent = watched.sent.load(Ordering::Relaxed);
                if sent >= BATCHES * batch {
                    return seen_mid_run;
                }
                if sent > 0 {
                    seen_mid_run += 1;
                }
                tokio::task::yield_now().await;
            }
        });
        publisher.await.unwrap().unwrap();
        let seen_mid_run = watcher.await.unwrap();
        assert_eq!(counters.sent.load(Ordering::Relaxed), BATCHES * batch);
        assert!(
            seen_mid_run >= BATCHES / 2,
            "the other task ran {seen_mid_run} times during {BATCHES} batches"
        );
    }

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
