//! When to try the remote again: capped exponential backoff with jitter, so a home
//! whose remote is down does not hammer it, and many homes that lost the same cloud
//! broker do not all come back in the same second. Pure arithmetic and a random
//! draw; no I/O.

use std::time::Duration;

/// First and longest wait between connection attempts.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Capped exponential backoff with jitter: each wait is drawn from the upper half
/// of the current step, so many homes restarting after an outage do not reconnect
/// in lockstep.
pub struct Backoff {
    step: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { step: BACKOFF_MIN }
    }

    pub fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }

    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        let mut byte = [0u8; 2];
        let random = match getrandom::fill(&mut byte) {
            Ok(()) => u16::from_le_bytes(byte),
            Err(_) => u16::MAX / 2,
        };
        let half = step / 2;
        half + half.mul_f64(f64::from(random) / f64::from(u16::MAX))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| b.next_wait()).collect();
        assert!(waits[0] >= BACKOFF_MIN / 2 && waits[0] <= BACKOFF_MIN);
        assert!(waits[1] >= BACKOFF_MIN && waits[1] <= BACKOFF_MIN * 2);
        for w in &waits {
            assert!(*w <= BACKOFF_MAX);
        }
        assert!(waits[9] >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_wait() <= BACKOFF_MIN);
    }
}
