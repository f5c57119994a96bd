//! The outgoing side shared by our stream wrappers (`tls_stream`, `websocket`): bytes
//! already framed for the peer (TLS records, WebSocket frames) wait here until the
//! inner stream takes them, in order, and the buffer is released (capacity 0) as soon
//! as it is empty, so an idle connection keeps none. It owns the buffer and the
//! writing of it; what the bytes mean belongs to the stream that queued them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

/// Bytes for the peer, written from `sent` on.
#[derive(Debug, Default)]
pub(crate) struct SendBuffer {
    bytes: Vec<u8>,
    sent: usize,
}

impl SendBuffer {
    /// The buffer to append to: what is appended leaves after everything queued
    /// before it.
    pub(crate) fn queue(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Bytes queued and not yet taken by the inner stream.
    pub(crate) fn pending(&self) -> usize {
        self.bytes.len() - self.sent
    }

    /// Those bytes themselves.
    #[cfg(test)]
    pub(crate) fn unsent(&self) -> &[u8] {
        &self.bytes[self.sent..]
    }

    /// The allocation held (0 when idle).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Writes the queued bytes to `sink` until none are left, then releases the
    /// buffer. Pending while `sink` does not take them.
    pub(crate) fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.bytes.len() {
            let n = ready!(Pin::new(&mut *sink).poll_write(cx, &self.bytes[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        *self = SendBuffer::default();
        Poll::Ready(Ok(()))
    }

    /// Starts sending without waiting: what `sink` does not take now waits for the
    /// next write or flush. Only an error of `sink` is returned.
    pub(crate) fn start_drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut W,
    ) -> io::Result<()> {
        match self.poll_drain(cx, sink) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Drains the buffer, then flushes `sink`.
    pub(crate) fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut W,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx, sink))?;
        Pin::new(sink).poll_flush(cx)
    }
}

/// A stream that frames the caller's bytes into a [`SendBuffer`] in front of an
/// inner stream (TLS records, WebSocket frames). Its `poll_write` and `poll_flush`
/// are [`poll_write_framed`] and [`poll_flush_framed`].
pub(crate) trait FramedWrite {
    type Inner: AsyncWrite + Unpin;
    /// Most plaintext framed per write, so the buffer stays near one frame.
    const MAX_CHUNK: usize;
    fn send_parts(&mut self) -> (&mut SendBuffer, &mut Self::Inner);
    /// Our close is queued: nothing may be written after it.
    fn close_queued(&self) -> bool;
    /// Frames `chunk` into the send buffer; how many of its bytes were taken.
    fn frame(&mut self, cx: &mut Context<'_>, chunk: &[u8]) -> io::Result<usize>;
}

/// The write path of a framing stream: one chunk at a time (earlier output leaves
/// before more is made), and sending starts at once; what the inner stream does
/// not take now waits for the next write or flush.
pub(crate) fn poll_write_framed<T: FramedWrite>(
    this: &mut T,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        return Poll::Ready(Ok(0));
    }
    if this.close_queued() {
        return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
    }
    let (out, inner) = this.send_parts();
    ready!(out.poll_drain(cx, inner))?;
    let written = this.frame(cx, &buf[..buf.len().min(T::MAX_CHUNK)])?;
    let (out, inner) = this.send_parts();
    out.start_drain(cx, inner)?;
    Poll::Ready(Ok(written))
}

/// Drains the send buffer, then flushes the inner stream.
pub(crate) fn poll_flush_framed<T: FramedWrite>(
    this: &mut T,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let (out, inner) = this.send_parts();
    out.poll_flush(cx, inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, duplex};

    #[tokio::test]
    async fn drains_in_order_and_releases_the_buffer() {
        let (mut sink, mut peer) = duplex(8);
        let mut out = SendBuffer::default();
        out.queue().extend_from_slice(b"first ");
        out.queue().extend_from_slice(b"second");
        // The duplex takes 8 bytes: the rest stays queued.
        out.start_drain(
            &mut std::task::Context::from_waker(std::task::Waker::noop()),
            &mut sink,
        )
        .unwrap();
        assert_eq!(out.pending(), 4);
        assert_eq!(out.unsent(), b"cond");
        let (drained, read) = tokio::join!(poll_fn(|cx| out.poll_flush(cx, &mut sink)), async {
            let mut got = vec![0u8; 12];
            peer.read_exact(&mut got).await.map(|_| got)
        });
        drained.unwrap();
        assert_eq!(read.unwrap(), b"first second");
        assert_eq!((out.pending(), out.capacity()), (0, 0));
    }

    /// A toy framing: each chunk of at most 4 bytes, uppercased, behind its length.
    struct Shouting {
        out: SendBuffer,
        inner: tokio::io::DuplexStream,
        closed: bool,
    }

    impl FramedWrite for Shouting {
        type Inner = tokio::io::DuplexStream;
        const MAX_CHUNK: usize = 4;
        fn send_parts(&mut self) -> (&mut SendBuffer, &mut Self::Inner) {
            (&mut self.out, &mut self.inner)
        }
        fn close_queued(&self) -> bool {
            self.closed
        }
        fn frame(&mut self, _cx: &mut Context<'_>, chunk: &[u8]) -> io::Result<usize> {
            let queue = self.out.queue();
            queue.push(chunk.len() as u8);
            queue.extend(chunk.iter().map(u8::to_ascii_uppercase));
            Ok(chunk.len())
        }
    }

    impl AsyncWrite for Shouting {
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
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn writes_are_framed_a_chunk_at_a_time_and_refused_after_close() {
        use tokio::io::AsyncWriteExt;
        let (inner, mut peer) = duplex(64);
        let mut stream = Shouting {
            out: SendBuffer::default(),
            inner,
            closed: false,
        };
        assert_eq!(stream.write(b"").await.unwrap(), 0);
        stream.write_all(b"abcdefghij").await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(stream.out.capacity(), 0, "released once written");
        let mut got = vec![0u8; 13];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"\x04ABCD\x04EFGH\x02IJ");
        stream.closed = true;
        let after_close = stream.write(b"x").await.unwrap_err();
        assert_eq!(after_close.kind(), io::ErrorKind::BrokenPipe);
    }
}
