//! Nothing acknowledged is lost to a crash: a publisher sends numbered QoS 1 and
//! QoS 2 messages to a persistent subscriber (paho-mqtt, clean session off) while
//! the broker is killed with SIGKILL at random moments and restarted, 20 times.
//! Every acknowledged message must arrive; QoS 2 exactly once; QoS 1 duplicates are
//! counted and reported. A retained message must survive every kill. Also: damaged
//! database files lead to a clean start with the old file kept aside.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Moat;

const BODY: &str = r##"users:
  pub:
    password_hash: "{HASH}"
    plaintext: true
    publish: ["crash/#", "state/#"]
  sub:
    password_hash: "{HASH}"
    plaintext: true
    subscribe: ["crash/#", "state/#"]
"##;

const SUBSCRIBER: &str = r##"
import sys, time, paho.mqtt.client as mqtt
port, password = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="durable-sub", clean_session=False, protocol=mqtt.MQTTv311)
c.username_pw_set("sub", password)
c.reconnect_delay_set(min_delay=0.1, max_delay=0.3)
def on_connect(cl, u, flags, rc, props=None):
    print("connected", flags.session_present, flush=True)
    if not flags.session_present:
        cl.subscribe("crash/#", qos=2)
c.on_connect = on_connect
c.on_message = lambda cl, u, m: print("msg", m.payload.decode(), flush=True)
while True:
    try:
        c.connect("127.0.0.1", port, 30)
        break
    except OSError:
        time.sleep(0.1)
c.loop_forever(retry_first_connection=True)
"##;

const PUBLISHER: &str = r##"
import sys, time, paho.mqtt.client as mqtt
port, password, start, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-%d" % start, protocol=mqtt.MQTTv311)
c.username_pw_set("pub", password)
pending = {}
def on_publish(cl, u, mid, rc=None, props=None):
    n = pending.pop(mid, None)
    if n is not None:
        print("ack", n, flush=True)
gone = [False]
def on_disconnect(*a):
    gone[0] = True
c.on_publish = on_publish
c.on_disconnect = on_disconnect
c.connect("127.0.0.1", port, 30)
c.loop_start()
for n in range(start, start + count):
    if gone[0]:
        break
    qos = 1 if n % 2 else 2
    info = c.publish("crash/n", ("q%d-%d" % (qos, n)).encode(), qos=qos)
    pending[info.mid] = n
    time.sleep(0.002)
deadline = time.time() + 5
while pending and not gone[0] and time.time() < deadline:
    time.sleep(0.01)
c.loop_stop()
"##;

fn spawn_lines(args: &[String], sink: Arc<Mutex<Vec<String>>>) -> std::process::Child {
    let mut child = Command::new("python3")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 starts");
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    child
}

fn retained_value(moat: &Moat) -> String {
    let out = moat.subscribe_plain("sub", &["-t", "state/retained", "-C", "1", "-W", "5"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A small deterministic generator for the kill moments (no extra crate).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn acknowledged_messages_survive_sigkill_twenty_times() {
    let mut moat = Moat::start_with(BODY, true, "  persistence: { durability: full }\n");
    let port = moat.plain_port.unwrap().to_string();
    let out = moat.publish_plain(
        "pub",
        &["-t", "state/retained", "-m", "keep", "-r", "-q", "1"],
    );
    assert!(out.status.success());

    let received = Arc::new(Mutex::new(Vec::new()));
    let mut subscriber = spawn_lines(
        &[
            "-c".into(),
            SUBSCRIBER.into(),
            port.clone(),
            common::PASSWORD.into(),
        ],
        Arc::clone(&received),
    );
    let started = Instant::now();
    while !received
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("connected"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "subscriber never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut next = 1u64;
    let kills = 20;
    for round in 0..kills {
        let mut publisher = spawn_lines(
            &[
                "-c".into(),
                PUBLISHER.into(),
                port.clone(),
                common::PASSWORD.into(),
                next.to_string(),
                "400".into(),
            ],
            Arc::clone(&acked),
        );
        next += 400;
        // Kill somewhere in the first ~800 ms of publishing.
        std::thread::sleep(Duration::from_millis(100 + next_random(&mut seed) % 700));
        moat.kill();
        let _ = publisher.wait();
        moat.spawn();
        assert_eq!(
            retained_value(&moat),
            "keep",
            "retained message lost after kill {round}"
        );
    }
    // Let the subscriber drain what the broker still holds for it.
    let acked: BTreeSet<u64> = acked
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.strip_prefix("ack ")?.parse().ok())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for line in received.lock().unwrap().iter() {
            if let Some(n) = line
                .strip_prefix("msg ")
                .and_then(|p| p.split('-').nth(1))
                .and_then(|n| n.parse().ok())
            {
                *counts.entry(n).or_default() += 1;
            }
        }
        if acked.iter().all(|n| counts.contains_key(n)) || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !counts.contains_key(n))
        .collect();
    let qos2_duplicates: Vec<u64> = counts
        .iter()
        .filter(|(n, c)| *n % 2 == 0 && **c > 1)
        .map(|(n, _)| *n)
        .collect();
    let qos1_duplicates: u32 = counts
        .iter()
        .filter(|(n, _)| *n % 2 == 1)
        .map(|(_, c)| c - 1)
        .sum();
    println!(
        "durability crash test: {kills} kills, {} acknowledged, {} delivered, lost {}, QoS 2 duplicates {}, QoS 1 duplicates {qos1_duplicates}",
        acked.len(),
        counts.len(),
        lost.len(),
        qos2_duplicates.len()
    );
    assert!(
        acked.len() > 200,
        "too few acknowledged messages to mean anything: {}",
        acked.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}\n{}",
        moat.log()
    );
    assert!(
        qos2_duplicates.is_empty(),
        "QoS 2 delivered twice: {qos2_duplicates:?}"
    );
}

#[test]
fn damaged_database_files_lead_to_a_clean_start_with_the_old_file_kept() {
    for damage in ["truncated", "zeroed", "garbage"] {
        let mut moat = Moat::start_with(BODY, true, "");
        let out = moat.publish_plain(
            "pub",
            &["-t", "state/retained", "-m", "before", "-r", "-q", "1"],
        );
        assert!(out.status.success());
        // A graceful stop checkpoints the WAL into the database file: the damage
        // below then hits real data.
        moat.stop();
        let db = moat.state().join("moat.db");
        let len = std::fs::metadata(&db).unwrap().len() as usize;
        assert!(len > 0, "database file is empty after a clean stop");
        match damage {
            "truncated" => std::fs::write(&db, &std::fs::read(&db).unwrap()[..len / 3]).unwrap(),
            "zeroed" => std::fs::write(&db, vec![0u8; len]).unwrap(),
            _ => std::fs::write(
                &db,
                b"this is not a database, just garbage bytes ".repeat(100),
            )
            .unwrap(),
        }
        moat.spawn();
        let kept_aside = std::fs::read_dir(moat.state())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("moat.db.damaged-")
            });
        assert!(
            kept_aside,
            "{damage}: the damaged file was not kept aside\n{}",
            moat.log()
        );
        assert!(
            moat.log().contains("damaged"),
            "{damage}: not logged loudly"
        );
        // The fresh store works.
        let out = moat.publish_plain(
            "pub",
            &["-t", "state/retained", "-m", "after", "-r", "-q", "1"],
        );
        assert!(out.status.success(), "{damage}: {}", moat.log());
        assert_eq!(retained_value(&moat), "after");
    }
}
