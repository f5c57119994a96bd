//! Latency samples in microseconds and their percentiles. Samples go into a plain
//! vector bounded by the run's message count (rate x duration), sorted once at the end.

use serde::Serialize;

/// Percentiles of a set of latency samples, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Collects samples up to a fixed capacity; later samples are counted as dropped.
#[derive(Debug)]
pub(crate) struct Samples {
    values: Vec<u64>,
    capacity: usize,
    dropped: u64,
}

impl Samples {
    pub(crate) fn with_capacity(capacity: usize) -> Samples {
        Samples {
            values: Vec::with_capacity(capacity.min(1 << 20)),
            capacity,
            dropped: 0,
        }
    }

    pub(crate) fn record(&mut self, micros: u64) {
        if self.values.len() < self.capacity {
            self.values.push(micros);
        } else {
            self.dropped += 1;
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Adds another task's samples (their own bound already applied).
    pub(crate) fn absorb(&mut self, other: Samples) {
        self.values.extend(other.values);
        self.dropped += other.dropped;
    }

    /// Nearest-rank percentiles; all zero without samples.
    pub(crate) fn percentiles(mut self) -> Percentiles {
        if self.values.is_empty() {
            return Percentiles::default();
        }
        self.values.sort_unstable();
        let values = &self.values;
        let rank = |p: f64| {
            let index = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[index.clamp(1, values.len()) - 1]
        };
        let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
        Percentiles {
            samples: values.len() as u64,
            min_us: values[0],
            p50_us: rank(50.0),
            p90_us: rank(90.0),
            p99_us: rank(99.0),
            p999_us: rank(99.9),
            max_us: values[values.len() - 1],
            mean_us: sum as f64 / values.len() as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples = Samples::with_capacity(1000);
        for v in (1..=100).rev() {
            samples.record(v);
        }
        let p = samples.percentiles();
        assert_eq!(p.samples, 100);
        assert_eq!(
            (p.min_us, p.p50_us, p.p90_us, p.p99_us, p.max_us),
            (1, 50, 90, 99, 100)
        );
        assert_eq!(p.p999_us, 100);
        assert!((p.mean_us - 50.5).abs() < 1e-9);
    }

    #[test]
    fn bounded_and_empty() {
        let mut samples = Samples::with_capacity(2);
        for v in [5, 6, 7] {
            samples.record(v);
        }
        assert_eq!(samples.dropped(), 1);
        let mut more = Samples::with_capacity(1);
        more.record(9);
        more.record(10);
        samples.absorb(more);
        assert_eq!(samples.dropped(), 2);
        assert_eq!(samples.percentiles().max_us, 9);
        assert_eq!(
            Samples::with_capacity(4).percentiles(),
            Percentiles::default()
        );
    }
}
