//! The firewall as loaded in the kernel (`nft list table inet moat`), judged against
//! the manifest: the input chain must drop by default; every rule that accepts a
//! broker port must be bound to the `allowed_v4`/`allowed_v6` sets, with one such rule
//! per family per port; the sets must hold nothing the manifest does not allow. Also
//! the global-IPv6 check, which needs to know whether inbound traffic is denied.
//! Only moat's own table is read; rules in other tables are not judged.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Finding;
use super::host::{HostFacts, is_public};
use crate::firewall::{FirewallError, Nft, TABLE};
use crate::policy::Policy;

const CHECK: &str = "firewall";
const FIX_APPLY: &str = "run `moat firewall --apply` (the NixOS module does it at boot)";

/// What the loaded ruleset showed.
#[derive(Debug, Clone, Default)]
pub struct FirewallState {
    /// moat's table is loaded and its input chain drops by default.
    pub inbound_deny: bool,
    pub findings: Vec<Finding>,
}

/// Reads the loaded table with `nft` and judges it.
pub fn inspect(nft: &Nft, policy: &Policy) -> FirewallState {
    match nft.list_table() {
        Ok(listing) => judge(&listing, policy),
        Err(FirewallError::Spawn { .. }) => FirewallState {
            inbound_deny: false,
            findings: vec![Finding::fail(
                CHECK,
                "no firewall: `nft` is not installed, so moat's ruleset cannot be loaded",
                "install nftables, then run `moat firewall --apply`",
            )],
        },
        Err(FirewallError::Rejected { stderr, .. })
            if stderr.contains("Operation not permitted") =>
        {
            FirewallState {
                inbound_deny: false,
                findings: vec![Finding::warn(
                    CHECK,
                    "cannot read the loaded ruleset: reading nftables needs root",
                    "run `sudo moat doctor`",
                )],
            }
        }
        Err(e) => FirewallState {
            inbound_deny: false,
            findings: vec![Finding::fail(
                CHECK,
                format!("no firewall: table inet {TABLE} is not loaded ({e})"),
                FIX_APPLY,
            )],
        },
    }
}

/// The lines of the block that starts with `header` (e.g. `chain input {`), up to its
/// closing brace.
fn block<'a>(listing: &'a str, header: &str) -> Option<Vec<&'a str>> {
    let mut lines = listing.lines().skip_while(|l| l.trim() != header);
    lines.next()?;
    let mut depth = 1usize;
    let mut body = Vec::new();
    for line in lines {
        depth += line.matches('{').count();
        depth = depth.saturating_sub(line.matches('}').count());
        if depth == 0 {
            return Some(body);
        }
        body.push(line.trim());
    }
    None
}

/// The TCP destination ports a rule names (`tcp dport 8883` or `tcp dport { 1883, 8883 }`).
fn rule_ports(rule: &str) -> Vec<u16> {
    let Some((_, rest)) = rule.split_once("tcp dport ") else {
        return Vec::new();
    };
    let list = if let Some(inner) = rest.strip_prefix('{') {
        inner.split('}').next().unwrap_or_default()
    } else {
        rest.split_whitespace().next().unwrap_or_default()
    };
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// The elements of a set, as networks (`a-b` ranges give both ends as host networks).
fn set_elements(listing: &str, name: &str) -> Vec<IpNet> {
    let Some(body) = block(listing, &format!("set {name} {{")) else {
        return Vec::new();
    };
    let joined = body.join(" ");
    let Some((_, rest)) = joined.split_once("elements = {") else {
        return Vec::new();
    };
    let inner = rest.split('}').next().unwrap_or_default();
    inner
        .split(',')
        .flat_map(|element| element.trim().split('-'))
        .filter_map(|text| {
            let text = text.trim();
            text.parse::<IpNet>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect()
}

/// Judges a listing of `table inet moat` against the policy.
pub fn judge(listing: &str, policy: &Policy) -> FirewallState {
    let mut findings = Vec::new();
    let Some(input) = block(listing, "chain input {") else {
        return FirewallState {
            inbound_deny: false,
            findings: vec![Finding::fail(
                CHECK,
                format!("no firewall: table inet {TABLE} has no input chain"),
                FIX_APPLY,
            )],
        };
    };
    let drops = input
        .iter()
        .any(|l| l.contains("hook input") && l.contains("policy drop"));
    if !drops {
        findings.push(Finding::fail(
            CHECK,
            format!("no firewall: the input chain of table inet {TABLE} does not drop by default"),
            FIX_APPLY,
        ));
    }

    let ports = policy.listener_ports();
    for port in &ports {
        let accepting: Vec<&str> = input
            .iter()
            .copied()
            .filter(|l| l.contains("accept") && rule_ports(l).contains(port))
            .collect();
        let open: Vec<&str> = accepting
            .iter()
            .copied()
            .filter(|l| !l.contains("saddr @allowed_v4") && !l.contains("saddr @allowed_v6"))
            .collect();
        if !open.is_empty() {
            findings.push(Finding::fail(
                CHECK,
                format!(
                    "port {port} is accepted from anywhere: `{}`",
                    open.join("`, `")
                ),
                FIX_APPLY,
            ));
        }
        for (family, set) in [
            ("IPv4", "ip saddr @allowed_v4"),
            ("IPv6", "ip6 saddr @allowed_v6"),
        ] {
            if !accepting.iter().any(|l| l.contains(set)) {
                findings.push(Finding::warn(
                    CHECK,
                    format!(
                        "no {family} rule for port {port}: {family} LAN clients cannot connect"
                    ),
                    FIX_APPLY,
                ));
            }
        }
    }

    let allowed = policy.networks.cidrs();
    let mut extra = Vec::new();
    let mut loaded = Vec::new();
    for set in ["allowed_v4", "allowed_v6"] {
        for element in set_elements(listing, set) {
            let inside = allowed.iter().any(|net| net.contains(&element));
            if !inside {
                extra.push(element.to_string());
            }
            loaded.push(element);
        }
    }
    if !extra.is_empty() {
        findings.push(Finding::fail(
            CHECK,
            format!(
                "the loaded firewall allows networks the manifest does not: {}",
                extra.join(", ")
            ),
            FIX_APPLY,
        ));
    }
    let missing: Vec<String> = allowed
        .iter()
        .filter(|net| !loaded.iter().any(|l| l.contains(*net)))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        findings.push(Finding::warn(
            CHECK,
            format!(
                "the loaded firewall is older than the manifest; it lacks {}",
                missing.join(", ")
            ),
            FIX_APPLY,
        ));
    }
    if findings.is_empty() {
        findings.push(Finding::pass(
            CHECK,
            format!(
                "table inet {TABLE} loaded: input drops by default, broker port(s) {} only from the allowed networks (IPv4 and IPv6)",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    FirewallState {
        inbound_deny: drops,
        findings,
    }
}

/// Global IPv6 addresses are reachable from the whole internet unless something denies
/// inbound traffic: FAIL without moat's input drop, PASS with it.
pub fn check_global_ipv6(facts: &HostFacts, firewall: &FirewallState) -> Finding {
    const CHECK6: &str = "ipv6";
    let global: Vec<String> = facts
        .addresses
        .iter()
        .filter(|a| a.ip.is_ipv6() && is_public(a.ip))
        .map(|a| {
            if a.interface.is_empty() {
                a.ip.to_string()
            } else {
                format!("{} ({})", a.ip, a.interface)
            }
        })
        .collect();
    if global.is_empty() {
        Finding::pass(CHECK6, "no global IPv6 address on this host")
    } else if firewall.inbound_deny {
        Finding::pass(
            CHECK6,
            format!(
                "global IPv6 address(es) {}; inbound traffic is denied by default",
                global.join(", ")
            ),
        )
    } else {
        Finding::fail(
            CHECK6,
            format!(
                "global IPv6 address(es) {} with no inbound deny: the internet can reach this host directly (no NAT in IPv6)",
                global.join(", ")
            ),
            FIX_APPLY,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;
    use crate::doctor::host::HostAddress;
    use crate::firewall::render;
    use crate::manifest::{LoadOptions, parse_str};

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

    fn policy() -> Policy {
        let text = format!(
            "version: 1\nbroker:\n  listen:\n    plain: {{ port: 1883 }}\n\
             devices:\n  plug:\n    password_hash: \"{HASH}\"\n    plaintext: true\n    publish: [\"p/1\"]\n"
        );
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        Policy::compile(&loaded.manifest).unwrap()
    }

    /// What `nft list table inet moat` prints for the rendered ruleset (the same rules;
    /// the listing drops comments and the create/delete preamble).
    fn listing(policy: &Policy) -> String {
        let spec = crate::firewall::FirewallSpec::for_policy(policy, false);
        let rendered = render(&spec);
        let start = rendered.find("table inet moat {\n").unwrap();
        rendered[start..]
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn moats_own_ruleset_passes() {
        let p = policy();
        let state = judge(&listing(&p), &p);
        assert!(state.inbound_deny);
        assert_eq!(state.findings.len(), 1, "{:?}", state.findings);
        assert_eq!(state.findings[0].status, Status::Pass);
    }

    #[test]
    fn an_accepting_input_policy_fails() {
        let p = policy();
        let text = listing(&p).replace("policy drop;", "policy accept;");
        let state = judge(&text, &p);
        assert!(!state.inbound_deny);
        assert!(state.findings.iter().any(|f| f.status == Status::Fail
            && f.message.contains("does not drop by default")));
    }

    #[test]
    fn an_unrestricted_broker_port_fails() {
        let p = policy();
        let text = listing(&p).replace(
            "ct state invalid drop",
            "ct state invalid drop\n\t\ttcp dport 8883 accept",
        );
        let state = judge(&text, &p);
        assert!(state.findings.iter().any(|f| f.status == Status::Fail
            && f.message.contains("port 8883 is accepted from anywhere")));
    }

    #[test]
    fn a_wider_set_fails_and_a_narrower_one_warns() {
        let p = policy();
        let wide = listing(&p).replace("10.0.0.0/8,", "0.0.0.0/0,");
        let state = judge(&wide, &p);
        assert!(
            state
                .findings
                .iter()
                .any(|f| f.status == Status::Fail && f.message.contains("0.0.0.0/0"))
        );
        let narrow = listing(&p).replace("10.0.0.0/8, ", "");
        let state = judge(&narrow, &p);
        assert!(
            state
                .findings
                .iter()
                .any(|f| f.status == Status::Warn && f.message.contains("lacks 10.0.0.0/8"))
        );
    }

    #[test]
    fn a_missing_family_warns() {
        let mut spec = crate::firewall::FirewallSpec::for_policy(&policy(), false);
        spec.networks.retain(|n| matches!(n, IpNet::V4(_)));
        let text =
            render(&spec).replace("ip6 saddr @allowed_v6 tcp dport { 1883, 8883 } accept", "");
        let state = judge(&text, &policy());
        assert!(
            state
                .findings
                .iter()
                .any(|f| f.status == Status::Warn
                    && f.message.contains("no IPv6 rule for port 8883"))
        );
    }

    #[test]
    fn ports_and_elements_are_parsed_from_listings() {
        assert_eq!(
            rule_ports("ip saddr @allowed_v4 tcp dport { 1883, 8883 } accept"),
            vec![1883, 8883]
        );
        assert_eq!(
            rule_ports("ip6 saddr @allowed_v6 tcp dport 22 accept"),
            vec![22]
        );
        assert!(rule_ports("iif \"lo\" accept").is_empty());
        let listing = "table inet moat {\n\tset allowed_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\
                       \t\telements = { 10.0.0.0/8, 127.0.0.0/8,\n\t\t\t     192.168.1.5-192.168.1.9 }\n\t}\n}\n";
        let elements = set_elements(listing, "allowed_v4");
        assert_eq!(elements.len(), 4, "{elements:?}");
    }

    #[test]
    fn global_ipv6_needs_an_inbound_deny() {
        let facts = HostFacts {
            listening: vec![],
            addresses: vec![HostAddress {
                ip: "2001:db8::5".parse().unwrap(),
                interface: "eth0".into(),
            }],
        };
        let open = FirewallState::default();
        assert_eq!(check_global_ipv6(&facts, &open).status, Status::Fail);
        let closed = FirewallState {
            inbound_deny: true,
            findings: vec![],
        };
        assert_eq!(check_global_ipv6(&facts, &closed).status, Status::Pass);
        let ula_only = HostFacts {
            listening: vec![],
            addresses: vec![HostAddress {
                ip: "fd00::5".parse().unwrap(),
                interface: "eth0".into(),
            }],
        };
        assert_eq!(check_global_ipv6(&ula_only, &open).status, Status::Pass);
    }
}
