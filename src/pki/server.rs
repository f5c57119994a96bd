//! The server certificates: which names they cover, and their specifications (an
//! ECDSA P-256 one always, an RSA-2048 one for clients that need it). Both carry the
//! same names and the serverAuth usage and live 398 days, the longest lifetime clients
//! that follow the CA/Browser Forum rules accept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::ExtendedKeyUsagePurpose;

use super::existing::SubjectName;
use super::keys::KeyKind;
use super::leaf::LeafSpec;
use super::{PkiError, ProvisionPlan, SERVER_CERT, SERVER_KEY, SERVER_RSA_CERT, SERVER_RSA_KEY};

pub const SERVER_LIFETIME_DAYS: u64 = 398;

/// The subject alternative names for a plan, in a stable order without duplicates:
/// each hostname, then `<machine name>.local` (the mDNS name of this machine, and only
/// of this machine: a `.local` name of another host would be a name nothing answers
/// for), then `localhost`, 127.0.0.1, ::1 and the declared addresses. A hostname that
/// is an IP literal becomes an IP name.
pub fn subject_names(plan: &ProvisionPlan) -> Result<Vec<SubjectName>, PkiError> {
    let mut names = Vec::new();
    let mut add = |name: SubjectName| {
        if !names.contains(&name) {
            names.push(name);
        }
    };
    for raw in &plan.hostnames {
        let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.parse::<IpAddr>() {
            add(SubjectName::Ip(ip));
            continue;
        }
        if !valid_hostname(&host) {
            return Err(PkiError::BadHostname(raw.clone()));
        }
        add(SubjectName::Dns(host));
    }
    if let Some(machine) = &plan.machine_name {
        let mdns = format!("{}.local", machine.to_ascii_lowercase());
        if !valid_hostname(&mdns) {
            return Err(PkiError::BadHostname(machine.clone()));
        }
        add(SubjectName::Dns(mdns));
    }
    add(SubjectName::Dns("localhost".into()));
    add(SubjectName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    add(SubjectName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    for address in &plan.addresses {
        add(SubjectName::Ip(*address));
    }
    Ok(names)
}

/// LDH labels of at most 63 characters, at most 253 in total.
fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The ECDSA (always) and RSA (if planned) server certificate specifications.
pub fn specs(plan: &ProvisionPlan) -> Result<Vec<LeafSpec>, PkiError> {
    let names = subject_names(plan)?;
    let common_name = match names.first() {
        Some(SubjectName::Dns(name)) => name.clone(),
        _ => "localhost".to_owned(),
    };
    let spec = |cert: &str, key: &str, kind| LeafSpec {
        cert_file: cert.to_owned(),
        key_file: key.to_owned(),
        key_kind: kind,
        common_name: common_name.clone(),
        names: names.clone(),
        usage: ExtendedKeyUsagePurpose::ServerAuth,
        lifetime_days: SERVER_LIFETIME_DAYS,
    };
    let mut specs = vec![spec(SERVER_CERT, SERVER_KEY, KeyKind::EcdsaP256)];
    if plan.rsa_server_key {
        specs.push(spec(SERVER_RSA_CERT, SERVER_RSA_KEY, KeyKind::Rsa2048));
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(hostnames: &[&str], addresses: &[&str]) -> ProvisionPlan {
        ProvisionPlan {
            hostnames: hostnames.iter().map(|s| s.to_string()).collect(),
            machine_name: None,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            rsa_server_key: false,
            certificate_devices: vec![],
        }
    }

    fn rendered(plan: &ProvisionPlan) -> Vec<String> {
        subject_names(plan)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn names_cover_hosts_the_machines_mdns_name_loopback_and_addresses() {
        let mut p = plan(&["moat.home.arpa", "Broker"], &["192.168.1.10", "fd00::5"]);
        p.machine_name = Some("pi4".into());
        assert_eq!(
            rendered(&p),
            [
                "DNS:moat.home.arpa",
                "DNS:broker",
                "DNS:pi4.local",
                "DNS:localhost",
                "IP:127.0.0.1",
                "IP:::1",
                "IP:192.168.1.10",
                "IP:fd00::5",
            ]
        );
    }

    #[test]
    fn a_local_name_is_only_the_machines_own() {
        // Issue 11: `moat.local` was added for `moat.home.arpa` on any host.
        let names = rendered(&plan(&["moat.home.arpa"], &[]));
        assert!(!names.iter().any(|n| n.ends_with(".local")), "{names:?}");
        let mut p = plan(&["moat.home.arpa"], &[]);
        p.machine_name = Some("moat".into());
        assert!(rendered(&p).contains(&"DNS:moat.local".to_string()));
    }

    #[test]
    fn duplicates_and_local_names_are_not_doubled() {
        let mut p = plan(
            &["moat.local", "moat", "localhost", "127.0.0.1"],
            &["127.0.0.1"],
        );
        p.machine_name = Some("moat".into());
        assert_eq!(
            rendered(&p),
            [
                "DNS:moat.local",
                "DNS:moat",
                "DNS:localhost",
                "IP:127.0.0.1",
                "IP:::1"
            ]
        );
    }

    #[test]
    fn bad_hostnames_are_refused() {
        for bad in ["", "-x", "a..b", "sp ace", "x_y", "*.home"] {
            assert!(
                matches!(
                    subject_names(&plan(&[bad], &[])),
                    Err(PkiError::BadHostname(_))
                ),
                "{bad:?}"
            );
        }
    }
}
