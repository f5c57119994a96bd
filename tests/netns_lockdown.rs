//! Issue 5 acceptance: the LAN reaches the broker, the WAN does not, proven with real
//! packets in network namespaces this test creates (and always deletes).
//!
//! ```text
//!  LAN client  192.168.78.2, fd00:78::2 ─┐
//!                                        ├─ ROUTER (forwarding; DNAT 198.51.100.1:8883
//!  WAN client  198.51.100.2,             │   -> 192.168.77.2:8883, source kept)
//!              2001:db8:100::2 ──────────┘
//!                                        └─ APPLIANCE 192.168.77.2, fd00:77::2,
//!                                           2001:db8:77::2: `moat serve` + `moat firewall --apply`
//! ```
//!
//! The real binary runs inside the appliance namespace; the real `mosquitto_pub` and
//! `mosquitto_sub` run inside the client namespaces. Needs root, `ip`, `nft`, `bash`,
//! `timeout` and the mosquitto clients; without them it prints why and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::netns::{Lab, Tcp, apply_firewall, in_ns, lan_manifest, sh, skip_reason, tcp_connect};

const PASSWORD: &str = "lan-client-password-77";
const APP_V4: &str = "192.168.77.2";
const APP_ULA: &str = "fd00:77::2";
const APP_GLOBAL: &str = "2001:db8:77::2";
const ROUTER_WAN_V4: &str = "198.51.100.1";

fn mqtt_args<'a>(host: &'a str, ca: &'a str) -> Vec<&'a str> {
    vec![
        "-h", host, "-p", "8883", "--cafile", ca, "-u", "lan", "-P", PASSWORD, "-q", "1",
    ]
}

/// Publishes a retained message (QoS 1) from `ns` to `host`, giving up after 6 s.
fn publish(ns: &str, host: &str, ca: &str, topic: &str, payload: &str) -> Output {
    let mut args = vec!["timeout", "6", "mosquitto_pub"];
    args.extend(mqtt_args(host, ca));
    args.extend(["-t", topic, "-m", payload, "-r"]);
    in_ns(ns, &args, Duration::from_secs(12))
}

/// Subscribes from `ns` and returns the first message (the retained one), waiting at
/// most `wait_seconds` for it.
fn first_message(ns: &str, host: &str, ca: &str, filter: &str, wait_seconds: &str) -> Output {
    let mut args = vec!["mosquitto_sub"];
    args.extend(mqtt_args(host, ca));
    args.extend(["-t", filter, "-C", "1", "-W", wait_seconds]);
    in_ns(ns, &args, Duration::from_secs(12))
}

fn write_manifest(dir: &Path) -> PathBuf {
    lan_manifest(
        dir,
        &format!(
            "  hostnames: [moat.home.arpa]
  addresses: [{APP_V4}, \"{APP_ULA}\", \"{APP_GLOBAL}\"]
  listen:
    tls: {{ address: \"::\", port: 8883 }}
  networks: [loopback, private]
"
        ),
        PASSWORD,
    )
}

#[test]
fn the_lan_gets_in_and_the_wan_gets_no_answer_even_through_a_port_forward() {
    if let Some(reason) = skip_reason(&[
        "ip",
        "nft",
        "bash",
        "timeout",
        "mosquitto_pub",
        "mosquitto_sub",
    ]) {
        eprintln!("skipping netns_lockdown: {reason}");
        return;
    }
    let mut lab = Lab::new("moat-lock");
    let app = lab.netns("app");
    let router = lab.netns("router");
    let lan = lab.netns("lan");
    let wan = lab.netns("wan");

    lab.link(
        (
            &app,
            "eth0",
            &["192.168.77.2/24", "fd00:77::2/64", "2001:db8:77::2/64"],
        ),
        (
            &router,
            "r-app",
            &["192.168.77.1/24", "fd00:77::1/64", "2001:db8:77::1/64"],
        ),
    );
    lab.link(
        (&lan, "eth0", &["192.168.78.2/24", "fd00:78::2/64"]),
        (&router, "r-lan", &["192.168.78.1/24", "fd00:78::1/64"]),
    );
    lab.link(
        (&wan, "eth0", &["198.51.100.2/24", "2001:db8:100::2/64"]),
        (&router, "r-wan", &["198.51.100.1/24", "2001:db8:100::1/64"]),
    );
    for (ns, v4, v6) in [
        (&app, "192.168.77.1", "fd00:77::1"),
        (&lan, "192.168.78.1", "fd00:78::1"),
        (&wan, "198.51.100.1", "2001:db8:100::1"),
    ] {
        sh(&["ip", "-n", ns, "route", "add", "default", "via", v4]);
        sh(&["ip", "-n", ns, "-6", "route", "add", "default", "via", v6]);
    }
    lab.wait_ipv6_ready();
    // Forwarding in the router only; a port forward that keeps the source address
    // (DNAT, no masquerade), as a home router does for "open port 8883".
    for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        sh(&["ip", "netns", "exec", &router, "sysctl", "-qw", key]);
    }
    let nat = format!(
        "table ip portforward {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"r-wan\" ip daddr {ROUTER_WAN_V4} tcp dport 8883 dnat to {APP_V4}:8883
  }}
}}
"
    );
    let nat_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(nat_file.path(), nat).unwrap();
    sh(&[
        "ip",
        "netns",
        "exec",
        &router,
        "nft",
        "-f",
        nat_file.path().to_str().unwrap(),
    ]);

    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path());
    let state = dir.path().join("state");
    let ca = state.join("ca.pem");
    let ca = ca.to_str().unwrap();

    // The ruleset, from the same manifest, applied inside the appliance.
    apply_firewall(&app, &manifest);
    let log = lab.serve(&app, &manifest, &state);

    // The LAN client publishes and subscribes over TLS (IPv4, then IPv6 ULA).
    let out = publish(&lan, APP_V4, ca, "lan/v4", "hello-over-v4");
    assert!(
        out.status.success(),
        "LAN publish failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log.lock().unwrap()
    );
    let out = first_message(&lan, APP_V4, ca, "lan/v4", "8");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-over-v4",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = publish(&lan, APP_ULA, ca, "lan/ula", "hello-over-ula");
    assert!(
        out.status.success(),
        "ULA publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = first_message(&lan, APP_ULA, ca, "lan/ula", "8");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-over-ula",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The WAN client, through the port forward (IPv4) and straight to the appliance's
    // global address (IPv6): no answer at all, neither an accept nor a reset.
    assert_eq!(
        tcp_connect(&wan, ROUTER_WAN_V4, 8883),
        Tcp::NoAnswer,
        "IPv4 port forward"
    );
    assert_eq!(
        tcp_connect(&wan, APP_GLOBAL, 8883),
        Tcp::NoAnswer,
        "global IPv6"
    );
    let out = publish(&wan, ROUTER_WAN_V4, ca, "lan/wan", "should-not-arrive");
    assert!(!out.status.success(), "a WAN publish got through");
    assert!(
        !log.lock().unwrap().contains("198.51.100.2"),
        "the firewall let a WAN packet reach the broker:\n{}",
        log.lock().unwrap()
    );

    // Without the firewall the broker's own SYN filter (built from the same
    // `networks`) still gives the WAN no answer: no handshake, no reset, and
    // nothing reaches the broker's accept loop.
    sh(&[
        "ip", "netns", "exec", &app, "nft", "delete", "table", "inet", "moat",
    ]);
    assert_eq!(
        tcp_connect(&wan, ROUTER_WAN_V4, 8883),
        Tcp::NoAnswer,
        "IPv4 port forward without firewall"
    );
    assert_eq!(
        tcp_connect(&wan, APP_GLOBAL, 8883),
        Tcp::NoAnswer,
        "global IPv6 without firewall"
    );
    let out = publish(&wan, ROUTER_WAN_V4, ca, "lan/wan", "should-not-arrive");
    assert!(
        !out.status.success(),
        "a WAN publish got through without the firewall"
    );
    let out = publish(&wan, APP_GLOBAL, ca, "lan/wan", "should-not-arrive");
    assert!(
        !out.status.success(),
        "a global IPv6 publish got through without the firewall"
    );
    let log_text = log.lock().unwrap().clone();
    for peer in ["198.51.100.2", "2001:db8:100::2"] {
        assert!(
            !log_text.contains(peer),
            "a WAN handshake reached the broker without the firewall:\n{log_text}"
        );
    }
    // And nothing the WAN sent reached a subscriber.
    let out = first_message(&lan, APP_V4, ca, "lan/wan", "2");
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    // The LAN still works with the firewall gone.
    let out = first_message(&lan, APP_V4, ca, "lan/v4", "8");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello-over-v4");
}
