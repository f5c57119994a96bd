//! A session's outbound side: the bounded queue of messages waiting for the client,
//! and the in-flight window of QoS 1/2 messages sent but not yet acknowledged. It is
//! shared between the router (which pushes) and the connection (which drains); it
//! knows nothing of subscriptions, permissions or the wire format.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

use moat_protocol::QoS;

mod lag;
mod message;
use lag::Lag;
pub use lag::{KEEP_UP_FOR, KEEP_UP_MAX, LagReport, Standing};
pub use message::{Body, Message, SubscriptionIds, forwarded_properties, shared_properties};

/// A burst of drops that ended: the client drained its queue to half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BurstOver {
    pub dropped: u64,
    /// The topic of the burst's last drop.
    pub topic: Arc<str>,
}

/// Messages dropped because a queue was full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drops {
    /// Since the session began.
    pub total: u64,
    /// In the current burst (since the queue last drained to half).
    pub burst: u64,
    /// The topic of the latest drop.
    pub topic: Option<Arc<str>>,
}

/// A queue's drop counters right after a drop (see [`Mailbox::drop_count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropCount {
    /// Since the session began.
    pub total: u64,
    /// In the current burst (since the queue last drained to half).
    pub burst: u64,
}

/// A copy dropped by [`Mailbox::drop_if_full_and_nobody_waits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Counted under the lock: the counters right after it.
    Counted(DropCount),
    /// Counted without the lock, inside a burst whose first drop was counted (and
    /// logged) under it: folded into the counters by the next look at them.
    InBurst,
}

/// How far [`Mailbox::drop_if_full_and_nobody_waits`] may go for the next copy
/// (`Mailbox::armed`). Only a drop under the lock raises it; whatever could make
/// room lowers it.
mod armed {
    /// A copy goes through `push`.
    pub const NO: u8 = 0;
    /// The previous copy was dropped for a client nobody waits for: look under the
    /// lock whether this one is too.
    pub const LOOK: u8 = 1;
    /// Full by message count, online, and its socket not taking what it was sent:
    /// a QoS 0 copy is dropped without the lock.
    pub const DROP_QOS0: u8 = 2;
    /// Full by message count, online, and lagging: any copy is dropped without the
    /// lock.
    pub const DROP_ANY: u8 = 3;
}

/// Copies dropped without the lock that are folded into the counters at once
/// rather than at the next look: far below `u32::MAX`, so the count never wraps.
const FOLD_AT: u32 = 1 << 30;

/// What happened to a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// Queued, and the queue is now more than three quarters full: a QoS 1/2
    /// publisher should wait for it to drain before it overflows.
    Crowded,
    /// The queue was at its message or byte cap: the message was dropped (counted).
    DroppedFull,
    /// QoS 0 for a client that is offline: not kept, by design.
    DroppedOffline,
    /// Queued after the oldest queued messages were dropped to make room (a mailbox
    /// that keeps the newest, see [`Mailbox::keep_newest`]); their durable queue
    /// positions wait in [`Mailbox::take_evicted`].
    EvictedOldest,
}

/// An outbound QoS 1/2 message in the window.
#[derive(Clone, Debug)]
pub enum InFlight {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Message),
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// A client's acknowledgement of an outbound QoS 1/2 message, as
/// [`Mailbox::settle`] applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// PUBACK, PUBCOMP, or a PUBREC that refuses the message: as [`Mailbox::complete`].
    Complete(u16),
    /// A PUBREC that accepts it: as [`Mailbox::received`].
    Received(u16),
}

/// Something the connection must send now.
#[derive(Debug)]
pub enum Outbound {
    Publish {
        packet_id: u16,
        dup: bool,
        message: Message,
    },
    PubRel {
        packet_id: u16,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// In-flight window: min(our cap, the client's Receive Maximum).
    pub max_inflight: u16,
}

/// [`QueueLimits`] as the locked state keeps them: in `u32`s, 12 bytes less in every
/// session (issue 16's idle memory). A cap past 4 G messages or bytes saturates,
/// which no queue on a 512 MB machine reaches.
#[derive(Debug, Clone, Copy)]
struct Caps {
    max_messages: u32,
    max_bytes: u32,
    max_inflight: u16,
}

impl Caps {
    fn max_messages(self) -> usize {
        self.max_messages as usize
    }

    fn max_bytes(self) -> usize {
        self.max_bytes as usize
    }
}

impl From<QueueLimits> for Caps {
    fn from(limits: QueueLimits) -> Caps {
        let saturating = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Caps {
            max_messages: saturating(limits.max_messages),
            max_bytes: saturating(limits.max_bytes),
            max_inflight: limits.max_inflight,
        }
    }
}

impl From<Caps> for QueueLimits {
    fn from(caps: Caps) -> QueueLimits {
        QueueLimits {
            max_messages: caps.max_messages(),
            max_bytes: caps.max_bytes(),
            max_inflight: caps.max_inflight,
        }
    }
}

struct State {
    queue: VecDeque<Message>,
    queued_bytes: usize,
    inflight: VecDeque<(u16, InFlight)>,
    next_packet_id: u16,
    limits: Caps,
    online: bool,
    /// After a reconnect, the whole window must be sent again before new messages.
    resend_pending: bool,
    /// What most sessions never use, allocated at first use (see [`Rare`]).
    rare: Option<Box<Rare>>,
}

/// The parts of a mailbox that only a queue that overflowed, a persistent session,
/// a bridge or a waiting publisher needs: inline, they took ~130 bytes in every
/// idle session (issue 16). Allocated the first time one of them is needed, and
/// kept for the session.
#[derive(Default)]
struct Rare {
    /// Journaled messages whose store operation is not submitted yet: counted
    /// against the caps but invisible to `drain`, so the client's acknowledgement
    /// (a store operation of its own) can never overtake their Enqueue.
    staged: Vec<Message>,
    dropped: u64,
    /// Drops since the queue last drained to half (the current burst).
    burst: u64,
    /// The topic of the burst's latest drop (for the denial counts).
    burst_topic: Option<Arc<str>>,
    /// Drops not yet added to the denial counts.
    unrecorded: u64,
    /// Whether the client keeps up: behind, lagging, known slow (see the `lag` module).
    lag: Lag,
    /// The last durable queue position given (persistent sessions).
    last_seq: u64,
    /// At the cap, drop the oldest queued message instead of the new one.
    keep_newest: bool,
    /// Durable queue positions of evicted messages, for the caller to delete.
    evicted: Vec<u64>,
    /// Woken when draining makes room (publisher backpressure); created by the
    /// first publisher that waits, shared with it so it can wait outside the lock.
    room: Option<Arc<Notify>>,
}

impl State {
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// Journaled messages waiting for their store operations (see [`Rare::staged`]).
    fn staged_len(&self) -> usize {
        self.rare.as_ref().map_or(0, |rare| rare.staged.len())
    }
}

pub struct Mailbox {
    state: Mutex<State>,
    notify: Notify,
    /// The client's connection is waiting for its socket to take what it was sent:
    /// the client, not the broker, is behind.
    writer_blocked: AtomicBool,
    /// A push was dropped while the client was lagging, or (QoS 0) while its socket
    /// was not taking what it was sent: the next copies for it are likely dropped
    /// too, so [`Mailbox::drop_if_full_and_nobody_waits`] looks at them first (an
    /// [`armed`] level). Raised by drops under the lock; lowered under the lock by
    /// a drain that makes room, going offline, new limits or a bridge's
    /// keep-newest, and by the client's socket taking data again.
    armed: AtomicU8,
    /// Copies dropped without the lock ([`armed::DROP_ANY`], [`armed::DROP_QOS0`])
    /// that the counters in [`Rare`] do not have yet: [`Mailbox::lock`] folds them
    /// in, so whoever reads the counters sees them. 32 bits keep the mailbox at its
    /// size (issue 16, idle memory); [`FOLD_AT`] keeps them from wrapping.
    unlocked_drops: AtomicU32,
}

impl Mailbox {
    pub fn new(limits: QueueLimits) -> Mailbox {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                inflight: VecDeque::new(),
                next_packet_id: 1,
                limits: limits.into(),
                online: false,
                resend_pending: false,
                rare: None,
            }),
            notify: Notify::new(),
            writer_blocked: AtomicBool::new(false),
            armed: AtomicU8::new(armed::NO),
            unlocked_drops: AtomicU32::new(0),
        }
    }

    #[inline]
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state
        // stays consistent between statements, so keep serving rather than poison.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.unlocked_drops.load(Ordering::Relaxed) != 0 {
            self.fold_unlocked_drops(&mut s);
        }
        s
    }

    /// Adds copies dropped without the lock to the counters. They belong to the
    /// burst they were dropped in; one that a drain has ended since keeps them out
    /// of the next (whose first drop is the one logged).
    #[inline(never)]
    fn fold_unlocked_drops(&self, s: &mut State) {
        let dropped = u64::from(self.unlocked_drops.swap(0, Ordering::Relaxed));
        let rare = s.rare();
        rare.dropped += dropped;
        rare.unrecorded += dropped;
        if rare.burst > 0 {
            rare.burst += dropped;
        }
    }

    /// Lowers [`Mailbox::armed`]: called under the lock by whatever may make room
    /// or change who waits, before it does.
    fn disarm(&self) {
        self.armed.store(armed::NO, Ordering::Relaxed);
    }

    /// Raises [`Mailbox::armed`] after a copy for `s` was dropped, under the lock,
    /// for a client nobody waits for (`lagging`, or else its socket is full).
    fn arm(&self, s: &State, lagging: bool) {
        let full_by_count = s.queue.len() + s.staged_len() >= s.limits.max_messages();
        let keep_newest = s.rare.as_ref().is_some_and(|rare| rare.keep_newest);
        let level = match (full_by_count && s.online && !keep_newest, lagging) {
            (true, true) => armed::DROP_ANY,
            (true, false) => armed::DROP_QOS0,
            (false, _) => armed::LOOK,
        };
        self.armed.store(level, Ordering::Relaxed);
    }

    pub fn is_online(&self) -> bool {
        self.lock().online
    }

    /// Marks the session as attached to a connection (or detached). On attach, the
    /// in-flight window is resent first.
    pub fn set_online(&self, online: bool, limits: QueueLimits) {
        let mut s = self.lock();
        self.disarm();
        s.online = online;
        s.limits = limits.into();
        if online {
            s.resend_pending = !s.inflight.is_empty();
            // QoS 0 messages queued for a previous connection are not worth keeping
            // past a disconnect; queued QoS 1/2 are.
        } else {
            s.queue.retain(|m| m.qos != QoS::AtMostOnce);
            s.queued_bytes = s.queue.iter().map(Message::cost).sum();
        }
        drop(s);
        if online {
            self.notify.notify_one();
        }
    }

    /// Queues a message for the client, within the caps.
    pub fn push(&self, message: Message) -> PushOutcome {
        self.push_journaled(message, false).0
    }

    /// Like [`Mailbox::push`]; with `journal`, a queued QoS 1/2 message gets the
    /// next durable queue position, which is returned (0 when none was given).
    pub fn push_journaled(&self, mut message: Message, journal: bool) -> (PushOutcome, u64) {
        let mut s = self.lock();
        if !s.online && message.qos == QoS::AtMostOnce {
            return (PushOutcome::DroppedOffline, 0);
        }
        let cost = message.cost();
        let mut count = s.queue.len() + s.staged_len();
        let mut evicted = false;
        while count >= s.limits.max_messages() || s.queued_bytes + cost > s.limits.max_bytes() {
            let s = &mut *s;
            let rare = s.rare.get_or_insert_default();
            let oldest = if rare.keep_newest {
                s.queue.pop_front()
            } else {
                None
            };
            let Some(oldest) = oldest else {
                count_drop(rare, message.topic());
                let lagging = rare.lag.is_lagging();
                if nobody_waits_for(lagging, message.qos, self.writer_blocked()) {
                    self.arm(s, lagging);
                }
                return (PushOutcome::DroppedFull, 0);
            };
            rare.dropped += 1;
            s.queued_bytes -= oldest.cost();
            count -= 1;
            evicted = true;
            if oldest.seq != 0 {
                rare.evicted.push(oldest.seq);
            }
        }
        let journal = journal && message.qos != QoS::AtMostOnce;
        if journal {
            let rare = s.rare();
            rare.last_seq += 1;
            message.seq = rare.last_seq;
        }
        let seq = message.seq;
        s.queued_bytes += cost;
        let outcome = if evicted {
            PushOutcome::EvictedOldest
        } else if (count + 1) * 4 > s.limits.max_messages() * 3
            || s.queued_bytes * 4 > s.limits.max_bytes() * 3
        {
            PushOutcome::Crowded
        } else {
            PushOutcome::Queued
        };
        // Behind a staged message, everything waits too: order is kept.
        if journal || s.staged_len() > 0 {
            s.rare().staged.push(message);
            return (outcome, seq);
        }
        // Wake the client's connection only when this message can go out now. Behind
        // a queued message it waits its turn: the connection drains whatever may be
        // sent before it waits again, so a queue left non-empty has a blocked front
        // (a full window) or a wake-up pending. With a full window the client's next
        // acknowledgement starts the drain. Waking it for every push made it run its
        // loop to find nothing to send (BENCHMARKS.md, "The QoS 1 path, fourth round").
        let sendable =
            s.queue.is_empty() && (message.qos == QoS::AtMostOnce || !is_window_full(&s));
        s.queue.push_back(message);
        let wake = s.online && sendable;
        drop(s);
        if wake {
            self.notify.notify_one();
        }
        (outcome, seq)
    }

    /// Drops a copy of a message (`cost` as [`Message::cost`], `qos` as it would be
    /// delivered) for a client whose queue is full and who nobody waits for, without
    /// the copy being built: counted as [`Mailbox::push`] counts a drop. Nobody waits
    /// for a lagging client, nor, at QoS 0, for one whose socket is not taking what
    /// it was sent (`backpressure`): without this, such a client that was never
    /// found lagging cost every message a full push, its drop count and the
    /// crowding bookkeeping (issue 16, QoS 0 isolation). `None` when the copy must
    /// go through `push` (someone may wait for the client, its queue has room, it
    /// keeps the newest, or it is offline and the copy is QoS 0).
    ///
    /// Only a queue whose previous push was dropped that way is looked at: a
    /// delivery to any other costs one relaxed load. When that drop found the queue
    /// full by count (which only a drain, going offline or new limits undo, and
    /// they disarm this first), the copy is counted without the lock: the lock and
    /// the bookkeeping were most of what a lagging subscriber cost every message
    /// (BENCHMARKS.md, QoS 0 isolation). Such drops are attributed to the topic of
    /// the burst's latest drop under the lock, as the denial counts already take a
    /// second's drops under one topic.
    pub fn drop_if_full_and_nobody_waits(
        &self,
        topic: &Arc<str>,
        cost: usize,
        qos: QoS,
    ) -> Option<Dropped> {
        match self.armed.load(Ordering::Relaxed) {
            armed::NO => return None,
            armed::DROP_ANY => return Some(self.drop_unlocked()),
            armed::DROP_QOS0 if qos == QoS::AtMostOnce => return Some(self.drop_unlocked()),
            _ => {}
        }
        let mut s = self.lock();
        let full = s.queue.len() + s.staged_len() >= s.limits.max_messages()
            || s.queued_bytes + cost > s.limits.max_bytes();
        let kept = s.online || qos != QoS::AtMostOnce;
        let writer_blocked = self.writer_blocked();
        let unwaited = s.rare.as_mut().filter(|rare| {
            full && kept
                && nobody_waits_for(rare.lag.is_lagging(), qos, writer_blocked)
                && !rare.keep_newest
        });
        let Some(rare) = unwaited else {
            self.disarm();
            return None;
        };
        let drops = count_drop(rare, topic);
        let lagging = rare.lag.is_lagging();
        self.arm(&s, lagging);
        Some(Dropped::Counted(drops))
    }

    fn drop_unlocked(&self) -> Dropped {
        if self.unlocked_drops.fetch_add(1, Ordering::Relaxed) >= FOLD_AT {
            // A client nobody drains or looks at for billions of copies: fold now.
            drop(self.lock());
        }
        Dropped::InBurst
    }

    /// At the cap, drop the oldest queued message rather than the new one (a bridge's
    /// queue: what is newest matters most to whoever reads it later).
    pub fn keep_newest(&self) {
        let mut s = self.lock();
        self.disarm();
        s.rare().keep_newest = true;
    }

    /// Durable queue positions of messages evicted since the last call.
    pub fn take_evicted(&self) -> Vec<u64> {
        match self.lock().rare.as_mut() {
            Some(rare) => std::mem::take(&mut rare.evicted),
            None => Vec::new(),
        }
    }

    /// Makes staged messages visible once their store operations are submitted.
    pub fn release_staged(&self) {
        let mut s = self.lock();
        let state = &mut *s;
        let Some(rare) = state.rare.as_mut().filter(|rare| !rare.staged.is_empty()) else {
            return;
        };
        let staged = std::mem::take(&mut rare.staged);
        state.queue.extend(staged);
        let online = s.online;
        drop(s);
        if online {
            self.notify.notify_one();
        }
    }

    /// Puts back what a persistent session had before a restart: its queue (in
    /// order) and its in-flight window (resent first on the next connection).
    pub fn restore(&self, queued: Vec<Message>, inflight: Vec<(u16, InFlight)>) {
        let mut s = self.lock();
        self.disarm();
        let last_seq = queued.iter().map(|m| m.seq).max().unwrap_or(0);
        if last_seq > 0 {
            s.rare().last_seq = last_seq;
        }
        s.queued_bytes = queued.iter().map(Message::cost).sum();
        s.queue = queued.into();
        s.resend_pending = !inflight.is_empty();
        s.inflight = inflight.into();
    }

    /// Waits until the client has taken messages from the queue.
    pub async fn room(&self) {
        let room = Arc::clone(self.lock().rare().room.get_or_insert_default());
        room.notified().await
    }

    /// Waits until there may be something to send.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Moves what may be sent now into `out`: the window to resend after a reconnect,
    /// then queued messages while the in-flight window has room. Expired messages are
    /// discarded on the way. Returns the burst of drops that this drain ended (the
    /// queue is back to half), for the caller to log.
    pub fn drain(&self, now: Instant, out: &mut Vec<Outbound>) -> Option<BurstOver> {
        let mut s = self.lock();
        let queued_before = s.queue.len();

        if s.resend_pending {
            s.resend_pending = false;
            for (packet_id, entry) in &s.inflight {
                out.push(match entry {
                    InFlight::Published(message) => Outbound::Publish {
                        packet_id: *packet_id,
                        dup: true,
                        message: message.clone(),
                    },
                    InFlight::Released => Outbound::PubRel {
                        packet_id: *packet_id,
                    },
                });
            }
        }
        while let Some(front) = s.queue.front() {
            if front.qos != QoS::AtMostOnce && is_window_full(&s) {
                break;
            }
            if s.queue.len() == queued_before {
                // Room is made from here: no copy is dropped without a look.
                self.disarm();
            }
            let Some(message) = s.queue.pop_front() else {
                break;
            };
            s.queued_bytes -= message.cost();
            if message.is_expired(now) {
                continue;
            }
            if message.qos == QoS::AtMostOnce {
                out.push(Outbound::Publish {
                    packet_id: 0,
                    dup: false,
                    message,
                });
                continue;
            }
            let packet_id = next_free_id(&mut s);
            s.inflight
                .push_back((packet_id, InFlight::Published(message.clone())));
            out.push(Outbound::Publish {
                packet_id,
                dup: false,
                message,
            });
        }
        let made_room = s.queue.len() < queued_before;
        let half_empty = is_half_empty(&s);
        let mut burst_over = None;
        // Nothing to note, and nobody to wake, for a mailbox that never needed its
        // rare parts (the common case): no more work than before they were boxed.
        let mut room = None;
        if made_room {
            let (queued, max) = (s.queue.len() + s.staged_len(), s.limits.max_messages());
            if let Some(rare) = s.rare.as_mut() {
                rare.lag.made_room(now, queued, max, half_empty);
                if half_empty && rare.burst > 0 {
                    // Caught up: a burst of drops ends.
                    burst_over = Some(BurstOver {
                        dropped: std::mem::take(&mut rare.burst),
                        topic: rare.burst_topic.clone().unwrap_or_else(|| Arc::from("")),
                    });
                }
                room = rare.room.clone();
            }
        }
        if s.queue.is_empty() && s.queue.capacity() > 64 {
            // A burst is over: give its memory back.
            s.queue.shrink_to_fit();
        }
        drop(s);
        if let Some(room) = room {
            room.notify_waiters();
        }
        burst_over
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the message is done. Returns what was in
    /// flight under that id, `None` for an unknown packet id.
    pub fn complete(&self, packet_id: u16) -> Option<InFlight> {
        let mut s = self.lock();
        let entry = take_inflight(&mut s, packet_id)?;
        drop(s);
        self.notify.notify_one();
        Some(entry)
    }

    /// Applies the client's acknowledgements `steps` in their order under one lock,
    /// each as [`Mailbox::complete`] or [`Mailbox::received`] would, and sets
    /// `found[i]` to whether the packet id of `steps[i]` was in flight when its turn
    /// came (`found` is at least as long as `steps`). Unlike `complete` it wakes
    /// nobody: it is for the client's own connection, which drains the mailbox
    /// before it next waits, so the window's room is used without a wake-up.
    pub fn settle(&self, steps: &[Settle], found: &mut [bool]) {
        let mut s = self.lock();
        for (step, found) in steps.iter().zip(found.iter_mut()) {
            *found = match *step {
                // The message is dropped under the lock: dropping it is reference
                // counting, unless this was its last copy.
                Settle::Complete(packet_id) => take_inflight(&mut s, packet_id).is_some(),
                Settle::Received(packet_id) => {
                    match s.inflight.iter_mut().find(|(id, _)| *id == packet_id) {
                        Some((_, entry)) => {
                            *entry = InFlight::Released;
                            true
                        }
                        None => false,
                    }
                }
            };
        }
    }

    /// PUBREC: the client has the QoS 2 message; from now on only PUBREL is resent.
    pub fn received(&self, packet_id: u16) -> bool {
        let mut s = self.lock();
        match s.inflight.iter_mut().find(|(id, _)| *id == packet_id) {
            Some((_, entry)) => {
                *entry = InFlight::Released;
                true
            }
            None => false,
        }
    }

    /// Whether `packet_id` is in the window (a client reusing the packet id space
    /// for SUBSCRIBE must avoid it).
    pub fn is_in_flight(&self, packet_id: u16) -> bool {
        self.lock().inflight.iter().any(|(id, _)| *id == packet_id)
    }

    pub fn limits(&self) -> QueueLimits {
        self.lock().limits.into()
    }

    /// At most half the queue's message and byte limits are used (a congested
    /// publisher waits for this; see `connection::wait_for_drain`).
    pub fn half_empty(&self) -> bool {
        is_half_empty(&self.lock())
    }

    /// Notes that this queue crowded at `now` (past three quarters, or full), and
    /// returns whether its client is lagging (nobody waits for it until it has drained
    /// to half, see [`Mailbox::mark_lagging`]) or known slow (see [`Standing`]).
    pub fn crowded(&self, now: Instant) -> Standing {
        self.lock().rare().lag.crowded(now)
    }

    /// Whether the client, not the broker, holds this queue up: its socket does not
    /// take what it was sent, or its in-flight window is full of messages it has not
    /// acknowledged yet.
    pub fn client_behind(&self) -> bool {
        if self.writer_blocked() {
            return true;
        }
        is_window_full(&self.lock())
    }

    /// Whether the client's socket is not taking what it was sent (see
    /// `set_writer_blocked`).
    pub fn writer_blocked(&self) -> bool {
        self.writer_blocked.load(Ordering::Relaxed)
    }

    /// Set by the connection while a write waits for the client's socket.
    pub fn set_writer_blocked(&self, blocked: bool) {
        self.writer_blocked.store(blocked, Ordering::Relaxed);
        if !blocked {
            // Its QoS 0 copies may be waited for again: look under the lock. (A drop
            // under the lock that read `blocked` before this may still raise it; the
            // next drain lowers it, and the copies it drops meanwhile did not fit.)
            let _ = self.armed.compare_exchange(
                armed::DROP_QOS0,
                armed::LOOK,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The client is behind (see `broker::backpressure`): nobody waits for it until
    /// it has drained to half; what does not fit in its queue meanwhile is dropped
    /// for it alone. It is known slow until it has kept up for a while (see the
    /// `lag` module).
    /// Returns whether it was not known slow before.
    pub fn mark_lagging(&self) -> bool {
        self.lock().rare().lag.mark()
    }

    /// Notes that the client is behind now, and returns for how long it has been:
    /// since the first such note after its queue last drained to a quarter, unless
    /// the previous note is older than `forget` (then it starts again).
    pub fn behind_for(&self, now: Instant, forget: std::time::Duration) -> std::time::Duration {
        self.lock().rare().lag.behind_for(now, forget)
    }

    /// A publisher waited for this queue to drain.
    pub fn publisher_paused(&self) {
        self.lock().rare().lag.publisher_paused();
    }

    /// Pauses it cost publishers, and the proof of keeping up it owes (for logs).
    pub fn lag_report(&self) -> LagReport {
        match &self.lock().rare {
            Some(rare) => rare.lag.report(),
            None => Lag::default().report(),
        }
    }

    /// Drops counted since the last call (for the denial counts).
    pub fn take_unrecorded_drops(&self) -> u64 {
        match self.lock().rare.as_mut() {
            Some(rare) => std::mem::take(&mut rare.unrecorded),
            None => 0,
        }
    }

    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> Drops {
        match &self.lock().rare {
            Some(rare) => Drops {
                total: rare.dropped,
                burst: rare.burst,
                topic: rare.burst_topic.clone(),
            },
            None => Drops {
                total: 0,
                burst: 0,
                topic: None,
            },
        }
    }

    /// The drop counters alone (no topic to clone).
    pub fn drop_count(&self) -> DropCount {
        match &self.lock().rare {
            Some(rare) => DropCount {
                total: rare.dropped,
                burst: rare.burst,
            },
            None => DropCount { total: 0, burst: 0 },
        }
    }

    /// (queued messages, queued bytes, in flight)
    pub fn depth(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.queue.len(), s.queued_bytes, s.inflight.len())
    }
}

/// Whether no publisher waits for a client's crowded queue, so a copy that does not
/// fit is dropped for it: it is lagging, or the copy is QoS 0 and its socket is not
/// taking what it was sent. The one rule `backpressure` waits by and the one-lock
/// drop arms by.
pub fn nobody_waits_for(lagging: bool, qos: QoS, writer_blocked: bool) -> bool {
    lagging || (qos == QoS::AtMostOnce && writer_blocked)
}

/// Counts a message dropped because the queue was full (for `$SYS`, the current
/// burst and the denial counts).
fn count_drop(rare: &mut Rare, topic: &Arc<str>) -> DropCount {
    rare.dropped += 1;
    rare.burst += 1;
    rare.unrecorded += 1;
    // A drop mostly repeats the previous drop's topic: comparing the text costs
    // less than the two reference-count updates of replacing the `Arc` on every
    // copy dropped for a lagging subscriber (QoS 0 isolation, BENCHMARKS.md).
    if rare.burst_topic.as_deref() != Some(&**topic) {
        rare.burst_topic = Some(Arc::clone(topic));
    }
    DropCount {
        total: rare.dropped,
        burst: rare.burst,
    }
}

/// The in-flight window has no room: QoS 1/2 messages wait for an acknowledgement.
fn is_window_full(s: &State) -> bool {
    s.inflight.len() >= usize::from(s.limits.max_inflight)
}

fn is_half_empty(s: &State) -> bool {
    (s.queue.len() + s.staged_len()) * 2 <= s.limits.max_messages()
        && s.queued_bytes * 2 <= s.limits.max_bytes()
}

/// Removes `packet_id` from the window. Clients mostly acknowledge in the order
/// they were sent, so the oldest entry is looked at first: taking it is a
/// `pop_front`, where `VecDeque::remove` costs ~100 instructions even at 0.
fn take_inflight(s: &mut State, packet_id: u16) -> Option<InFlight> {
    if s.inflight.front().is_some_and(|(id, _)| *id == packet_id) {
        return s.inflight.pop_front().map(|(_, entry)| entry);
    }
    let position = s.inflight.iter().position(|(id, _)| *id == packet_id)?;
    s.inflight.remove(position).map(|(_, entry)| entry)
}

fn next_free_id(s: &mut State) -> u16 {
    // The window is at most 65535 wide and bounded far lower, so a free id exists.
    loop {
        let id = s.next_packet_id;
        s.next_packet_id = s.next_packet_id.checked_add(1).unwrap_or(1);
        if !s.inflight.iter().any(|(used, _)| *used == id) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests;
