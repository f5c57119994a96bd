//! Tests of the whole store: every op round-trips through `load`, group commit,
//! batched commits, expiry across restarts, and a full disk.

use std::time::Duration;

use super::*;

fn message(topic: &str, payload: &str, expires_in_secs: Option<u32>) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        qos: 1,
        retain: false,
        properties: vec![0x03, 0x00, 0x04, b't', b'e', b'x', b't'],
        expires_in_secs,
    }
}

fn retained(topic: &str, payload: &str, expires_in_secs: Option<u32>) -> StoredRetained {
    let mut message = message(topic, payload, expires_in_secs);
    message.retain = true;
    StoredRetained {
        publisher: "sensor-1".into(),
        message,
    }
}

fn session(client_id: &str, expiry_secs: u32) -> StoredSession {
    StoredSession {
        client_id: client_id.into(),
        owner: "homeassistant".into(),
        expiry_secs,
    }
}

fn subscription(client_id: &str, filter: &str, identifier: Option<u32>) -> StoredSubscription {
    StoredSubscription {
        client_id: client_id.into(),
        filter: filter.into(),
        options: 0b0010_0101,
        identifier,
    }
}

async fn apply_all(store: &Store, ops: Vec<Op>) {
    for op in ops {
        store.apply(op).await.unwrap();
    }
}

/// Adds `secs` to the persisted uptime of a closed store, as if the broker had run
/// that much longer.
fn advance_uptime(path: &Path, secs: i64) {
    let conn = Connection::open(path).unwrap();
    let changed = conn
        .execute(
            "UPDATE meta SET value = value + ?1 WHERE key = ?2",
            rusqlite::params![secs, UPTIME_KEY],
        )
        .unwrap();
    assert_eq!(changed, 1, "the uptime is persisted");
}

fn without_expiry(mut snapshot: Snapshot) -> Snapshot {
    for r in &mut snapshot.retained {
        r.message.expires_in_secs = r.message.expires_in_secs.map(|_| 0);
    }
    for q in &mut snapshot.queued {
        q.message.expires_in_secs = q.message.expires_in_secs.map(|_| 0);
    }
    for s in &mut snapshot.sessions {
        s.expires_in_secs = s.expires_in_secs.map(|_| 0);
    }
    snapshot
}

#[tokio::test]
async fn every_operation_round_trips_through_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.db");
    let (store, recovery) = Store::open(&path, Durability::Full).unwrap();
    assert!(recovery.is_clean());

    let published = message("cmd/plug", "ON", None);
    apply_all(
        &store,
        vec![
            Op::PutRetained(retained("a/state", "1", None)),
            Op::PutRetained(retained("b/state", "2", Some(3600))),
            Op::PutRetained(retained("c/state", "3", None)),
            Op::DeleteRetained {
                topic: "c/state".into(),
            },
            Op::PutSession(session("ha", 600)),
            Op::PutSession(session("z2m", u32::MAX)),
            Op::PutSubscription(subscription("ha", "homeassistant/#", Some(7))),
            Op::PutSubscription(subscription("ha", "sensors/+/temp", None)),
            Op::PutSubscription(subscription("ha", "gone/#", None)),
            Op::DeleteSubscription {
                client_id: "ha".into(),
                filter: "gone/#".into(),
            },
        ],
    )
    .await;
    for seq in 1..=3 {
        let m = message("sensors/k/temp", &format!("{seq}"), Some(100));
        store
            .reserve()
            .await
            .unwrap()
            .enqueue("ha", seq, m)
            .await
            .unwrap();
    }
    store
        .reserve()
        .await
        .unwrap()
        .dequeue("ha", 1)
        .await
        .unwrap();
    let slot = store.reserve().await.unwrap();
    slot.put_inflight_out("ha", 10, InflightOut::Published(published.clone()))
        .await
        .unwrap();
    let slot = store.reserve().await.unwrap();
    slot.put_inflight_out("ha", 11, InflightOut::Released)
        .await
        .unwrap();
    let slot = store.reserve().await.unwrap();
    slot.put_inflight_out("ha", 12, InflightOut::Released)
        .await
        .unwrap();
    store
        .reserve()
        .await
        .unwrap()
        .delete_inflight_out("ha", 12)
        .await
        .unwrap();
    store
        .reserve()
        .await
        .unwrap()
        .put_inflight_in("z2m", 5)
        .await
        .unwrap();
    store
        .reserve()
        .await
        .unwrap()
        .put_inflight_in("z2m", 6)
        .await
        .unwrap();
    store
        .reserve()
        .await
        .unwrap()
        .delete_inflight_in("z2m", 6)
        .await
        .unwrap();

    let snapshot = store.load().unwrap();
    let topics: Vec<_> = snapshot
        .retained
        .iter()
        .map(|r| r.message.topic.as_str())
        .collect();
    assert_eq!(topics, ["a/state", "b/state"]);
    assert_eq!(snapshot.retained[0], retained("a/state", "1", None));
    let b_left = snapshot.retained[1].message.expires_in_secs.unwrap();
    assert!((3590..=3600).contains(&b_left), "{b_left}");

    let sessions: Vec<_> = snapshot
        .sessions
        .iter()
        .map(|s| (s.session.clone(), s.expires_in_secs))
        .collect();
    // Connected sessions have their whole expiry interval left.
    assert_eq!(
        sessions,
        [
            (session("ha", 600), Some(600)),
            (session("z2m", u32::MAX), None)
        ]
    );
    assert_eq!(
        snapshot.subscriptions,
        [
            subscription("ha", "homeassistant/#", Some(7)),
            subscription("ha", "sensors/+/temp", None)
        ]
    );
    let queued: Vec<_> = snapshot
        .queued
        .iter()
        .map(|q| (q.client_id.as_str(), q.seq))
        .collect();
    assert_eq!(queued, [("ha", 2), ("ha", 3)]);
    assert_eq!(snapshot.queued[0].message.payload, "2");
    assert_eq!(
        snapshot.queued[0].message.properties,
        message("x", "", None).properties
    );
    assert_eq!(
        snapshot.inflight_out,
        [
            StoredInflightOut {
                client_id: "ha".into(),
                packet_id: 10,
                state: InflightOut::Published(published)
            },
            StoredInflightOut {
                client_id: "ha".into(),
                packet_id: 11,
                state: InflightOut::Released
            },
        ]
    );
    assert_eq!(
        snapshot.inflight_in,
        [StoredInflightIn {
            client_id: "z2m".into(),
            packet_id: 5
        }]
    );

    // The same state after a restart (expiry aside: the clock moved on a little).
    store.close().await.unwrap();
    let (store, recovery) = Store::open(&path, Durability::Full).unwrap();
    assert!(recovery.is_clean());
    assert_eq!(
        without_expiry(store.load().unwrap()),
        without_expiry(snapshot)
    );
}

#[tokio::test]
async fn deleting_a_session_deletes_everything_it_owns() {
    let store = Store::open_in_memory(Durability::Full).unwrap();
    apply_all(
        &store,
        vec![
            Op::PutSession(session("ha", 600)),
            Op::PutSession(session("other", 600)),
            Op::PutSubscription(subscription("ha", "a/#", None)),
            Op::PutSubscription(subscription("other", "a/#", None)),
            Op::Enqueue(QueuedMessage {
                client_id: "ha".into(),
                seq: 1,
                message: message("a/b", "x", None),
            }),
            Op::PutInflightOut(StoredInflightOut {
                client_id: "ha".into(),
                packet_id: 1,
                state: InflightOut::Released,
            }),
            Op::PutInflightIn(StoredInflightIn {
                client_id: "ha".into(),
                packet_id: 2,
            }),
            Op::DeleteSession {
                client_id: "ha".into(),
            },
        ],
    )
    .await;
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.sessions.len(), 1);
    assert_eq!(snapshot.sessions[0].session.client_id, "other");
    assert_eq!(snapshot.subscriptions, [subscription("other", "a/#", None)]);
    assert!(snapshot.queued.is_empty());
    assert!(snapshot.inflight_out.is_empty());
    assert!(snapshot.inflight_in.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ops_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("moat.db"), Durability::Full).unwrap();
    let store = Arc::new(store);
    const OPS: u64 = 300;
    let tasks: Vec<_> = (0..OPS)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let r = retained(&format!("t/{n}"), "v", None);
                store.reserve().await.unwrap().put_retained(r).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.ops, OPS);
    assert!(
        stats.commits < OPS / 2,
        "group commit should share commits: {stats:?}"
    );
    assert!(stats.fsyncs <= stats.commits);
    assert_eq!(
        store.commit_latency().count,
        stats.commits,
        "every commit's time is recorded once"
    );
    assert!(store.database_bytes().is_some_and(|bytes| bytes > 0));
    assert_eq!(store.load().unwrap().retained.len(), OPS as usize);
}

#[tokio::test]
async fn ops_submitted_in_order_apply_in_order() {
    let store = Store::open_in_memory(Durability::Full).unwrap();
    let first = store.reserve().await.unwrap();
    let second = store.reserve().await.unwrap();
    let put = first.put_retained(retained("x", "1", None));
    let delete = second.delete_retained("x");
    // Awaited out of order: the order of submission is what counts.
    delete.await.unwrap();
    put.await.unwrap();
    assert!(store.load().unwrap().retained.is_empty());
}

#[tokio::test]
async fn batched_mode_commits_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.db");
    let interval = Duration::from_millis(300);
    let (store, _) = Store::open(
        &path,
        Durability::Batched {
            commit_interval: interval,
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    for n in 0..5 {
        let slot = store.reserve().await.unwrap();
        // Resolves on enqueue, long before the commit.
        slot.put_retained(retained(&format!("t/{n}"), "v", None))
            .await
            .unwrap();
    }
    assert!(started.elapsed() < interval);
    tokio::time::sleep(interval / 3).await;
    assert_eq!(
        store.stats().commits,
        0,
        "nothing committed before the interval"
    );
    assert!(store.load().unwrap().retained.is_empty());

    tokio::time::sleep(interval * 2).await;
    let stats = store.stats();
    assert_eq!(
        (stats.commits, stats.ops),
        (1, 5),
        "one commit for the batch"
    );
    assert_eq!(store.load().unwrap().retained.len(), 5);

    // flush commits at once, without waiting for the interval.
    let slot = store.reserve().await.unwrap();
    slot.put_retained(retained("t/late", "v", None))
        .await
        .unwrap();
    let before_flush = std::time::Instant::now();
    store.flush().await.unwrap();
    assert!(before_flush.elapsed() < interval);
    assert_eq!(store.load().unwrap().retained.len(), 6);
}

#[tokio::test]
async fn expiry_counts_running_time_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.db");
    let (store, _) = Store::open(&path, Durability::Full).unwrap();
    apply_all(
        &store,
        vec![
            Op::PutRetained(retained("short", "x", Some(50))),
            Op::PutRetained(retained("long", "x", Some(3600))),
            Op::PutRetained(retained("forever", "x", None)),
            Op::PutSession(session("brief", 10)),
            Op::SessionDisconnected {
                client_id: "brief".into(),
            },
            Op::PutSubscription(subscription("brief", "a/#", None)),
            Op::Enqueue(QueuedMessage {
                client_id: "brief".into(),
                seq: 1,
                message: message("a/b", "x", None),
            }),
            Op::PutSession(session("durable", u32::MAX)),
            Op::PutSession(session("hour", 3600)),
            Op::Enqueue(QueuedMessage {
                client_id: "durable".into(),
                seq: 1,
                message: message("a/b", "stale", Some(30)),
            }),
            Op::Enqueue(QueuedMessage {
                client_id: "durable".into(),
                seq: 2,
                message: message("a/b", "fresh", Some(500)),
            }),
            Op::PutInflightOut(StoredInflightOut {
                client_id: "durable".into(),
                packet_id: 3,
                state: InflightOut::Published(message("a/b", "sent", Some(30))),
            }),
        ],
    )
    .await;
    store.close().await.unwrap();

    // A restart right away: downtime does not count, nothing expired.
    let (store, _) = Store::open(&path, Durability::Full).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.retained.len(), 3);
    assert_eq!(snapshot.sessions.len(), 3);
    store.close().await.unwrap();

    // Then as if the broker had run 100 s more.
    advance_uptime(&path, 100);
    let (store, _) = Store::open(&path, Durability::Full).unwrap();
    let snapshot = store.load().unwrap();
    let topics: Vec<_> = snapshot
        .retained
        .iter()
        .map(|r| r.message.topic.as_str())
        .collect();
    assert_eq!(topics, ["forever", "long"]);
    let long_left = snapshot.retained[1].message.expires_in_secs.unwrap();
    assert!((3490..=3500).contains(&long_left), "{long_left}");

    let sessions: Vec<_> = snapshot
        .sessions
        .iter()
        .map(|s| (s.session.client_id.as_str(), s.expires_in_secs))
        .collect();
    // "hour" was connected when the broker stopped: its countdown started at the
    // first restart, 100 s of running time ago.
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0], ("durable", None));
    assert_eq!(sessions[1].0, "hour");
    let hour_left = sessions[1].1.unwrap();
    assert!((3490..=3500).contains(&hour_left), "{hour_left}");

    // The expired session took its subscription and queue with it; the stale queued
    // message is gone, the in-flight one stays (its delivery had started).
    assert!(snapshot.subscriptions.is_empty());
    let queued: Vec<_> = snapshot
        .queued
        .iter()
        .map(|q| (q.client_id.as_str(), q.seq))
        .collect();
    assert_eq!(queued, [("durable", 2)]);
    assert_eq!(snapshot.inflight_out.len(), 1);
    match &snapshot.inflight_out[0].state {
        InflightOut::Published(m) => assert_eq!(m.expires_in_secs, Some(0)),
        InflightOut::Released => panic!("expected a published entry"),
    }
    store.close().await.unwrap();

    // The purge at open deleted the rows, not just hid them.
    let conn = Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM retained) + (SELECT count(*) FROM subscriptions) \
             + (SELECT count(*) FROM queued)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 3);
}

#[tokio::test]
async fn a_full_disk_refuses_writes_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.db");
    let options = StoreOptions {
        durability: Durability::Full,
        max_bytes: Some(256 * 1024),
    };
    let (store, _) = Store::open_with(&path, options).unwrap();
    let big = "x".repeat(16 * 1024);
    let mut stored = 0;
    let refusal = loop {
        assert!(stored < 64, "the cap was never reached");
        let r = retained(&format!("big/{stored}"), &big, None);
        match store.apply(Op::PutRetained(r)).await {
            Ok(()) => stored += 1,
            Err(err) => break err,
        }
    };
    assert_eq!(refusal, StoreError::DiskFull);
    assert!(store.is_disk_full());
    assert!(stored > 0);
    assert_eq!(store.stats().failed_ops, 1);

    // Reads still work, and freeing space lets writes through again.
    assert_eq!(store.load().unwrap().retained.len(), stored);
    for n in 0..stored {
        store
            .apply(Op::DeleteRetained {
                topic: format!("big/{n}"),
            })
            .await
            .unwrap();
    }
    store
        .apply(Op::PutRetained(retained("small", "ok", None)))
        .await
        .unwrap();
    assert!(!store.is_disk_full());
    assert_eq!(store.load().unwrap().retained.len(), 1);
}

#[tokio::test]
async fn a_bad_op_in_a_batch_fails_alone() {
    let store = Store::open_in_memory(Durability::Full).unwrap();
    let slots = [
        store.reserve().await.unwrap(),
        store.reserve().await.unwrap(),
        store.reserve().await.unwrap(),
    ];
    let [a, bad, c] = slots;
    let a = a.put_retained(retained("a", "1", None));
    // seq beyond i64::MAX cannot be stored.
    let bad = bad.enqueue("ha", u64::MAX, message("q", "x", None));
    let c = c.put_retained(retained("c", "1", None));
    assert!(a.await.is_ok());
    assert!(matches!(bad.await, Err(StoreError::Database(_))));
    assert!(c.await.is_ok());
    assert_eq!(store.load().unwrap().retained.len(), 2);
    assert_eq!(store.stats().failed_ops, 1);
}

#[tokio::test]
async fn a_closed_store_refuses_ops() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("moat.db"), Durability::Full).unwrap();
    let slot = store.reserve().await.unwrap();
    store.close().await.unwrap();
    assert_eq!(
        slot.put_retained(retained("a", "1", None)).await,
        Err(StoreError::Closed)
    );
    assert!(matches!(store.reserve().await, Err(StoreError::Closed)));
}
