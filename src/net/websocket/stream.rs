//! The framed byte stream after the upgrade: reads give the payload of the client's
//! binary frames (unmasked as they stream through, control frames answered), writes
//! send binary frames, and shutdown is the closing handshake. Frames for the client
//! wait in a `SendBuffer`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::WsError;
use crate::net::send_buffer::{FramedWrite, SendBuffer, poll_flush_framed, poll_write_framed};

/// Bytes asked of the inner stream per read.
const READ_SIZE: usize = 4096;
/// Payload framed per `poll_write`, so the outgoing buffer stays small.
const WRITE_CHUNK: usize = 16 * 1024;
/// Longest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;
/// Longest wait for the peer's Close frame once ours is sent: a client answers at
/// once (RFC 6455 section 5.5.1), and one that never does must not hold the task.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

pub(super) const OP_CONTINUATION: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Where the reader is within the client's frames.
#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// Between frames: the next bytes are a frame header.
    Header,
    /// Inside a data frame: `remaining` payload bytes, unmasked with `mask` from
    /// payload offset `offset`.
    Payload {
        remaining: u64,
        mask: [u8; 4],
        offset: usize,
    },
    /// The client sent a close frame (answered), or the stream ended.
    Closed,
}

/// A WebSocket server stream: reads give the payload of binary frames, writes send
/// binary frames. See the module documentation.
pub struct WsStream<S> {
    inner: S,
    /// Bytes read from the inner stream and not yet consumed.
    incoming: Vec<u8>,
    consumed: usize,
    /// Frames for the client (data, pong, close).
    outgoing: SendBuffer,
    state: ReadState,
    /// A data message is being continued (the last data frame had no FIN).
    fragmented: bool,
    /// Our Close frame is queued (or sent): nothing else may follow it.
    close_queued: bool,
    /// How long `poll_shutdown` still waits for the peer's Close (armed at its first
    /// call).
    close_wait: Option<Pin<Box<Sleep>>>,
    /// The closing handshake is done and the inner stream shut down.
    shut_down: bool,
}

impl<S> WsStream<S> {
    /// A stream over `inner`; `leftover` is what the client sent after its
    /// upgrade request (its first frames).
    pub(super) fn new(inner: S, leftover: Vec<u8>) -> WsStream<S> {
        WsStream {
            inner,
            incoming: leftover,
            consumed: 0,
            outgoing: SendBuffer::default(),
            state: ReadState::Header,
            fragmented: false,
            close_queued: false,
            close_wait: None,
            shut_down: false,
        }
    }

    /// The allocation holding unread input (0 when idle).
    #[cfg(test)]
    pub(super) fn incoming_capacity(&self) -> usize {
        self.incoming.capacity()
    }

    fn unread(&self) -> &[u8] {
        &self.incoming[self.consumed..]
    }

    fn consume(&mut self, n: usize) {
        self.consumed += n;
        if self.consumed == self.incoming.len() {
            // Idle connections keep no buffer.
            self.incoming = Vec::new();
            self.consumed = 0;
        }
    }

    /// Queues a frame for the client (server frames are not masked).
    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        let out = self.outgoing.queue();
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
    }

    /// Parses one frame header from the unread bytes: `None` until it is complete.
    /// Control frames are taken whole (header and payload) and answered here.
    fn parse_header(&mut self) -> Result<Option<ReadState>, WsError> {
        let buf = self.unread();
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        if b0 & 0x70 != 0 {
            return Err(WsError::Frame("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Frame("client frames must be masked"));
        }
        let (len, mut at) = match b1 & 0x7F {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[at..at + 4]);
        at += 4;
        match opcode {
            OP_BINARY | OP_CONTINUATION => {
                if (opcode == OP_CONTINUATION) != self.fragmented {
                    return Err(WsError::Frame("continuation out of sequence"));
                }
                self.fragmented = !fin;
                self.consume(at);
                Ok(Some(ReadState::Payload {
                    remaining: len,
                    mask,
                    offset: 0,
                }))
            }
            OP_TEXT => Err(WsError::Frame("text frame (MQTT travels in binary frames)")),
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Err(WsError::Frame("fragmented or oversized control frame"));
                }
                let len = len as usize;
                if buf.len() < at + len {
                    return Ok(None);
                }
                let payload: Vec<u8> = buf[at..at + len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4])
                    .collect();
                self.consume(at + len);
                Ok(Some(self.control(opcode, &payload)))
            }
            _ => Err(WsError::Frame("reserved opcode")),
        }
    }

    /// Answers a control frame; returns the state to read on in.
    fn control(&mut self, opcode: u8, payload: &[u8]) -> ReadState {
        match opcode {
            // After our Close no frame may follow (RFC 6455 section 5.5.1).
            OP_PING if !self.close_queued => {
                self.queue_frame(OP_PONG, payload);
                ReadState::Header
            }
            OP_CLOSE => {
                if !self.close_queued {
                    self.close_queued = true;
                    // Echo the status code (RFC 6455 section 5.5.1).
                    let status = payload.get(..2).unwrap_or(&[0x03, 0xE8]).to_vec();
                    self.queue_frame(OP_CLOSE, &status);
                }
                ReadState::Closed
            }
            _ => ReadState::Header,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Reads and drops what the peer still sends until its Close frame, the end of
    /// the stream or an error, for at most `CLOSE_WAIT` from the first call.
    fn poll_peer_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self
            .close_wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_WAIT)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            if matches!(self.state, ReadState::Closed) {
                return Poll::Ready(());
            }
            let mut scratch = [0u8; 512];
            let mut discard = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *self).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Pongs and the close answer go out as soon as the socket takes them.
            this.outgoing.start_drain(cx, &mut this.inner)?;
            match this.state {
                ReadState::Closed => return Poll::Ready(Ok(())),
                ReadState::Payload { remaining: 0, .. } => {
                    // The next frame may already be buffered: parse before reading.
                    this.state = ReadState::Header;
                    continue;
                }
                ReadState::Payload {
                    remaining,
                    mask,
                    offset,
                } if !this.unread().is_empty() => {
                    let n = this
                        .unread()
                        .len()
                        .min(buf.remaining())
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if n == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let start = this.consumed;
                    let unmasked: Vec<u8> = this.incoming[start..start + n]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[(offset + i) % 4])
                        .collect();
                    buf.put_slice(&unmasked);
                    this.consume(n);
                    this.state = ReadState::Payload {
                        remaining: remaining - n as u64,
                        mask,
                        offset: (offset + n) % 4,
                    };
                    return Poll::Ready(Ok(()));
                }
                ReadState::Header => {
                    if let Some(next) = this.parse_header()? {
                        this.state = next;
                        continue;
                    }
                }
                ReadState::Payload { .. } => {}
            }
            // More bytes are needed.
            let mut chunk = [0u8; READ_SIZE];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.state = ReadState::Closed;
                return Poll::Ready(Ok(()));
            }
            this.incoming.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> FramedWrite for WsStream<S> {
    type Inner = S;
    const MAX_CHUNK: usize = WRITE_CHUNK;

    fn send_parts(&mut self) -> (&mut SendBuffer, &mut S) {
        (&mut self.outgoing, &mut self.inner)
    }

    fn close_queued(&self) -> bool {
        self.close_queued
    }

    fn frame(&mut self, _cx: &mut Context<'_>, chunk: &[u8]) -> io::Result<usize> {
        self.queue_frame(OP_BINARY, chunk);
        Ok(chunk.len())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write_framed(self.get_mut(), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_flush_framed(self.get_mut(), cx)
    }

    /// The closing handshake (RFC 6455 sections 5.5.1 and 7.1.1): our Close frame,
    /// then the peer's (waited for at most `CLOSE_WAIT`), then the inner stream's
    /// shutdown. Shutting the socket right after our Close made the client's own
    /// Close hit a closed socket (mqtt.js's `end()` failed with EPIPE).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shut_down {
            return Poll::Ready(Ok(()));
        }
        if !this.close_queued {
            this.close_queued = true;
            this.queue_frame(OP_CLOSE, &1000u16.to_be_bytes());
        }
        ready!(this.outgoing.poll_drain(cx, &mut this.inner))?;
        ready!(this.poll_peer_close(cx));
        ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
        this.shut_down = true;
        Poll::Ready(Ok(()))
    }
}
