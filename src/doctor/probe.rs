//! A live self-probe of the running broker over TLS (the CA from the state directory),
//! speaking MQTT 5 with the crate's own codec:
//!
//! 1. an anonymous CONNECT must be refused;
//! 2. as a low-privilege identity, using the client certificate of a `certificate: true`
//!    device found in the state directory (doctor knows no passwords): SUBSCRIBE `#`
//!    and `$SYS/#` must not be granted (unless the device has a read-all role, for
//!    `#`), a PUBLISH to `$SYS/...` must be refused, and no `$` topic may be delivered.
//!
//! The probe connects with its own client id (`moat-doctor-probe`) and a clean
//! session, so it never takes over the device's real session. Every step is bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

use super::Finding;
use super::grants::{READ_ALL_ROLES, matches_everything};
use crate::pki;
use crate::policy::Policy;
use crate::protocol::{
    Codec, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, RetainHandling, Role,
    Subscribe, SubscribeFilter, SubscriptionOptions,
};

const CHECK: &str = "probe";
const CLIENT_ID: &str = "moat-doctor-probe";
/// Each probe (TCP, TLS, MQTT exchange) must finish within this.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// How long to watch for deliveries after subscribing.
const WATCH: Duration = Duration::from_millis(1500);
/// Largest packet the probe accepts from the broker.
const MAX_INCOMING: u32 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker sent a packet the codec refused: {0}")]
    Decode(String),
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Where to probe: `--probe HOST:PORT`, or the manifest's TLS listener reached over
/// loopback (the wildcard address becomes the loopback of its family).
pub fn target(policy: &Policy, requested: Option<&str>) -> Result<SocketAddr, String> {
    if let Some(text) = requested {
        return text
            .to_socket_addrs()
            .map_err(|e| format!("--probe {text}: {e}"))?
            .next()
            .ok_or_else(|| format!("--probe {text}: no address"));
    }
    let listen = policy.listen_tls();
    // `::` is bound dual-stack, or falls back to `0.0.0.0` on a host without IPv6
    // (net::listener): 127.0.0.1 reaches it either way.
    let ip = if listen.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    };
    Ok(SocketAddr::new(ip, listen.port()))
}

/// One MQTT connection over any stream, with the crate's codec.
struct Mqtt<S> {
    stream: S,
    codec: Codec,
    buffer: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Mqtt<S> {
    fn new(stream: S) -> Self {
        let mut codec = Codec::new(Role::Client, MAX_INCOMING);
        codec.set_version(ProtocolVersion::V5);
        Mqtt {
            stream,
            codec,
            buffer: BytesMut::with_capacity(4096),
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ProbeError> {
        let mut out = BytesMut::new();
        self.codec
            .encode(packet, &mut out)
            .map_err(|e| ProbeError::Encode(e.to_string()))?;
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next packet, `None` when the broker closed the connection or `until` passed.
    async fn recv(&mut self, until: Instant) -> Result<Option<Packet>, ProbeError> {
        loop {
            if let Some(packet) = self
                .codec
                .decode(&mut self.buffer)
                .map_err(|e| ProbeError::Decode(e.to_string()))?
            {
                return Ok(Some(packet));
            }
            match tokio::time::timeout_at(until, self.stream.read_buf(&mut self.buffer)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                // A reset after a refusal is a close, as far as the probe cares.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }
}

fn connect_packet() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: CLIENT_ID.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

fn read_ca(state_dir: &Path) -> Result<CertificateDer<'static>, ProbeError> {
    let path = state_dir.join(pki::CA_CERT);
    CertificateDer::from_pem_file(&path)
        .map_err(|e| ProbeError::Config(format!("{}: {e}", path.display())))
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

async fn open_tls(
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    client_cert: Option<ClientCert>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| ProbeError::Config(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ProbeError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|source| ProbeError::Tls { addr, source })
}

/// What the broker did with an anonymous CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonymousOutcome {
    Accepted,
    Refused(String),
    Closed,
    Unexpected(String),
}

async fn anonymous(
    addr: SocketAddr,
    ca: CertificateDer<'static>,
) -> Result<AnonymousOutcome, ProbeError> {
    let until = Instant::now() + PROBE_DEADLINE;
    let tls = tokio::time::timeout_at(until, open_tls(addr, ca, None))
        .await
        .map_err(|_| ProbeError::Timeout(PROBE_DEADLINE))??;
    let mut mqtt = Mqtt::new(tls);
    mqtt.send(&connect_packet()).await?;
    Ok(match mqtt.recv(until).await {
        Ok(Some(Packet::ConnAck(ack))) if ack.reason.is_error() => {
            AnonymousOutcome::Refused(format!("{:?}", ack.reason))
        }
        Ok(Some(Packet::ConnAck(_))) => AnonymousOutcome::Accepted,
        Ok(Some(Packet::Disconnect(d))) => AnonymousOutcome::Refused(format!("{:?}", d.reason)),
        Ok(Some(other)) => AnonymousOutcome::Unexpected(format!("{other:?}")),
        Ok(None) | Err(ProbeError::Io(_)) => AnonymousOutcome::Closed,
        Err(e) => return Err(e),
    })
}

/// What a low-privilege identity managed to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LowPrivilegeOutcome {
    pub connected: bool,
    pub granted_everything: bool,
    pub granted_sys: bool,
    pub sys_publish_accepted: bool,
    /// `$` topics delivered to the probe.
    pub dollar_topics: Vec<String>,
}

async fn low_privilege(
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    cert: ClientCert,
) -> Result<LowPrivilegeOutcome, ProbeError> {
    let until = Instant::now() + PROBE_DEADLINE;
    let tls = tokio::time::timeout_at(until, open_tls(addr, ca, Some(cert)))
        .await
        .map_err(|_| ProbeError::Timeout(PROBE_DEADLINE))??;
    let mut mqtt = Mqtt::new(tls);
    let mut outcome = LowPrivilegeOutcome::default();
    mqtt.send(&connect_packet()).await?;
    match mqtt.recv(until).await? {
        Some(Packet::ConnAck(ack)) if !ack.reason.is_error() => outcome.connected = true,
        _ => return Ok(outcome),
    }
    let options = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    let filters = ["#", "$SYS/#"].map(|f| SubscribeFilter {
        filter: f.to_owned(),
        options,
    });
    mqtt.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: filters.to_vec(),
        properties: Properties::default(),
    }))
    .await?;
    mqtt.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "$SYS/moat-doctor-probe".to_owned(),
        packet_id: 2,
        payload: bytes::Bytes::from_static(b"probe"),
        properties: Properties::default(),
    }))
    .await?;
    let watch_until = (Instant::now() + WATCH).min(until);
    while let Some(packet) = mqtt.recv(watch_until).await? {
        match packet {
            Packet::SubAck(ack) if ack.packet_id == 1 => {
                let granted = |i: usize| ack.reasons.get(i).is_some_and(|r| !r.is_error());
                outcome.granted_everything = granted(0);
                outcome.granted_sys = granted(1);
            }
            Packet::PubAck(ack) if ack.packet_id == 2 => {
                outcome.sys_publish_accepted = !ack.reason.is_error();
            }
            Packet::Publish(p) if p.topic.starts_with('$') && outcome.dollar_topics.len() < 8 => {
                outcome.dollar_topics.push(p.topic);
            }
            Packet::Disconnect(_) => break,
            _ => {}
        }
    }
    let _ = mqtt
        .send(&Packet::Disconnect(crate::protocol::Disconnect {
            reason: crate::protocol::ReasonCode::Success,
            properties: Properties::default(),
        }))
        .await;
    Ok(outcome)
}

/// A certificate device with a bundle in the state directory: (name, read-all role?).
fn probe_device(policy: &Policy, state_dir: &Path) -> Option<(String, bool, ClientCert)> {
    for name in policy.certificate_devices() {
        let dir = pki::device_bundle_dir(state_dir, name);
        let chain: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(dir.join("cert.pem")) {
            Ok(iter) => iter.collect(),
            Err(_) => continue,
        };
        let (Ok(chain), Ok(key)) = (chain, PrivateKeyDer::from_pem_file(dir.join("key.pem")))
        else {
            continue;
        };
        let reads_all = policy.identity(name).is_some_and(|i| {
            i.roles.iter().any(|r| READ_ALL_ROLES.contains(&r.as_str()))
                || i.acl
                    .subscribe_grants()
                    .iter()
                    .any(|g| matches_everything(&g.pattern))
        });
        return Some((name.to_owned(), reads_all, (chain, key)));
    }
    None
}

/// Judges the anonymous probe.
pub fn judge_anonymous(addr: SocketAddr, result: Result<AnonymousOutcome, ProbeError>) -> Finding {
    match result {
        Ok(AnonymousOutcome::Accepted) => Finding::fail(
            CHECK,
            format!(
                "{addr} accepted an anonymous CONNECT: this is not moat, or not moat's TLS listener"
            ),
            "stop whatever listens there and start `moat serve`",
        ),
        Ok(AnonymousOutcome::Refused(reason)) => Finding::pass(
            CHECK,
            format!("{addr} refused an anonymous CONNECT ({reason})"),
        ),
        Ok(AnonymousOutcome::Closed) => Finding::pass(
            CHECK,
            format!("{addr} closed the connection on an anonymous CONNECT"),
        ),
        Ok(AnonymousOutcome::Unexpected(what)) => Finding::warn(
            CHECK,
            format!("{addr} answered an anonymous CONNECT with {what}"),
            "check that moat serves that address",
        ),
        Err(e @ ProbeError::Connect { .. }) => Finding::warn(
            CHECK,
            format!("no broker to probe: {e}"),
            "start the broker (`moat serve`), or point `--probe HOST:PORT` at it",
        ),
        Err(e) => Finding::warn(
            CHECK,
            format!("the anonymous probe of {addr} did not complete: {e}"),
            "check that the address is moat's TLS listener and that the state directory holds its CA",
        ),
    }
}

/// Judges the low-privilege probe.
pub fn judge_low_privilege(
    device: &str,
    reads_all: bool,
    result: Result<LowPrivilegeOutcome, ProbeError>,
) -> Vec<Finding> {
    let outcome = match result {
        Ok(o) if o.connected => o,
        Ok(_) => {
            return vec![Finding::warn(
                CHECK,
                format!(
                    "device {device}'s certificate was not accepted, so the low-privilege probe did not run"
                ),
                "run `moat provision` and restart the broker so its certificate is current",
            )];
        }
        Err(e) => {
            return vec![Finding::warn(
                CHECK,
                format!("the low-privilege probe as {device} did not complete: {e}"),
                "check that the broker is running and reachable at the probe address",
            )];
        }
    };
    let mut findings = Vec::new();
    if outcome.granted_everything && !reads_all {
        findings.push(Finding::fail(
            CHECK,
            format!("device {device} was allowed to subscribe to `#`"),
            format!("remove the grant of `#` from {device} and reload"),
        ));
    }
    if outcome.granted_sys {
        findings.push(Finding::fail(
            CHECK,
            format!("device {device} was allowed to subscribe to `$SYS/#`"),
            "upgrade moat: `$SYS` must never be granted",
        ));
    }
    if outcome.sys_publish_accepted {
        findings.push(Finding::fail(
            CHECK,
            format!("device {device} was allowed to publish to `$SYS/moat-doctor-probe`"),
            "upgrade moat: publishing to `$` topics must be refused",
        ));
    }
    if !outcome.dollar_topics.is_empty() {
        findings.push(Finding::fail(
            CHECK,
            format!(
                "`$` topics were delivered to device {device}: {}",
                outcome.dollar_topics.join(", ")
            ),
            "upgrade moat: `#` must never match `$` topics",
        ));
    }
    if findings.is_empty() {
        findings.push(Finding::pass(
            CHECK,
            format!(
                "as device {device}: `#`{} and `$SYS/#` refused, publishing to `$SYS` refused, no `$` topic delivered",
                if reads_all { " (granted by its read-all role)" } else { "" }
            ),
        ));
    }
    findings
}

pub fn check(policy: &Policy, state_dir: &Path, requested: Option<&str>) -> Vec<Finding> {
    let addr = match target(policy, requested) {
        Ok(addr) => addr,
        Err(e) => {
            return vec![Finding::warn(
                CHECK,
                format!("cannot probe: {e}"),
                "use `--probe HOST:PORT` with an address and port",
            )];
        }
    };
    let ca = match read_ca(state_dir) {
        Ok(ca) => ca,
        Err(e) => {
            return vec![Finding::warn(
                CHECK,
                format!("cannot probe without the CA certificate: {e}"),
                "run `moat provision`",
            )];
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![Finding::warn(
                CHECK,
                format!("cannot start the probe: {e}"),
                "",
            )];
        }
    };
    let mut findings = vec![judge_anonymous(
        addr,
        runtime.block_on(anonymous(addr, ca.clone())),
    )];
    if findings[0].message.starts_with("no broker to probe") {
        return findings;
    }
    match probe_device(policy, state_dir) {
        Some((name, reads_all, cert)) => {
            let result = runtime.block_on(low_privilege(addr, ca, cert));
            findings.extend(judge_low_privilege(&name, reads_all, result));
        }
        None => findings.push(Finding::warn(
            CHECK,
            "low-privilege probes skipped: doctor knows no passwords and found no device certificate in the state directory",
            "declare a device with `certificate: true` and run `moat provision`, so doctor can probe as it",
        )),
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn the_default_target_is_the_tls_port_on_loopback() {
        let loaded = crate::manifest::parse_str(
            "version: 1\nbroker:\n  listen:\n    tls: { address: \"::\", port: 9883 }\n",
            "t.yaml",
            crate::manifest::LoadOptions::default(),
        )
        .unwrap();
        let p = Policy::compile(&loaded.manifest).unwrap();
        assert_eq!(target(&p, None).unwrap(), "127.0.0.1:9883".parse().unwrap());
        assert_eq!(
            target(&p, Some("127.0.0.1:1234")).unwrap(),
            "127.0.0.1:1234".parse().unwrap()
        );
        assert!(target(&p, Some("no-port")).is_err());
    }

    #[test]
    fn an_accepted_anonymous_connect_fails() {
        let addr: SocketAddr = "127.0.0.1:8883".parse().unwrap();
        assert_eq!(
            judge_anonymous(addr, Ok(AnonymousOutcome::Accepted)).status,
            Status::Fail
        );
        assert_eq!(
            judge_anonymous(addr, Ok(AnonymousOutcome::Refused("NotAuthorized".into()))).status,
            Status::Pass
        );
        assert_eq!(
            judge_anonymous(addr, Ok(AnonymousOutcome::Closed)).status,
            Status::Pass
        );
    }

    #[test]
    fn low_privilege_findings() {
        let clean = LowPrivilegeOutcome {
            connected: true,
            ..LowPrivilegeOutcome::default()
        };
        let f = judge_low_privilege("cam", false, Ok(clean.clone()));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Pass);
        let bad = LowPrivilegeOutcome {
            granted_everything: true,
            granted_sys: true,
            sys_publish_accepted: true,
            dollar_topics: vec!["$SYS/broker/uptime".into()],
            ..clean.clone()
        };
        let f = judge_low_privilege("cam", false, Ok(bad.clone()));
        assert_eq!(f.len(), 4);
        assert!(f.iter().all(|x| x.status == Status::Fail));
        // `#` is fine for a read-all role; `$SYS` never is.
        let f = judge_low_privilege("cam", true, Ok(bad));
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn nothing_listening_is_a_warning_not_a_failure() {
        let loaded = crate::manifest::parse_str(
            "version: 1\n",
            "t.yaml",
            crate::manifest::LoadOptions::default(),
        )
        .unwrap();
        let p = Policy::compile(&loaded.manifest).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        pki::provision(&state, &pki::ProvisionPlan::default()).unwrap();
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let findings = check(&p, &state, Some(&format!("127.0.0.1:{port}")));
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Warn);
        assert!(findings[0].message.contains("no broker to probe"));
    }
}
