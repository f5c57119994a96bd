//! A minimal MQTT client for load generation: TCP (optionally from a chosen loopback
//! source address), TLS through tokio-rustls with a CA file, CONNECT with username
//! and password, and packet I/O through the crate's strict [`Codec`] in the client
//! role. Writes are queued and flushed in batches so the generator spends its CPU on
//! the broker, not on syscalls. It knows nothing of scenarios or reports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Decoder, Encoder};

use super::BenchError;
use super::options::{CommonArgs, Protocol};
use super::wire::{Counted, WireCount};
use crate::protocol::{
    Ack, Codec, Connect, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, Role, Subscribe, SubscribeFilter, SubscriptionOptions,
};

/// Largest packet the generator accepts from a broker.
const MAX_INCOMING: u32 = 1024 * 1024;
/// Keep-alive announced in CONNECT: the longest moat accepts; runs are shorter.
const KEEP_ALIVE_SECS: u16 = 300;
/// Deadline for TCP + TLS + CONNACK and for SUBACK.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
const READ_CHUNK: usize = 64 * 1024;
/// How often a login refused with "server busy" is retried.
const BUSY_RETRIES: u32 = 40;

/// Any byte stream a client can run over (plain TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The broker a scenario drives, resolved once from the command line.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    username: Option<String>,
    password: Option<Bytes>,
    pub protocol: Protocol,
    source_addresses: u8,
    /// Log in with a session that outlives the connection (see `persistent`).
    persistent: bool,
    /// Count what these connections read (see `counting`).
    wire: Option<Arc<WireCount>>,
}

/// How long a persistent benchmark session outlives its connection (v5).
const PERSISTENT_SESSION_SECS: u32 = 60;

impl Target {
    pub fn from_args(args: &CommonArgs) -> Result<Target, BenchError> {
        let tls = match &args.cafile {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| BenchError::Tls(format!("{}: {e}", path.display())))?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| BenchError::Tls(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| BenchError::Tls(format!("{}: {e}", path.display())))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| BenchError::Tls(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                if !args.tls_resume {
                    config.resumption = rustls::client::Resumption::disabled();
                }
                let name = ServerName::try_from(args.server_name.clone())
                    .map_err(|e| BenchError::Tls(format!("--server-name: {e}")))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            None => None,
        };
        Ok(Target {
            addr: SocketAddr::new(args.host, args.port),
            tls,
            username: args.username.clone(),
            password: args.password.clone().map(Bytes::from),
            protocol: args.protocol,
            source_addresses: args.source_addresses,
            persistent: false,
            wire: None,
        })
    }

    /// The same broker, logging in with sessions that outlive the connection (v5
    /// session expiry, 3.1.1 clean session off): a broker must then keep every
    /// QoS 1/2 message for them until acknowledged, which moat makes durable.
    pub fn persistent(&self) -> Target {
        Target {
            persistent: true,
            ..self.clone()
        }
    }

    /// The same broker; every connection opened through it adds what it reads from
    /// the socket (bytes, read calls, TLS records) to `count`.
    pub fn counting(&self, count: Arc<WireCount>) -> Target {
        Target {
            wire: Some(count),
            ..self.clone()
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The loopback source address for the `index`-th connection (IPv4 targets only).
    fn source_for(&self, index: usize) -> Option<SocketAddr> {
        if self.source_addresses <= 1 || !self.addr.is_ipv4() {
            return None;
        }
        let host = 1 + (index % usize::from(self.source_addresses)) as u8;
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
            0,
        ))
    }

    /// Opens the byte stream: TCP (with TCP_NODELAY) and, if configured, TLS.
    pub async fn open(&self, index: usize) -> Result<Box<dyn Stream>, BenchError> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(source) = self.source_for(index) {
            socket.bind(source)?;
        }
        let tcp: TcpStream = socket.connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.wire {
            Some(count) => {
                let counted = Counted::new(tcp, Arc::clone(count), self.is_tls());
                self.secure(counted).await
            }
            None => self.secure(tcp).await,
        }
    }

    /// Wraps a connected stream in TLS when the target asks for it.
    async fn secure<S: Stream + 'static>(&self, tcp: S) -> Result<Box<dyn Stream>, BenchError> {
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| BenchError::Tls(e.to_string()))?;
                Ok(Box::new(tls))
            }
            None => Ok(Box::new(tcp)),
        }
    }

    /// Opens a stream and logs in as `client_id`; fails unless CONNACK says success.
    /// A broker that answers "server busy" (moat while its bounded password-hashing
    /// pool is full) is asked again a bounded number of times, as a real client would.
    pub async fn connect(&self, client_id: &str, index: usize) -> Result<Client, BenchError> {
        let mut attempt = 0u32;
        loop {
            let outcome = tokio::time::timeout(SETUP_TIMEOUT, self.connect_inner(client_id, index))
                .await
                .map_err(|_| BenchError::Timeout("connect"))?;
            match outcome {
                Err(BenchError::Refused(ReasonCode::ServerBusy)) if attempt < BUSY_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt.min(8)))).await;
                }
                other => return other,
            }
        }
    }

    /// One login and goodbye, so a broker's credential cache is warm before a run
    /// (the first login of an identity costs moat a full argon2 verification).
    pub async fn warm_up(&self) -> Result<(), BenchError> {
        let client = self.connect("bench-warm-up", 0).await?;
        client.disconnect().await
    }

    async fn connect_inner(&self, client_id: &str, index: usize) -> Result<Client, BenchError> {
        let stream = self.open(index).await?;
        let version = self.protocol.version();
        let mut client = Client::new(stream, version);
        let connect = Connect {
            protocol: version,
            clean_start: !self.persistent,
            keep_alive: KEEP_ALIVE_SECS,
            client_id: client_id.to_owned(),
            will: None,
            username: self.username.clone(),
            password: self.password.clone(),
            properties: Properties {
                session_expiry_interval: (self.persistent && version == ProtocolVersion::V5)
                    .then_some(PERSISTENT_SESSION_SECS),
                ..Properties::default()
            },
        };
        client.queue(&Packet::Connect(Box::new(connect)))?;
        client.flush().await?;
        match client.recv().await? {
            Some(Packet::ConnAck(ack)) if !ack.reason.is_error() => {
                client.receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
                Ok(client)
            }
            Some(Packet::ConnAck(ack)) => Err(BenchError::Refused(ack.reason)),
            Some(other) => Err(BenchError::Unexpected(packet_name(&other))),
            None => Err(BenchError::Closed),
        }
    }
}

/// One MQTT connection: a read buffer and a write buffer around the stream.
pub struct Client {
    reader: ClientReader,
    writer: ClientWriter,
    /// QoS 1/2 publications the broker accepts unacknowledged (v5 CONNACK).
    pub receive_maximum: u16,
}

/// The receiving half: decodes packets from a buffer refilled from the stream.
pub struct ClientReader {
    stream: ReadHalf<Box<dyn Stream>>,
    codec: Codec,
    buffer: BytesMut,
}

/// The sending half: packets are encoded into a buffer and written on `flush`.
pub struct ClientWriter {
    stream: WriteHalf<Box<dyn Stream>>,
    codec: Codec,
    buffer: BytesMut,
}

impl Client {
    fn new(stream: Box<dyn Stream>, version: ProtocolVersion) -> Client {
        let (read, write) = tokio::io::split(stream);
        let codec = |version| {
            let mut codec = Codec::new(Role::Client, MAX_INCOMING);
            codec.set_version(version);
            codec
        };
        Client {
            reader: ClientReader {
                stream: read,
                codec: codec(version),
                buffer: BytesMut::with_capacity(READ_CHUNK),
            },
            writer: ClientWriter {
                stream: write,
                codec: codec(version),
                buffer: BytesMut::with_capacity(READ_CHUNK),
            },
            receive_maximum: u16::MAX,
        }
    }

    pub fn split(self) -> (ClientReader, ClientWriter) {
        (self.reader, self.writer)
    }

    pub fn queue(&mut self, packet: &Packet) -> Result<(), BenchError> {
        self.writer.queue(packet)
    }

    pub async fn flush(&mut self) -> Result<(), BenchError> {
        self.writer.flush().await
    }

    pub async fn recv(&mut self) -> Result<Option<Packet>, BenchError> {
        self.reader.recv().await
    }

    pub fn try_recv(&mut self) -> Result<Option<Packet>, BenchError> {
        self.reader.try_recv()
    }

    /// Subscribes to one filter and checks that the broker granted it.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), BenchError> {
        let subscribe = Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.to_owned(),
                options: SubscriptionOptions {
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: Properties::default(),
        };
        self.queue(&Packet::Subscribe(subscribe))?;
        self.flush().await?;
        let reply = tokio::time::timeout(SETUP_TIMEOUT, self.recv())
            .await
            .map_err(|_| BenchError::Timeout("SUBACK"))??;
        match reply {
            Some(Packet::SubAck(ack)) => match ack.reasons.first() {
                Some(&reason) if reason as u8 == qos as u8 => Ok(()),
                Some(&reason) if !reason.is_error() => Err(BenchError::Downgraded(reason)),
                Some(&reason) => Err(BenchError::Refused(reason)),
                None => Err(BenchError::Unexpected("empty SUBACK")),
            },
            Some(other) => Err(BenchError::Unexpected(packet_name(&other))),
            None => Err(BenchError::Closed),
        }
    }

    /// Sends DISCONNECT and waits (briefly) for the broker to close, so the broker's
    /// side, not ours, keeps the TIME_WAIT socket.
    pub async fn disconnect(mut self) -> Result<(), BenchError> {
        self.queue(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))?;
        self.flush().await?;
        let mut scratch = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut stream = self.reader.stream;
            while let Ok(n) = stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        Ok(())
    }
}

impl ClientReader {
    /// The next packet, reading from the stream as needed; `None` at end of stream.
    /// Cancel-safe: bytes read so far stay in the buffer.
    pub async fn recv(&mut self) -> Result<Option<Packet>, BenchError> {
        loop {
            if let Some(packet) = self.try_recv()? {
                return Ok(Some(packet));
            }
            self.buffer.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// A packet already in the buffer, without touching the stream.
    pub fn try_recv(&mut self) -> Result<Option<Packet>, BenchError> {
        Ok(self.codec.decode(&mut self.buffer)?)
    }
}

impl ClientWriter {
    pub fn queue(&mut self, packet: &Packet) -> Result<(), BenchError> {
        Ok(self.codec.encode(packet, &mut self.buffer)?)
    }

    /// Queues a PUBLISH whose payload (`payload_len` bytes, at least 8, the last
    /// thing encoded) starts with `stamp`, big-endian: one encoding of a template
    /// per message instead of a new payload and packet.
    pub fn queue_stamped(
        &mut self,
        packet: &Packet,
        payload_len: usize,
        stamp: u64,
    ) -> Result<(), BenchError> {
        if payload_len < 8 {
            return Err(BenchError::Unexpected("payload too short for a timestamp"));
        }
        self.queue(packet)?;
        let at = self.buffer.len() - payload_len;
        self.buffer[at..at + 8].copy_from_slice(&stamp.to_be_bytes());
        Ok(())
    }

    /// A subscriber's side of the QoS flow: queues the PUBACK, PUBREC or PUBCOMP a
    /// packet from the broker calls for; returns the PUBLISH, if it was one.
    pub fn answer(&mut self, packet: Packet) -> Result<Option<Publish>, BenchError> {
        match packet {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        self.queue(&Packet::PubAck(Ack::new(p.packet_id, ReasonCode::Success)))?
                    }
                    QoS::ExactlyOnce => {
                        self.queue(&Packet::PubRec(Ack::new(p.packet_id, ReasonCode::Success)))?
                    }
                }
                Ok(Some(p))
            }
            Packet::PubRel(ack) => {
                self.queue(&Packet::PubComp(Ack::new(
                    ack.packet_id,
                    ReasonCode::Success,
                )))?;
                Ok(None)
            }
            Packet::Disconnect(d) => Err(BenchError::Disconnected(d.reason)),
            Packet::PingResp => Ok(None),
            other => Err(BenchError::Unexpected(packet_name(&other))),
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.buffer.len()
    }

    pub async fn flush(&mut self) -> Result<(), BenchError> {
        if !self.buffer.is_empty() {
            self.stream.write_all(&self.buffer).await?;
            self.buffer.clear();
        }
        self.stream.flush().await?;
        Ok(())
    }
}

/// The send time a generator put in the first 8 bytes of a payload.
pub fn payload_stamp(publish: &Publish) -> Result<u64, BenchError> {
    publish
        .payload
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or(BenchError::Unexpected("PUBLISH without a timestamp"))
}

pub fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}
