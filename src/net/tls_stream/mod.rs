//! A server-side TLS stream over rustls' unbuffered API, so that moat owns every
//! buffer: ciphertext read from the socket, ciphertext waiting to be written, and
//! decrypted bytes the caller has not taken yet. Each is allocated only while it
//! holds data and released (capacity 0) as soon as it is empty, so an idle connection
//! keeps no buffer at all (rustls' buffered connection keeps a 4 KiB read buffer
//! forever). It owns the record I/O and the handshake's mechanics; which server
//! configuration a ClientHello gets, and what a certificate means, belong to
//! `net::tls`, and it knows nothing of MQTT.
//!
//! The record-level helpers (buffer sizing, the first record, the ClientHello
//! peek, writing into rustls' output) are in `records`; the outgoing ciphertext
//! waits in `net::send_buffer`.

mod records;
#[cfg(test)]
mod tests;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{AppDataRecord, ConnectionState, UnbufferedStatus};
use rustls::{ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::send_buffer::{FramedWrite, SendBuffer, poll_flush_framed, poll_write_framed};
use records::{
    MAX_FRAGMENT_LEN, MAX_INCOMING, append, first_record_complete, hello_signature_schemes,
    reserve_read_space,
};

/// Plaintext encrypted per `poll_write`, so the outgoing buffer stays near one record.
const WRITE_CHUNK: usize = MAX_FRAGMENT_LEN;

/// A TLS server connection over a TCP socket; see the module documentation.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read from the socket; rustls has discarded `incoming[..discarded]`.
    /// During a handshake rustls may keep processed bytes after that (to join a
    /// message split over records), so only as much as it says is ever dropped.
    /// Discarding advances the offset (the buffer is compacted before the next
    /// socket read), not a copy per record.
    incoming: Vec<u8>,
    discarded: usize,
    /// Ciphertext for the peer.
    outgoing: SendBuffer,
    /// Decrypted bytes that did not fit the caller's buffer, read from `taken` on.
    plaintext: Vec<u8>,
    taken: usize,
    /// The peer sent close_notify: reads return end of file.
    peer_closed: bool,
    /// We queued our close_notify.
    close_queued: bool,
    /// rustls reported an error: its state must not be driven again (it would
    /// process the same bad bytes and queue a second fatal alert).
    failed: bool,
}

/// What to do with the connection once it may send application data.
enum Outgoing<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Where [`TlsStream::drive`] stopped.
#[derive(Debug, PartialEq)]
enum Stop {
    /// The handshake needs more bytes from the peer.
    NeedInput,
    /// Application data may be sent (and, the handshake done, received); the
    /// number is how much of `Outgoing::Data` was encrypted.
    Open(usize),
    /// Both sides sent close_notify.
    Closed,
}

impl TlsStream {
    /// Runs a server handshake on `tcp`. `choose` picks the configuration from the
    /// signature schemes of the ClientHello, or gets `None` when the first record
    /// does not hold a whole ClientHello.
    pub async fn accept(
        mut tcp: TcpStream,
        choose: impl FnOnce(Option<&[SignatureScheme]>) -> Arc<ServerConfig>,
    ) -> io::Result<TlsStream> {
        // Read the first record ourselves, let a throwaway Acceptor parse a copy for
        // the configuration choice, and hand the same bytes to the real connection.
        let mut incoming = Vec::new();
        while !first_record_complete(&incoming) {
            reserve_read_space(&mut incoming)?;
            if tcp.read_buf(&mut incoming).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                ));
            }
        }
        let config = choose(hello_signature_schemes(&incoming).as_deref());
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut stream = TlsStream {
            tcp,
            conn,
            incoming,
            discarded: 0,
            outgoing: SendBuffer::default(),
            plaintext: Vec::new(),
            taken: 0,
            peer_closed: false,
            close_queued: false,
            failed: false,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The verified client certificate chain, leaf first, if the client sent one.
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let stop = match self.drive(None, Outgoing::Nothing) {
                Ok(stop) => stop,
                Err(e) => return Poll::Ready(Err(self.fail(cx, e))),
            };
            // Our flight goes out before we wait for the peer's (and the session
            // tickets after the last one, so the stream starts with nothing queued).
            ready!(self.outgoing.poll_drain(cx, &mut self.tcp))?;
            match stop {
                Stop::Open(_) if !self.conn.is_handshaking() => return Poll::Ready(Ok(())),
                Stop::Closed => return Poll::Ready(Err(handshake_closed())),
                _ if self.peer_closed => return Poll::Ready(Err(handshake_closed())),
                _ => {}
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(handshake_closed()));
            }
        }
    }

    /// Advances rustls' state machine over the ciphertext read so far until it
    /// needs I/O: handshake and alert records are appended to `outgoing`,
    /// decrypted data goes to `read` while it has room and to `plaintext` after
    /// that, and once application data may be sent, `send` is done.
    fn drive(
        &mut self,
        mut read: Option<&mut ReadBuf<'_>>,
        send: Outgoing<'_>,
    ) -> Result<Stop, rustls::Error> {
        if self.failed {
            return Err(rustls::Error::General(
                "TLS connection failed earlier".into(),
            ));
        }
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[self.discarded..]);
            let step = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut result = Ok(None);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(AppDataRecord {
                                discard: more,
                                payload,
                            }) => {
                                discard += more;
                                deliver(payload, read.as_deref_mut(), &mut self.plaintext);
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    append(self.outgoing.queue(), 0, |buf| data.encode(buf)).map(|()| None)
                }
                // The records are in `outgoing`, which goes out in order before
                // anything queued later: for rustls they count as transmitted.
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stop::NeedInput)),
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some(Stop::Closed))
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match send {
                    Outgoing::Nothing => Ok(Some(Stop::Open(0))),
                    Outgoing::Data(data) => {
                        // Room for the data plus a generous per-record overhead, so
                        // one call usually suffices (`append` retries if not).
                        let guess = data.len() + (data.len() / 512 + 1) * 32;
                        append(self.outgoing.queue(), guess, |buf| {
                            traffic.encrypt(data, buf)
                        })
                        .map(|()| Some(Stop::Open(data.len())))
                    }
                    Outgoing::CloseNotify => append(self.outgoing.queue(), 64, |buf| {
                        traffic.queue_close_notify(buf)
                    })
                    .map(|()| Some(Stop::Open(0))),
                },
                // Early data is off (ServerConfig::max_early_data_size is 0), so
                // this is a state a newer rustls added.
                Ok(_) => Err(rustls::Error::General("unexpected TLS state".into())),
            };
            self.discard(discard);
            if self.peer_closed {
                // Nothing after close_notify is read; drop what is left.
                self.incoming = Vec::new();
                self.discarded = 0;
            }
            if let Some(stop) = step? {
                return Ok(stop);
            }
        }
    }

    /// Drops `n` bytes rustls is done with from the front of the unprocessed
    /// ciphertext, releasing the buffer once nothing is left.
    fn discard(&mut self, n: usize) {
        self.discarded += n;
        if self.discarded >= self.incoming.len() {
            self.incoming = Vec::new();
            self.discarded = 0;
        }
    }

    /// Turns a TLS error into an I/O error after queueing the alert rustls has
    /// for the peer and trying, without waiting, to send it.
    fn fail(&mut self, cx: &mut Context<'_>, error: rustls::Error) -> io::Error {
        self.failed = true;
        // rustls hands out queued records before it looks at incoming bytes, so
        // this never processes the bytes that failed a second time.
        for _ in 0..4 {
            if !self.conn.wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[self.discarded..]);
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    append(self.outgoing.queue(), 0, |buf| data.encode(buf)).is_ok()
                }
                _ => false,
            };
            self.discard(discard);
            if !encoded {
                break;
            }
        }
        self.incoming = Vec::new();
        self.discarded = 0;
        self.plaintext = Vec::new();
        let _ = self.outgoing.poll_drain(cx, &mut self.tcp);
        tls_error(error)
    }

    /// Reads ciphertext from the socket into `incoming`: the number of bytes read,
    /// 0 at end of file. The buffer is allocated only once the socket is readable.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            self.incoming.drain(..self.discarded);
            self.discarded = 0;
            reserve_read_space(&mut self.incoming)?;
            let space = self.incoming.capacity() - self.incoming.len();
            let (tcp, incoming) = (&self.tcp, &mut self.incoming);
            let mut read = 0;
            // A read that left room has drained the socket (epoll is edge-triggered),
            // so its readiness is cleared with it, as tokio's own `poll_read` does:
            // no second read only to hear WouldBlock, once per message at low rates.
            // Inside `try_io`, readiness that arrived during the read is kept.
            let outcome = tcp.try_io(Interest::READABLE, || {
                read = tcp.try_read_buf(incoming)?;
                if read > 0 && read < space {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(read)
            });
            match outcome {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && read > 0 => {
                    return Poll::Ready(Ok(read));
                }
                // Readiness was stale; poll_read_ready registers for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Copies decrypted bytes left over from an earlier record into `buf`.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) {
        let rest = &self.plaintext[self.taken..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.taken += n;
        if self.taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.taken = 0;
        }
    }
}

impl AsyncRead for TlsStream {
    /// Fills `buf` as far as the records at hand and the socket allow without
    /// waiting (as tokio-rustls does): fewer, fuller reads for the caller.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        while buf.remaining() > 0 {
            if this.taken < this.plaintext.len() {
                this.take_plaintext(buf);
                continue;
            }
            if this.peer_closed {
                break;
            }
            if let Err(e) = this.drive(Some(buf), Outgoing::Nothing) {
                return Poll::Ready(Err(this.fail(cx, e)));
            }
            if this.peer_closed || buf.remaining() == 0 {
                continue;
            }
            let delivered = buf.filled().len() > start;
            // Whatever the records produced (alerts, say) leaves without making
            // this read wait for it, unless the peer stops reading while it makes
            // us write: then it gets no more of our attention until it reads.
            match this.outgoing.poll_drain(cx, &mut this.tcp) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.outgoing.pending() >= MAX_INCOMING => {
                    if delivered {
                        break;
                    }
                    return Poll::Pending;
                }
                _ => {}
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                // What was delivered goes first; an end of file or error shows
                // again on the next read.
                _ if delivered => break,
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl FramedWrite for TlsStream {
    type Inner = TcpStream;
    const MAX_CHUNK: usize = WRITE_CHUNK;

    fn send_parts(&mut self) -> (&mut SendBuffer, &mut TcpStream) {
        (&mut self.outgoing, &mut self.tcp)
    }

    fn close_queued(&self) -> bool {
        self.close_queued
    }

    fn frame(&mut self, cx: &mut Context<'_>, chunk: &[u8]) -> io::Result<usize> {
        match self.drive(None, Outgoing::Data(chunk)) {
            Ok(Stop::Open(n)) => Ok(n),
            Ok(Stop::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
            Ok(Stop::NeedInput) => Err(io::ErrorKind::NotConnected.into()),
            Err(e) => Err(self.fail(cx, e)),
        }
    }
}

impl AsyncWrite for TlsStream {
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
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            if let Err(e) = this.drive(None, Outgoing::CloseNotify) {
                return Poll::Ready(Err(this.fail(cx, e)));
            }
        }
        ready!(this.outgoing.poll_drain(cx, &mut this.tcp))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Puts a decrypted record into the caller's buffer as far as it fits and keeps
/// the rest, behind anything kept earlier (`kept` is emptied once all is taken).
fn deliver(payload: &[u8], read: Option<&mut ReadBuf<'_>>, kept: &mut Vec<u8>) {
    let mut rest = payload;
    if let Some(buf) = read
        && kept.is_empty()
    {
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
    kept.extend_from_slice(rest);
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn handshake_closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof")
}
