//! `moat firewall`: prints the nftables ruleset for the manifest (default), validates it
//! with `nft -c` (`--check`) or loads it atomically (`--apply`). `--egress` turns the
//! outbound restriction on even if the manifest leaves it off. The ruleset itself is
//! rendered by `crate::firewall`; this module only turns the manifest into a spec.

use std::net::SocketAddr;

use anyhow::Context as _;
use ipnet::IpNet;

use crate::cli::{FirewallArgs, GlobalArgs};
use crate::commands::EXIT_OK;
use crate::firewall::{self, FirewallSpec};

/// The manifest's firewall switches (`broker.firewall` in the manifest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Toggles {
    pub ssh: bool,
    pub mdns: bool,
    pub egress: bool,
}

pub fn run(global: &GlobalArgs, args: &FirewallArgs) -> anyhow::Result<u8> {
    let spec = load_spec(global, args.egress)?;
    let ruleset = firewall::render(&spec);
    if args.check {
        firewall::check(&ruleset).context("the ruleset does not pass `nft -c`")?;
        println!("ruleset OK (nft -c): table inet {}", firewall::TABLE);
    } else if args.apply {
        firewall::apply(&ruleset).context("loading the ruleset failed; the old one stays")?;
        println!("ruleset loaded: table inet {}", firewall::TABLE);
    } else {
        print!("{ruleset}");
    }
    Ok(EXIT_OK)
}

/// Reads the manifest and compiles the spec. The manifest loader and policy compiler
/// (`crate::policy`) come from another change; until they land this refuses to guess.
fn load_spec(global: &GlobalArgs, _egress_flag: bool) -> anyhow::Result<FirewallSpec> {
    anyhow::bail!(
        "`moat firewall` needs the manifest loader (policy compilation), which is not in this build; \
         cannot read {}",
        global.manifest.display()
    )
}

/// Builds the firewall spec from a compiled policy's parts: its allowed networks, its
/// listeners (TLS always, plaintext if declared) and its firewall switches.
/// `egress_flag` (`--egress`) can only tighten: it turns egress filtering on.
pub fn spec_for(
    networks: &[IpNet],
    listen_tls: SocketAddr,
    listen_plain: Option<SocketAddr>,
    toggles: Toggles,
    egress_flag: bool,
) -> FirewallSpec {
    let mut broker_ports = vec![listen_tls.port()];
    broker_ports.extend(listen_plain.map(|addr| addr.port()));
    broker_ports.sort_unstable();
    broker_ports.dedup();
    FirewallSpec {
        networks: networks.to_vec(),
        broker_ports,
        ssh: toggles.ssh,
        mdns: toggles.mdns,
        dhcp_client: true,
        egress: toggles.egress || egress_flag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tls_only_opens_one_port() {
        let nets: Vec<IpNet> = vec!["192.168.0.0/16".parse().unwrap()];
        let spec = spec_for(&nets, addr("0.0.0.0:8883"), None, Toggles::default(), false);
        assert_eq!(spec.broker_ports, vec![8883]);
        assert_eq!(spec.networks, nets);
        assert!(spec.dhcp_client && !spec.ssh && !spec.mdns && !spec.egress);
    }

    #[test]
    fn a_declared_plain_listener_adds_its_port() {
        let spec = spec_for(
            &[],
            addr("[::]:8883"),
            Some(addr("0.0.0.0:1883")),
            Toggles::default(),
            false,
        );
        assert_eq!(spec.broker_ports, vec![1883, 8883]);
    }

    #[test]
    fn the_egress_flag_only_tightens() {
        let manifest_on = Toggles {
            egress: true,
            ..Toggles::default()
        };
        assert!(spec_for(&[], addr("0.0.0.0:8883"), None, manifest_on, false).egress);
        assert!(spec_for(&[], addr("0.0.0.0:8883"), None, Toggles::default(), true).egress);
    }

    #[test]
    fn without_a_manifest_loader_it_refuses_with_a_clear_error() {
        let global = GlobalArgs {
            manifest: "moat.yaml".into(),
            state: "moat-state".into(),
            json: false,
        };
        let err = load_spec(&global, false).unwrap_err().to_string();
        assert!(err.contains("needs the manifest loader"), "{err}");
    }
}
