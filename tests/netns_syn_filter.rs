//! Issue 14: LAN only at the handshake, with no firewall at all. The broker's own
//! SYN filter (a classic BPF program built from `broker.networks`) makes the kernel
//! drop SYNs from other networks: a WAN client gets no SYN-ACK and no reset, over
//! IPv4 and IPv6 on one dual-stack listener, while LAN clients are served over TLS.
//! A reload that widens the networks re-attaches the filter, and one that narrows
//! them shuts the WAN out again. No nftables rule exists anywhere in this test.
//!
//! ```text
//!  LAN client 192.168.79.2, fd00:79::2 ──── APPLIANCE 192.168.79.1, fd00:79::1
//!  WAN client 203.0.113.2, 2001:db8:113::2 ─┘        203.0.113.1, 2001:db8:113::1
//! ```
//!
//! Needs root, `ip`, `ss`, `bash`, `timeout` and the mosquitto clients; without
//! them it prints why and skips.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::netns::{Lab, Tcp, in_ns, sh, skip_reason, tcp_connect};

const PASSWORD: &str = "lan-client-password-79";
const PORT: u16 = 8883;

fn write_manifest(path: &Path, networks: &str) {
    let hash = moat::auth::hash_password(PASSWORD.as_bytes()).unwrap();
    let manifest = format!(
        "version: 1
broker:
  hostnames: [moat.home.arpa]
  addresses: [192.168.79.1, \"fd00:79::1\", 203.0.113.1, \"2001:db8:113::1\"]
  listen:
    tls: {{ address: \"::\", port: {PORT} }}
  networks: {networks}
  allow_public: true
users:
  lan:
    password_hash: \"{hash}\"
    publish: [\"lan/#\"]
    subscribe: [\"lan/#\"]
"
    );
    std::fs::write(path, manifest).unwrap();
}

/// A QoS 1 publish from `ns` over TLS, as `mosquitto_pub` does it; gives up after 6 s.
fn publish(ns: &str, host: &str, ca: &str) -> Output {
    let port = PORT.to_string();
    in_ns(
        ns,
        &[
            "timeout",
            "6",
            "mosquitto_pub",
            "-h",
            host,
            "-p",
            &port,
            "--cafile",
            ca,
            "-u",
            "lan",
            "-P",
            PASSWORD,
            "-q",
            "1",
            "-t",
            "lan/hello",
            "-m",
            "hi",
        ],
        Duration::from_secs(12),
    )
}

/// Segments the listening socket's filter dropped: `d<N>` in `ss -m`'s skmem.
fn listener_drops(ns: &str) -> u64 {
    let filter = format!("sport = :{PORT}");
    let out = in_ns(ns, &["ss", "-Htlnm", &filter], Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split([',', '(', ')'])
        .find_map(|field| field.trim().strip_prefix('d')?.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in `ss -m` output: {text}"))
}

fn reload(lab: &Lab, log: &std::sync::Mutex<String>, reloads: usize) {
    let pid = lab.children[0].id().to_string();
    sh(&["kill", "-HUP", &pid]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.lock().unwrap().matches("manifest reloaded").count() < reloads {
        assert!(
            std::time::Instant::now() < deadline,
            "reload not done:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_wan_client_gets_no_handshake_without_any_firewall() {
    if let Some(reason) = skip_reason(&["ip", "ss", "bash", "timeout", "mosquitto_pub"]) {
        eprintln!("skipping netns_syn_filter: {reason}");
        return;
    }
    let mut lab = Lab::new("moat-syn");
    let app = lab.netns("app");
    let lan = lab.netns("lan");
    let wan = lab.netns("wan");
    lab.link(
        (&app, "lan0", &["192.168.79.1/24", "fd00:79::1/64"]),
        (&lan, "eth0", &["192.168.79.2/24", "fd00:79::2/64"]),
    );
    lab.link(
        (&app, "wan0", &["203.0.113.1/24", "2001:db8:113::1/64"]),
        (&wan, "eth0", &["203.0.113.2/24", "2001:db8:113::2/64"]),
    );
    lab.wait_ipv6_ready();

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("moat.yaml");
    write_manifest(&manifest, "[loopback, private]");
    let state = dir.path().join("state");
    let ca = state.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let log = lab.serve(&app, &manifest, &state);
    assert!(
        log.lock().unwrap().contains("SYN filter in place"),
        "no SYN filter at startup:\n{}",
        log.lock().unwrap()
    );

    // The LAN is served over TLS, IPv4 and IPv6, on the one dual-stack listener.
    for host in ["192.168.79.1", "fd00:79::1"] {
        let out = publish(&lan, host, ca);
        assert!(
            out.status.success(),
            "LAN publish to {host} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log.lock().unwrap()
        );
    }

    // The WAN gets no answer at all: not a handshake, not a reset.
    let before = listener_drops(&app);
    for host in ["203.0.113.1", "2001:db8:113::1"] {
        assert_eq!(
            tcp_connect(&wan, host, PORT),
            Tcp::NoAnswer,
            "WAN to {host}"
        );
        assert!(
            !publish(&wan, host, ca).status.success(),
            "WAN publish to {host}"
        );
    }
    // The kernel counted the dropped SYNs (and their retransmissions) on the listener.
    let dropped = listener_drops(&app) - before;
    assert!(
        dropped >= 4,
        "only {dropped} segments dropped by the filter"
    );
    let text = log.lock().unwrap().clone();
    for peer in ["203.0.113.2", "2001:db8:113::2"] {
        assert!(
            !text.contains(peer),
            "a WAN connection reached the broker's accept loop:\n{text}"
        );
    }

    // A reload that allows the WAN networks re-attaches the filter: handshakes complete.
    write_manifest(
        &manifest,
        "[loopback, private, 203.0.113.0/24, \"2001:db8:113::/64\"]",
    );
    reload(&lab, &log, 1);
    for host in ["203.0.113.1", "2001:db8:113::1"] {
        assert_eq!(
            tcp_connect(&wan, host, PORT),
            Tcp::Connected,
            "WAN to {host} once allowed"
        );
    }
    let out = publish(&wan, "203.0.113.1", ca);
    assert!(
        out.status.success(),
        "allowed WAN publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And narrowing them again shuts the WAN out at the handshake once more.
    write_manifest(&manifest, "[loopback, private]");
    reload(&lab, &log, 2);
    for host in ["203.0.113.1", "2001:db8:113::1"] {
        assert_eq!(
            tcp_connect(&wan, host, PORT),
            Tcp::NoAnswer,
            "WAN to {host} after narrowing"
        );
    }
    assert!(
        publish(&lan, "fd00:79::1", ca).status.success(),
        "LAN after the reloads"
    );
    assert_eq!(
        log.lock().unwrap().matches("SYN filter in place").count(),
        3,
        "one filter at startup and one per reload that changed the networks"
    );
}
