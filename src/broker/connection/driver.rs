//! The I/O loop of an established connection: reads and decodes packets and hands
//! them to the handler, tells the broker's keepalive sweeper when the client was
//! last heard from, obeys a kick (takeover, reload, shutdown, keepalive), pauses a
//! publisher while a subscriber it filled drains (backpressure), and writes the answers in arrival order (each once what it
//! acknowledges is durable) together with what the session's mailbox holds, in
//! as few writes as it can. It closes with the right reason code on a malformed
//! packet or a protocol violation. What a packet means is the handler's.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use moat_protocol::{
    AckKind, Codec, Disconnect, Packet, Properties, ProtocolVersion, PublishRef, QoS, ReasonCode,
};

use crate::broker::backpressure;
use crate::broker::journal::{Durable, Reservation, refusal_reason};
use crate::broker::mailbox::{Message, Outbound};

use super::handler::Handled;
use super::{Connection, End, Reply, Violation};

/// Read buffer growth step; the codec bounds the total by the maximum packet size.
pub(super) const READ_CHUNK: usize = 8 * 1024;
/// What an idle connection reads at once, into the stack: most connections are idle
/// most of the time, and 10 000 of them must fit in a Pi's memory, so none keeps a
/// read buffer while it waits.
pub(super) const IDLE_READ_CHUNK: usize = 1024;
/// Answers gathered from one read before they are written.
const REPLY_BATCH: usize = 256;
/// Write buffers bigger than this are dropped when the connection goes idle.
const IDLE_BUFFER_KEEP: usize = 16 * 1024;

/// How a batched write to the client ended.
enum Written {
    Done(std::io::Result<()>),
    Kicked(ReasonCode),
}

/// Why [`Connection::handle_buffered`] returned.
enum Turn {
    /// Everything read was handled.
    Drained,
    /// Answers are due, or a subscriber's queue overflowed: the rest waits.
    Paused,
    End(End),
    /// The store's write queue is full: this packet waits for room.
    QueueFull(Box<Packet>),
    Violation(Violation),
}

/// Polls `future` once: its output if it is ready now, `None` if it would wait.
async fn poll_once<F: Future>(mut future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// Reads what `stream` has, at most `limit` bytes, and appends it to `rbuf`;
/// `Ok(0)` at its end. The read goes into a buffer on the stack that exists only
/// for the duration of one poll, so a connection waiting for input holds no read
/// buffer (`net::tls_stream` does the same for TLS records).
fn read_some<'a, S>(
    stream: &'a mut S,
    rbuf: &'a mut BytesMut,
    limit: usize,
) -> impl Future<Output = std::io::Result<usize>> + 'a
where
    S: AsyncRead + Unpin,
{
    std::future::poll_fn(move |cx| {
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk[..limit.min(READ_CHUNK)]);
        std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        rbuf.extend_from_slice(read.filled());
        std::task::Poll::Ready(Ok(read.filled().len()))
    })
}

impl Connection {
    /// Runs the established connection until it ends, and says why. A plain `fn`
    /// around an `async move` block: an `async fn` would keep its four arguments
    /// twice in every connection's task (rust-lang/rust#62958).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice"
    )]
    pub(super) fn run<'a, S>(
        &'a mut self,
        stream: &'a mut S,
        codec: &'a mut Codec,
        rbuf: &'a mut BytesMut,
    ) -> impl Future<Output = End> + Send + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        async move {
            let mut wbuf = BytesMut::new();
            // Read up to READ_CHUNK at once only while reads fill what they could take.
            let mut busy = false;
            let mut outbound = Vec::new();
            // The broker's one keepalive sweeper kicks the connection when the client
            // has been silent for its grace (no timer in this task).
            self.broker
                .keepalive()
                .watch(&self.kick, Instant::now(), self.keepalive_grace);
            // `rbuf` may hold packets not yet handled.
            let mut buffered = !rbuf.is_empty();
            loop {
                // Answer what was read, then drain the mailbox, in one write.
                if self.flush_replies(codec, &mut wbuf).await {
                    let _ = stream.write_all(&wbuf).await;
                    return End::Abnormal(
                    "durable write refused: an MQTT 3.1.1 client cannot be told, so the connection closes unacknowledged".into(),
                );
                }
                self.fill_from_mailbox(codec, &mut outbound, &mut wbuf)
                    .await;
                if !wbuf.is_empty() {
                    let written = {
                        let mut write = std::pin::pin!(async {
                            stream.write_all(&wbuf).await?;
                            stream.flush().await
                        });
                        match poll_once(write.as_mut()).await {
                            Some(result) => Written::Done(result),
                            None => {
                                // The socket does not take it all now: the client is
                                // behind, which publishers of QoS 0 need not wait for.
                                self.session.mailbox.set_writer_blocked(true);
                                let written = tokio::select! {
                                    result = &mut write => Written::Done(result),
                                    reason = self.kick.kicked() => Written::Kicked(reason),
                                };
                                self.session.mailbox.set_writer_blocked(false);
                                written
                            }
                        }
                    };
                    match written {
                        Written::Done(Ok(())) => {}
                        Written::Done(Err(e)) => {
                            return End::Abnormal(format!("write failed: {e}"));
                        }
                        Written::Kicked(ReasonCode::KeepAliveTimeout) => {
                            return End::Abnormal("client stopped reading (keepalive)".into());
                        }
                        Written::Kicked(reason) => {
                            return Box::pin(self.kicked(stream, codec, reason)).await;
                        }
                    }
                    wbuf.clear();
                    if wbuf.capacity() > IDLE_BUFFER_KEEP {
                        wbuf = BytesMut::new();
                    }
                }
                if !buffered {
                    // An idle connection waits with no read buffer at all (it reads
                    // into the stack, see `read_some`); a busy one keeps its buffer.
                    if rbuf.is_empty() && (!busy || rbuf.capacity() > READ_CHUNK) {
                        *rbuf = BytesMut::new();
                    }
                    // The kick's bare `Notified`, not `Kick::kicked` (24 bytes more in
                    // every idle task): a kick sets its reason before it notifies.
                    tokio::select! {
                        () = self.kick.notified() => {
                            if let Some(reason) = self.kick.reason() {
                                return Box::pin(self.kicked(stream, codec, reason)).await;
                            }
                        }
                        read = read_some(stream, rbuf, if busy { READ_CHUNK } else { IDLE_READ_CHUNK }) => match read {
                            Ok(0) => return End::Abnormal("connection closed without DISCONNECT".into()),
                            Ok(n) => {
                                self.broker.keepalive().heard(&self.kick, Instant::now(), self.keepalive_grace);
                                busy = n >= if busy { READ_CHUNK } else { IDLE_READ_CHUNK };
                                buffered = true;
                            }
                            Err(e) => return End::Abnormal(format!("read failed: {e}")),
                        },
                        _ = self.session.mailbox.ready() => {}
                    }
                }
                if !buffered {
                    continue;
                }
                // Handle what was read until a batch of answers is due or a subscriber's
                // queue overflowed; the rest stays buffered for the next turn (which reads
                // nothing new until it is handled).
                buffered = false;
                loop {
                    match self.handle_buffered(codec, rbuf) {
                        Turn::Drained => break,
                        Turn::Paused => {
                            buffered = true;
                            break;
                        }
                        Turn::End(end) => return end,
                        Turn::QueueFull(packet) => {
                            match Box::pin(self.handle_when_reserved(*packet)).await {
                                Ok(None) => {}
                                Ok(Some(end)) => return end,
                                Err(Violation(reason, why)) => {
                                    self.flush_replies(codec, &mut wbuf).await;
                                    return Box::pin(
                                        self.violation(stream, codec, &mut wbuf, reason, why),
                                    )
                                    .await;
                                }
                            }
                        }
                        Turn::Violation(Violation(reason, why)) => {
                            self.flush_replies(codec, &mut wbuf).await;
                            return Box::pin(self.violation(stream, codec, &mut wbuf, reason, why))
                                .await;
                        }
                    }
                }
                if let Some(full) = self.congested.take() {
                    Box::pin(backpressure::wait_for_drain(&full, &self.broker.stats)).await;
                }
            }
        }
    }

    /// Handles what was read until it runs out, a batch of answers is due or a
    /// subscriber's queue overflowed, or a packet must wait for room in the store's
    /// write queue; says which. Not async: nothing here waits, and what it holds
    /// (a decoded packet, reserved room) stays out of the connection's task.
    fn handle_buffered(&mut self, codec: &mut Codec, rbuf: &mut BytesMut) -> Turn {
        // Room in the store's write queue, reserved for a packet that may change
        // durable state and, when that packet recorded nothing (a QoS 1 message no
        // persistent session takes), kept for the next one: reserving and releasing
        // it cost ~280 instructions of the ~9 000 a QoS 1 message cost (BENCHMARKS.md).
        // Released on return.
        let mut room = Reservation::NONE;
        loop {
            if self.congested.is_some() {
                return Turn::Paused;
            }
            // The subscriber's acknowledgements first, together (see `acks`).
            self.settle_acks(codec, rbuf, REPLY_BATCH);
            if self.replies.len() >= REPLY_BATCH {
                return Turn::Paused;
            }
            let handled = match codec.decode(rbuf) {
                Ok(Some(packet)) => self.try_handle(packet, &mut room),
                Ok(None) => return Turn::Drained,
                Err(e) => {
                    tracing::info!(client_id = %self.session.client_id, error = %e, "malformed packet");
                    return Turn::Violation(Violation(e.reason_code(), "malformed packet"));
                }
            };
            match handled {
                Handled::Done(Ok(None)) => {}
                Handled::Done(Ok(Some(end))) => return Turn::End(end),
                Handled::Done(Err(violation)) => return Turn::Violation(violation),
                Handled::QueueFull(packet) => return Turn::QueueFull(packet),
            }
        }
    }

    async fn kicked<S>(&self, stream: &mut S, codec: &mut Codec, reason: ReasonCode) -> End
    where
        S: AsyncWrite + Unpin,
    {
        let _ = self.send_disconnect(stream, codec, reason, None).await;
        if reason == ReasonCode::KeepAliveTimeout {
            return End::Abnormal("keepalive timeout".into());
        }
        End::Abnormal(format!("closed by the broker: {reason:?}"))
    }

    async fn violation<S>(
        &self,
        stream: &mut S,
        codec: &mut Codec,
        wbuf: &mut BytesMut,
        reason: ReasonCode,
        why: &'static str,
    ) -> End
    where
        S: AsyncWrite + Unpin,
    {
        // Whatever was already answered goes out first.
        let _ = stream.write_all(wbuf).await;
        wbuf.clear();
        let _ = self.send_disconnect(stream, codec, reason, Some(why)).await;
        End::Abnormal(format!("protocol violation {reason:?}: {why}"))
    }

    async fn send_disconnect<S>(
        &self,
        stream: &mut S,
        codec: &mut Codec,
        reason: ReasonCode,
        why: Option<&str>,
    ) -> std::io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        if self.version == ProtocolVersion::V5 {
            let mut out = BytesMut::new();
            let packet = Packet::Disconnect(Disconnect {
                reason,
                properties: Properties {
                    reason_string: why.map(str::to_owned),
                    ..Properties::default()
                },
            });
            if codec.encode(&packet, &mut out).is_ok() {
                // A peer that stopped reading must not hold the connection open.
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        Ok(())
    }

    /// Sends `packet` in its turn.
    pub(super) fn reply(&mut self, packet: Packet) {
        self.reply_after(Durable::default(), packet);
    }

    /// Sends `packet` in its turn, once what it acknowledges is durable.
    pub(super) fn reply_after(&mut self, durable: Durable, packet: Packet) {
        self.replies
            .push_back((durable, Reply::Packet(Box::new(packet))));
    }

    /// Sends a PUBACK, PUBREC, PUBREL or PUBCOMP (without properties) in its turn.
    pub(super) fn ack(&mut self, kind: AckKind, packet_id: u16, reason: ReasonCode) {
        self.ack_after(Durable::default(), kind, packet_id, reason);
    }

    /// [`Connection::ack`] once what it acknowledges is durable.
    pub(super) fn ack_after(
        &mut self,
        durable: Durable,
        kind: AckKind,
        packet_id: u16,
        reason: ReasonCode,
    ) {
        self.replies
            .push_back((durable, Reply::Ack(kind, packet_id, reason)));
    }

    /// Encodes the answers in order, waiting for each one's commit. A failed commit
    /// (disk full) turns a v5 acknowledgement into the refusal it has become. MQTT
    /// 3.1.1 and 3.1 have no negative PUBACK/PUBREC, and a plain one would claim the
    /// message is safe: that acknowledgement is withheld and `true` returned, so the caller
    /// closes the connection and the client sends the message again later
    /// (MQTT-4.4.0-1).
    async fn flush_replies(&mut self, codec: &mut Codec, wbuf: &mut BytesMut) -> bool {
        let mut withheld = false;
        loop {
            // Only the commit is held across the wait, not the packet: this future
            // is part of every connection's task and should stay small.
            let refused = match self.replies.front_mut() {
                None => return withheld,
                Some((durable, _)) => durable.await.err(),
            };
            let Some((_, mut reply)) = self.replies.pop_front() else {
                return withheld;
            };
            if let Some(e) = refused {
                tracing::warn!(client_id = %self.session.client_id, error = %e, "durable write refused");
                if let Reply::Ack(AckKind::PubAck | AckKind::PubRec, _, reason) = &mut reply {
                    if self.version != ProtocolVersion::V5 {
                        withheld = true;
                        continue;
                    }
                    *reason = refusal_reason(&e);
                }
            }
            let encoded = match reply {
                Reply::Ack(kind, packet_id, reason) => {
                    codec.encode_ack(kind, packet_id, reason, wbuf)
                }
                Reply::Packet(packet) => codec.encode(&packet, wbuf),
            };
            if let Err(e) = encoded {
                tracing::debug!(client_id = %self.session.client_id, error = %e, "packet not sent");
            }
        }
    }

    /// Encodes what the mailbox lets us send now. A persistent session's new QoS 2
    /// message is recorded in flight, under its packet id, before it is sent: a
    /// resend after a crash must reuse that id or the client would see it twice.
    async fn fill_from_mailbox(
        &mut self,
        codec: &mut Codec,
        outbound: &mut Vec<Outbound>,
        wbuf: &mut BytesMut,
    ) {
        let now = Instant::now();
        let persistent = self.session.is_persistent();
        // The journal's futures are boxed: only persistent sessions wait on them,
        // and inline they would size every connection's task.
        let room = if persistent {
            Box::pin(self.broker.journal().reserve()).await
        } else {
            Reservation::NONE
        };
        if let Some(over) = self.session.mailbox.drain(now, outbound) {
            backpressure::caught_up(&self.broker.stats, &self.session, &over);
        }
        if persistent {
            Box::pin(
                self.broker
                    .record_sent(&self.session, outbound, now, room)
                    .settle("in-flight state"),
            )
            .await;
        }
        let mut sent = [0u64; 3];
        let mut bytes = 0usize;
        for item in outbound.drain(..) {
            match item {
                Outbound::Publish {
                    packet_id,
                    dup,
                    message,
                } => {
                    let qos = message.qos;
                    bytes += message.payload().len();
                    let publish = outgoing_publish(packet_id, dup, &message, now);
                    if let Err(e) = codec.encode_publish(&publish, wbuf) {
                        // Too large for the client: drop it (MQTT-3.1.2-25), and free
                        // its slot in the window.
                        tracing::debug!(client_id = %self.session.client_id, error = %e, "message not delivered");
                        self.broker.stats.dropped_too_large();
                        if qos != QoS::AtMostOnce {
                            self.session.mailbox.complete(packet_id);
                        }
                        continue;
                    }
                    sent[qos as usize] += 1;
                }
                Outbound::PubRel { packet_id } => {
                    let encoded =
                        codec.encode_ack(AckKind::PubRel, packet_id, ReasonCode::Success, wbuf);
                    if let Err(e) = encoded {
                        tracing::debug!(client_id = %self.session.client_id, error = %e, "PUBREL not sent");
                    }
                }
            }
        }
        if sent.iter().any(|n| *n > 0) {
            self.broker.stats.sent(sent, bytes);
        }
    }
}

/// The PUBLISH for one subscriber, borrowed from the message every subscriber
/// shares: its QoS, flags, subscription identifiers and remaining expiry.
fn outgoing_publish(packet_id: u16, dup: bool, message: &Message, now: Instant) -> PublishRef<'_> {
    let message_expiry_interval = message.expires_at().map(|expires_at| {
        let left = expires_at.saturating_duration_since(now).as_secs();
        u32::try_from(left.max(1)).unwrap_or(u32::MAX)
    });
    PublishRef {
        dup,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic(),
        packet_id,
        payload: message.payload(),
        properties: message.properties(),
        subscription_identifiers: message.subscription_ids.as_slice(),
        message_expiry_interval,
    }
}
