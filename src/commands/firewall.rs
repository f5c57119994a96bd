//! `moat firewall`: prints the nftables ruleset for the manifest (default), validates it
//! with `nft -c` (`--check`) or loads it atomically (`--apply`). `--egress` turns the
//! outbound restriction on even if the manifest leaves it off. The ruleset itself is
//! built and rendered by `crate::firewall`; this module is the CLI edge only.

use anyhow::Context as _;

use crate::cli::{FirewallArgs, GlobalArgs};
use crate::commands::EXIT_OK;
use crate::firewall::{self, FirewallSpec};
use crate::policy::Policy;

pub fn run(global: &GlobalArgs, args: &FirewallArgs) -> anyhow::Result<u8> {
    let spec = load_spec(global, args.egress)?;
    for remote in spec
        .bridge_remotes
        .iter()
        .filter(|r| r.addresses.is_empty())
    {
        eprintln!(
            "warning: bridge {}: {} does not resolve, so the ruleset lets nothing through to it; fix DNS (or use an IP address) and run this again",
            remote.bridge, remote.host
        );
    }
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
    Ok(FirewallSpec::for_policy(&policy, egress_flag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

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
