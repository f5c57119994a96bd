//! Unit tests of the verdict: who is waited for, who is found slow, and when a
//! known-slow subscriber is trusted again. The clock is passed in; nothing sleeps.

use bytes::Bytes;

use super::*;
use crate::broker::mailbox::{Mailbox, Message, Outbound, QueueLimits};
use crate::broker::permissions::Permissions;

struct Everything;

impl Permissions for Everything {
    fn may_publish(&self, _: &str, _: moat_protocol::TopicName<'_>) -> bool {
        true
    }
    fn may_subscribe(&self, _: &str, _: &str) -> bool {
        true
    }
    fn may_receive(&self, _: &str, _: &str) -> bool {
        true
    }
    fn may_retain(&self) -> bool {
        true
    }
}

/// A subscriber of `queue` messages with an in-flight window of `window`, online
/// (routing's tests use it too).
pub(in crate::broker) fn subscriber(id: u64, queue: usize, window: u16) -> Arc<SessionLink> {
    let limits = QueueLimits {
        max_messages: queue,
        max_bytes: 1 << 20,
        max_inflight: window,
    };
    let mailbox = Mailbox::new(limits);
    mailbox.set_online(true, limits);
    let name: Arc<str> = Arc::from(format!("client-{id}"));
    Arc::new(SessionLink::new(
        id,
        Arc::clone(&name),
        name,
        mailbox,
        Arc::new(Everything),
    ))
}

fn push(session: &SessionLink) -> PushOutcome {
    let message = Message::new("t", Bytes::from_static(b"x"), QoS::AtLeastOnce, false);
    session.mailbox.push(message)
}

/// One message to `recipients` at `now`: what pushing it did to the first, and
/// whom the publisher waits for, if anyone.
fn publish(
    stats: &Stats,
    now: Instant,
    recipients: &[&Arc<SessionLink>],
) -> (PushOutcome, Option<u64>) {
    let mut crowding = Crowding::at(now);
    let mut first = None;
    for session in recipients {
        let outcome = push(session);
        first.get_or_insert(outcome);
        crowding.note(session, QoS::AtLeastOnce, outcome);
    }
    let verdict = crowding.verdict(stats).map(|session| session.id);
    (first.unwrap_or(PushOutcome::DroppedOffline), verdict)
}

/// The client acknowledges everything and its connection sends the rest, at `now`.
fn take_all(session: &SessionLink, now: Instant) {
    // Packet ids are handed out in order from 1; the tests stay far below the wrap.
    let mut packet_id = 1;
    while session.mailbox.depth().2 > 0 {
        session.mailbox.complete(packet_id);
        packet_id += 1;
    }
    loop {
        let mut out = Vec::new();
        session.mailbox.drain(now, &mut out);
        if out.is_empty() {
            return;
        }
        for sent in out {
            if let Outbound::Publish { packet_id, .. } = sent {
                session.mailbox.complete(packet_id);
            }
        }
    }
}

/// Found lagging once, then drained completely at `now`.
fn known_slow(session: &SessionLink, now: Instant) {
    push(session);
    assert!(session.mailbox.mark_lagging());
    take_all(session, now);
}

/// Messages to `slow` and `fast` at `now` until `slow`'s queue crowds (its
/// connection fills its window, its client acknowledges nothing; the fast one
/// takes everything): whom the publisher waits for on that message.
fn crowd(
    stats: &Stats,
    now: Instant,
    slow: &Arc<SessionLink>,
    fast: &Arc<SessionLink>,
) -> Option<u64> {
    loop {
        let (outcome, verdict) = publish(stats, now, &[slow, fast]);
        take_all(fast, now);
        slow.mailbox.drain(now, &mut Vec::new());
        if outcome != PushOutcome::Queued {
            assert!(slow.mailbox.client_behind(), "its window is full");
            return verdict;
        }
    }
}

#[test]
fn a_slower_subscriber_is_waited_for_until_lag_after_then_not_again_while_known_slow() {
    let stats = Stats::default();
    let t0 = Instant::now();
    let (slow, fast) = (subscriber(1, 8, 2), subscriber(2, 1000, 100));
    // Behind for a moment: waited for.
    assert_eq!(crowd(&stats, t0, &slow, &fast), Some(1));
    let half_way = t0 + LAG_AFTER / 2;
    assert_eq!(publish(&stats, half_way, &[&slow, &fast]).1, Some(1));
    // Behind for LAG_AFTER while the fast one keeps up: found slow, not waited for.
    assert_eq!(publish(&stats, t0 + LAG_AFTER, &[&slow, &fast]).1, None);
    assert_eq!(stats.snapshot().subscribers_lagging, 1);
    // Whenever it has drained (no longer lagging) and crowds again, however long
    // after: known slow, it is lagging at once, and that is no new finding.
    for cycle in 1..=5u32 {
        let now = t0 + cycle * 2 * LAG_AFTER;
        take_all(&slow, now);
        assert!(!slow.mailbox.crowded(now).lagging);
        assert_eq!(crowd(&stats, now, &slow, &fast), None, "cycle {cycle}");
        assert!(slow.mailbox.crowded(now).lagging);
    }
    assert_eq!(stats.snapshot().subscribers_lagging, 1);
    assert_eq!(fast.mailbox.dropped().total, 0);
}

#[test]
fn a_known_slow_subscriber_without_a_faster_peer_is_still_waited_for() {
    let stats = Stats::default();
    let now = Instant::now();
    // Alone on its topic: waited for, a pause at a time; nothing dropped for it.
    let slow = subscriber(1, 8, 2);
    known_slow(&slow, now);
    let mut verdict = None;
    while verdict.is_none() {
        verdict = publish(&stats, now, &[&slow]).1;
    }
    assert_eq!(verdict, Some(1));
    assert_eq!(slow.mailbox.dropped().total, 0);
    // Beside a trusted subscriber that is crowded too: the publisher waits for that
    // one, and the known-slow one is lagging.
    let (slow, trusted) = (subscriber(3, 8, 2), subscriber(4, 8, 100));
    known_slow(&slow, now);
    let mut verdict = None;
    while verdict.is_none() {
        verdict = publish(&stats, now, &[&slow, &trusted]).1;
    }
    assert_eq!(verdict, Some(4));
    assert!(slow.mailbox.crowded(now).lagging);
    assert_eq!(stats.snapshot().subscribers_lagging, 0, "no new finding");
}

#[test]
fn a_subscriber_that_kept_up_is_trusted_again_and_gets_its_grace_again() {
    let stats = Stats::default();
    let t0 = Instant::now();
    let (slow, fast) = (subscriber(1, 8, 2), subscriber(2, 1000, 100));
    // Drained completely at t0, then nothing crowds its queue for KEEP_UP_FOR.
    known_slow(&slow, t0);
    let t1 = t0 + KEEP_UP_FOR;
    assert_eq!(crowd(&stats, t1, &slow, &fast), Some(1), "waited for again");
    assert!(!slow.mailbox.crowded(t1).known_slow);
    assert_eq!(publish(&stats, t1 + LAG_AFTER, &[&slow, &fast]).1, None);
    assert_eq!(stats.snapshot().subscribers_lagging, 1, "found slow again");
    assert_eq!(slow.mailbox.lag_report().keep_up_for, 2 * KEEP_UP_FOR);
}

/// Rule 3 judges the client, not the broker: a pause in which a subscriber took
/// nothing makes it lagging only when its client held it up. One whose window had
/// room (its connection task simply did not run) is not marked slow.
#[tokio::test]
async fn a_whole_pause_without_progress_marks_only_a_client_that_holds_its_queue_up() {
    let stats = Stats::default();
    // A queue of 4 and a window of 100: filled, nothing sent, nothing in flight.
    let starved = subscriber(1, 4, 100);
    while push(&starved) == PushOutcome::Queued {}
    assert!(!starved.mailbox.client_behind());
    wait_for_drain(&starved, &stats).await;
    assert_eq!(stats.snapshot().subscribers_lagging, 0);
    assert!(!starved.mailbox.crowded(Instant::now()).lagging);

    // The same with a window of 2 that its client has not acknowledged: held up.
    let stuck = subscriber(2, 4, 2);
    while push(&stuck) == PushOutcome::Queued {}
    stuck.mailbox.drain(Instant::now(), &mut Vec::new());
    while push(&stuck) == PushOutcome::Queued {}
    assert!(stuck.mailbox.client_behind());
    wait_for_drain(&stuck, &stats).await;
    assert_eq!(stats.snapshot().subscribers_lagging, 1);
}

#[test]
fn a_lagging_clients_copies_dropped_before_they_are_built_are_counted_as_pushed_ones() {
    let stats = Stats::default();
    let (pushed, skipped) = (subscriber(1, 2, 1), subscriber(2, 2, 1));
    let topic: Arc<str> = Arc::from("home/cellar/temperature");
    let message = || Message::new(&topic, Bytes::from_static(b"x"), QoS::AtLeastOnce, false);
    let mut built_for_skipped = 0;
    for session in [&pushed, &skipped] {
        session.mailbox.mark_lagging();
        for _ in 0..6 {
            if session.id == 2 {
                let early = session.mailbox.drop_if_full_and_nobody_waits(
                    &topic,
                    message().cost(),
                    QoS::AtLeastOnce,
                );
                if let Some(drops) = early {
                    counted(&stats, session, drops);
                    continue;
                }
                built_for_skipped += 1;
            }
            if session.mailbox.push(message()) == PushOutcome::DroppedFull {
                dropped(&stats, session);
            }
        }
    }
    // Two fill the queue, the third is dropped by `push`; the rest never built.
    assert_eq!(built_for_skipped, 3);
    assert_eq!(stats.snapshot().dropped, 8);
    for session in [&pushed, &skipped] {
        let drops = session.mailbox.dropped();
        assert_eq!((drops.total, drops.burst), (4, 4));
        assert_eq!(drops.topic.as_deref(), Some(&*topic));
        flush_drops(&stats, session);
    }
    let denials = stats.denials.snapshot();
    let counts: Vec<_> = denials
        .entries
        .iter()
        .map(|e| (e.identity.as_str(), e.kind, e.pattern.as_str(), e.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("client-1", DenialKind::QueueFull, "home/cellar/#", 4),
            ("client-2", DenialKind::QueueFull, "home/cellar/#", 4),
        ]
    );
    // Once it drains, nothing is dropped early: the next copy is built and queued.
    take_all(&skipped, Instant::now());
    let early =
        skipped
            .mailbox
            .drop_if_full_and_nobody_waits(&topic, message().cost(), QoS::AtLeastOnce);
    assert_eq!(early, None);
    assert_eq!(push(&skipped), PushOutcome::Queued);
}
