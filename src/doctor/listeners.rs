//! Listening sockets versus the allowed networks. The rule for the plaintext port
//! (the manifest's `listen.plain`, 1883 if absent): a socket listening there is
//! exposed when it is bound to a public address, or to the wildcard (`0.0.0.0`/`::`)
//! while the host has a public address. An exposed plaintext listener is a FAIL:
//! passwords would cross the internet in clear if anything let a packet through.
//! The TLS listener may be bound anywhere (admission and the firewall restrict it);
//! it only has to be there.

use std::net::SocketAddr;

use super::Finding;
use super::host::{HostFacts, is_public};
use crate::policy::{Policy, Transport};

const CHECK: &str = "listeners";

/// Whether a socket bound to `local` can be reached on a public address of this host.
pub fn exposed(local: SocketAddr, public_addresses: &[std::net::IpAddr]) -> bool {
    let ip = local.ip();
    if ip.is_unspecified() {
        // `0.0.0.0` takes IPv4 only; `::` takes both families unless bindv6only is
        // set, so count every public address for it.
        return public_addresses.iter().any(|p| ip.is_ipv6() || p.is_ipv4());
    }
    is_public(ip)
}

pub fn check(policy: &Policy, facts: &HostFacts) -> Vec<Finding> {
    let public = facts.public_addresses();
    let plain_port = policy
        .listen_plain()
        .map_or(Transport::Plain.default_port(), |addr| addr.port());
    let tls_port = policy.listen_tls().port();
    let mut findings = Vec::new();

    let plain: Vec<SocketAddr> = facts
        .listening
        .iter()
        .copied()
        .filter(|s| s.port() == plain_port)
        .collect();
    let exposed_plain: Vec<String> = plain
        .iter()
        .filter(|s| exposed(**s, &public))
        .map(ToString::to_string)
        .collect();
    if !exposed_plain.is_empty() {
        let public: Vec<String> = public.iter().map(ToString::to_string).collect();
        findings.push(Finding::fail(
            CHECK,
            format!(
                "plaintext listener bound to a public interface: {} (public addresses: {})",
                exposed_plain.join(", "),
                public.join(", ")
            ),
            format!(
                "bind listen.plain to a LAN address (e.g. address: \"192.168.1.10\") or remove it; \
                 no identity should send a password over port {plain_port} from outside"
            ),
        ));
    } else if plain.is_empty() {
        findings.push(Finding::pass(
            CHECK,
            format!("nothing listens on the plaintext port {plain_port}"),
        ));
    } else {
        findings.push(Finding::pass(
            CHECK,
            format!(
                "plaintext listener {} is not reachable on a public address (this host has none)",
                plain
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }

    let tls: Vec<String> = facts
        .listening
        .iter()
        .filter(|s| s.port() == tls_port)
        .map(ToString::to_string)
        .collect();
    if tls.is_empty() {
        findings.push(Finding::warn(
            CHECK,
            format!("nothing listens on the TLS port {tls_port}: is the broker running?"),
            "start it: `systemctl start moat` or `moat serve`",
        ));
    } else {
        findings.push(Finding::pass(
            CHECK,
            format!(
                "TLS listener on {} (admission check and firewall limit it to the allowed networks)",
                tls.join(", ")
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::doctor::host::HostAddress;
    use crate::manifest::{LoadOptions, parse_str};

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

    fn policy(plain: &str) -> Policy {
        let text = format!(
            "version: 1\nbroker:\n  listen:\n    plain: {{ address: \"{plain}\", port: 1883 }}\n\
             devices:\n  plug:\n    password_hash: \"{HASH}\"\n    plaintext: true\n    publish: [\"p/1\"]\n"
        );
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        Policy::compile(&loaded.manifest).unwrap()
    }

    fn facts(listening: &[&str], addresses: &[&str]) -> HostFacts {
        HostFacts {
            listening: listening.iter().map(|s| s.parse().unwrap()).collect(),
            addresses: addresses
                .iter()
                .map(|a| HostAddress {
                    ip: a.parse().unwrap(),
                    interface: "eth0".into(),
                })
                .collect(),
        }
    }

    fn plain_status(f: &HostFacts) -> Status {
        check(&policy("0.0.0.0"), f)[0].status
    }

    #[test]
    fn wildcard_plaintext_with_a_public_address_fails() {
        let f = facts(
            &["0.0.0.0:1883", "0.0.0.0:8883"],
            &["127.0.0.1", "198.51.100.5"],
        );
        let findings = check(&policy("0.0.0.0"), &f);
        assert_eq!(findings[0].status, Status::Fail);
        assert!(
            findings[0]
                .message
                .contains("plaintext listener bound to a public interface")
        );
        assert_eq!(findings[1].status, Status::Pass);
    }

    #[test]
    fn wildcard_plaintext_on_a_lan_only_host_passes() {
        let f = facts(
            &["0.0.0.0:1883"],
            &["127.0.0.1", "192.168.1.10", "fd00::10"],
        );
        assert_eq!(plain_status(&f), Status::Pass);
    }

    #[test]
    fn family_matters_for_the_wildcard() {
        // 0.0.0.0 does not take IPv6; a global IPv6 address alone does not expose it.
        let f = facts(&["0.0.0.0:1883"], &["192.168.1.10", "2001:db8::5"]);
        assert_eq!(plain_status(&f), Status::Pass);
        // `::` takes both.
        let f = facts(&["[::]:1883"], &["192.168.1.10", "2001:db8::5"]);
        assert_eq!(plain_status(&f), Status::Fail);
    }

    #[test]
    fn bound_to_a_public_address_fails_and_to_a_lan_address_passes() {
        let f = facts(&["198.51.100.5:1883"], &["198.51.100.5"]);
        assert_eq!(plain_status(&f), Status::Fail);
        let f = facts(&["192.168.1.10:1883"], &["192.168.1.10", "198.51.100.5"]);
        assert_eq!(plain_status(&f), Status::Pass);
    }

    #[test]
    fn a_missing_tls_listener_warns() {
        let f = facts(&[], &["192.168.1.10"]);
        let findings = check(&policy("0.0.0.0"), &f);
        assert_eq!(findings[1].status, Status::Warn);
    }
}
