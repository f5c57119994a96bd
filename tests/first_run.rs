//! The README's first command as a newcomer runs it: `moat serve` in an empty folder,
//! no flags. It must write a starter manifest and state directory there, print the
//! `homeassistant` password once, and then let the README's own `mosquitto_sub` line
//! (TLS to `localhost:8883` with `moat-state/ca.pem`) in with that password, and
//! nobody in without it. A second start must keep the manifest and the password and
//! print no password again. In a network namespace of the test's own, so the
//! starter's fixed port 8883 is free whatever runs on this machine.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::netns::{Lab, in_ns, skip_reason};
use common::{collect_lines, moat_bin, wait_for_text};

const LIMIT: Duration = Duration::from_secs(15);

/// `moat serve` with no arguments, in `dir`, inside `ns`, handed to `lab` (which
/// stops it on drop, even after a failed assertion); what it printed on stdout.
fn serve_in(lab: &mut Lab, ns: &str, dir: &Path) -> Arc<Mutex<String>> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, moat_bin(), "serve"])
        .current_dir(dir)
        .env_remove("MOAT_MANIFEST")
        .env_remove("MOAT_STATE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("moat serve starts");
    let out = Arc::new(Mutex::new(String::new()));
    let log = Arc::new(Mutex::new(String::new()));
    collect_lines(child.stdout.take().unwrap(), Arc::clone(&out));
    collect_lines(child.stderr.take().unwrap(), Arc::clone(&log));
    lab.children.push(child);
    assert!(
        wait_for_text(&log, "moat is ready", Duration::from_secs(60)),
        "moat serve did not become ready:\n{}\n{}",
        out.lock().unwrap(),
        log.lock().unwrap()
    );
    out
}

/// Stops the `moat serve` started last, and waits for it to exit.
fn stop_last(lab: &mut Lab) {
    let mut child: Child = lab.children.pop().expect("a running moat serve");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The README's client options: TLS to localhost:8883, the CA in moat-state.
fn client_args<'a>(ca: &'a str, password: &'a str) -> Vec<&'a str> {
    vec![
        "-h",
        "localhost",
        "-p",
        "8883",
        "--cafile",
        ca,
        "-u",
        "homeassistant",
        "-P",
        password,
    ]
}

/// Runs the subscriber `args` (one message at most) and checks it got the retained
/// birth message.
fn assert_receives_the_birth_message(ns: &str, args: &[&str]) {
    let received = in_ns(ns, args, LIMIT);
    assert_eq!(
        String::from_utf8_lossy(&received.stdout).trim(),
        "homeassistant/status online",
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
}

#[test]
fn serve_in_an_empty_folder_prints_a_password_that_the_readmes_client_line_uses() {
    if let Some(reason) = skip_reason(&["ip", "mosquitto_pub", "mosquitto_sub"]) {
        eprintln!("skipping the first-run test: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("moat-first");
    let ns = lab.netns("home");

    let out = serve_in(&mut lab, &ns, dir.path());
    let printed = out.lock().unwrap().clone();
    let password = printed
        .lines()
        .find_map(|line| line.trim().strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no password printed:\n{printed}"))
        .to_owned();
    assert!(password.len() >= 16, "{printed}");
    assert!(printed.contains("username: homeassistant"), "{printed}");
    let manifest = std::fs::read_to_string(dir.path().join("moat.yaml")).unwrap();
    assert!(
        !manifest.contains(&password),
        "the manifest holds the plaintext password"
    );
    let ca = dir.path().join("moat-state/ca.pem").display().to_string();

    // Home Assistant's birth message, retained, then the README's subscriber.
    let mut publish = vec!["mosquitto_pub"];
    publish.extend(client_args(&ca, &password));
    publish.extend([
        "-q",
        "1",
        "-r",
        "-t",
        "homeassistant/status",
        "-m",
        "online",
    ]);
    let published = in_ns(&ns, &publish, LIMIT);
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let mut subscribe = vec!["mosquitto_sub"];
    subscribe.extend(client_args(&ca, &password));
    subscribe.extend(["-t", "homeassistant/#", "-v", "-C", "1", "-W", "10"]);
    assert_receives_the_birth_message(&ns, &subscribe);

    // A wrong password and no password at all are both turned away.
    let mut wrong = vec!["mosquitto_pub"];
    wrong.extend(client_args(&ca, "not-the-password"));
    wrong.extend(["-t", "homeassistant/status", "-m", "x"]);
    assert!(!in_ns(&ns, &wrong, LIMIT).status.success());
    let anonymous = [
        "mosquitto_pub",
        "-h",
        "localhost",
        "-p",
        "8883",
        "--cafile",
        &ca,
        "-t",
        "homeassistant/status",
        "-m",
        "x",
    ];
    assert!(!in_ns(&ns, &anonymous, LIMIT).status.success());
    stop_last(&mut lab);

    // The second start keeps what the first wrote and shows no password.
    let out = serve_in(&mut lab, &ns, dir.path());
    let printed = out.lock().unwrap().clone();
    assert!(!printed.contains("password"), "printed again:\n{printed}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("moat.yaml")).unwrap(),
        manifest
    );
    assert_receives_the_birth_message(&ns, &subscribe);
    stop_last(&mut lab);
}
