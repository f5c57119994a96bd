//! `moat firewall`: prints the nftables ruleset for the manifest (default), validates it
//! with `nft -c` (`--check`) or loads it atomically (`--apply`). `--egress` turns the
//! outbound restriction on even if the manifest leaves it off. The ruleset itself is
//! rendered by `crate::firewall`; this module only turns the compiled policy into a spec.

use anyhow::Context as _;
use ipnet::IpNet;

use crate::cli::{FirewallArgs, GlobalArgs};
use crate::commands::EXIT_OK;
use crate::firewall::{self, FirewallSpec};
use crate::policy::{FirewallSettings, Policy};

/// The manifest's firewall switches (the top-level `firewall:` section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Toggles {
    pub ssh: bool,
    pub mdns: bool,
    pub egress: bool,
}

impl From<FirewallSettings> for Toggles {
    fn from(settings: FirewallSettings) -> Self {
        Toggles {
            ssh: settings.ssh,
            mdns: settings.mdns,
            egress: settings.egress,
        }
    }
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

/// Reads and compiles the manifest (the same `Policy` the broker's admission check
/// uses, so the two share one network list) and builds the spec from it.
fn load_spec(global: &GlobalArgs, egress_flag: bool) -> anyhow::Result<FirewallSpec> {
    let (policy, _warnings) = Policy::load(&global.manifest)
        .with_context(|| format!("reading {}", global.manifest.display()))?;
    Ok(spec_for_policy(&policy, egress_flag))
}

/// The spec for a compiled policy (also used by `moat doctor` to compare with what is loaded).
pub fn spec_for_policy(policy: &Policy, egress_flag: bool) -> FirewallSpec {
    spec_for(
        policy.networks.cidrs(),
        policy.listener_ports(),
        Toggles::from(policy.firewall),
        egress_flag,
    )
}

/// Builds the firewall spec from a compiled policy's parts: its allowed networks, its
/// listeners' ports (every transport) and its firewall switches.
/// `egress_flag` (`--egress`) can only tighten: it turns egress filtering on.
pub fn spec_for(
    networks: &[IpNet],
    mut broker_ports: Vec<u16>,
    toggles: Toggles,
    egress_flag: bool,
) -> FirewallSpec {
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

    #[test]
    fn tls_only_opens_one_port() {
        let nets: Vec<IpNet> = vec!["192.168.0.0/16".parse().unwrap()];
        let spec = spec_for(&nets, vec![8883], Toggles::default(), false);
        assert_eq!(spec.broker_ports, vec![8883]);
        assert_eq!(spec.networks, nets);
        assert!(spec.dhcp_client && !spec.ssh && !spec.mdns && !spec.egress);
    }

    #[test]
    fn ports_are_sorted_and_unique() {
        let spec = spec_for(&[], vec![8883, 1883, 8883], Toggles::default(), false);
        assert_eq!(spec.broker_ports, vec![1883, 8883]);
    }

    #[test]
    fn the_egress_flag_only_tightens() {
        let manifest_on = Toggles {
            egress: true,
            ..Toggles::default()
        };
        assert!(spec_for(&[], vec![8883], manifest_on, false).egress);
        assert!(spec_for(&[], vec![8883], Toggles::default(), true).egress);
    }

    fn example(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
    }

    #[test]
    fn the_home_example_opens_both_broker_ports_ssh_and_mdns_to_the_lan() {
        let global = GlobalArgs {
            manifest: example("home.yaml"),
            state: "moat-state".into(),
            json: false,
        };
        let spec = load_spec(&global, false).unwrap();
        assert_eq!(spec.broker_ports, vec![1883, 8883]);
        assert!(spec.ssh && spec.mdns && spec.dhcp_client && !spec.egress);
        for cidr in [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
            "fe80::/10",
        ] {
            let net: IpNet = cidr.parse().unwrap();
            assert!(spec.networks.contains(&net), "{cidr} missing: {spec:?}");
        }
        assert!(spec.networks.iter().all(|n| {
            !n.contains(&"8.8.8.8".parse::<std::net::IpAddr>().unwrap())
                && !n.contains(&"2001:db8::1".parse::<std::net::IpAddr>().unwrap())
        }));
        assert!(load_spec(&global, true).unwrap().egress);
        let rules = firewall::render(&spec);
        assert!(rules.contains("ip saddr @allowed_v4 tcp dport { 1883, 8883 } accept"));
    }

    #[test]
    fn a_missing_manifest_is_an_error_naming_it() {
        let global = GlobalArgs {
            manifest: "/nonexistent/moat.yaml".into(),
            state: "moat-state".into(),
            json: false,
        };
        let err = format!("{:#}", load_spec(&global, false).unwrap_err());
        assert!(err.contains("/nonexistent/moat.yaml"), "{err}");
    }
}
