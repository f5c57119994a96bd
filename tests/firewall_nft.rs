//! Loads the rendered ruleset into a real kernel, inside a network namespace this test
//! creates (`ip netns add moat-fw-test-<pid>`) and always deletes. Needs root, `ip` and
//! `nft`; without them it prints why and skips.

use std::process::{Command, Output, Stdio};

use moat::firewall::{BridgeRemote, FirewallSpec, Nft, render};

/// Deletes the namespace when the test ends, passing or failing.
struct Netns(String);

impl Netns {
    /// `moat-fw-test-<pid>-<case>`: tests run in parallel threads of one process.
    fn create(case: &str) -> Self {
        let name = format!("moat-fw-test-{}-{case}", std::process::id());
        let out = run("ip", &["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add: {}", stderr(&out));
        Netns(name)
    }

    fn nft(&self) -> Nft {
        Nft::wrapped("ip", ["netns", "exec", self.0.as_str(), "nft"])
    }

    fn list_table(&self) -> String {
        let out = run(
            "ip",
            &[
                "netns", "exec", &self.0, "nft", "list", "table", "inet", "moat",
            ],
        );
        assert!(out.status.success(), "nft list: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.0]);
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

fn spec(egress: bool) -> FirewallSpec {
    FirewallSpec {
        networks: [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
            "fe80::/10",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect(),
        broker_ports: vec![8883, 1883],
        ssh: true,
        mdns: true,
        dhcp_client: true,
        egress,
        bridge_remotes: vec![BridgeRemote {
            bridge: "cloud".into(),
            host: "mqtt.example.net".into(),
            port: 8883,
            addresses: vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
        }],
    }
}

#[test]
fn rendered_ruleset_loads_lists_back_and_reloads_idempotently() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping firewall_nft: {reason}");
        return;
    }
    let ns = Netns::create("load");
    let nft = ns.nft();

    let ruleset = render(&spec(false));
    nft.check(&ruleset).unwrap();
    nft.apply(&ruleset).unwrap();
    let listed = ns.list_table();
    for needle in [
        "set allowed_v4",
        "set allowed_v6",
        "192.168.0.0/16",
        "fc00::/7",
        "chain input",
        "hook input priority filter; policy drop;",
        "chain forward",
        "hook forward priority filter; policy drop;",
        "chain output",
        "ip saddr @allowed_v4 tcp dport { 1883, 8883 } accept",
        "ip6 saddr @allowed_v6 tcp dport 22 accept",
    ] {
        assert!(
            listed.contains(needle),
            "`{needle}` missing from:\n{listed}"
        );
    }

    // Applying again replaces the table instead of failing or duplicating rules.
    nft.apply(&ruleset).unwrap();
    assert_eq!(ns.list_table(), listed);

    // Switching to egress mode replaces the output chain in place.
    nft.apply(&render(&spec(true))).unwrap();
    let egress = ns.list_table();
    assert!(
        egress.contains("hook output priority filter; policy drop;"),
        "{egress}"
    );
    // The bridge's remote, and only its port, is reachable beyond the LAN.
    for needle in [
        "ip daddr 203.0.113.7 tcp dport 8883 accept",
        "ip6 daddr 2001:db8::7 tcp dport 8883 accept",
    ] {
        assert!(
            egress.contains(needle),
            "`{needle}` missing from:\n{egress}"
        );
    }
    assert_eq!(egress.matches("chain input").count(), 1);
}

#[test]
fn a_broken_ruleset_is_rejected_and_the_loaded_one_survives() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping firewall_nft: {reason}");
        return;
    }
    let ns = Netns::create("bad");
    let nft = ns.nft();
    nft.apply(&render(&spec(false))).unwrap();
    let before = ns.list_table();

    let broken = render(&spec(false)).replace("tcp dport", "tcp dprot");
    assert!(nft.check(&broken).is_err());
    assert!(nft.apply(&broken).is_err());
    assert_eq!(ns.list_table(), before);
}
