//! The bridge end to end, against a real `mosquitto` as the remote broker: TLS with
//! a CA the test makes (openssl), a password file made by `mosquitto_passwd`,
//! persistence on. moat's `out` mapping reaches a mosquitto_sub on the remote, the
//! `in` mapping reaches a local subscriber, a `both` mapping echoes nothing back
//! either way; then the remote goes away, N QoS 1 messages acknowledged by moat
//! wait in the bridge's durable queue (through a moat restart too), and all N reach
//! the remote's persistent subscriber once it is back.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::run_moat;
use common::mosquitto::{RealMosquitto, ca_and_server_cert, mosquitto_passwd};
use common::{Moat, Sub, free_port, have, mosquitto, path_str};

const REMOTE_PASSWORD: &str = "remote-secret-42";
/// Messages published while the remote is away.
const OUTAGE_MESSAGES: usize = 40;
/// The second bridge's queue: it keeps the newest this many of them.
const SMALL_QUEUE: usize = 5;

fn require_tools() {
    for tool in ["mosquitto", "mosquitto_passwd", "mosquitto_sub", "openssl"] {
        assert!(
            have(tool),
            "{tool} is required (apt-get install mosquitto mosquitto-clients openssl)"
        );
    }
}

/// The remote: a TLS listener on 127.0.0.1, users `bridge` and `watcher`,
/// persistence in the same directory (saved at SIGTERM and every second).
fn remote_conf(dir: &Path, port: u16) -> std::path::PathBuf {
    ca_and_server_cert(dir);
    let passwd = dir.join("passwd");
    mosquitto_passwd(&passwd, "bridge", REMOTE_PASSWORD, true);
    mosquitto_passwd(&passwd, "watcher", REMOTE_PASSWORD, false);
    let d = path_str(dir);
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nallow_anonymous false\npassword_file {d}/passwd\npersistence true\npersistence_location {d}/\nautosave_interval 1\nlistener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
        ),
    )
    .unwrap();
    conf
}

/// mosquitto_sub/pub arguments for the remote as `watcher`.
fn remote_args(dir: &Path, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--cafile",
        &path_str(&dir.join("ca.pem")),
        "-u",
        "watcher",
        "-P",
        REMOTE_PASSWORD,
        "-V",
        "mqttv5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn manifest(remote_dir: &Path, remote_port: u16) -> String {
    let secret = remote_dir.join("bridge-secret");
    std::fs::write(&secret, format!("{REMOTE_PASSWORD}\n")).unwrap();
    let wrong = remote_dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    format!(
        r#"users:
  home:
    password_hash: "{{HASH}}"
    publish: ["sensors/#", "cmd/#", "echo/#"]
    subscribe: ["sensors/#", "cmd/#", "echo/#", "$SYS/broker/bridges/#"]
bridges:
  cloud:
    address: "127.0.0.1"
    port: {remote_port}
    tls: {{ ca_file: "{ca}", server_name: localhost }}
    username: bridge
    password_file: "{secret}"
    keepalive: 10s
    topics:
      - {{ topic: "sensors/#", direction: out, remote_prefix: "home/" }}
      - {{ topic: "cmd/#", direction: in, remote_prefix: "home/" }}
      - {{ topic: "echo/#", direction: both, remote_prefix: "site/" }}
  small:
    address: "127.0.0.1"
    port: {remote_port}
    tls: {{ ca_file: "{ca}", server_name: localhost }}
    username: bridge
    password_file: "{secret}"
    queue: {{ max_messages: {SMALL_QUEUE} }}
    topics:
      - {{ topic: "sensors/outage", direction: out, remote_prefix: "small/" }}
  refused:
    address: "127.0.0.1"
    port: {remote_port}
    tls: {{ ca_file: "{ca}", server_name: localhost }}
    username: bridge
    password_file: "{wrong}"
    topics:
      - {{ topic: "sensors/refused", direction: out, remote_prefix: "refused/" }}
"#,
        ca = path_str(&remote_dir.join("ca.pem")),
        secret = path_str(&secret),
        wrong = path_str(&wrong),
    )
}

/// Bridge `name`'s report in `<state>/bridges.json`, once `check` holds (bounded).
fn wait_for_report(
    moat: &Moat,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let path = moat.state().join("bridges.json");
    loop {
        let report = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
            .and_then(|all| all.into_iter().find(|r| r["name"] == name));
        if let Some(r) = &report
            && check(r)
        {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "bridge {name} never {what}: {report:?}\n{}",
            moat.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Publishes `lines` as QoS 1 messages on `topic` through moat in one connection
/// (`mosquitto_pub -l`); it exits 0 once moat acknowledged every one.
fn publish_lines(moat: &Moat, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(moat.tls_args("home"))
        .args(["-t", topic, "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "mosquitto_pub -l did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One QoS 1 `mosquitto_pub` with `login` arguments, which must succeed.
fn publish_ok(login: Vec<String>, topic: &str, message: &str) {
    let out = mosquitto(
        "mosquitto_pub",
        &common::with_extra(login, &["-t", topic, "-m", message, "-q", "1"]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `bridges` lines of `moat doctor` (whose other checks do not matter here).
fn doctor_lines(moat: &Moat) -> String {
    let out = run_moat(&moat.manifest_path(), &moat.state(), &["doctor"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bridges"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

#[test]
fn bridge_carries_mapped_topics_without_echo_and_keeps_its_queue_through_outages() {
    require_tools();
    let remote_dir = tempfile::tempdir().unwrap();
    let remote_port = free_port();
    let conf = remote_conf(remote_dir.path(), remote_port);
    let remote = RealMosquitto::start(&conf, remote_port);
    let dir = remote_dir.path();
    let mut moat = Moat::start(&manifest(remote_dir.path(), remote_port));
    for name in ["cloud", "small"] {
        wait_for_report(&moat, name, "connected", |r| r["state"] == "connected");
    }
    // A bridge the remote refuses keeps retrying and says why.
    let refused = wait_for_report(&moat, "refused", "reported the refusal", |r| {
        r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the connection"))
    });
    assert_ne!(refused["state"], "connected", "{refused}");
    let sys = mosquitto(
        "mosquitto_sub",
        &common::with_extra(
            moat.tls_args("home"),
            &[
                "-t",
                "$SYS/broker/bridges/cloud/state",
                "-C",
                "1",
                "-W",
                "10",
            ],
        ),
    );
    assert_eq!(String::from_utf8_lossy(&sys.stdout).trim(), "connected");
    let doctor = doctor_lines(&moat);
    assert!(
        doctor.contains("PASS") && doctor.contains("bridge cloud: connected to 127.0.0.1:"),
        "{doctor}"
    );

    // out: a local publish reaches the remote under its prefix.
    let watcher = Sub::start_subscribed(&remote_args(
        dir,
        remote_port,
        &["-t", "home/sensors/#", "-v", "-q", "1"],
    ));
    publish_ok(moat.tls_args("home"), "sensors/kitchen", "21.5");
    let arrived = watcher.wait_for("home/sensors/kitchen 21.5", Duration::from_secs(20));
    assert!(arrived, "remote got: {}\n{}", watcher.output(), moat.log());

    // in: a remote publish reaches a local subscriber without the prefix.
    let local = Sub::start_subscribed(&common::with_extra(
        moat.tls_args("home"),
        &["-t", "cmd/#", "-t", "echo/#", "-v", "-q", "1"],
    ));
    let remote_echo = Sub::start_subscribed(&remote_args(
        dir,
        remote_port,
        &["-t", "site/echo/#", "-v", "-q", "1"],
    ));
    publish_ok(remote_args(dir, remote_port, &[]), "home/cmd/light", "on");
    let arrived = local.wait_for("cmd/light on", Duration::from_secs(20));
    assert!(arrived, "local got: {}\n{}", local.output(), moat.log());

    // both: each side's publish arrives once on the other side and never comes back.
    publish_ok(moat.tls_args("home"), "echo/from-home", "h");
    publish_ok(
        remote_args(dir, remote_port, &[]),
        "site/echo/from-remote",
        "r",
    );
    assert!(
        remote_echo.wait_for("site/echo/from-home h", Duration::from_secs(20)),
        "{}",
        remote_echo.output()
    );
    assert!(
        local.wait_for("echo/from-remote r", Duration::from_secs(20)),
        "{}",
        local.output()
    );
    // Time for an echo to come round, if there were one (two round trips on loopback).
    std::thread::sleep(Duration::from_secs(2));
    let (local_seen, remote_seen) = (local.stop(), remote_echo.stop());
    assert_eq!(
        count(&local_seen, "echo/from-home h"),
        1,
        "local: {local_seen}"
    );
    assert_eq!(
        count(&local_seen, "echo/from-remote r"),
        1,
        "local: {local_seen}"
    );
    assert_eq!(
        count(&remote_seen, "site/echo/from-home h"),
        1,
        "remote: {remote_seen}"
    );
    assert_eq!(
        count(&remote_seen, "site/echo/from-remote r"),
        1,
        "remote: {remote_seen}"
    );
    drop(watcher);

    // A persistent session at the remote for what is sent during the outage.
    let topics = ["-t", "home/sensors/outage", "-t", "small/sensors/outage"];
    let session = [
        &["-c", "-i", "outage-watcher", "-q", "1", "-W", "1"][..],
        &topics,
    ]
    .concat();
    let _ = mosquitto("mosquitto_sub", &remote_args(dir, remote_port, &session));
    remote.stop();
    for name in ["cloud", "small"] {
        wait_for_report(&moat, name, "noticed the remote was gone", |r| {
            r["state"] != "connected"
        });
    }

    let payloads: Vec<String> = (0..OUTAGE_MESSAGES).map(|n| format!("m{n}")).collect();
    publish_lines(&moat, "sensors/outage", &payloads);
    let n = OUTAGE_MESSAGES as u64;
    let small = SMALL_QUEUE as u64;
    wait_for_report(&moat, "cloud", "queued the outage messages", |r| {
        r["queued"].as_u64() == Some(n)
    });
    // The small queue kept the newest and counted every message it let go.
    wait_for_report(&moat, "small", "dropped its oldest", |r| {
        r["queued"].as_u64() == Some(small) && r["dropped"].as_u64() == Some(n - small)
    });

    let doctor = doctor_lines(&moat);
    assert!(
        (doctor.contains("bridge cloud: retrying") || doctor.contains("bridge cloud: connecting"))
            && doctor.contains(&format!("{n} queued")),
        "{doctor}"
    );

    // moat restarts while the remote is still away: the queues are in SQLite,
    // evictions included.
    moat.stop();
    moat.spawn();
    let pending = |r: &serde_json::Value| {
        r["queued"].as_u64().unwrap_or(0) + r["in_flight"].as_u64().unwrap_or(0)
    };
    wait_for_report(&moat, "cloud", "kept its queue across a restart", |r| {
        pending(r) == n
    });
    wait_for_report(&moat, "small", "kept its queue across a restart", |r| {
        pending(r) == small
    });

    // The remote comes back: every message reaches the persistent subscriber.
    let remote = RealMosquitto::start(&conf, remote_port);
    for name in ["cloud", "small"] {
        wait_for_report(&moat, name, "drained its queue", |r| {
            r["state"] == "connected" && pending(r) == 0
        });
    }
    let expected = (n + small).to_string();
    let drain = [
        &[
            "-c",
            "-i",
            "outage-watcher",
            "-q",
            "1",
            "-v",
            "-C",
            &expected,
            "-W",
            "30",
        ][..],
        &topics,
    ]
    .concat();
    let got = common::run_bounded(
        Command::new("mosquitto_sub").args(remote_args(dir, remote_port, &drain)),
        Duration::from_secs(40),
    );
    let text = String::from_utf8_lossy(&got.stdout);
    for p in &payloads {
        let line = format!("home/sensors/outage {p}");
        // QoS 1: at least once (a resend after a lost PUBACK may repeat one).
        assert!(
            count(&text, &line) >= 1,
            "{line} missing; got:\n{text}\n{}",
            moat.log()
        );
    }
    let mut small_got: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("small/sensors/outage "))
        .collect();
    small_got.dedup();
    let newest: Vec<&str> = payloads[OUTAGE_MESSAGES - SMALL_QUEUE..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(small_got, newest, "got:\n{text}");

    // A reload re-points a bridge and removes another, without a restart.
    let text = std::fs::read_to_string(moat.manifest_path()).unwrap();
    let cut = text.find("  refused:").unwrap();
    let reloaded = text[..cut].replace("remote_prefix: \"small/\"", "remote_prefix: \"moved/\"");
    std::fs::write(moat.manifest_path(), reloaded).unwrap();
    let moved = Sub::start_subscribed(&remote_args(
        dir,
        remote_port,
        &["-t", "moved/sensors/outage", "-v", "-q", "1"],
    ));
    moat.signal("HUP");
    let path = moat.state().join("bridges.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains("\"refused\"")
    {
        assert!(
            Instant::now() < deadline,
            "the removed bridge is still reported\n{}",
            moat.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_report(&moat, "small", "reconnected after the reload", |r| {
        r["state"] == "connected"
    });
    publish_ok(moat.tls_args("home"), "sensors/outage", "after-reload");
    let arrived = moved.wait_for("moved/sensors/outage after-reload", Duration::from_secs(20));
    assert!(arrived, "remote got: {}\n{}", moved.output(), moat.log());
    drop(remote);
}
