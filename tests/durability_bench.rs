//! Measures what durability costs, in one run (not a pass/fail test; run by hand):
//! `cargo test --release --test durability_bench -- --ignored --nocapture`.
//! A paho publisher sends QoS 1 messages (window of 20) to a topic with an offline
//! persistent subscriber, so every acknowledged message is queued durably. Three
//! brokers: durability `full` and `batched` on disk, and `full` on a RAM-backed
//! filesystem (/dev/shm) as the in-memory baseline. Reports acknowledged messages per
//! second and bytes written to disk per acknowledged message (/proc/<pid>/io).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Moat, run_bounded};

const BODY: &str = r##"users:
  pub:
    password_hash: "{HASH}"
    plaintext: true
    publish: ["bench/#"]
  sub:
    password_hash: "{HASH}"
    plaintext: true
    subscribe: ["bench/#"]
"##;

const MESSAGES: u32 = 5000;

fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn run(label: &str, persistence: &str) -> (f64, f64) {
    let moat = Moat::start_with(BODY, true, persistence);
    let port = moat.plain_port.unwrap().to_string();
    // An offline persistent subscriber: every message is queued for it, durably.
    let _ = moat.subscribe_plain(
        "sub",
        &[
            "-t",
            "bench/#",
            "-q",
            "1",
            "-i",
            "offline-sub",
            "-c",
            "-W",
            "1",
        ],
    );
    let script = format!(
        r#"
import time, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
c.username_pw_set("pub", "{pw}")
c.max_inflight_messages_set(20)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", {port})
c.loop_start()
start = time.time()
infos = [c.publish("bench/q1", b"x" * 64, qos=1) for _ in range({n})]
for i in infos:
    i.wait_for_publish(60)
print(time.time() - start)
c.disconnect(); c.loop_stop()
"#,
        pw = common::PASSWORD,
        n = MESSAGES
    );
    let before = write_bytes(moat.pid());
    let out = run_bounded(
        Command::new("python3").args(["-c", &script]),
        Duration::from_secs(120),
    );
    let after = write_bytes(moat.pid());
    let seconds: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    let rate = f64::from(MESSAGES) / seconds;
    let per_message = (after - before) as f64 / f64::from(MESSAGES);
    println!("{label:<28} {rate:>10.0} msg/s {per_message:>10.0} bytes written per message");
    (rate, per_message)
}

#[test]
#[ignore = "a measurement, run by hand"]
fn durability_cost() {
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let memory = format!(
        "  persistence: {{ durability: full, path: \"{}/moat.db\" }}\n",
        shm.path().display()
    );
    println!("QoS 1, 64-byte payloads, {MESSAGES} messages, offline persistent subscriber");
    let (full, _) = run("full (disk)", "  persistence: { durability: full }\n");
    let (batched, _) = run(
        "batched 50 ms (disk)",
        "  persistence: { durability: batched, commit_interval_ms: 50 }\n",
    );
    let (memory_rate, _) = run("full on /dev/shm (memory)", &memory);
    println!(
        "full/memory = {:.2}, batched/memory = {:.2}",
        full / memory_rate,
        batched / memory_rate
    );
}
