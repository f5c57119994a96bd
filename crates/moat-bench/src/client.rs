//! The broker a scenario drives, resolved once from the command line into
//! `moat-client`'s endpoint (TCP, optionally from one of several loopback source
//! addresses, TLS with a CA file) plus the login every connection uses, and the few
//! load-generator habits on top of the shared client: retrying a login the broker
//! calls "server busy", checking a subscription was granted at the asked QoS, and
//! the send time stamped in payloads. It knows nothing of scenarios or reports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moat_client::{
    ClientError, ConnectOptions, Connection, Endpoint, PacketWriter, Roots, TlsConfig, TlsOptions,
    WireCount,
};
use moat_protocol::{
    Packet, Publish, QoS, ReasonCode, RetainHandling, SubscribeFilter, SubscriptionOptions,
};

use super::BenchError;
use super::options::{CommonArgs, Protocol};

/// Keep-alive announced in CONNECT: the longest moat accepts; runs are shorter.
const KEEP_ALIVE_SECS: u16 = 300;
/// Deadline for TCP + TLS + CONNACK and for SUBACK.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a login refused with "server busy" is retried.
const BUSY_RETRIES: u32 = 40;
/// How long a persistent benchmark session outlives its connection (v5).
const PERSISTENT_SESSION_SECS: u32 = 60;

/// The broker a scenario drives and how every connection logs in.
#[derive(Clone)]
pub(crate) struct Target {
    endpoint: Endpoint,
    username: Option<String>,
    password: Option<Bytes>,
    pub protocol: Protocol,
    source_addresses: u8,
    /// Log in with a session that outlives the connection (see `persistent`).
    persistent: bool,
}

impl Target {
    pub(crate) fn from_args(args: &CommonArgs) -> Result<Target, BenchError> {
        let mut endpoint = Endpoint::tcp(SocketAddr::new(args.host, args.port));
        if let Some(path) = &args.cafile {
            let mut tls = TlsOptions::new(Roots::CaFile(path.clone()), args.server_name.clone());
            tls.resumption = args.tls_resume;
            endpoint = endpoint.with_tls(TlsConfig::new(tls)?);
        }
        Ok(Target {
            endpoint,
            username: args.username.clone(),
            password: args.password.clone().map(Bytes::from),
            protocol: args.protocol,
            source_addresses: args.source_addresses,
            persistent: false,
        })
    }

    /// The same broker, logging in with sessions that outlive the connection (v5
    /// session expiry, 3.1.1 clean session off): a broker must then keep every
    /// QoS 1/2 message for them until acknowledged, which moat makes durable.
    pub(crate) fn persistent(&self) -> Target {
        Target {
            persistent: true,
            ..self.clone()
        }
    }

    /// The same broker; every connection opened through it adds what it reads from
    /// the socket (bytes, read calls, TLS records) to `count`.
    pub(crate) fn counting(&self, count: Arc<WireCount>) -> Target {
        Target {
            endpoint: self.endpoint.clone().with_read_count(count),
            ..self.clone()
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.endpoint.is_tls()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.endpoint.addr()
    }

    /// The login of the `index`-th connection: its loopback source address (IPv4
    /// targets with several source addresses only) and the session it asks for.
    fn options(&self, client_id: &str, index: usize) -> ConnectOptions {
        let addr = self.endpoint.addr();
        let mut endpoint = self.endpoint.clone();
        if self.source_addresses > 1 && addr.is_ipv4() {
            let host = 1 + (index % usize::from(self.source_addresses)) as u8;
            endpoint = endpoint.with_source(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)));
        }
        let mut options = ConnectOptions::new(endpoint, client_id);
        options.protocol = self.protocol.version();
        options.clean_start = !self.persistent;
        options.session_expiry = self.persistent.then_some(PERSISTENT_SESSION_SECS);
        options.keep_alive = KEEP_ALIVE_SECS;
        options.username = self.username.clone();
        options.password = self.password.clone();
        options.connect_timeout = SETUP_TIMEOUT;
        options
    }

    /// Opens a connection and logs in as `client_id`; fails unless CONNACK says
    /// success. A broker that answers "server busy" (moat while its bounded
    /// password-hashing pool is full) is asked again a bounded number of times, as a
    /// real client would.
    pub(crate) async fn connect(
        &self,
        client_id: &str,
        index: usize,
    ) -> Result<Connection, BenchError> {
        let options = self.options(client_id, index);
        let mut attempt = 0u32;
        loop {
            match Connection::open(&options).await {
                Err(ClientError::Refused(ReasonCode::ServerBusy)) if attempt < BUSY_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt.min(8)))).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// One login and goodbye, so a broker's credential cache is warm before a run
    /// (the first login of an identity costs moat a full argon2 verification).
    pub(crate) async fn warm_up(&self) -> Result<(), BenchError> {
        let connection = self.connect("bench-warm-up", 0).await?;
        Ok(connection.disconnect().await?)
    }
}

/// Subscribes to one filter and checks that the broker granted the QoS asked for.
pub(crate) async fn subscribe(
    connection: &mut Connection,
    filter: &str,
    qos: QoS,
) -> Result<(), BenchError> {
    let filter = SubscribeFilter {
        filter: filter.to_owned(),
        options: SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::DoNotSend,
        },
    };
    let reasons = connection.subscribe(vec![filter], SETUP_TIMEOUT).await?;
    match reasons.first() {
        Some(&reason) if reason as u8 == qos as u8 => Ok(()),
        Some(&reason) if !reason.is_error() => Err(BenchError::Downgraded(reason)),
        Some(&reason) => Err(ClientError::Rejected(reason).into()),
        None => Err(ClientError::Unexpected("empty SUBACK").into()),
    }
}

/// Queues a PUBLISH whose payload (`payload_len` bytes, at least 8, the last thing
/// encoded) starts with `stamp`, big-endian: one encoding of a template per message
/// instead of a new payload and packet.
pub(crate) fn queue_stamped(
    writer: &mut PacketWriter,
    packet: &Packet,
    payload_len: usize,
    stamp: u64,
) -> Result<(), BenchError> {
    if payload_len < 8 {
        return Err(ClientError::Unexpected("payload too short for a timestamp").into());
    }
    writer.queue_patched(packet, payload_len, |payload| {
        payload[..8].copy_from_slice(&stamp.to_be_bytes())
    })?;
    Ok(())
}

/// The send time a generator put in the first 8 bytes of a payload.
pub(crate) fn payload_stamp(publish: &Publish) -> Result<u64, BenchError> {
    publish
        .payload
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or(ClientError::Unexpected("PUBLISH without a timestamp").into())
}
