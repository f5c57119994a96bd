//! How a client keeps up with its queue, as its publishers see it: whether it is
//! behind now (and since when), *lagging* (no publisher waits for it until it has
//! drained to half), *known slow* (found lagging, and not shown since that it keeps
//! up), and how many publisher pauses it has cost. Plain state with the clock passed
//! in: the mailbox keeps one under its lock; the decisions are
//! `broker::backpressure`'s.

use std::time::{Duration, Instant};

/// How long a known-slow client must go without crowding, after draining its queue
/// completely, before publishers wait for it again; doubled each further time it is
/// found slow, up to [`KEEP_UP_MAX`].
pub const KEEP_UP_FOR: Duration = Duration::from_secs(10);
/// The longest proof of keeping up asked of a client found slow again and again.
pub const KEEP_UP_MAX: Duration = Duration::from_secs(640);

/// A client's record, allocated the first time its queue crowds: most clients
/// never fill theirs, and the record would take 64 bytes in every mailbox.
#[derive(Debug, Default)]
pub(super) struct Lag(Option<Box<Record>>);

impl Lag {
    fn record(&mut self) -> &mut Record {
        self.0.get_or_insert_default()
    }

    /// See [`Record::mark`].
    pub fn mark(&mut self) -> bool {
        self.record().mark()
    }

    /// Whether nobody waits for the client now (see [`Record::mark`]); allocates
    /// nothing.
    pub fn is_lagging(&self) -> bool {
        self.0.as_ref().is_some_and(|record| record.lagging)
    }

    /// See [`Record::crowded`].
    pub fn crowded(&mut self, now: Instant) -> Standing {
        self.record().crowded(now)
    }

    /// See [`Record::made_room`]; nothing to note for a client never crowded.
    pub fn made_room(
        &mut self,
        now: Instant,
        queued: usize,
        max_messages: usize,
        half_empty: bool,
    ) {
        if let Some(record) = self.0.as_mut() {
            record.made_room(now, queued, max_messages, half_empty);
        }
    }

    /// See [`Record::behind_for`].
    pub fn behind_for(&mut self, now: Instant, forget: Duration) -> Duration {
        self.record().behind_for(now, forget)
    }

    pub fn publisher_paused(&mut self) {
        self.record().publisher_paused();
    }

    pub fn report(&self) -> LagReport {
        match &self.0 {
            Some(record) => record.report(),
            None => Record::default().report(),
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    lagging: bool,
    /// Since when, and when last, the client was seen holding its crowded queue up
    /// while a peer kept up; cleared when it drains to a quarter.
    behind_since: Option<(Instant, Instant)>,
    trust: Trust,
    /// Times it was found slow; each makes the next proof of keeping up longer.
    times_found: u32,
    publisher_pauses: u64,
}

#[derive(Debug, Default)]
enum Trust {
    /// Never found slow, or kept up since: waited for while it is behind for a moment.
    #[default]
    Trusted,
    /// Found lagging: nobody waits for it while a faster subscriber gets the same
    /// messages. `clear_since`: since when its queue has been drained completely
    /// without crowding again.
    KnownSlow { clear_since: Option<Instant> },
}

/// What a crowded queue's client is now (see [`Lag::crowded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub lagging: bool,
    pub known_slow: bool,
    /// It was known slow and has just been trusted again: it kept up long enough.
    pub trusted_again: bool,
}

/// A client's record, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagReport {
    /// Pauses publishers spent waiting for it since its session began.
    pub publisher_pauses: u64,
    /// How long it must keep up to be trusted again, once it has drained its queue.
    pub keep_up_for: Duration,
}

impl Record {
    /// Found lagging: it is also known slow from now on. Returns whether it was not
    /// known slow before (so it is counted and logged once, not once per burst).
    pub fn mark(&mut self) -> bool {
        self.lagging = true;
        let newly = matches!(self.trust, Trust::Trusted);
        if newly {
            self.times_found = self.times_found.saturating_add(1);
        }
        self.trust = Trust::KnownSlow { clear_since: None };
        newly
    }

    /// Its queue crowded at `now`. A known-slow client whose queue had stayed clear
    /// for its whole proof period is trusted again; otherwise its proof starts over.
    pub fn crowded(&mut self, now: Instant) -> Standing {
        let keep_up_for = self.keep_up_for();
        let mut trusted_again = false;
        if let Trust::KnownSlow { clear_since } = &mut self.trust {
            match *clear_since {
                Some(since) if now.saturating_duration_since(since) >= keep_up_for => {
                    self.trust = Trust::Trusted;
                    trusted_again = true;
                }
                _ => *clear_since = None,
            }
        }
        Standing {
            lagging: self.lagging,
            known_slow: matches!(self.trust, Trust::KnownSlow { .. }),
            trusted_again,
        }
    }

    /// The connection took messages from the queue at `now`, leaving `queued` of
    /// `max_messages` (`half_empty` by the mailbox's measure, bytes included).
    pub fn made_room(
        &mut self,
        now: Instant,
        queued: usize,
        max_messages: usize,
        half_empty: bool,
    ) {
        if queued * 4 <= max_messages {
            self.behind_since = None;
        }
        if half_empty {
            // Caught up for now: publishers may wait for it again unless it is known
            // slow and a faster subscriber gets the same messages.
            self.lagging = false;
        }
        if let (0, Trust::KnownSlow { clear_since }) = (queued, &mut self.trust) {
            clear_since.get_or_insert(now);
        }
    }

    /// Notes that the client is behind now, and returns for how long it has been:
    /// since the first such note after its queue last drained to a quarter, unless
    /// the previous note is older than `forget` (then it starts again).
    pub fn behind_for(&mut self, now: Instant, forget: Duration) -> Duration {
        let since = match self.behind_since {
            Some((since, last)) if now.saturating_duration_since(last) <= forget => since,
            _ => now,
        };
        self.behind_since = Some((since, now));
        now.saturating_duration_since(since)
    }

    pub fn publisher_paused(&mut self) {
        self.publisher_pauses += 1;
    }

    pub fn report(&self) -> LagReport {
        LagReport {
            publisher_pauses: self.publisher_pauses,
            keep_up_for: self.keep_up_for(),
        }
    }

    fn keep_up_for(&self) -> Duration {
        let doublings = self.times_found.saturating_sub(1).min(6);
        (KEEP_UP_FOR * (1 << doublings)).min(KEEP_UP_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8;

    #[test]
    fn a_client_found_slow_stays_known_slow_after_draining_to_half() {
        let t0 = Instant::now();
        let mut lag = Lag::default();
        assert!(!lag.crowded(t0).known_slow);
        assert!(lag.mark(), "found slow: counted and logged");
        assert!(lag.crowded(t0).lagging);
        lag.made_room(t0, 4, MAX, true);
        // Drained to half: no longer lagging, still known slow.
        let standing = lag.crowded(t0 + Duration::from_secs(1));
        assert_eq!(
            standing,
            Standing {
                lagging: false,
                known_slow: true,
                trusted_again: false
            }
        );
        assert!(!lag.mark(), "already known slow: not counted again");
    }

    #[test]
    fn a_known_slow_client_is_trusted_again_after_keeping_up_for_its_proof_period() {
        let t0 = Instant::now();
        let mut lag = Lag::default();
        lag.mark();
        // Drained completely, then crowded again too soon: the proof starts over.
        lag.made_room(t0, 0, MAX, true);
        let early = t0 + KEEP_UP_FOR - Duration::from_millis(1);
        assert!(lag.crowded(early).known_slow);
        lag.made_room(early, 2, MAX, true);
        let late = early + KEEP_UP_FOR;
        assert!(
            lag.crowded(late).known_slow,
            "never drained completely since it crowded"
        );
        // Drained completely; nothing crowds for the whole period; more drains that
        // leave it empty do not restart the clock.
        let t1 = late + Duration::from_secs(1);
        lag.made_room(t1, 0, MAX, true);
        lag.made_room(t1 + Duration::from_secs(5), 0, MAX, true);
        let standing = lag.crowded(t1 + KEEP_UP_FOR);
        assert!(standing.trusted_again && !standing.known_slow);
        assert!(!lag.crowded(t1 + KEEP_UP_FOR).trusted_again, "said once");
    }

    #[test]
    fn each_time_it_is_found_slow_again_the_proof_takes_twice_as_long() {
        let mut t = Instant::now();
        let mut lag = Lag::default();
        for round in 0..9u32 {
            assert!(lag.mark(), "found slow again in round {round}");
            let proof = (KEEP_UP_FOR * 2u32.pow(round.min(6))).min(KEEP_UP_MAX);
            assert_eq!(lag.report().keep_up_for, proof);
            lag.made_room(t, 0, MAX, true);
            let short = lag.crowded(t + proof - Duration::from_millis(1));
            assert!(short.known_slow && !short.trusted_again);
            t += proof;
            lag.made_room(t, 0, MAX, true);
            t += proof;
            assert!(lag.crowded(t).trusted_again);
        }
        assert_eq!(lag.report().keep_up_for, KEEP_UP_MAX);
    }

    #[test]
    fn behind_is_forgotten_after_a_gap_and_after_draining_to_a_quarter() {
        let t0 = Instant::now();
        let forget = Duration::from_secs(1);
        let mut lag = Lag::default();
        assert_eq!(lag.behind_for(t0, forget), Duration::ZERO);
        let t1 = t0 + Duration::from_millis(400);
        assert_eq!(lag.behind_for(t1, forget), Duration::from_millis(400));
        // Drained to more than a quarter: still behind since t0.
        lag.made_room(t1, 3, MAX, true);
        let t2 = t1 + Duration::from_millis(400);
        assert_eq!(lag.behind_for(t2, forget), Duration::from_millis(800));
        // To a quarter: starts over.
        lag.made_room(t2, 2, MAX, true);
        let t3 = t2 + Duration::from_millis(100);
        assert_eq!(lag.behind_for(t3, forget), Duration::ZERO);
        // A gap longer than `forget`: starts over too.
        let t4 = t3 + forget + Duration::from_millis(1);
        assert_eq!(lag.behind_for(t4, forget), Duration::ZERO);
    }

    #[test]
    fn pauses_are_counted_per_client() {
        let mut lag = Lag::default();
        lag.publisher_paused();
        lag.publisher_paused();
        assert_eq!(lag.report().publisher_pauses, 2);
        assert_eq!(lag.report().keep_up_for, KEEP_UP_FOR);
    }

    #[test]
    fn a_mailbox_holds_one_pointer_until_its_queue_first_crowds() {
        eprintln!("record: {} bytes", std::mem::size_of::<Record>());
        assert_eq!(std::mem::size_of::<Lag>(), std::mem::size_of::<usize>());
        let mut lag = Lag::default();
        lag.made_room(Instant::now(), 0, MAX, true);
        assert!(lag.0.is_none(), "draining alone allocates nothing");
        assert_eq!(lag.report().publisher_pauses, 0);
        lag.crowded(Instant::now());
        assert!(lag.0.is_some());
    }
}
