//! The best distinct objects sampled so far, for the top-k metrics of tasks too large for exact
//! evaluation (set and bag generation): the mean reward of the top `k` distinct terminal objects
//! and their diversity (mean pairwise Hamming distance).
//!
//! Only `k` entries are kept. An object whose log reward does not beat the current `k`-th best
//! cannot enter, whether or not it was seen before; one that does is either already held (it was
//! inserted when first seen and could only have been evicted by `k` better ones) or new. So the
//! list is exactly the top `k` distinct objects ever recorded (ties at the boundary aside, which do
//! not change the mean reward).

use serde::{Deserialize, Serialize};

/// Top-k tracker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopKTracker {
    k: usize,
    /// `(log R, state)`, best first.
    best: Vec<(f64, Vec<i32>)>,
}

/// Top-k metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TopKMetrics {
    /// `k`.
    pub k: usize,
    /// Distinct objects held (`≤ k`).
    pub found: usize,
    /// Mean reward `R = exp(log R)` of the held objects.
    pub mean_reward: f64,
    /// Mean pairwise Hamming distance between the held objects' states.
    pub diversity: f64,
}

impl TopKTracker {
    /// An empty tracker of the best `k` objects.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            best: Vec::with_capacity(k + 1),
        }
    }

    /// Record one sampled terminal object.
    pub fn record(&mut self, state: &[i32], log_reward: f64) {
        if self.k == 0 || !log_reward.is_finite() {
            return;
        }
        if self.best.len() == self.k && log_reward <= self.best[self.k - 1].0 {
            return;
        }
        if self.best.iter().any(|(_, s)| s.as_slice() == state) {
            return;
        }
        let at = self.best.partition_point(|(r, _)| *r >= log_reward);
        self.best.insert(at, (log_reward, state.to_vec()));
        self.best.truncate(self.k);
    }

    /// Metrics of the held objects; `None` before the first record.
    pub fn metrics(&self) -> Option<TopKMetrics> {
        if self.best.is_empty() {
            return None;
        }
        let n = self.best.len();
        let mean_reward = self.best.iter().map(|(r, _)| r.exp()).sum::<f64>() / n as f64;
        let mut dist = 0.0;
        let mut pairs = 0usize;
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (&self.best[i].1, &self.best[j].1);
                dist += a.iter().zip(b).filter(|(x, y)| x != y).count() as f64;
                pairs += 1;
            }
        }
        Some(TopKMetrics {
            k: self.k,
            found: n,
            mean_reward,
            diversity: if pairs > 0 { dist / pairs as f64 } else { 0.0 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_distinct_objects() {
        let mut t = TopKTracker::new(3);
        assert!(t.metrics().is_none());
        for (s, r) in [
            ([0, 1], -1.0),
            ([1, 1], -0.5),
            ([0, 1], -1.0),
            ([1, 0], -2.0),
            ([0, 0], -0.1),
            ([1, 1], -0.5),
            ([1, 0], -2.0),
        ] {
            t.record(&s, r);
        }
        let m = t.metrics().unwrap();
        assert_eq!(m.found, 3);
        let want = ((-0.1f64).exp() + (-0.5f64).exp() + (-1.0f64).exp()) / 3.0;
        assert!((m.mean_reward - want).abs() < 1e-15);
        // [0,0], [1,1], [0,1]: distances 2, 1, 1.
        assert!((m.diversity - 4.0 / 3.0).abs() < 1e-15);
        t.record(&[9, 9], f64::NAN);
        assert_eq!(t.metrics().unwrap().found, 3);
    }
}
