//! Nothing acknowledged is lost to a crash: a publisher sends numbered QoS 1 and
//! QoS 2 messages to a persistent subscriber (paho-mqtt, clean session off) while
//! the broker is killed with SIGKILL at random moments and restarted, 20 times.
//! Every acknowledged message must arrive; QoS 2 exactly once; QoS 1 duplicates are
//! counted and reported. A retained message must survive every kill. Also: damaged
//! database files lead to a clean start with the old file kept aside.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Moat;
use common::durable::{PUBLISHER, SUBSCRIBER, Tally, next_random, spawn_lines};

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

fn retained_value(moat: &Moat) -> String {
    let out = moat.subscribe_plain("sub", &["-t", "state/retained", "-C", "1", "-W", "5"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
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
            "durable-sub".into(),
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
        let acked_before = acked.lock().unwrap().len();
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
        // Kill somewhere in the first ~700 ms after the first acknowledgement: a
        // loaded machine may take a second just to start Python, and a kill before
        // the publisher is under way tests nothing.
        let waiting = Instant::now();
        while acked.lock().unwrap().len() == acked_before
            && waiting.elapsed() < Duration::from_secs(15)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(next_random(&mut seed) % 700));
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
    let acked = common::durable::acked(&acked.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let counts = common::durable::received(&received.lock().unwrap());
        if acked.keys().all(|n| counts.contains_key(n)) || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    let Tally {
        delivered,
        lost,
        qos2_duplicates,
        qos1_duplicates,
    } = Tally::of(&acked, &counts);
    println!(
        "durability crash test: {kills} kills, {} acknowledged, {} delivered, lost {}, QoS 2 duplicates {}, QoS 1 duplicates {qos1_duplicates}",
        acked.len(),
        delivered,
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
