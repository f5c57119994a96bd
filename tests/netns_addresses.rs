//! The server certificate follows an address the host gets after `moat serve`
//! started, as the Pi's Wi-Fi lease can at first boot: a client that connects by
//! that address and checks the certificate against it (Home Assistant does) must
//! get in without a restart. Real namespaces: the broker's starts with loopback only,
//! then a veth link brings it 10.88.0.1 from the LAN's side, and `openssl s_client`
//! on the LAN verifies the served certificate against that IP address. Needs root,
//! `ip` and `openssl`.

mod common;

use std::time::Duration;

use common::netns::{Lab, in_ns, lan_manifest, skip_reason};
use common::wait_for_text;

const APP: &str = "10.88.0.1";

#[test]
fn an_address_that_arrives_after_start_is_in_the_certificate_without_a_restart() {
    if let Some(reason) = skip_reason(&["ip", "openssl"]) {
        eprintln!("skipping the address watch test: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = lan_manifest(
        dir.path(),
        "  listen:
    tls: { address: \"::\", port: 8883 }
  networks: [loopback, private]
",
        "address-watch-password",
    );
    let state = dir.path().join("state");
    let ca = state.join("ca.pem").display().to_string();

    let mut lab = Lab::new("moat-addr");
    let app = lab.netns("app");
    let lan = lab.netns("lan");
    let log = lab.serve(&app, &manifest, &state);
    lab.link(
        (&app, "app0", &[&format!("{APP}/24")]),
        (&lan, "lan0", &["10.88.0.2/24"]),
    );
    assert!(
        wait_for_text(&log, "LAN addresses changed", Duration::from_secs(40)),
        "the broker did not notice its new address:\n{}",
        log.lock().unwrap()
    );

    let verified = in_ns(
        &lan,
        &[
            "openssl",
            "s_client",
            "-connect",
            &format!("{APP}:8883"),
            "-CAfile",
            &ca,
            "-verify_ip",
            APP,
            "-verify_return_error",
            "-brief",
        ],
        Duration::from_secs(15),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        verified.status.success() && text.contains("Verification: OK"),
        "{text}\n{}",
        log.lock().unwrap()
    );
}
