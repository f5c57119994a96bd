//! The bridge's connection to the remote broker, on `moat-client` (the one MQTT client
//! of the workspace): TCP, TLS (trusting the bridge's own CA file or the system's
//! roots, with an optional client certificate), MQTT 5 CONNECT with the bridge's
//! credentials, and packets through moat's strict codec in the client role. It owns
//! the connection and nothing else: what to send and what a packet means is `run`'s
//! job. Secret and CA files are read at each connect, so a rotated password or CA
//! needs no restart.

use std::time::Duration;

use bytes::Bytes;
use moat_client::{
    ClientCertificate, ClientError, ConnectOptions, Connection, Endpoint, Roots, TlsConfig,
    TlsOptions,
};
use moat_protocol::{Packet, ProtocolVersion};

use super::plan::{BridgePlan, Trust};

/// Largest packet accepted from the remote (moat's own default for clients).
pub const MAX_INCOMING_PACKET: u32 = 1024 * 1024;
/// QoS 1 messages the remote may have unacknowledged towards us.
pub const RECEIVE_MAXIMUM: u16 = 20;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the remote closed the connection")]
    Closed,
    #[error("the remote sent DISCONNECT: {0:?}")]
    Disconnected(moat_protocol::ReasonCode),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> LinkError {
        LinkError::Client(ClientError::Io(e))
    }
}

/// One MQTT connection to the remote.
pub struct Link {
    connection: Connection,
    /// QoS 1 messages the remote accepts unacknowledged (its Receive Maximum).
    pub receive_maximum: u16,
    /// The remote resumed the bridge's session.
    pub session_present: bool,
}

/// Where and how to reach the remote: its first address, TLS as the plan says.
async fn endpoint(plan: &BridgePlan) -> Result<Endpoint, LinkError> {
    let addr = tokio::net::lookup_host((plan.host.as_str(), plan.port))
        .await?
        .next()
        .ok_or_else(|| LinkError::Config(format!("{}: no address", plan.host)))?;
    let endpoint = Endpoint::tcp(addr);
    let Some(tls) = &plan.tls else {
        return Ok(endpoint);
    };
    let roots = match &tls.trust {
        Trust::CaFile(path) => Roots::CaFile(path.clone()),
        Trust::SystemRoots => Roots::System,
    };
    let mut options = TlsOptions::new(roots, tls.server_name.clone());
    options.client_certificate = tls
        .client_certificate
        .as_ref()
        .map(|(cert, key)| ClientCertificate::from_pem_files(cert, key))
        .transpose()?;
    Ok(endpoint.with_tls(TlsConfig::new(options)?))
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
        let mut options = ConnectOptions::new(endpoint(plan).await?, plan.client_id.clone());
        options.protocol = ProtocolVersion::V5;
        options.clean_start = plan.clean_start;
        options.keep_alive = u16::try_from(plan.keepalive.as_secs()).unwrap_or(u16::MAX);
        options.username = plan.username.clone();
        options.password = password;
        options.session_expiry =
            Some(u32::try_from(plan.session_expiry.as_secs()).unwrap_or(u32::MAX));
        options.receive_maximum = Some(RECEIVE_MAXIMUM);
        options.max_incoming_packet = MAX_INCOMING_PACKET;
        options.announce_max_packet = true;
        let connection = Connection::open(&options).await?;
        Ok(Link {
            receive_maximum: connection.receive_maximum(),
            session_present: connection.connack().session_present,
            connection,
        })
    }

    /// Encodes a packet into the write buffer; `flush` sends it.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), LinkError> {
        Ok(self.connection.queue(packet)?)
    }

    /// Sends what is queued.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        Ok(self.connection.flush().await?)
    }

    /// [`Link::flush`] within `limit`: a remote that stops reading ends the link.
    pub async fn flush_within(&mut self, limit: Duration) -> Result<(), LinkError> {
        tokio::time::timeout(limit, self.flush())
            .await
            .map_err(|_| LinkError::Timeout("writing to the remote"))?
    }

    /// The next packet from the remote. Cancel-safe: a partial packet stays buffered.
    pub async fn recv(&mut self) -> Result<Packet, LinkError> {
        self.connection.recv().await?.ok_or(LinkError::Closed)
    }
}
