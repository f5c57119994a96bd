//! The certificates in the state directory: expiry (FAIL under 7 days, WARN under
//! 30), key type (ECDSA P-256 or RSA of at least 2048 bits), whether the server
//! certificates name every hostname and address of the manifest (what `provision`
//! would put there), and whether they cover what a LAN client would type: the TLS
//! listener's own address and this host's LAN addresses. It reads files only.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::public_key::PublicKey;

use super::Finding;
use crate::pki::{self, SubjectName};
use crate::policy::Policy;
use crate::provision;

const CHECK: &str = "tls";
const DAY: i64 = 24 * 60 * 60;
const FIX_PROVISION: &str =
    "run `moat provision` (or restart `moat serve`, which provisions on start)";

/// The facts doctor judges about one certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub not_after: i64,
    /// e.g. `ECDSA P-256`, `RSA-2048`.
    pub key: String,
    pub key_ok: bool,
    pub names: BTreeSet<SubjectName>,
}

/// Parses the first certificate of a PEM text.
pub fn cert_facts(pem: &[u8]) -> Result<CertFacts, String> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    // A SAN extension that does not parse counts as naming nothing.
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => pki::san_names(san.value),
        Ok(None) | Err(_) => BTreeSet::new(),
    };
    let (key, key_ok) = match cert.public_key().parsed() {
        Ok(PublicKey::EC(point)) if point.key_size() == 256 => ("ECDSA P-256".to_owned(), true),
        Ok(PublicKey::EC(point)) => (format!("ECDSA ({} bits)", point.key_size()), false),
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            (format!("RSA-{bits}"), bits >= 2048)
        }
        Ok(_) | Err(_) => ("an unsupported key type".to_owned(), false),
    };
    Ok(CertFacts {
        not_after: cert.validity().not_after.timestamp(),
        key,
        key_ok,
        names,
    })
}

/// Judges one certificate's expiry and key.
pub fn judge_cert(label: &str, facts: &CertFacts, now: i64) -> Vec<Finding> {
    let mut findings = Vec::new();
    let left_days = facts.not_after.saturating_sub(now) / DAY;
    if facts.not_after <= now {
        findings.push(Finding::fail(
            CHECK,
            format!("{label} has expired"),
            FIX_PROVISION,
        ));
    } else if left_days < 7 {
        findings.push(Finding::fail(
            CHECK,
            format!("{label} expires in {left_days} day(s)"),
            FIX_PROVISION,
        ));
    } else if left_days < 30 {
        findings.push(Finding::warn(
            CHECK,
            format!("{label} expires in {left_days} days"),
            FIX_PROVISION,
        ));
    } else {
        findings.push(Finding::pass(
            CHECK,
            format!("{label}: {}, {left_days} days left", facts.key),
        ));
    }
    if !facts.key_ok {
        findings.push(Finding::fail(
            CHECK,
            format!(
                "{label} uses {}; clients need ECDSA P-256 or RSA of 2048 bits or more",
                facts.key
            ),
            "move the old key away and run `moat provision` to issue a new one",
        ));
    }
    findings
}

/// Judges the server certificate's names against what the manifest wants.
pub fn judge_names(label: &str, facts: &CertFacts, wanted: &[SubjectName]) -> Finding {
    let missing: Vec<String> = wanted
        .iter()
        .filter(|n| !facts.names.contains(*n))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        Finding::pass(
            CHECK,
            format!("{label} names every hostname and address of the manifest"),
        )
    } else {
        Finding::fail(
            CHECK,
            format!(
                "{label} does not name {}: clients using them will refuse it",
                missing.join(", ")
            ),
            FIX_PROVISION,
        )
    }
}

/// Warns when a LAN client's address for the broker is not in the certificate: the
/// TLS listener's address when it is bound to one, or (bound to a wildcard) any of
/// this host's LAN addresses. Clients that check the name then refuse the broker
/// ("IP address mismatch" in Home Assistant).
pub fn judge_reach(label: &str, facts: &CertFacts, listen: IpAddr, lan: &[IpAddr]) -> Finding {
    let candidates: Vec<IpAddr> = if listen.is_unspecified() {
        // `0.0.0.0` takes IPv4 only; `::` both families.
        lan.iter()
            .copied()
            .filter(|ip| listen.is_ipv6() || ip.is_ipv4())
            .collect()
    } else if listen.is_loopback() {
        Vec::new()
    } else {
        vec![listen]
    };
    let missing: Vec<String> = candidates
        .iter()
        .filter(|ip| !facts.names.contains(&SubjectName::Ip(**ip)))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        return Finding::pass(
            CHECK,
            format!("{label} covers the addresses clients reach the listener on"),
        );
    }
    Finding::warn(
        CHECK,
        format!(
            "{label} does not cover {}, where the TLS listener is reached: a client \
             connecting by that address will refuse the certificate",
            missing.join(", ")
        ),
        format!(
            "add {} to broker.addresses (give the broker a fixed address first), then run \
             `moat provision`",
            missing.join(", ")
        ),
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `lan` is this host's LAN addresses (see `machine::lan_addresses`).
pub fn check(policy: &Policy, state_dir: &Path, lan: &[IpAddr]) -> Vec<Finding> {
    let now = now();
    let wanted = pki::subject_names(&provision::plan(policy)).unwrap_or_default();
    let mut findings = Vec::new();
    for (file, label, required, server) in [
        (pki::CA_CERT, "the CA certificate", true, false),
        (pki::SERVER_CERT, "the server certificate", true, true),
        (
            pki::SERVER_RSA_CERT,
            "the RSA server certificate",
            policy.needs_rsa_server_key(),
            true,
        ),
    ] {
        let path = state_dir.join(file);
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if required {
                    findings.push(Finding::fail(
                        CHECK,
                        format!("{} is missing", path.display()),
                        FIX_PROVISION,
                    ));
                }
                continue;
            }
            Err(e) => {
                findings.push(Finding::fail(
                    CHECK,
                    format!("cannot read {}: {e}", path.display()),
                    "check the state directory's owner and permissions",
                ));
                continue;
            }
        };
        match cert_facts(&pem) {
            Ok(facts) => {
                findings.extend(judge_cert(label, &facts, now));
                if server {
                    findings.push(judge_names(label, &facts, &wanted));
                }
                // Both server certificates carry the same names: judge reach once.
                if file == pki::SERVER_CERT {
                    findings.push(judge_reach(label, &facts, policy.listen_tls().ip(), lan));
                }
            }
            Err(e) => findings.push(Finding::fail(
                CHECK,
                format!("{} is not a usable certificate: {e}", path.display()),
                FIX_PROVISION,
            )),
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::pki::ProvisionPlan;

    fn facts(days_left: i64, names: &[SubjectName]) -> CertFacts {
        CertFacts {
            not_after: 1_000_000_000 + days_left * DAY,
            key: "ECDSA P-256".into(),
            key_ok: true,
            names: names.iter().cloned().collect(),
        }
    }

    #[test]
    fn expiry_thresholds() {
        let now = 1_000_000_000;
        assert_eq!(
            judge_cert("c", &facts(100, &[]), now)[0].status,
            Status::Pass
        );
        assert_eq!(
            judge_cert("c", &facts(20, &[]), now)[0].status,
            Status::Warn
        );
        assert_eq!(judge_cert("c", &facts(3, &[]), now)[0].status, Status::Fail);
        assert_eq!(
            judge_cert("c", &facts(-1, &[]), now)[0].status,
            Status::Fail
        );
    }

    #[test]
    fn a_weak_key_fails() {
        let mut f = facts(100, &[]);
        f.key = "RSA-1024".into();
        f.key_ok = false;
        let findings = judge_cert("c", &f, 1_000_000_000);
        assert_eq!(findings[1].status, Status::Fail);
        assert!(findings[1].message.contains("RSA-1024"));
    }

    #[test]
    fn missing_names_fail() {
        let host = SubjectName::Dns("moat.home.arpa".into());
        let ip = SubjectName::Ip("192.168.1.10".parse().unwrap());
        let f = facts(100, std::slice::from_ref(&host));
        assert_eq!(
            judge_names("c", &f, std::slice::from_ref(&host)).status,
            Status::Pass
        );
        let finding = judge_names("c", &f, &[host, ip]);
        assert_eq!(finding.status, Status::Fail);
        assert!(finding.message.contains("IP:192.168.1.10"));
    }

    #[test]
    fn provisioned_certificates_pass() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let plan = ProvisionPlan {
            hostnames: vec!["moat.home.arpa".into()],
            addresses: vec!["192.168.1.10".parse().unwrap()],
            ..ProvisionPlan::default()
        };
        pki::provision(&state, &plan).unwrap();
        let pem = std::fs::read(state.join(pki::SERVER_CERT)).unwrap();
        let f = cert_facts(&pem).unwrap();
        assert_eq!(f.key, "ECDSA P-256");
        let wanted = pki::subject_names(&plan).unwrap();
        assert_eq!(judge_names("s", &f, &wanted).status, Status::Pass);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lan = [ip("192.168.1.10"), ip("fd00::5")];
        // `::` takes both families: the ULA is missing.
        let both = judge_reach("s", &f, ip("::"), &lan);
        assert_eq!(both.status, Status::Warn);
        assert!(both.message.contains("fd00::5"), "{}", both.message);
        assert!(!both.message.contains("192.168.1.10"), "{}", both.message);
        // `0.0.0.0` takes IPv4 only, which is covered.
        assert_eq!(
            judge_reach("s", &f, ip("0.0.0.0"), &lan).status,
            Status::Pass
        );
        assert_eq!(
            judge_reach("s", &f, ip("127.0.0.1"), &lan).status,
            Status::Pass
        );
        let other = judge_reach("s", &f, ip("10.0.0.7"), &[]);
        assert_eq!(other.status, Status::Warn);
        assert!(other.message.contains("10.0.0.7"), "{}", other.message);
        assert!(
            judge_cert("s", &f, now())
                .iter()
                .all(|x| x.status == Status::Pass)
        );
    }
}
