//! What happens when a subscriber's queue crowds: whether the publisher waits for it
//! (backpressure, when the broker as a whole is behind) or the subscriber's own
//! excess is dropped for it alone (it is slower than its publishers or its peers),
//! and the counting and logging of those drops, once per burst. It decides from
//! push outcomes and mailbox state only; routing, the wire and the store are not
//! its business.
//!
//! The rule, in order:
//! 1. A subscriber whose queue is past three quarters while another subscriber of the
//!    same message still has room, and whose client is what holds it up (its socket
//!    does not take what it is sent, or its in-flight window is full of messages it
//!    has not acknowledged), is *behind*. Behind for [`LAG_AFTER`] without draining to
//!    a quarter of its queue, it is *lagging*, and *known slow* from then on: it reads
//!    slower than a peer that keeps up, so waiting for it would pace everyone to the
//!    slowest consumer. Until then it is waited for (rule 4): a client that falls
//!    behind for a moment (a busy machine, a garbage collection) loses nothing.
//! 2. A known-slow subscriber whose queue crowds again is lagging at once, without
//!    being waited for first, when another subscriber of the same message is not
//!    known slow (has room, or is crowded but trusted: then the publisher waits for
//!    that one). It stays known slow until it has drained its queue completely and
//!    then not crowded for [`KEEP_UP_FOR`] (twice as long each further time it is
//!    found slow, up to [`KEEP_UP_MAX`]). So what one slow subscriber costs a
//!    publisher is bounded in total, not per drain: the pauses before it is found
//!    slow (about [`LAG_AFTER`] and one [`PAUSE_LIMIT`]), once per time it is found.
//! 3. A subscriber for which a publisher waited a whole pause ([`PAUSE_LIMIT`]), that
//!    took nothing meanwhile and whose client holds it up (as in rule 1) is lagging
//!    and known slow too (stuck, or gone). One whose client could take more is not:
//!    its connection task was short of CPU, and the next pause is rule 4's.
//! 4. Otherwise the broker itself is behind (the subscriber's connection could send
//!    but has not had the CPU yet): the publisher waits for the subscriber to drain
//!    to half, at most [`PAUSE_LIMIT`] per pause. QoS 0 waits only while the
//!    subscriber's socket takes what it is sent (else the client is behind).
//!
//! A subscriber slower than its publishers with no faster peer (the only one on its
//! topics, or every other one known slow too) is waited for, a pause at a time,
//! known slow or not: it costs only the publishers of those topics, and no
//! acknowledged message is dropped for it.
//!
//! Nobody waits for a lagging subscriber until it has drained to half; meanwhile
//! what does not fit in its queue is dropped for it alone: counted in
//! `$SYS/broker/messages/dropped`, in `moat denials` (kind `queue-full`, per
//! identity and topic pattern) and logged when the burst starts and when it ends
//! (with the pauses it has cost publishers). Being found slow is counted once per
//! finding in `$SYS/broker/subscribers/lagging` and logged; being trusted again is
//! logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_protocol::QoS;

use super::denials::DenialKind;
use super::mailbox::{BurstOver, Dropped, PushOutcome, Standing, nobody_waits_for};
pub use super::mailbox::{KEEP_UP_FOR, KEEP_UP_MAX};
use super::session::SessionLink;
use super::stats::Stats;

/// How long a subscriber may stay behind its peers before it is lagging (rule 1).
pub const LAG_AFTER: Duration = Duration::from_millis(500);
/// Longest a publisher waits for one subscriber per pause.
pub const PAUSE_LIMIT: Duration = Duration::from_millis(250);
/// How often a waiting publisher looks again (a drain also wakes it).
const PAUSE_STEP: Duration = Duration::from_millis(5);

/// The recipients of one message whose queues crowded, and whether any had room.
#[derive(Default)]
pub struct Crowding {
    /// Crowded recipients a publisher could wait for (see [`may_wait_for`]), each
    /// with whether it is known slow.
    crowded: Vec<(Arc<SessionLink>, bool)>,
    any_with_room: bool,
    /// When the first crowded queue was noted: one clock read per crowded message.
    now: Option<Instant>,
}

impl Crowding {
    /// A verdict as of `now` (tests pass their own clock).
    #[cfg(test)]
    fn at(now: Instant) -> Crowding {
        Crowding {
            now: Some(now),
            ..Crowding::default()
        }
    }

    /// Notes what pushing one message to `session` did.
    pub fn note(&mut self, session: &Arc<SessionLink>, qos: QoS, outcome: PushOutcome) {
        match outcome {
            PushOutcome::Queued => self.any_with_room = true,
            PushOutcome::Crowded | PushOutcome::DroppedFull | PushOutcome::EvictedOldest => {
                let now = *self.now.get_or_insert_with(Instant::now);
                let standing = session.mailbox.crowded(now);
                if standing.trusted_again {
                    tracing::info!(
                        client_id = %session.client_id,
                        identity = %session.owner,
                        "subscriber kept up: no longer known slow, publishers wait for it again while it is behind for a moment"
                    );
                }
                if may_wait_for(&standing, session, qos) {
                    self.crowded
                        .push((Arc::clone(session), standing.known_slow));
                }
            }
            PushOutcome::DroppedOffline => {}
        }
    }

    /// The subscriber the publisher should wait for, if any. Crowded recipients that
    /// are slower than another recipient of the message are marked lagging: known
    /// slow ones at once (rule 2), others once their clients have held them up for
    /// [`LAG_AFTER`] (rule 1).
    pub fn verdict(self, stats: &Stats) -> Option<Arc<SessionLink>> {
        let now = self.now?;
        let trusted_peer = self.any_with_room || self.crowded.iter().any(|(_, slow)| !slow);
        let mut wait_for = None;
        for (session, known_slow) in self.crowded {
            if known_slow && trusted_peer {
                // Counted and logged when it was found slow; its drops are, per burst.
                session.mailbox.mark_lagging();
            } else if self.any_with_room
                && session.mailbox.client_behind()
                && session.mailbox.behind_for(now, 2 * LAG_AFTER) >= LAG_AFTER
            {
                lagging(
                    stats,
                    &session,
                    "slower than another subscriber of the same messages",
                );
            } else if wait_for.is_none() {
                wait_for = Some(session);
            }
        }
        wait_for
    }
}

/// Whether a publisher may wait for `session`'s crowded queue. Not for a lagging
/// client; for QoS 0 only while its socket takes what it is sent (the broker is
/// behind, its task short of CPU next to the publishers').
fn may_wait_for(standing: &Standing, session: &SessionLink, qos: QoS) -> bool {
    !nobody_waits_for(standing.lagging, qos, session.mailbox.writer_blocked())
}

/// Marks `session` lagging; counts and logs it when it was not known slow before.
fn lagging(stats: &Stats, session: &SessionLink, why: &'static str) {
    if session.mailbox.mark_lagging() {
        stats.subscriber_lagging();
        let record = session.mailbox.lag_report();
        tracing::info!(
            client_id = %session.client_id,
            identity = %session.owner,
            why,
            publisher_pauses = record.publisher_pauses,
            keep_up_secs = record.keep_up_for.as_secs(),
            "subscriber is lagging: known slow from now on, publishers no longer wait for it while a faster subscriber gets the same messages, until it has drained its queue and kept up for keep_up_secs"
        );
    }
}

/// Backpressure: the publisher handles nothing more until `subscriber` has drained
/// half its queue, at most [`PAUSE_LIMIT`] (rule 4). A subscriber that took nothing
/// during the whole pause while its client held it up is marked lagging (rule 3):
/// it costs each publisher one pause. The pause is counted in the stats and in the subscriber's record.
pub async fn wait_for_drain(subscriber: &SessionLink, stats: &Stats) {
    stats.publisher_paused();
    subscriber.mailbox.publisher_paused();
    let until = Instant::now() + PAUSE_LIMIT;
    let mut drained = false;
    while !subscriber.mailbox.half_empty() && Instant::now() < until {
        if tokio::time::timeout(PAUSE_STEP, subscriber.mailbox.room())
            .await
            .is_ok()
        {
            drained = true;
        }
    }
    // Only the client's own fault makes it lagging: if its socket takes what it is
    // sent and its window has room, its connection task has not had the CPU (a busy
    // machine), and marking it known slow would drop its messages for the broker's
    // failing.
    if !drained && !subscriber.mailbox.half_empty() && subscriber.mailbox.client_behind() {
        lagging(stats, subscriber, "took nothing during a whole pause");
    }
}

/// Counts a message dropped because `session`'s queue was full, and logs the first
/// drop of a burst. The denial counts get the first drop at once and the rest from
/// [`flush_drops`] (every second, and when the burst or the connection ends), so
/// a burst costs one lock per drop, not a map update.
pub fn dropped(stats: &Stats, session: &SessionLink) {
    counted(
        stats,
        session,
        Dropped::Counted(session.mailbox.drop_count()),
    );
}

/// Like [`dropped`], for a drop the mailbox has counted already
/// ([`Mailbox::drop_if_full_and_nobody_waits`]: the copy for a client nobody waits
/// for, dropped before it was built). Only the first drop of a burst is logged, and
/// a drop counted without the lock is never the first.
///
/// [`Mailbox::drop_if_full_and_nobody_waits`]: super::mailbox::Mailbox::drop_if_full_and_nobody_waits
pub fn counted(stats: &Stats, session: &SessionLink, dropped: Dropped) {
    stats.dropped(1);
    if let Dropped::Counted(drops) = dropped
        && drops.burst == 1
    {
        let (queued, bytes, inflight) = session.mailbox.depth();
        tracing::warn!(
            client_id = %session.client_id,
            identity = %session.owner,
            queued,
            queued_bytes = bytes,
            inflight,
            dropped_before = drops.total - 1,
            "queue full: dropping messages for a slow or offline client until it catches up (counted; logged again when it does)"
        );
        flush_drops(stats, session);
    }
}

/// Adds the drops not yet in the denial counts to them (under the topic pattern of
/// the latest one).
pub fn flush_drops(stats: &Stats, session: &SessionLink) {
    let unrecorded = session.mailbox.take_unrecorded_drops();
    if unrecorded > 0 {
        let topic = session.mailbox.dropped().topic;
        stats.denials.record_n(
            &session.owner,
            DenialKind::QueueFull,
            topic.as_deref().unwrap_or(""),
            unrecorded,
        );
    }
}

/// The client drained its queue to half after a burst of drops.
pub fn caught_up(stats: &Stats, session: &SessionLink, over: &BurstOver) {
    let unrecorded = session.mailbox.take_unrecorded_drops();
    stats.denials.record_n(
        &session.owner,
        DenialKind::QueueFull,
        &over.topic,
        unrecorded,
    );
    tracing::warn!(
        client_id = %session.client_id,
        identity = %session.owner,
        dropped = over.dropped,
        publisher_pauses = session.mailbox.lag_report().publisher_pauses,
        "queue drained: the client caught up after messages were dropped for it"
    );
}

#[cfg(test)]
pub(super) mod tests;
