//! A server-side TLS stream over rustls' unbuffered API, so that moat owns every
//! buffer: ciphertext read from the socket, ciphertext waiting to be written, and
//! decrypted bytes the caller has not taken yet. Each is allocated only while it
//! holds data and released (capacity 0) as soon as it is empty, so an idle connection
//! keeps no buffer at all (rustls' buffered connection keeps a 4 KiB read buffer
//! forever). It owns the record I/O and the handshake's mechanics; which server
//! configuration a ClientHello gets, and what a certificate means, belong to
//! `net::tls`, and it knows nothing of MQTT.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::{Acceptor, UnbufferedServerConnection};
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncryptError, UnbufferedStatus,
};
use rustls::{ServerConfig, SignatureAlgorithm, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// TLS record header: type, version, length.
const HEADER_LEN: usize = 5;
/// Largest plaintext fragment a record may carry (RFC 8446 5.1).
const MAX_FRAGMENT_LEN: usize = 16 * 1024;
/// Largest record rustls accepts (fragment plus 2 KiB of ciphertext expansion): a
/// peer cannot make us hold more ciphertext than this.
const MAX_INCOMING: usize = HEADER_LEN + MAX_FRAGMENT_LEN + 2048;
/// Least room offered to one socket read: small reads of many small records cost
/// system calls, and the buffer is released again once it is processed.
const READ_SIZE: usize = 4096;
/// Plaintext encrypted per `poll_write`, so the outgoing buffer stays near one record.
const WRITE_CHUNK: usize = MAX_FRAGMENT_LEN;
/// A TLS handshake record's content type.
const HANDSHAKE: u8 = 22;

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
    /// Ciphertext for the peer, written from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
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
            outgoing: Vec::new(),
            sent: 0,
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
            ready!(self.poll_flush_outgoing(cx))?;
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
                    append(&mut self.outgoing, 0, |buf| data.encode(buf)).map(|()| None)
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
                        append(&mut self.outgoing, guess, |buf| traffic.encrypt(data, buf))
                            .map(|()| Some(Stop::Open(data.len())))
                    }
                    Outgoing::CloseNotify => append(&mut self.outgoing, 64, |buf| {
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
                    append(&mut self.outgoing, 0, |buf| data.encode(buf)).is_ok()
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
        let _ = self.poll_flush_outgoing(cx);
        tls_error(error)
    }

    /// Writes `outgoing` to the socket until it is empty, then releases it.
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads ciphertext from the socket into `incoming`: the number of bytes read,
    /// 0 at end of file. The buffer is allocated only once the socket is readable.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            self.incoming.drain(..self.discarded);
            self.discarded = 0;
            reserve_read_space(&mut self.incoming)?;
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(n) => return Poll::Ready(Ok(n)),
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
            match this.poll_flush_outgoing(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.outgoing.len() - this.sent >= MAX_INCOMING => {
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

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // One chunk at a time: earlier ciphertext leaves before more is made.
        ready!(this.poll_flush_outgoing(cx))?;
        let chunk = &buf[..buf.len().min(WRITE_CHUNK)];
        let written = match this.drive(None, Outgoing::Data(chunk)) {
            Ok(Stop::Open(n)) => n,
            Ok(Stop::Closed) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Ok(Stop::NeedInput) => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
        };
        // Start sending now; what the socket does not take waits for the next
        // write or flush.
        if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            if let Err(e) = this.drive(None, Outgoing::CloseNotify) {
                return Poll::Ready(Err(this.fail(cx, e)));
            }
        }
        ready!(this.poll_flush_outgoing(cx))?;
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

/// Why rustls could not write into the space it was given.
enum Unwritten {
    TooSmall(usize),
    Failed(rustls::Error),
}

impl From<EncodeError> for Unwritten {
    fn from(e: EncodeError) -> Unwritten {
        match e {
            EncodeError::InsufficientSize(s) => Unwritten::TooSmall(s.required_size),
            EncodeError::AlreadyEncoded => Unwritten::Failed(rustls::Error::General(e.to_string())),
        }
    }
}

impl From<EncryptError> for Unwritten {
    fn from(e: EncryptError) -> Unwritten {
        match e {
            EncryptError::InsufficientSize(s) => Unwritten::TooSmall(s.required_size),
            EncryptError::EncryptExhausted => Unwritten::Failed(rustls::Error::EncryptError),
        }
    }
}

/// Appends what `write` produces to `out`, offering `guess` bytes first and
/// exactly what rustls asks for if that was too few (rustls writes nothing then).
fn append<E: Into<Unwritten>>(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    out.resize(start + guess, 0);
    let result = match write(&mut out[start..]).map_err(Into::into) {
        Err(Unwritten::TooSmall(needed)) => {
            out.resize(start + needed, 0);
            write(&mut out[start..]).map_err(Into::into)
        }
        other => other,
    };
    match result {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(match e {
                Unwritten::TooSmall(_) => rustls::Error::General("TLS output size changed".into()),
                Unwritten::Failed(e) => e,
            })
        }
    }
}

/// Makes room for a socket read: at least `READ_SIZE`, or the rest of the record
/// that has begun, never beyond one maximal record (a handshake message split
/// over records must fit that too; ours are far smaller).
fn reserve_read_space(incoming: &mut Vec<u8>) -> io::Result<()> {
    let used = incoming.len();
    if used >= MAX_INCOMING {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more TLS input pending than one record may hold",
        ));
    }
    let record_end = match incoming.get(..HEADER_LEN) {
        Some(header) => HEADER_LEN + usize::from(u16::from_be_bytes([header[3], header[4]])),
        None => 0,
    };
    let want = (used + READ_SIZE).max(record_end).min(MAX_INCOMING);
    incoming.reserve_exact(want - used);
    Ok(())
}

/// Whether to stop waiting for the first record: it is complete, or it is not a
/// plausible ClientHello record (rustls will refuse it).
fn first_record_complete(bytes: &[u8]) -> bool {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return bytes.first().is_some_and(|&b| b != HANDSHAKE);
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    header[0] != HANDSHAKE || len > MAX_FRAGMENT_LEN || bytes.len() >= HEADER_LEN + len
}

/// The signature schemes a ClientHello offers, parsed from a copy of the bytes
/// read so far; `None` if they hold no complete, valid ClientHello. ECDSA schemes are
/// left out when none of the offered cipher suites can carry an ECDSA certificate: a
/// TLS 1.2 client offering only ECDHE-RSA suites (Tasmota's BearSSL client offers
/// exactly one, ECDHE_RSA_WITH_AES_128_GCM_SHA256) needs the RSA certificate whatever
/// its signature_algorithms say (OpenSSL lists ECDSA there regardless).
fn hello_signature_schemes(mut bytes: &[u8]) -> Option<Vec<SignatureScheme>> {
    let mut acceptor = Acceptor::default();
    while !bytes.is_empty() {
        if acceptor.read_tls(&mut bytes).ok()? == 0 {
            return None;
        }
    }
    let accepted = acceptor.accept().ok()??;
    let hello = accepted.client_hello();
    let mut schemes = hello.signature_schemes().to_vec();
    let ecdsa_suite = hello.cipher_suites().iter().any(|offered| {
        rustls::crypto::ring::ALL_CIPHER_SUITES.iter().any(|suite| {
            suite.suite() == *offered
                && suite.usable_for_signature_algorithm(SignatureAlgorithm::ECDSA)
        })
    });
    if !ecdsa_suite {
        schemes.retain(|scheme| !is_ecdsa(*scheme));
    }
    Some(schemes)
}

fn is_ecdsa(scheme: SignatureScheme) -> bool {
    matches!(
        scheme,
        SignatureScheme::ECDSA_NISTP256_SHA256
            | SignatureScheme::ECDSA_NISTP384_SHA384
            | SignatureScheme::ECDSA_NISTP521_SHA512
            | SignatureScheme::ECDSA_SHA1_Legacy
    )
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn handshake_closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof")
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream as ClientStream;

    use super::*;
    use crate::net::tls::{TlsSettings, handshake};
    use crate::pki;

    const TLS13: &SupportedProtocolVersion = &rustls::version::TLS13;
    const TLS12: &SupportedProtocolVersion = &rustls::version::TLS12;

    struct Fixture {
        settings: ArcSwap<TlsSettings>,
        ca: CertificateDer<'static>,
        ecdsa_cert: CertificateDer<'static>,
        rsa_cert: CertificateDer<'static>,
        device_chain: Vec<CertificateDer<'static>>,
        device_key: PrivateKeyDer<'static>,
    }

    /// A provisioned CA, server certificates (ECDSA and RSA) and one device.
    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let plan = pki::ProvisionPlan {
                hostnames: vec!["localhost".into()],
                machine_name: None,
                addresses: Vec::new(),
                rsa_server_key: true,
                certificate_devices: vec!["kitchen-sensor".into()],
            };
            pki::provision(&state, &plan).unwrap();
            let credentials = pki::load_server_credentials(&state).unwrap();
            let bundle = pki::device_bundle_dir(&state, "kitchen-sensor");
            Fixture {
                ca: credentials.ca.clone(),
                ecdsa_cert: credentials.ecdsa_chain[0].clone(),
                rsa_cert: credentials.rsa.as_ref().unwrap().0[0].clone(),
                device_chain: CertificateDer::pem_file_iter(bundle.join("cert.pem"))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap(),
                device_key: PrivateKeyDer::from_pem_file(bundle.join("key.pem")).unwrap(),
                settings: ArcSwap::from_pointee(TlsSettings::new(credentials).unwrap()),
            }
        })
    }

    /// A rustls client; `ecdsa: false` offers no ECDSA signature scheme (as a
    /// small device would), which must get the RSA configuration.
    fn client_config(
        version: &'static SupportedProtocolVersion,
        certificate: bool,
        ecdsa: bool,
    ) -> Arc<ClientConfig> {
        let f = fixture();
        let mut provider = rustls::crypto::ring::default_provider();
        if !ecdsa {
            let algorithms = &mut provider.signature_verification_algorithms;
            let mapping: Vec<_> = algorithms
                .mapping
                .iter()
                .filter(|(scheme, _)| !format!("{scheme:?}").starts_with("ECDSA"))
                .copied()
                .collect();
            algorithms.mapping = Box::leak(mapping.into_boxed_slice());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(f.ca.clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots);
        let config = if certificate {
            builder
                .with_client_auth_cert(f.device_chain.clone(), f.device_key.clone_key())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }

    async fn listener() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    async fn connect(
        config: Arc<ClientConfig>,
        addr: std::net::SocketAddr,
    ) -> io::Result<ClientStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(config).connect(name, tcp).await
    }

    /// A handshaken server stream (with the client certificate's name) and client.
    async fn pair(
        config: Arc<ClientConfig>,
    ) -> (TlsStream, Option<String>, ClientStream<TcpStream>) {
        let (listener, addr) = listener().await;
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            handshake(&fixture().settings, tcp).await
        };
        let (server, client) = tokio::join!(server, connect(config, addr));
        let (server, name) = server.unwrap();
        (server, name, client.unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn assert_idle(stream: &TlsStream) {
        assert_eq!(stream.incoming.capacity(), 0, "incoming ciphertext kept");
        assert_eq!(stream.outgoing.capacity(), 0, "outgoing ciphertext kept");
        assert_eq!(stream.plaintext.capacity(), 0, "plaintext kept");
    }

    /// Reads `len` bytes through small reads, as an idle connection does.
    async fn read_small(stream: &mut (impl AsyncRead + Unpin), len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.len() < len {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "early end of file after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    async fn exchange(version: &'static SupportedProtocolVersion) {
        let (mut server, name, mut client) = pair(client_config(version, false, true)).await;
        assert_eq!(name, None);
        assert_idle(&server);

        // Larger than a record both ways; the server reads in 512-byte pieces, so
        // most of each record waits in its plaintext buffer.
        let big = pattern(40_000);
        let (written, got) =
            tokio::join!(client.write_all(&big), read_small(&mut server, big.len()));
        written.unwrap();
        assert_eq!(got, big);
        let mut back = vec![0u8; big.len()];
        let (written, read) = tokio::join!(
            async {
                server.write_all(&big).await?;
                server.flush().await
            },
            client.read_exact(&mut back)
        );
        written.unwrap();
        read.unwrap();
        assert_eq!(back, big);

        // Many small records, several per socket read.
        for i in 0..500u32 {
            client.write_all(&i.to_be_bytes()).await.unwrap();
        }
        client.flush().await.unwrap();
        let got = read_small(&mut server, 2000).await;
        let expected: Vec<u8> = (0..500u32).flat_map(u32::to_be_bytes).collect();
        assert_eq!(got, expected);
        for i in 0..500u32 {
            server.write_all(&i.to_be_bytes()).await.unwrap();
        }
        server.flush().await.unwrap();
        let mut back = vec![0u8; 2000];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, expected);

        // Nothing is held once the traffic is over.
        assert_idle(&server);

        // Our close_notify reaches the client as a clean end of file, and theirs
        // reaches us as one.
        server.shutdown().await.unwrap();
        assert_eq!(client.read(&mut [0u8; 16]).await.unwrap(), 0);
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
        assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
        assert_idle(&server);
    }

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("test timed out")
    }

    #[tokio::test]
    async fn tls13_exchange_large_and_small_writes_and_close() {
        within(exchange(TLS13)).await;
    }

    #[tokio::test]
    async fn tls12_exchange_large_and_small_writes_and_close() {
        within(exchange(TLS12)).await;
    }

    #[tokio::test]
    async fn client_certificate_names_the_device() {
        within(async {
            for version in [TLS13, TLS12] {
                let (mut server, name, mut client) = pair(client_config(version, true, true)).await;
                assert_eq!(name.as_deref(), Some("kitchen-sensor"));
                client.write_all(b"hello").await.unwrap();
                client.flush().await.unwrap();
                assert_eq!(read_small(&mut server, 5).await, b"hello");
            }
        })
        .await;
    }

    /// Parses the records in `bytes`: their payload lengths.
    fn record_lengths(mut bytes: &[u8]) -> Vec<usize> {
        let mut lengths = Vec::new();
        while let Some(header) = bytes.get(..HEADER_LEN) {
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            lengths.push(len);
            bytes = &bytes[HEADER_LEN + len..];
        }
        lengths
    }

    #[tokio::test]
    async fn clients_without_ecdsa_get_rsa_and_small_records() {
        within(async {
            for (version, ecdsa) in [(TLS13, false), (TLS12, false), (TLS13, true)] {
                let (mut server, _, mut client) = pair(client_config(version, false, ecdsa)).await;
                let served = client.get_ref().1.peer_certificates().unwrap()[0].clone();
                let expected = if ecdsa {
                    &fixture().ecdsa_cert
                } else {
                    &fixture().rsa_cert
                };
                assert_eq!(&served, expected);

                // The unbuffered encrypt path honours max_fragment_size: 1024-byte
                // records (1019 bytes of plaintext each) for the RSA configuration.
                let data = pattern(5000);
                assert_eq!(
                    server.drive(None, Outgoing::Data(&data)),
                    Ok(Stop::Open(5000))
                );
                let lengths = record_lengths(&server.outgoing);
                if ecdsa {
                    assert_eq!(lengths.len(), 1, "{lengths:?}");
                } else {
                    assert_eq!(lengths.len(), 5000usize.div_ceil(1019), "{lengths:?}");
                    assert!(lengths.iter().all(|&len| len <= 1019 + 64), "{lengths:?}");
                }
                server.flush().await.unwrap();
                let mut back = vec![0u8; data.len()];
                client.read_exact(&mut back).await.unwrap();
                assert_eq!(back, data);
            }
        })
        .await;
    }

    #[tokio::test]
    async fn tcp_close_without_close_notify_is_an_error() {
        within(async {
            let (mut server, _, mut client) = pair(client_config(TLS13, false, true)).await;
            client.get_mut().0.shutdown().await.unwrap();
            let err = server.read(&mut [0u8; 16]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        })
        .await;
    }

    #[tokio::test]
    async fn key_update_from_the_client_is_answered() {
        within(async {
            let (mut server, _, mut client) = pair(client_config(TLS13, false, true)).await;
            for round in 0..3u8 {
                client.get_mut().1.refresh_traffic_keys().unwrap();
                client.write_all(&[round; 100]).await.unwrap();
                client.flush().await.unwrap();
                assert_eq!(read_small(&mut server, 100).await, [round; 100]);
                server.write_all(&[round; 100]).await.unwrap();
                server.flush().await.unwrap();
                let mut back = [0u8; 100];
                client.read_exact(&mut back).await.unwrap();
                assert_eq!(back, [round; 100]);
            }
            assert_idle(&server);
        })
        .await;
    }

    #[tokio::test]
    async fn a_first_record_that_is_not_tls_fails_with_an_alert() {
        within(async {
            let (listener, addr) = listener().await;
            let client = async {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(b"GET / HTTP/1.1\r\nHost: moat\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                let _ = tcp.read_to_end(&mut answer).await;
                answer
            };
            let server = async {
                let (tcp, _) = listener.accept().await.unwrap();
                handshake(&fixture().settings, tcp).await.map(|_| ())
            };
            let (server, answer) = tokio::join!(server, client);
            assert_eq!(server.unwrap_err().kind(), io::ErrorKind::InvalidData);
            assert_eq!(answer.first(), Some(&21), "an alert record: {answer:?}");
        })
        .await;
    }

    /// The ClientHello record a rustls client sends first.
    fn client_hello(config: Arc<ClientConfig>) -> Vec<u8> {
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(config, name).unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        bytes
    }

    /// The same handshake message in two records.
    fn split_record(record: &[u8], at: usize) -> Vec<u8> {
        let (header, body) = record.split_at(HEADER_LEN);
        let mut out = Vec::new();
        for part in [&body[..at], &body[at..]] {
            out.extend_from_slice(&header[..3]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn a_hello_with_only_ecdhe_rsa_suites_gets_no_ecdsa_scheme() {
        // A Tasmota-like TLS 1.2 client: one ECDHE-RSA suite, yet ECDSA among its
        // signature algorithms. Only the RSA certificate can serve it.
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| s.suite() == rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256);
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let schemes = hello_signature_schemes(&client_hello(Arc::new(config))).unwrap();
        assert!(
            schemes.contains(&SignatureScheme::RSA_PKCS1_SHA256),
            "{schemes:?}"
        );
        assert!(schemes.iter().all(|s| !is_ecdsa(*s)), "{schemes:?}");
        // With every suite offered, its ECDSA schemes stay.
        let full = client_hello(client_config(&rustls::version::TLS12, false, true));
        let schemes = hello_signature_schemes(&full).unwrap();
        assert!(schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
    }

    #[test]
    fn the_first_record_is_complete_or_not_a_hello() {
        let hello = client_hello(client_config(TLS13, false, false));
        assert!(first_record_complete(&hello));
        assert!(!first_record_complete(&hello[..hello.len() - 1]));
        assert!(!first_record_complete(&hello[..3]));
        assert!(!first_record_complete(&[]));
        assert!(first_record_complete(b"G"));
        assert!(first_record_complete(&[22, 3, 1, 0xff, 0xff]));
        let schemes = hello_signature_schemes(&hello).unwrap();
        assert!(!schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
        assert!(schemes.contains(&SignatureScheme::RSA_PSS_SHA256));
        // Not parseable up front: the caller falls back to ECDSA.
        let split = split_record(&hello, 100);
        assert!(first_record_complete(&split));
        assert_eq!(hello_signature_schemes(&split[..HEADER_LEN + 100]), None);
        assert_eq!(hello_signature_schemes(b"GET / HTTP/1.1\r\n"), None);
    }

    /// Relays one client to the server: the ClientHello re-framed as two records,
    /// then every byte in small writes, so the server sees partial records.
    async fn trickle_proxy(client_side: TcpListener, server: std::net::SocketAddr) {
        let (mut client, _) = client_side.accept().await.unwrap();
        let upstream = TcpStream::connect(server).await.unwrap();
        upstream.set_nodelay(true).unwrap();
        let mut hello = vec![0u8; HEADER_LEN];
        client.read_exact(&mut hello).await.unwrap();
        let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        hello.resize(HEADER_LEN + len, 0);
        client.read_exact(&mut hello[HEADER_LEN..]).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut upstream_read, mut upstream_write) = upstream.into_split();
        let up = async move {
            let mut pending = split_record(&hello, 40);
            let mut buf = [0u8; 4096];
            loop {
                for piece in pending.chunks(7) {
                    upstream_write.write_all(piece).await?;
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let n = client_read.read(&mut buf).await?;
                if n == 0 {
                    return upstream_write.shutdown().await;
                }
                pending = buf[..n].to_vec();
            }
        };
        let down = tokio::io::copy(&mut upstream_read, &mut client_write);
        let _ = tokio::join!(up, down);
    }

    #[tokio::test]
    async fn split_hello_and_partial_records() {
        within(async {
            let (listener, server_addr) = listener().await;
            let (proxy, proxy_addr) = self::listener().await;
            tokio::spawn(trickle_proxy(proxy, server_addr));
            let server = async {
                let (tcp, _) = listener.accept().await.unwrap();
                handshake(&fixture().settings, tcp).await
            };
            // A client without ECDSA, but its ClientHello cannot be parsed from the
            // first record, so it gets ECDSA... which it cannot verify.
            let (server, client) = tokio::join!(
                server,
                connect(client_config(TLS13, false, false), proxy_addr)
            );
            assert!(server.is_err() && client.is_err());

            let (proxy, proxy_addr) = self::listener().await;
            tokio::spawn(trickle_proxy(proxy, server_addr));
            let server = async {
                let (tcp, _) = listener.accept().await.unwrap();
                handshake(&fixture().settings, tcp).await
            };
            let (server, client) = tokio::join!(
                server,
                connect(client_config(TLS12, true, true), proxy_addr)
            );
            let ((mut server, name), mut client) = (server.unwrap(), client.unwrap());
            assert_eq!(name.as_deref(), Some("kitchen-sensor"));
            let data = pattern(3000);
            client.write_all(&data).await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(read_small(&mut server, data.len()).await, data);
            client.shutdown().await.unwrap();
            assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
            assert_idle(&server);
        })
        .await;
    }
}
