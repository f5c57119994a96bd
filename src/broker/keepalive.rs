//! Keepalive deadlines of every live connection, kept by one sweeper task for the
//! whole broker instead of a timer in each connection's task (a tokio `Sleep` is
//! 112 bytes, held by every idle connection for its life). A connection stores its
//! deadline in its [`Kick`] (one atomic, updated on every read, no lock); the
//! sweeper files each connection under the tick of its deadline in a ring of
//! slots, and when a slot comes due it kicks those whose deadline has passed with
//! reason 0x8D (Keep Alive timeout) and files the others again under their new
//! deadline. A client is never closed before one and a half keepalives of silence
//! (MQTT-3.1.2-24), and at most one [`TICK`] after.
//!
//! Owns the ring and the sweeper; what a kicked connection sends and logs is the
//! driver's. Closed connections leave their entry behind (a `Weak`, dropped when
//! its slot next comes due), so closing costs no lock here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use moat_protocol::ReasonCode;

use super::session::Kick;

/// How late past its deadline a silent client may be closed.
pub const TICK: Duration = Duration::from_millis(250);
/// Slots in the ring: deadlines further than this many ticks ahead are looked at
/// once per lap (16 s) and filed again.
const SLOTS: usize = 64;

/// A connection's keepalive deadline, in milliseconds since the sweeper's epoch.
#[derive(Default, Debug)]
pub struct Deadline(AtomicU64);

pub struct Keepalive {
    epoch: Instant,
    ring: Mutex<Ring>,
}

struct Ring {
    slots: Vec<Vec<Weak<Kick>>>,
    /// The tick the sweeper looks at next.
    next_tick: u64,
    /// Entries in the slots, live or not.
    entries: usize,
    sweeping: bool,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            epoch: Instant::now(),
            ring: Mutex::new(Ring {
                slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                next_tick: 0,
                entries: 0,
                sweeping: false,
            }),
        }
    }
}

impl Keepalive {
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Every statement leaves the ring consistent; a panic elsewhere must not
        // stop keepalives.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client was heard from at `now`: it may stay silent for `grace` more.
    pub fn heard(&self, kick: &Kick, now: Instant, grace: Duration) {
        let deadline = self.millis(now).saturating_add(millis_of(grace));
        kick.keepalive_deadline()
            .0
            .store(deadline, Ordering::Relaxed);
    }

    /// Starts watching a connection heard from at `now`: it is kicked once silent
    /// for `grace`. Starts the sweeper if it is not running (inside a tokio runtime).
    pub fn watch(self: &Arc<Self>, kick: &Arc<Kick>, now: Instant, grace: Duration) {
        self.heard(kick, now, grace);
        let deadline = kick.keepalive_deadline().0.load(Ordering::Relaxed);
        let mut ring = self.lock();
        let start = !ring.sweeping;
        if start {
            ring.sweeping = true;
            ring.next_tick = tick_at(self.millis(now_for_timers()));
        }
        ring.file(Arc::downgrade(kick), deadline);
        drop(ring);
        if start {
            tokio::spawn(Arc::clone(self).sweep());
        }
    }

    /// Runs while any connection is watched.
    async fn sweep(self: Arc<Self>) {
        let mut due = Vec::new();
        loop {
            let next_tick = self.lock().next_tick;
            let at = self.epoch + TICK * u32::try_from(next_tick).unwrap_or(u32::MAX);
            tokio::time::sleep_until(at.into()).await;
            let now = self.millis(now_for_timers());
            let mut ring = self.lock();
            ring.advance(now, &mut due);
            if ring.entries == 0 {
                ring.sweeping = false;
                return;
            }
        }
    }
}

impl Ring {
    /// Files an entry under the tick that ends at or after `deadline`.
    fn file(&mut self, entry: Weak<Kick>, deadline: u64) {
        let tick = deadline.div_ceil(millis_of(TICK)).max(self.next_tick);
        self.slots[slot_of(tick)].push(entry);
        self.entries += 1;
    }

    /// Handles every tick begun by `now`: kicks the connections whose deadline
    /// has passed, files the others again, forgets the closed ones. `due` is
    /// scratch space, kept between calls.
    fn advance(&mut self, now: u64, due: &mut Vec<Weak<Kick>>) {
        while self.next_tick <= tick_at(now) {
            let slot = slot_of(self.next_tick);
            std::mem::swap(due, &mut self.slots[slot]);
            self.next_tick += 1;
            self.entries -= due.len();
            for entry in due.drain(..) {
                let Some(kick) = entry.upgrade() else {
                    continue;
                };
                if kick.reason().is_some() {
                    continue;
                }
                let deadline = kick.keepalive_deadline().0.load(Ordering::Relaxed);
                if deadline <= now {
                    kick.kick(ReasonCode::KeepAliveTimeout);
                } else {
                    self.file(entry, deadline);
                }
            }
        }
    }
}

/// Now, as tokio's timers see it (the same as `Instant::now()` unless a test
/// paused the clock).
fn now_for_timers() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn millis_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The last tick that has begun at `millis`.
fn tick_at(millis: u64) -> u64 {
    millis / millis_of(TICK)
}

fn slot_of(tick: u64) -> usize {
    usize::try_from(tick % SLOTS as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_at(next_tick: u64) -> Ring {
        Ring {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick,
            entries: 0,
            sweeping: true,
        }
    }

    fn watched(ring: &mut Ring, deadline: u64) -> Arc<Kick> {
        let kick = Kick::new();
        kick.keepalive_deadline()
            .0
            .store(deadline, Ordering::Relaxed);
        ring.file(Arc::downgrade(&kick), deadline);
        kick
    }

    #[test]
    fn a_connection_is_kicked_once_its_deadline_has_passed_and_not_before() {
        let mut ring = ring_at(0);
        let mut due = Vec::new();
        let silent = watched(&mut ring, 1500);
        let talking = watched(&mut ring, 1500);
        ring.advance(1499, &mut due);
        assert_eq!(silent.reason(), None, "not before its deadline");
        // Heard from at 1.4 s: silent until 2.9 s.
        talking
            .keepalive_deadline()
            .0
            .store(2900, Ordering::Relaxed);
        ring.advance(1500, &mut due);
        assert_eq!(silent.reason(), Some(ReasonCode::KeepAliveTimeout));
        assert_eq!(talking.reason(), None);
        assert_eq!(ring.entries, 1, "the kicked one is no longer watched");
        ring.advance(2899, &mut due);
        assert_eq!(talking.reason(), None);
        // A sweeper that woke late handles every tick it missed at once.
        ring.advance(2900 + 5 * millis_of(TICK), &mut due);
        assert_eq!(talking.reason(), Some(ReasonCode::KeepAliveTimeout));
        assert_eq!(ring.entries, 0);
    }

    #[test]
    fn deadlines_beyond_one_lap_wait_and_closed_connections_are_forgotten() {
        let mut ring = ring_at(0);
        let mut due = Vec::new();
        // 40 s: more than one lap of the ring (16 s); its slot comes due twice first.
        let far = watched(&mut ring, 40_000);
        let closed = watched(&mut ring, 1_000);
        drop(closed);
        for now in (0..40_000).step_by(100) {
            ring.advance(now, &mut due);
            assert_eq!(far.reason(), None, "at {now} ms");
        }
        assert_eq!(ring.entries, 1, "the closed connection's entry is gone");
        ring.advance(40_000, &mut due);
        assert_eq!(far.reason(), Some(ReasonCode::KeepAliveTimeout));
        assert_eq!(ring.entries, 0);
    }

    #[test]
    fn a_kicked_connection_is_not_kicked_again() {
        let mut ring = ring_at(0);
        let mut due = Vec::new();
        let taken_over = watched(&mut ring, 500);
        taken_over.kick(ReasonCode::SessionTakenOver);
        ring.advance(1_000, &mut due);
        assert_eq!(taken_over.reason(), Some(ReasonCode::SessionTakenOver));
        assert_eq!(ring.entries, 0);
    }

    #[tokio::test]
    async fn the_sweeper_kicks_a_silent_connection_and_stops_when_none_is_left() {
        let keepalive = Arc::new(Keepalive::default());
        let silent = Kick::new();
        let start = Instant::now();
        let grace = Duration::from_millis(300);
        keepalive.watch(&silent, start, grace);
        let reason = tokio::time::timeout(Duration::from_secs(5), silent.kicked()).await;
        let waited = start.elapsed();
        assert_eq!(reason, Ok(ReasonCode::KeepAliveTimeout));
        assert!(
            waited >= grace && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        for _ in 0..40 {
            if !keepalive.lock().sweeping {
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        assert!(
            !keepalive.lock().sweeping,
            "the sweeper stops when nothing is watched"
        );
        assert_eq!(keepalive.lock().entries, 0);
    }
}
