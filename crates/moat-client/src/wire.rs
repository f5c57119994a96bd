//! What a broker makes a client read: a byte stream wrapper (under TLS, over TCP) that
//! counts the bytes and read calls a connection receives and, for TLS, the records
//! (RFC 8446 section 5.1: a 5-byte header whose last two bytes are the length). The
//! counts are shared by every connection of one group (a load generator's
//! subscribers, say); it neither buffers nor changes a byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// TLS record header: content type, legacy version (2 bytes), length (2 bytes).
const TLS_HEADER: usize = 5;

/// Totals over a group of connections.
#[derive(Debug, Default)]
pub struct WireCount {
    pub bytes: AtomicU64,
    pub reads: AtomicU64,
    pub tls_records: AtomicU64,
}

/// A copy of the totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WireSnapshot {
    pub bytes: u64,
    pub reads: u64,
    pub tls_records: u64,
}

impl WireCount {
    pub fn snapshot(&self) -> WireSnapshot {
        WireSnapshot {
            bytes: self.bytes.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            tls_records: self.tls_records.load(Ordering::Relaxed),
        }
    }
}

/// Follows TLS record boundaries in a byte stream read in arbitrary pieces.
#[derive(Debug, Default)]
struct RecordSplitter {
    header: [u8; TLS_HEADER],
    header_len: usize,
    body_left: usize,
}

impl RecordSplitter {
    /// Consumes `bytes`; returns how many record headers completed in them.
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut records = 0;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (TLS_HEADER - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == TLS_HEADER {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header_len = 0;
                records += 1;
            }
        }
        records
    }
}

/// A stream whose reads are counted into a shared [`WireCount`].
pub(crate) struct Counted<S> {
    inner: S,
    count: Arc<WireCount>,
    records: Option<RecordSplitter>,
}

impl<S> Counted<S> {
    /// `tls`: the stream carries TLS records (count them too).
    pub(crate) fn new(inner: S, count: Arc<WireCount>, tls: bool) -> Counted<S> {
        Counted {
            inner,
            count,
            records: tls.then(RecordSplitter::default),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let outcome = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = outcome {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.count.reads.fetch_add(1, Ordering::Relaxed);
                this.count
                    .bytes
                    .fetch_add(new.len() as u64, Ordering::Relaxed);
                if let Some(splitter) = &mut this.records {
                    let records = splitter.feed(new);
                    this.count.tls_records.fetch_add(records, Ordering::Relaxed);
                }
            }
        }
        outcome
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn record(len: u16) -> Vec<u8> {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&len.to_be_bytes());
        r.extend(std::iter::repeat_n(0xab, usize::from(len)));
        r
    }

    #[test]
    fn splits_records_read_in_any_pieces() {
        let stream: Vec<u8> = [record(10), record(0), record(300)].concat();
        for piece in [1, 3, 5, 7, 64, stream.len()] {
            let mut splitter = RecordSplitter::default();
            let total: u64 = stream.chunks(piece).map(|c| splitter.feed(c)).sum();
            assert_eq!(total, 3, "pieces of {piece}");
            assert_eq!((splitter.header_len, splitter.body_left), (0, 0));
        }
    }

    #[tokio::test]
    async fn counts_bytes_reads_and_records() {
        let (mut near, far) = tokio::io::duplex(4096);
        let count = Arc::new(WireCount::default());
        let mut counted = Counted::new(far, Arc::clone(&count), true);
        let data = [record(20), record(40)].concat();
        near.write_all(&data).await.unwrap();
        drop(near);
        let mut got = Vec::new();
        counted.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        let seen = count.snapshot();
        assert_eq!(seen.bytes, data.len() as u64);
        assert_eq!(seen.tls_records, 2);
        assert!(seen.reads >= 1);
    }
}
