//! The store's clock: seconds of broker running time, persisted across restarts.
//!
//! The Pi has no real-time clock and NTP steps the wall clock after boot, so expiry
//! deadlines are never wall-clock times. They are points on a monotonic "uptime"
//! scale: the running seconds accumulated over every run of the broker. The scale
//! resumes from the value last persisted (a `meta` row the writer updates), measured
//! within a run with `Instant`. Time the broker was down does not count. This module
//! only does the arithmetic; it owns no SQL and no threads.

use std::time::{Duration, Instant};

/// Key of the `meta` row that holds the persisted uptime, in seconds.
pub(crate) const UPTIME_KEY: &str = "uptime_secs";

/// How stale the persisted uptime may get before the writer refreshes it inside a
/// commit that is happening anyway (costs nothing extra: the meta page joins the WAL
/// frames of that commit).
pub(crate) const PIGGYBACK_EVERY: Duration = Duration::from_secs(1);

/// How stale the persisted uptime may get while no write happens before the writer
/// commits it on its own. A crash loses at most this much counted running time.
pub(crate) const IDLE_PERSIST_EVERY: Duration = Duration::from_secs(60);

/// Broker running time, resumed from the persisted value.
#[derive(Debug)]
pub struct UptimeClock {
    base_secs: i64,
    started: Instant,
}

/// What is left of a lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remaining {
    Never,
    Left(u32),
    Expired,
}

impl UptimeClock {
    /// Resumes the scale at `base_secs` (the persisted uptime of the previous runs).
    pub fn resume(base_secs: i64) -> UptimeClock {
        UptimeClock {
            base_secs: base_secs.max(0),
            started: Instant::now(),
        }
    }

    /// Current point on the uptime scale.
    pub fn now_secs(&self) -> i64 {
        let elapsed = i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX);
        self.base_secs.saturating_add(elapsed)
    }
}

/// Deadline on the uptime scale for something that lives `lifetime_secs` from `now`.
pub fn deadline(now: i64, lifetime_secs: Option<u32>) -> Option<i64> {
    lifetime_secs.map(|secs| now.saturating_add(i64::from(secs)))
}

/// Deadline of a session: its expiry interval counted from its disconnect.
/// `u32::MAX` is MQTT's "never expires".
pub fn session_deadline(disconnected_at: i64, expiry_secs: u32) -> Option<i64> {
    (expiry_secs != u32::MAX).then(|| disconnected_at.saturating_add(i64::from(expiry_secs)))
}

/// What is left at `now` of something due at `deadline`.
pub fn remaining(deadline: Option<i64>, now: i64) -> Remaining {
    match deadline {
        None => Remaining::Never,
        Some(at) if at <= now => Remaining::Expired,
        Some(at) => Remaining::Left(u32::try_from(at - now).unwrap_or(u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_from_the_persisted_value() {
        let clock = UptimeClock::resume(1_000);
        let now = clock.now_secs();
        assert!((1_000..1_002).contains(&now), "{now}");
        assert_eq!(UptimeClock::resume(-5).now_secs(), 0);
    }

    #[test]
    fn lifetimes_count_on_the_uptime_scale() {
        let due = deadline(100, Some(30));
        assert_eq!(due, Some(130));
        assert_eq!(remaining(due, 100), Remaining::Left(30));
        assert_eq!(remaining(due, 129), Remaining::Left(1));
        assert_eq!(remaining(due, 130), Remaining::Expired);
        assert_eq!(remaining(deadline(100, None), i64::MAX), Remaining::Never);
        assert_eq!(remaining(deadline(0, Some(0)), 0), Remaining::Expired);
    }

    #[test]
    fn sessions_that_never_expire_have_no_deadline() {
        assert_eq!(session_deadline(50, u32::MAX), None);
        assert_eq!(session_deadline(50, 10), Some(60));
        assert_eq!(session_deadline(50, 0), Some(50));
    }
}
