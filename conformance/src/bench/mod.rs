//! Benchmarks of any CRI endpoint, run side by side for several runtimes in one process:
//! start latencies, parallel starts, image pull, memory of the daemon and its per-pod
//! processes, and sustained pod throughput. Used by the `crid-bench` binary.

pub mod first_byte;
pub mod memory;
pub mod parallel_guests;
pub mod report;
pub mod unikernel;
pub mod workload;

use std::time::Duration;

/// Latency samples of one measurement.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Samples {
    pub millis: Vec<f64>,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.millis.push(d.as_secs_f64() * 1000.0);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.millis.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// The value below which `p` (0..=1) of the samples fall (nearest rank).
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let v = self.sorted();
        if v.is_empty() {
            return None;
        }
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }

    pub fn median(&self) -> Option<f64> {
        self.percentile(0.5)
    }

    pub fn p90(&self) -> Option<f64> {
        self.percentile(0.9)
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut s = Samples::default();
        for ms in [5u64, 1, 4, 2, 3, 10, 9, 8, 7, 6] {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.median(), Some(5.0));
        assert_eq!(s.p90(), Some(9.0));
        assert_eq!(s.max(), Some(10.0));
        assert_eq!(Samples::default().median(), None);
    }
}
