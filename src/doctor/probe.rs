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
use std::time::Duration;

use moat_client::{
    ClientCertificate, ClientError, ConnectOptions, Connection, Endpoint, Roots, TlsConfig,
    TlsOptions,
};
use moat_protocol::{
    Packet, Properties, Publish, QoS, RetainHandling, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

use super::Finding;
use super::grants::{READ_ALL_ROLES, matches_everything};
use crate::pki;
use crate::policy::Policy;

const CHECK: &str = "probe";
const CLIENT_ID: &str = "moat-doctor-probe";
/// Each probe (TCP, TLS, MQTT exchange) must finish within this.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// How long to watch for deliveries after subscribing.
const WATCH: Duration = Duration::from_millis(1500);

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

fn read_ca(state_dir: &Path) -> Result<CertificateDer<'static>, ClientError> {
    let path = state_dir.join(pki::CA_CERT);
    CertificateDer::from_pem_file(&path)
        .map_err(|e| ClientError::TlsConfig(format!("{}: {e}", path.display())))
}

/// The probe's login: TLS to `addr` checked against moat's CA (by IP address, which
/// moat's server certificate carries), MQTT 5, a clean session of its own.
fn options(
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    client_cert: Option<ClientCertificate>,
) -> Result<ConnectOptions, ClientError> {
    let mut tls = TlsOptions::new(Roots::Certificates(vec![ca]), addr.ip().to_string());
    tls.client_certificate = client_cert;
    let endpoint = Endpoint::tcp(addr).with_tls(TlsConfig::new(tls)?);
    let mut options = ConnectOptions::new(endpoint, CLIENT_ID);
    options.keep_alive = 30;
    options.connect_timeout = PROBE_DEADLINE;
    Ok(options)
}

/// The next packet, `None` when the broker closed the connection or `until` passed.
async fn recv_until(
    connection: &mut Connection,
    until: Instant,
) -> Result<Option<Packet>, ClientError> {
    match tokio::time::timeout_at(until, connection.recv()).await {
        Err(_) => Ok(None),
        // A reset after a refusal is a close, as far as the probe cares.
        Ok(Err(ClientError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
        Ok(other) => other,
    }
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
) -> Result<AnonymousOutcome, ClientError> {
    Ok(match Connection::open(&options(addr, ca, None)?).await {
        Ok(connection) => {
            let _ = connection.disconnect().await;
            AnonymousOutcome::Accepted
        }
        Err(ClientError::Refused(reason) | ClientError::Disconnected(reason)) => {
            AnonymousOutcome::Refused(format!("{reason:?}"))
        }
        Err(ClientError::Unexpected(what)) => AnonymousOutcome::Unexpected(what.to_owned()),
        Err(ClientError::Closed | ClientError::Io(_)) => AnonymousOutcome::Closed,
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
    cert: ClientCertificate,
) -> Result<LowPrivilegeOutcome, ClientError> {
    let until = Instant::now() + PROBE_DEADLINE;
    let mut outcome = LowPrivilegeOutcome::default();
    let mut mqtt = match Connection::open(&options(addr, ca, Some(cert))?).await {
        Ok(connection) => connection,
        Err(ClientError::Refused(_) | ClientError::Disconnected(_) | ClientError::Closed) => {
            return Ok(outcome);
        }
        Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Ok(outcome);
        }
        Err(e) => return Err(e),
    };
    outcome.connected = true;
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
        topic: "$SYS/moat-doctor-probe".into(),
        packet_id: 2,
        payload: bytes::Bytes::from_static(b"probe"),
        properties: Properties::default(),
    }))
    .await?;
    let watch_until = (Instant::now() + WATCH).min(until);
    while let Some(packet) = recv_until(&mut mqtt, watch_until).await? {
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
                outcome.dollar_topics.push(p.topic.to_string());
            }
            Packet::Disconnect(_) => break,
            _ => {}
        }
    }
    let _ = mqtt.disconnect().await;
    Ok(outcome)
}

/// A certificate device with a bundle in the state directory: (name, read-all role?).
fn probe_device(policy: &Policy, state_dir: &Path) -> Option<(String, bool, ClientCertificate)> {
    for name in policy.certificate_devices() {
        let dir = pki::device_bundle_dir(state_dir, name);
        let Ok(cert) =
            ClientCertificate::from_pem_files(&dir.join("cert.pem"), &dir.join("key.pem"))
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
        return Some((name.to_owned(), reads_all, cert));
    }
    None
}

/// Judges the anonymous probe.
pub fn judge_anonymous(addr: SocketAddr, result: Result<AnonymousOutcome, ClientError>) -> Finding {
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
        Err(e @ ClientError::Connect { .. }) => Finding::warn(
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
    result: Result<LowPrivilegeOutcome, ClientError>,
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
