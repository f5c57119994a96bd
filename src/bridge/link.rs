//! The bridge's connection to the remote broker: TCP, TLS (rustls with the ring
//! provider, trusting the bridge's own CA file or the system's roots), MQTT 5
//! CONNECT with the bridge's credentials, and framed packets over moat's own strict
//! codec in the client role. It owns the socket and nothing else: what to send and
//! what a packet means is `run`'s job. Secret and CA files are read at each
//! connect, so a rotated password or CA needs no restart.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use moat_protocol::{
    Codec, ConnAck, Connect, Packet, Properties, ProtocolVersion, ReasonCode, Role,
};

use super::plan::{BridgePlan, TlsPlan, Trust};

/// Largest packet accepted from the remote (moat's own default for clients).
pub const MAX_INCOMING_PACKET: u32 = 1024 * 1024;
/// QoS 1 messages the remote may have unacknowledged towards us.
pub const RECEIVE_MAXIMUM: u16 = 20;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the remote refused the connection: {0:?}")]
    Refused(ReasonCode),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the remote closed the connection")]
    Closed,
    #[error("the remote sent DISCONNECT: {0:?}")]
    Disconnected(ReasonCode),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One MQTT connection to the remote.
pub struct Link {
    stream: Box<dyn Stream>,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// QoS 1 messages the remote accepts unacknowledged (its Receive Maximum).
    pub receive_maximum: u16,
    /// The remote resumed the bridge's session.
    pub session_present: bool,
}

fn read_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| LinkError::Config(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(LinkError::Config(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The TLS client configuration of a bridge, read from its files now.
fn tls_connector(tls: &TlsPlan) -> Result<TlsConnector, LinkError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.trust {
        Trust::CaFile(path) => {
            for cert in read_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| LinkError::Config(format!("{}: {e}", path.display())))?;
            }
        }
        Trust::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(LinkError::Config(format!(
                    "no system CA certificates found (set SSL_CERT_FILE or use tls.ca_file){}",
                    found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.client_certificate {
        Some((cert_file, key_file)) => {
            let chain = read_certificates(cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| LinkError::Config(format!("{}: {e}", key_file.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| LinkError::Config(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The password from the bridge's secret file: its first line, as given.
fn read_password(plan: &BridgePlan) -> Result<Option<Bytes>, LinkError> {
    let Some(path) = &plan.password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| LinkError::Config(format!("password file {}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(LinkError::Config(format!(
            "password file {} is empty",
            path.display()
        )));
    }
    Ok(Some(Bytes::from(line.to_owned())))
}

impl Link {
    /// Connects, handshakes TLS and MQTT; the CONNACK's reason decides.
    pub async fn connect(plan: &BridgePlan) -> Result<Link, LinkError> {
        let password = read_password(plan)?;
        let connector = plan.tls.as_ref().map(tls_connector).transpose()?;
        let tcp = TcpStream::connect((plan.host.as_str(), plan.port)).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match (connector, &plan.tls) {
            (Some(connector), Some(tls)) => {
                let name = ServerName::try_from(tls.server_name.clone())
                    .map_err(|e| LinkError::Config(format!("server name: {e}")))?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| LinkError::Tls(e.to_string()))?;
                Box::new(stream)
            }
            _ => Box::new(tcp),
        };
        let mut codec = Codec::new(Role::Client, MAX_INCOMING_PACKET);
        codec.set_version(ProtocolVersion::V5);
        let mut link = Link {
            stream,
            codec,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            receive_maximum: u16::MAX,
            session_present: false,
        };
        let keep_alive = u16::try_from(plan.keepalive.as_secs()).unwrap_or(u16::MAX);
        link.queue(&Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: plan.clean_start,
            keep_alive,
            client_id: plan.client_id.clone(),
            will: None,
            username: plan.username.clone(),
            password,
            properties: Properties {
                session_expiry_interval: Some(
                    u32::try_from(plan.session_expiry.as_secs()).unwrap_or(u32::MAX),
                ),
                receive_maximum: Some(RECEIVE_MAXIMUM),
                maximum_packet_size: Some(MAX_INCOMING_PACKET),
                ..Properties::default()
            },
        })))?;
        link.flush().await?;
        match link.recv().await? {
            Packet::ConnAck(ConnAck {
                reason,
                session_present,
                properties,
            }) => {
                if reason.is_error() {
                    return Err(LinkError::Refused(reason));
                }
                link.session_present = session_present;
                link.receive_maximum = properties.receive_maximum.unwrap_or(u16::MAX);
                link.codec
                    .set_max_outgoing_packet_size(properties.maximum_packet_size);
                Ok(link)
            }
            other => Err(LinkError::Protocol(format!(
                "expected CONNACK, got {other:?}"
            ))),
        }
    }

    /// Encodes a packet into the write buffer; `flush` sends it.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), LinkError> {
        self.codec
            .encode(packet, &mut self.wbuf)
            .map_err(|e| LinkError::Protocol(e.to_string()))
    }

    /// Sends what is queued.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.wbuf).await?;
        self.stream.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    /// [`Link::flush`] within `limit`: a remote that stops reading ends the link.
    pub async fn flush_within(&mut self, limit: Duration) -> Result<(), LinkError> {
        tokio::time::timeout(limit, self.flush())
            .await
            .map_err(|_| LinkError::Timeout("writing to the remote"))?
    }

    /// The next packet from the remote. Cancel-safe: a partial packet stays buffered.
    pub async fn recv(&mut self) -> Result<Packet, LinkError> {
        loop {
            if let Some(packet) = self
                .codec
                .decode(&mut self.rbuf)
                .map_err(|e| LinkError::Protocol(e.to_string()))?
            {
                return Ok(packet);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }
}
