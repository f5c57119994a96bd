//! Unit tests of the mailbox: caps, ordering, staging, eviction and drops.

use bytes::Bytes;

use super::*;
use std::time::Duration;

fn msg(qos: QoS, payload: &'static [u8]) -> Message {
    Message::new("t", Bytes::from_static(payload), qos, false)
}

fn limits(max_messages: usize, max_inflight: u16) -> QueueLimits {
    QueueLimits {
        max_messages,
        max_bytes: 1 << 20,
        max_inflight,
    }
}

#[test]
fn caps_drop_and_count() {
    let mb = Mailbox::new(limits(4, 10));
    mb.set_online(true, limits(4, 10));
    for payload in [b"a", b"b", b"c"] {
        assert_eq!(mb.push(msg(QoS::AtLeastOnce, payload)), PushOutcome::Queued);
    }
    // The fourth fills it past three quarters: queued, with a warning.
    assert_eq!(mb.push(msg(QoS::AtLeastOnce, b"d")), PushOutcome::Crowded);
    assert_eq!(
        mb.push(msg(QoS::AtLeastOnce, b"e")),
        PushOutcome::DroppedFull
    );
    assert_eq!((mb.dropped().total, mb.dropped().burst), (1, 1));
}

#[test]
fn a_lagging_client_is_not_waited_for_until_it_drains_to_half_and_its_burst_ends() {
    let mb = Mailbox::new(limits(8, 100));
    mb.set_online(true, limits(8, 100));
    for _ in 0..8 {
        mb.push(msg(QoS::AtLeastOnce, b"x"));
    }
    assert!(!mb.crowded(Instant::now()).lagging);
    assert!(mb.mark_lagging());
    assert!(!mb.mark_lagging(), "already known slow");
    assert!(mb.crowded(Instant::now()).lagging);
    for _ in 0..3 {
        assert_eq!(
            mb.push(msg(QoS::AtLeastOnce, b"x")),
            PushOutcome::DroppedFull
        );
    }
    assert_eq!((mb.dropped().total, mb.dropped().burst), (3, 3));
    assert_eq!(mb.take_unrecorded_drops(), 3);
    assert_eq!(mb.take_unrecorded_drops(), 0);
    // Taking some (here: completing nothing, so the window stays at 8) is not
    // enough while the queue stays more than half full.
    let mb_small = Mailbox::new(limits(8, 2));
    mb_small.set_online(true, limits(8, 2));
    for _ in 0..9 {
        mb_small.push(msg(QoS::AtLeastOnce, b"x"));
    }
    mb_small.mark_lagging();
    let mut out = Vec::new();
    assert_eq!(mb_small.drain(Instant::now(), &mut out), None);
    assert_eq!(out.len(), 2);
    assert!(
        mb_small.crowded(Instant::now()).lagging,
        "6 of 8 queued: still behind"
    );
    assert!(
        mb_small.client_behind(),
        "its window is full of unacknowledged"
    );
    assert!(
        !mb.client_behind(),
        "nothing in flight, the socket takes writes"
    );
    // Draining to half ends the burst (reported once) and the lag.
    let mut out = Vec::new();
    let over = mb.drain(Instant::now(), &mut out).expect("the burst ends");
    assert_eq!(over.dropped, 3);
    assert_eq!(&*over.topic, "t");
    assert_eq!(out.len(), 8);
    let standing = mb.crowded(Instant::now());
    assert!(
        !standing.lagging,
        "drained to half: publishers may wait again"
    );
    assert!(standing.known_slow, "until it has kept up for a while");
    assert_eq!((mb.dropped().total, mb.dropped().burst), (3, 0));
    assert_eq!(mb.drain(Instant::now(), &mut Vec::new()), None);
}

#[test]
fn a_known_slow_client_is_trusted_again_once_it_drains_completely_and_keeps_up() {
    let t0 = Instant::now();
    let mb = Mailbox::new(limits(8, 4));
    mb.set_online(true, limits(8, 4));
    for _ in 0..8 {
        mb.push(msg(QoS::AtLeastOnce, b"x"));
    }
    assert!(mb.mark_lagging());
    // Half drained (4 in flight, 4 queued): no longer lagging, still known slow,
    // and its proof of keeping up has not begun.
    let mut out = Vec::new();
    mb.drain(t0, &mut out);
    assert_eq!(out.len(), 4);
    let standing = mb.crowded(t0 + KEEP_UP_FOR);
    assert!(!standing.lagging && standing.known_slow && !standing.trusted_again);
    // Acknowledged and drained completely at t1: the proof begins. Messages that
    // do not crowd its queue meanwhile do not stop it.
    for packet_id in 1..=4 {
        assert!(mb.complete(packet_id).is_some());
    }
    let t1 = t0 + KEEP_UP_FOR + Duration::from_secs(1);
    mb.drain(t1, &mut Vec::new());
    assert_eq!(mb.depth().0, 0);
    for _ in 0..3 {
        assert_eq!(mb.push(msg(QoS::AtLeastOnce, b"y")), PushOutcome::Queued);
    }
    let standing = mb.crowded(t1 + KEEP_UP_FOR);
    assert!(standing.trusted_again && !standing.known_slow);
    assert_eq!(mb.lag_report().keep_up_for, KEEP_UP_FOR);
    // Found slow again: the next proof is twice as long.
    assert!(mb.mark_lagging(), "found again: counted and logged again");
    assert_eq!(mb.lag_report().keep_up_for, 2 * KEEP_UP_FOR);
}

#[test]
fn window_limits_inflight_and_resends_after_reconnect() {
    let mb = Mailbox::new(limits(10, 2));
    mb.set_online(true, limits(10, 2));
    for _ in 0..3 {
        mb.push(msg(QoS::AtLeastOnce, b"x"));
    }
    let mut out = Vec::new();
    mb.drain(Instant::now(), &mut out);
    assert_eq!(out.len(), 2);
    mb.set_online(false, limits(10, 2));
    mb.set_online(true, limits(10, 2));
    let mut again = Vec::new();
    mb.drain(Instant::now(), &mut again);
    assert!(matches!(
        again[0],
        Outbound::Publish {
            dup: true,
            packet_id: 1,
            ..
        }
    ));
    assert_eq!(again.len(), 2);
    assert!(mb.complete(1).is_some());
    let mut third = Vec::new();
    mb.drain(Instant::now(), &mut third);
    assert!(matches!(
        third[0],
        Outbound::Publish {
            dup: false,
            packet_id: 3,
            ..
        }
    ));
}

#[test]
fn keep_newest_evicts_the_oldest_and_reports_its_position() {
    let mb = Mailbox::new(limits(2, 10));
    mb.keep_newest();
    for payload in [b"a", b"b"] {
        mb.push_journaled(msg(QoS::AtLeastOnce, payload), true);
        mb.release_staged();
    }
    let (outcome, seq) = mb.push_journaled(msg(QoS::AtLeastOnce, b"c"), true);
    assert_eq!((outcome, seq), (PushOutcome::EvictedOldest, 3));
    assert_eq!(mb.take_evicted(), vec![1]);
    assert_eq!(mb.dropped().total, 1);
    mb.release_staged();
    mb.set_online(true, limits(2, 10));
    let mut out = Vec::new();
    mb.drain(Instant::now(), &mut out);
    let payloads: Vec<&[u8]> = out
        .iter()
        .map(|o| match o {
            Outbound::Publish { message, .. } => &message.payload()[..],
            Outbound::PubRel { .. } => &[],
        })
        .collect();
    assert_eq!(payloads, [b"b", b"c"]);
}

#[test]
fn offline_qos0_is_not_kept() {
    let mb = Mailbox::new(limits(10, 2));
    assert_eq!(
        mb.push(msg(QoS::AtMostOnce, b"x")),
        PushOutcome::DroppedOffline
    );
    assert_eq!(mb.push(msg(QoS::AtLeastOnce, b"x")), PushOutcome::Queued);
}

#[test]
fn an_idle_mailbox_keeps_its_rare_parts_out_of_line() {
    // Issue 16: one mailbox per idle session. Drop bookkeeping, staging, eviction
    // and the publishers' wake-up are boxed until first used (288 bytes inline
    // before, 160 after on x86_64), and the caps are kept in u32s (144).
    let size = std::mem::size_of::<Mailbox>();
    assert!(size <= 144, "Mailbox is {size} bytes");
    let mb = Mailbox::new(limits(4, 10));
    mb.set_online(true, limits(4, 10));
    assert_eq!(mb.push(msg(QoS::AtLeastOnce, b"a")), PushOutcome::Queued);
    let mut out = Vec::new();
    mb.drain(Instant::now(), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(mb.dropped().total, 0);
    assert!(mb.take_evicted().is_empty());
    assert!(mb.lock().rare.is_none(), "nothing rare happened");
    for payload in [b"b", b"c", b"d", b"e", b"f"] {
        mb.push(msg(QoS::AtMostOnce, payload));
    }
    assert!(mb.lock().rare.is_some(), "a drop needs its bookkeeping");
    assert_eq!(mb.dropped().total, 1);
}

#[tokio::test]
async fn a_waiting_publisher_is_woken_when_the_client_takes_messages() {
    let mb = Arc::new(Mailbox::new(limits(4, 10)));
    mb.set_online(true, limits(4, 10));
    for payload in [b"a", b"b", b"c", b"d"] {
        mb.push(msg(QoS::AtLeastOnce, payload));
    }
    let waiter = tokio::spawn({
        let mb = Arc::clone(&mb);
        async move { mb.room().await }
    });
    // The waiter creates the mailbox's wake-up on its first poll.
    for _ in 0..100 {
        if mb.lock().rare.as_ref().is_some_and(|r| r.room.is_some()) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(mb.lock().rare.as_ref().is_some_and(|r| r.room.is_some()));
    let mut out = Vec::new();
    mb.drain(Instant::now(), &mut out);
    assert_eq!(out.len(), 4);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiting publisher was woken")
        .expect("the waiter finished");
}

/// The window as a reconnect would resend it: (packet id, true for a PUBREL).
fn window(mb: &Mailbox) -> Vec<(u16, bool)> {
    let l = mb.limits();
    mb.set_online(false, l);
    mb.set_online(true, l);
    let mut out = Vec::new();
    mb.drain(Instant::now(), &mut out);
    out.iter()
        .map(|item| match item {
            Outbound::Publish { packet_id, .. } => (*packet_id, false),
            Outbound::PubRel { packet_id } => (*packet_id, true),
        })
        .collect()
}

#[test]
fn settling_a_batch_is_settling_each_in_turn() {
    // Mixed QoS 1/2, completions and PUBRECs, unknown ids, the same id twice, a
    // PUBREC after its completion and a completion after its PUBREC.
    let steps = [
        Settle::Complete(1),
        Settle::Received(2),
        Settle::Complete(2),
        Settle::Complete(2),
        Settle::Received(99),
        Settle::Complete(99),
        Settle::Received(3),
        Settle::Received(3),
        Settle::Complete(4),
        Settle::Received(4),
        Settle::Received(6),
    ];
    let fill = || {
        let mb = Mailbox::new(limits(20, 6));
        mb.set_online(true, limits(20, 6));
        for qos in [
            QoS::AtLeastOnce,
            QoS::ExactlyOnce,
            QoS::ExactlyOnce,
            QoS::AtLeastOnce,
            QoS::ExactlyOnce,
            QoS::ExactlyOnce,
            QoS::AtLeastOnce,
        ] {
            mb.push(msg(qos, b"m"));
        }
        let mut out = Vec::new();
        mb.drain(Instant::now(), &mut out);
        assert_eq!(out.len(), 6);
        mb
    };
    let one_by_one = fill();
    let expected: Vec<bool> = steps
        .iter()
        .map(|step| match *step {
            Settle::Complete(id) => one_by_one.complete(id).is_some(),
            Settle::Received(id) => one_by_one.received(id),
        })
        .collect();
    assert_eq!(
        expected,
        [
            true, true, true, false, false, false, true, true, true, false, true
        ]
    );
    let batched = fill();
    let mut found = [false; 11];
    batched.settle(&steps, &mut found);
    assert_eq!(found.as_slice(), expected.as_slice());
    assert_eq!(batched.depth(), one_by_one.depth());
    let left = window(&batched);
    assert_eq!(left, window(&one_by_one));
    // What is left in flight, resent; and the room made taken by the seventh.
    assert_eq!(left, [(3, true), (5, false), (6, true), (7, false)]);
}

/// An online mailbox of 2 messages, the topic of [`msg`] and a copy's cost.
fn online_queue_of_two() -> (Mailbox, Arc<str>, usize) {
    let mb = Mailbox::new(limits(2, 10));
    mb.set_online(true, limits(2, 10));
    (mb, Arc::from("t"), msg(QoS::AtMostOnce, b"x").cost())
}

#[test]
fn a_full_qos_0_queue_whose_client_is_not_reading_drops_before_the_copy_is_built() {
    let (mb, topic, cost) = online_queue_of_two();
    mb.push(msg(QoS::AtMostOnce, b"a"));
    mb.push(msg(QoS::AtMostOnce, b"b"));
    // Full, never found lagging, its socket taking what it is sent: the copy goes
    // through `push` (someone may wait for it).
    assert_eq!(
        mb.push(msg(QoS::AtMostOnce, b"c")),
        PushOutcome::DroppedFull
    );
    assert_eq!(
        mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtMostOnce),
        None
    );
    // Its socket is full: nobody waits for it at QoS 0, so the drop arms the check,
    // and the next QoS 0 copy is dropped before it is built, without the lock (the
    // queue is full by count), and counted by the next look at the counters.
    mb.set_writer_blocked(true);
    assert_eq!(
        mb.push(msg(QoS::AtMostOnce, b"d")),
        PushOutcome::DroppedFull
    );
    let drops = mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtMostOnce);
    assert_eq!(drops, Some(Dropped::InBurst));
    assert_eq!((mb.dropped().total, mb.dropped().burst), (3, 3));
    // A QoS 1 copy may be waited for: it goes through `push`, and disarms the check.
    assert_eq!(
        mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtLeastOnce),
        None
    );
    assert_eq!(
        mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtMostOnce),
        None
    );
    // Armed again by the next such drop; a client reading again disarms it.
    assert_eq!(
        mb.push(msg(QoS::AtMostOnce, b"e")),
        PushOutcome::DroppedFull
    );
    mb.set_writer_blocked(false);
    assert_eq!(
        mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtMostOnce),
        None
    );
    // Nothing queued was lost to any of it.
    let mut out = Vec::new();
    mb.drain(Instant::now(), &mut out);
    assert_eq!(out.len(), 2);
}

/// Whether a wake-up for the client's connection is pending (taking it).
fn woken(mb: &Mailbox) -> bool {
    use std::future::Future;
    let mut ready = std::pin::pin!(mb.ready());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    ready.as_mut().poll(&mut cx).is_ready()
}

#[test]
fn a_push_wakes_the_connection_only_when_the_message_can_go_out() {
    let mb = Mailbox::new(limits(100, 2));
    mb.set_online(true, limits(100, 2));
    assert!(woken(&mb), "coming online wakes the connection");
    assert!(!woken(&mb), "one wake-up, taken");

    mb.push(msg(QoS::AtLeastOnce, b"a"));
    assert!(
        woken(&mb),
        "an empty queue and room in the window: sendable"
    );
    mb.push(msg(QoS::AtLeastOnce, b"b"));
    assert!(
        !woken(&mb),
        "behind a queued message, which woke it already"
    );

    let mut out = Vec::new();
    mb.drain(Instant::now(), &mut out);
    assert_eq!(out.len(), 2, "the window of 2 is full");
    mb.push(msg(QoS::AtLeastOnce, b"c"));
    assert!(!woken(&mb), "a full window: nothing can go out");
    mb.push(msg(QoS::AtMostOnce, b"d"));
    assert!(!woken(&mb), "QoS 0 waits behind the blocked QoS 1 message");

    // The client's acknowledgement opens the window and wakes the connection.
    let Some(Outbound::Publish { packet_id, .. }) = out.first() else {
        panic!("a PUBLISH was drained");
    };
    assert!(mb.complete(*packet_id).is_some());
    assert!(woken(&mb));
    out.clear();
    mb.drain(Instant::now(), &mut out);
    assert_eq!(out.len(), 2, "c into the window, and d behind it");

    mb.push(msg(QoS::AtMostOnce, b"e"));
    assert!(woken(&mb), "QoS 0 needs no room in the window");
}

#[test]
fn a_burst_names_the_topic_of_its_latest_drop() {
    let mb = Mailbox::new(limits(1, 10));
    mb.set_online(true, limits(1, 10));
    let on = |topic: &str| Message::new(topic, Bytes::from_static(b"x"), QoS::AtLeastOnce, false);
    assert_eq!(mb.push(on("a")), PushOutcome::Crowded);
    for (topic, latest) in [("a", "a"), ("a", "a"), ("b", "b"), ("a", "a")] {
        assert_eq!(mb.push(on(topic)), PushOutcome::DroppedFull);
        assert_eq!(mb.dropped().topic.as_deref(), Some(latest));
    }
    assert_eq!((mb.dropped().total, mb.dropped().burst), (4, 4));
}

/// A mailbox of 2 whose client is lagging, full, with the drop that armed the
/// check counted.
fn lagging_and_full() -> Mailbox {
    let (mb, _, _) = online_queue_of_two();
    mb.mark_lagging();
    mb.push(msg(QoS::AtLeastOnce, b"a"));
    mb.push(msg(QoS::AtLeastOnce, b"b"));
    assert_eq!(
        mb.push(msg(QoS::AtLeastOnce, b"c")),
        PushOutcome::DroppedFull
    );
    mb
}

#[test]
fn drops_without_the_lock_reach_every_counter_and_end_with_the_burst() {
    let mb = lagging_and_full();
    let topic: Arc<str> = Arc::from("t");
    let cost = msg(QoS::AtLeastOnce, b"x").cost();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        assert_eq!(
            mb.drop_if_full_and_nobody_waits(&topic, cost, qos),
            Some(Dropped::InBurst)
        );
    }
    assert_eq!(mb.drop_count(), DropCount { total: 4, burst: 4 });
    assert_eq!(mb.take_unrecorded_drops(), 4);
    // One more without the lock, then a drain that makes room ends the burst with
    // every drop in it, and disarms: the next copy is built and queued.
    mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtLeastOnce);
    let mut out = Vec::new();
    let over = mb.drain(Instant::now(), &mut out);
    assert_eq!(over.map(|over| over.dropped), Some(5));
    assert_eq!(out.len(), 2);
    assert_eq!(
        mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtLeastOnce),
        None
    );
    assert_eq!(mb.push(msg(QoS::AtLeastOnce, b"d")), PushOutcome::Queued);
    assert_eq!(mb.take_unrecorded_drops(), 1);
}

#[test]
fn a_drop_without_the_lock_after_its_burst_ended_is_counted_but_starts_no_burst() {
    let mb = lagging_and_full();
    let topic: Arc<str> = Arc::from("t");
    let cost = msg(QoS::AtLeastOnce, b"x").cost();
    // A router read the armed level before the drain lowered it: its drop lands
    // after the burst ended.
    mb.drain(Instant::now(), &mut Vec::new());
    mb.armed.store(armed::DROP_ANY, Ordering::Relaxed);
    mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtLeastOnce);
    assert_eq!(mb.drop_count(), DropCount { total: 2, burst: 0 });
    // So the next burst's first drop is the one counted (and logged) as first.
    mb.disarm();
    for payload in [b"d", b"e"] {
        mb.push(msg(QoS::AtLeastOnce, payload));
    }
    assert_eq!(
        mb.push(msg(QoS::AtLeastOnce, b"f")),
        PushOutcome::DroppedFull
    );
    assert_eq!(mb.drop_count(), DropCount { total: 3, burst: 1 });
}

#[test]
fn what_could_make_room_disarms_drops_without_the_lock() {
    let topic: Arc<str> = Arc::from("t");
    let cost = msg(QoS::AtLeastOnce, b"x").cost();
    type Change = fn(&Mailbox);
    let changes: [(&str, Change); 3] = [
        ("offline", |mb| mb.set_online(false, limits(2, 10))),
        ("new limits", |mb| mb.set_online(true, limits(8, 10))),
        ("keep newest", |mb| mb.keep_newest()),
    ];
    for (change, apply) in changes {
        let mb = lagging_and_full();
        apply(&mb);
        assert_ne!(
            mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtLeastOnce),
            Some(Dropped::InBurst),
            "{change}"
        );
        assert_eq!(mb.drop_count().total, 1, "{change}");
    }
}

#[test]
fn a_socket_taking_data_again_stops_qos_0_drops_without_the_lock() {
    let (mb, topic, cost) = online_queue_of_two();
    mb.set_writer_blocked(true);
    for payload in [b"a", b"b", b"c"] {
        mb.push(msg(QoS::AtMostOnce, payload));
    }
    assert_eq!(
        mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtMostOnce),
        Some(Dropped::InBurst)
    );
    mb.set_writer_blocked(false);
    // Looked at under the lock: someone may wait for it now, so `push` takes it.
    assert_eq!(
        mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtMostOnce),
        None
    );
    assert_eq!(mb.drop_count(), DropCount { total: 2, burst: 2 });
}

#[test]
fn drops_without_the_lock_from_many_threads_are_all_counted() {
    let mb = Arc::new(lagging_and_full());
    let topic: Arc<str> = Arc::from("t");
    let cost = msg(QoS::AtLeastOnce, b"x").cost();
    let (threads, each) = (4, 5_000u64);
    let routers: Vec<_> = (0..threads)
        .map(|_| {
            let (mb, topic) = (Arc::clone(&mb), Arc::clone(&topic));
            std::thread::spawn(move || {
                (0..each)
                    .filter(|_| {
                        mb.drop_if_full_and_nobody_waits(&topic, cost, QoS::AtLeastOnce)
                            == Some(Dropped::InBurst)
                    })
                    .count() as u64
            })
        })
        .collect();
    // Readers fold while the routers drop.
    let mut recorded = 0;
    for _ in 0..200 {
        recorded += mb.take_unrecorded_drops();
    }
    let dropped: u64 = routers
        .into_iter()
        .map(|router| router.join().unwrap_or(0))
        .sum();
    assert_eq!(dropped, threads * each);
    recorded += mb.take_unrecorded_drops();
    assert_eq!(recorded, 1 + dropped);
    assert_eq!(
        mb.drop_count(),
        DropCount {
            total: 1 + dropped,
            burst: 1 + dropped
        }
    );
}
