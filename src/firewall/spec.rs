//! Building a [`FirewallSpec`] from a compiled policy: its allowed networks (the same
//! list the broker's admission check uses), every listener's port and the manifest's
//! firewall switches, and each bridge's remote broker (its name resolved here, the
//! one lookup). Rendering and `nft` are elsewhere.

use std::net::{IpAddr, ToSocketAddrs};

use ipnet::IpNet;

use super::{BridgeRemote, FirewallSpec};
use crate::policy::{FirewallSettings, Policy};

impl FirewallSpec {
    /// The spec for a compiled policy (`moat firewall`, and `moat doctor` to compare
    /// with what is loaded). `egress_flag` (`--egress`) can only tighten: it turns
    /// egress filtering on.
    pub fn for_policy(policy: &Policy, egress_flag: bool) -> FirewallSpec {
        let mut spec = FirewallSpec::new(
            policy.networks.cidrs(),
            policy.listener_ports(),
            policy.firewall,
            egress_flag,
        );
        spec.bridge_remotes = policy
            .bridges
            .iter()
            .map(|b| BridgeRemote {
                bridge: b.name.clone(),
                host: b.host.clone(),
                port: b.port,
                addresses: resolve_remote(&b.host, b.port),
            })
            .collect();
        spec
    }

    /// The spec from a policy's parts; the broker ports are sorted and deduplicated.
    pub fn new(
        networks: &[IpNet],
        mut broker_ports: Vec<u16>,
        settings: FirewallSettings,
        egress_flag: bool,
    ) -> FirewallSpec {
        broker_ports.sort_unstable();
        broker_ports.dedup();
        FirewallSpec {
            networks: networks.to_vec(),
            broker_ports,
            ssh: settings.ssh,
            mdns: settings.mdns,
            dhcp_client: true,
            egress: settings.egress || egress_flag,
            bridge_remotes: Vec::new(),
        }
    }
}

/// A bridge's remote host as addresses: an IP literal as it is, a name through the
/// system resolver now (when the ruleset is built: a remote whose address changes
/// needs `moat firewall --apply` again, see docs/bridge.md). Sorted, unique; empty
/// when the name does not resolve.
pub fn resolve_remote(host: &str, port: u16) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    let mut addresses: Vec<IpAddr> = match (host, port).to_socket_addrs() {
        Ok(found) => found.map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::warn!(host, error = %e, "a bridge's remote did not resolve; the firewall lets nothing through to it");
            Vec::new()
        }
    };
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_only_opens_one_port() {
        let nets: Vec<IpNet> = vec!["192.168.0.0/16".parse().unwrap()];
        let spec = FirewallSpec::new(&nets, vec![8883], FirewallSettings::default(), false);
        assert_eq!(spec.broker_ports, vec![8883]);
        assert_eq!(spec.networks, nets);
        assert!(spec.dhcp_client && !spec.ssh && !spec.mdns && !spec.egress);
    }

    #[test]
    fn ports_are_sorted_and_unique() {
        let spec = FirewallSpec::new(
            &[],
            vec![8883, 1883, 8883],
            FirewallSettings::default(),
            false,
        );
        assert_eq!(spec.broker_ports, vec![1883, 8883]);
    }

    #[test]
    fn the_egress_flag_only_tightens() {
        let manifest_on = FirewallSettings {
            egress: true,
            ..FirewallSettings::default()
        };
        assert!(FirewallSpec::new(&[], vec![8883], manifest_on, false).egress);
        assert!(FirewallSpec::new(&[], vec![8883], FirewallSettings::default(), true).egress);
    }
}
