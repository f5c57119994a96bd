//! A latency histogram for the broker's own measurements (argon2 queue wait, store
//! commit time): fixed buckets, plain atomics, no lock, so the code being measured
//! pays one relaxed add per bucket it passes. It owns no exposition format: the
//! metrics endpoint (`crate::metrics`) reads a [`LatencySnapshot`] at scrape time
//! and encodes it. Leaf module: it imports nothing from moat.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus' `le`). From half a
/// millisecond (an SD-card commit that hit the page cache) to ten seconds (an argon2
/// queue wait at its limit is five).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counts per bucket, the number of observations and their sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations at or below each bound (not cumulative: each lands in one).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A copy of a histogram at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// (upper bound in seconds, observations in this bucket alone: not cumulative,
    /// as `prometheus-client`'s encoder takes them); the `+Inf` bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// The histogram now. Read without a lock: an observation made during the read
    /// may show in one field and not yet in another (the next scrape has it).
    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| (*bound, n.load(Relaxed)))
            .collect();
        let count = self.count.load(Relaxed);
        LatencySnapshot {
            buckets,
            count,
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(200));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[2], (0.0025, 0));
        assert_eq!(s.buckets[3], (0.005, 2));
        let in_buckets: u64 = s.buckets.iter().map(|(_, n)| n).sum();
        assert_eq!(in_buckets, 3, "60 s is only in +Inf");
        assert!((s.sum_seconds - 60.0062).abs() < 1e-9);
    }
}
