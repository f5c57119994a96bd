//! Renders a [`FirewallSpec`] into nftables text. Pure: no I/O, deterministic output.
//!
//! The file is one transaction: `table inet moat {}` (create if absent), `delete table
//! inet moat`, then the full table. Loading it replaces moat's table atomically and is
//! idempotent; other tables (Docker's, the distribution's) are left alone.

use std::fmt::Write as _;

use ipnet::IpNet;

use super::{FirewallSpec, SSH_PORT, TABLE};

/// Renders the complete ruleset for `spec`.
pub fn render(spec: &FirewallSpec) -> String {
    let (v4, v6) = split_networks(&spec.networks);
    let ports = sorted_ports(&spec.broker_ports);

    let mut out = String::with_capacity(4096);
    out.push_str("#!/usr/sbin/nft -f\n");
    out.push_str(
        "# Rendered by `moat firewall` from the manifest; change the manifest, not this.\n",
    );
    out.push_str("# Replaces only moat's own table, atomically (one transaction).\n");
    let _ = writeln!(out, "table inet {TABLE} {{}}");
    let _ = writeln!(out, "delete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    push_set(&mut out, "allowed_v4", "ipv4_addr", &v4);
    out.push('\n');
    push_set(&mut out, "allowed_v6", "ipv6_addr", &v6);
    out.push('\n');
    push_input(&mut out, spec, &ports);
    out.push('\n');
    out.push_str("\tchain forward {\n");
    out.push_str("\t\ttype filter hook forward priority filter; policy drop;\n");
    out.push_str("\t}\n\n");
    push_output(&mut out, spec);
    out.push_str("}\n");
    out
}

/// Splits the networks by family, clears host bits and merges overlaps: nft refuses
/// overlapping elements in an interval set.
fn split_networks(networks: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let truncated: Vec<IpNet> = networks.iter().map(IpNet::trunc).collect();
    IpNet::aggregate(&truncated)
        .into_iter()
        .partition(|net| matches!(net, IpNet::V4(_)))
}

fn sorted_ports(ports: &[u16]) -> Vec<u16> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn push_set(out: &mut String, name: &str, kind: &str, nets: &[IpNet]) {
    let _ = writeln!(out, "\tset {name} {{");
    let _ = writeln!(out, "\t\ttype {kind}");
    out.push_str("\t\tflags interval\n");
    // An empty set must have no `elements` line at all: `elements = { }` is a syntax error.
    if !nets.is_empty() {
        let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
    }
    out.push_str("\t}\n");
}

fn port_match(ports: &[u16]) -> String {
    match ports {
        [one] => one.to_string(),
        many => {
            let list: Vec<String> = many.iter().map(u16::to_string).collect();
            format!("{{ {} }}", list.join(", "))
        }
    }
}

fn push_input(out: &mut String, spec: &FirewallSpec, ports: &[u16]) {
    out.push_str("\tchain input {\n");
    out.push_str("\t\ttype filter hook input priority filter; policy drop;\n");
    out.push_str("\t\tct state established,related accept\n");
    out.push_str("\t\tct state invalid drop\n");
    out.push_str("\t\tiif \"lo\" accept\n");

    out.push_str("\t\t# ICMP that IPv4 needs: path MTU discovery, errors, a rate-limited ping.\n");
    out.push_str(
        "\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } accept\n",
    );
    out.push_str("\t\ticmp type echo-request limit rate 5/second accept\n");
    out.push_str("\t\t# ICMPv6 that IPv6 needs (RFC 4890): errors, PMTU, ping.\n");
    out.push_str("\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept\n");
    out.push_str("\t\ticmpv6 type echo-request limit rate 5/second accept\n");
    out.push_str(
        "\t\t# Neighbour discovery and router adverts (SLAAC): on-link only, hop limit 255.\n",
    );
    out.push_str("\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255 accept\n");
    out.push_str("\t\t# MLD queries from the local router, so multicast-snooping switches keep us subscribed.\n");
    out.push_str("\t\tip6 saddr fe80::/10 icmpv6 type mld-listener-query accept\n");

    if spec.dhcp_client {
        out.push_str("\t\t# DHCP replies (broadcast replies are not tracked by conntrack).\n");
        out.push_str("\t\tmeta nfproto ipv4 udp sport 67 udp dport 68 accept\n");
        out.push_str("\t\tip6 saddr fe80::/10 udp sport 547 udp dport 546 accept\n");
    }
    if spec.mdns {
        out.push_str("\t\t# Multicast DNS (moat.local).\n");
        out.push_str("\t\tip daddr 224.0.0.251 udp dport 5353 accept\n");
        out.push_str("\t\tip6 daddr ff02::fb udp dport 5353 accept\n");
    }
    if !ports.is_empty() {
        let ports = port_match(ports);
        out.push_str("\t\t# The broker: only from the allowed networks.\n");
        let _ = writeln!(out, "\t\tip saddr @allowed_v4 tcp dport {ports} accept");
        let _ = writeln!(out, "\t\tip6 saddr @allowed_v6 tcp dport {ports} accept");
    }
    if spec.ssh {
        out.push_str("\t\t# SSH: only from the allowed networks.\n");
        let _ = writeln!(out, "\t\tip saddr @allowed_v4 tcp dport {SSH_PORT} accept");
        let _ = writeln!(out, "\t\tip6 saddr @allowed_v6 tcp dport {SSH_PORT} accept");
    }
    out.push_str("\t}\n");
}

fn push_output(out: &mut String, spec: &FirewallSpec) {
    out.push_str("\tchain output {\n");
    if !spec.egress {
        out.push_str("\t\ttype filter hook output priority filter; policy accept;\n");
        out.push_str("\t}\n");
        return;
    }
    out.push_str("\t\ttype filter hook output priority filter; policy drop;\n");
    out.push_str("\t\tct state established,related accept\n");
    out.push_str("\t\toif \"lo\" accept\n");
    out.push_str("\t\tip daddr @allowed_v4 accept\n");
    out.push_str("\t\tip6 daddr @allowed_v6 accept\n");
    push_bridge_remotes(out, spec);
    out.push_str("\t\t# Name resolution and time (the Pi has no real-time clock).\n");
    out.push_str("\t\tudp dport 53 accept\n");
    out.push_str("\t\ttcp dport 53 accept\n");
    out.push_str("\t\tudp dport 123 accept\n");
    if spec.dhcp_client {
        out.push_str("\t\tmeta nfproto ipv4 udp sport 68 udp dport 67 accept\n");
        out.push_str("\t\tmeta nfproto ipv6 udp sport 546 udp dport 547 accept\n");
    }
    if spec.mdns {
        out.push_str("\t\tip daddr 224.0.0.251 udp dport 5353 accept\n");
        out.push_str("\t\tip6 daddr ff02::fb udp dport 5353 accept\n");
        out.push_str("\t\tip protocol igmp accept\n");
    }
    out.push_str("\t\t# ICMP, and ICMPv6 for neighbour discovery, MLD and router solicitation.\n");
    out.push_str("\t\tmeta l4proto { icmp, ipv6-icmp } accept\n");
    out.push_str("\t}\n");
}

/// Each bridge may reach its remote broker's addresses on its port, nothing else.
fn push_bridge_remotes(out: &mut String, spec: &FirewallSpec) {
    for remote in &spec.bridge_remotes {
        let _ = writeln!(
            out,
            "\t\t# Bridge {}: {} port {}.",
            remote.bridge, remote.host, remote.port
        );
        if remote.addresses.is_empty() {
            out.push_str("\t\t# It did not resolve: no rule; run `moat firewall --apply` again once it does.\n");
        }
        for ip in &remote.addresses {
            let family = if ip.is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(
                out,
                "\t\t{family} daddr {ip} tcp dport {} accept",
                remote.port
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn lan_spec() -> FirewallSpec {
        FirewallSpec {
            networks: vec![
                net("127.0.0.0/8"),
                net("::1/128"),
                net("10.0.0.0/8"),
                net("172.16.0.0/12"),
                net("192.168.0.0/16"),
                net("fc00::/7"),
                net("fe80::/10"),
            ],
            broker_ports: vec![8883],
            ssh: false,
            mdns: false,
            dhcp_client: true,
            egress: false,
            bridge_remotes: Vec::new(),
        }
    }

    fn set_block<'a>(ruleset: &'a str, name: &str) -> &'a str {
        let start = ruleset.find(&format!("set {name} {{")).unwrap();
        let end = start + ruleset[start..].find("\t}\n").unwrap();
        &ruleset[start..end]
    }

    fn chain_block<'a>(ruleset: &'a str, name: &str) -> &'a str {
        let start = ruleset.find(&format!("chain {name} {{")).unwrap();
        let end = start + ruleset[start..].find("\t}\n").unwrap();
        &ruleset[start..end]
    }

    #[test]
    fn replaces_only_its_own_table_in_one_file() {
        let rules = render(&lan_spec());
        let create = rules.find("table inet moat {}\n").unwrap();
        let delete = rules.find("delete table inet moat\n").unwrap();
        let full = rules.find("table inet moat {\n").unwrap();
        assert!(create < delete && delete < full);
        assert!(!rules.contains("flush ruleset"));
        assert_eq!(rules.matches("table inet").count(), 3);
    }

    #[test]
    fn sets_hold_the_networks_by_family() {
        let rules = render(&lan_spec());
        let v4 = set_block(&rules, "allowed_v4");
        assert!(v4.contains("type ipv4_addr"));
        assert!(v4.contains("flags interval"));
        for cidr in [
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ] {
            assert!(v4.contains(cidr), "{cidr} missing from {v4}");
        }
        assert!(!v4.contains("fc00"));
        let v6 = set_block(&rules, "allowed_v6");
        assert!(v6.contains("type ipv6_addr"));
        for cidr in ["::1/128", "fc00::/7", "fe80::/10"] {
            assert!(v6.contains(cidr), "{cidr} missing from {v6}");
        }
        assert!(!v6.contains("10.0.0.0"));
    }

    #[test]
    fn host_bits_are_cleared_and_overlaps_merged() {
        let mut spec = lan_spec();
        spec.networks = vec![
            net("192.168.1.77/24"),
            net("192.168.1.0/25"),
            net("fd00::1/8"),
        ];
        let rules = render(&spec);
        let v4 = set_block(&rules, "allowed_v4");
        assert!(v4.contains("elements = { 192.168.1.0/24 }"), "{v4}");
        assert!(set_block(&rules, "allowed_v6").contains("elements = { fd00::/8 }"));
    }

    #[test]
    fn an_empty_family_renders_an_empty_set_not_an_empty_element_list() {
        let mut spec = lan_spec();
        spec.networks = vec![net("192.168.1.0/24")];
        let rules = render(&spec);
        let v6 = set_block(&rules, "allowed_v6");
        assert!(!v6.contains("elements"), "{v6}");
        // The IPv6 broker rule still exists and matches nothing.
        assert!(rules.contains("ip6 saddr @allowed_v6 tcp dport 8883 accept"));
    }

    #[test]
    fn every_broker_or_ssh_port_rule_is_bound_to_an_allowed_set() {
        let mut spec = lan_spec();
        spec.broker_ports = vec![8883, 1883, 8883];
        spec.ssh = true;
        let rules = render(&spec);
        let input = chain_block(&rules, "input");
        let port_rules: Vec<&str> = input.lines().filter(|l| l.contains("tcp dport")).collect();
        assert_eq!(port_rules.len(), 4, "{port_rules:?}");
        for rule in port_rules {
            assert!(
                rule.contains("saddr @allowed_v4") || rule.contains("saddr @allowed_v6"),
                "unrestricted port rule: {rule}"
            );
        }
        assert!(input.contains("ip saddr @allowed_v4 tcp dport { 1883, 8883 } accept"));
        assert!(input.contains("ip6 saddr @allowed_v6 tcp dport 22 accept"));
    }

    #[test]
    fn ssh_is_closed_unless_asked_for() {
        let rules = render(&lan_spec());
        assert!(!rules.contains("dport 22 "));
    }

    #[test]
    fn no_ports_means_no_broker_rule() {
        let mut spec = lan_spec();
        spec.broker_ports.clear();
        assert!(!render(&spec).contains("tcp dport"));
    }

    #[test]
    fn input_and_forward_drop_by_default() {
        let rules = render(&lan_spec());
        let input = chain_block(&rules, "input");
        assert!(input.contains("type filter hook input priority filter; policy drop;"));
        assert!(input.contains("ct state established,related accept"));
        assert!(input.contains("ct state invalid drop"));
        assert!(input.contains("iif \"lo\" accept"));
        let forward = chain_block(&rules, "forward");
        assert!(forward.contains("policy drop;"));
        assert_eq!(
            forward.lines().count(),
            2,
            "forward must hold no rule: {forward}"
        );
    }

    #[test]
    fn neighbour_discovery_needs_hop_limit_255() {
        let rules = render(&lan_spec());
        let nd: Vec<&str> = rules.lines().filter(|l| l.contains("nd-")).collect();
        assert_eq!(nd.len(), 1);
        assert!(nd[0].contains("nd-router-advert"));
        assert!(nd[0].contains("ip6 hoplimit 255"));
        assert!(rules.contains("packet-too-big"));
    }

    #[test]
    fn dhcp_and_mdns_follow_the_spec() {
        let mut spec = lan_spec();
        spec.dhcp_client = false;
        let rules = render(&spec);
        assert!(!rules.contains("dport 68"));
        assert!(!rules.contains("dport 546"));
        assert!(!rules.contains("5353"));

        spec.dhcp_client = true;
        spec.mdns = true;
        let rules = render(&spec);
        assert!(rules.contains("meta nfproto ipv4 udp sport 67 udp dport 68 accept"));
        assert!(rules.contains("ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept"));
        assert!(rules.contains("ip daddr 224.0.0.251 udp dport 5353 accept"));
        assert!(rules.contains("ip6 daddr ff02::fb udp dport 5353 accept"));
    }

    #[test]
    fn output_is_open_without_egress_and_restricted_with_it() {
        let mut spec = lan_spec();
        let open = render(&spec);
        let out = chain_block(&open, "output");
        assert!(out.contains("policy accept;"));
        assert_eq!(out.lines().count(), 2);

        spec.egress = true;
        let closed = render(&spec);
        let out = chain_block(&closed, "output");
        assert!(out.contains("policy drop;"));
        for rule in [
            "ct state established,related accept",
            "oif \"lo\" accept",
            "ip daddr @allowed_v4 accept",
            "ip6 daddr @allowed_v6 accept",
            "udp dport 53 accept",
            "tcp dport 53 accept",
            "udp dport 123 accept",
            "meta nfproto ipv4 udp sport 68 udp dport 67 accept",
            "meta l4proto { icmp, ipv6-icmp } accept",
        ] {
            assert!(out.contains(rule), "egress lacks `{rule}`");
        }
    }

    #[test]
    fn egress_lets_each_bridge_reach_only_its_remote_port() {
        use crate::firewall::BridgeRemote;
        let mut spec = lan_spec();
        spec.bridge_remotes = vec![
            BridgeRemote {
                bridge: "cloud".into(),
                host: "mqtt.example.net".into(),
                port: 8883,
                addresses: vec!["203.0.113.7".parse().unwrap()],
            },
            BridgeRemote {
                bridge: "gone".into(),
                host: "nowhere.invalid".into(),
                port: 8883,
                addresses: Vec::new(),
            },
        ];
        assert!(
            !render(&spec).contains("203.0.113.7"),
            "no rule without egress"
        );
        spec.egress = true;
        let ruleset = render(&spec);
        let output = chain_block(&ruleset, "output");
        assert!(output.contains("ip daddr 203.0.113.7 tcp dport 8883 accept"));
        assert_eq!(output.matches("tcp dport 8883").count(), 1, "{output}");
        assert!(output.contains("# It did not resolve"));
    }

    #[test]
    fn rendering_is_deterministic() {
        let mut shuffled = lan_spec();
        shuffled.networks.reverse();
        assert_eq!(render(&lan_spec()), render(&shuffled));
    }
}
