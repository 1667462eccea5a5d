//! The best distinct objects sampled so far, for the top-k metrics of tasks too large for exact
//! evaluation (set and bag generation): the mean reward of the top `k` distinct terminal objects
//! and their diversity (mean pairwise distance, the task's [`crate::Env::object_distance`]).
//!
//! Only `k` entries are kept. An object whose log reward does not beat the current `k`-th best
//! cannot enter, whether or not it was seen before; one that does is either already held (it was
//! inserted when first seen and could only have been evicted by `k` better ones) or new. So the
//! list is exactly the top `k` distinct objects ever recorded (ties at the boundary aside, which do
//! not change the mean reward).

use serde::{Deserialize, Serialize};

pub use gfn_record::{RecentMetrics, TopKMetrics};

/// Top-k tracker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopKTracker {
    k: usize,
    /// `(log R, state)`, best first.
    best: Vec<(f64, Vec<i32>)>,
}

impl TopKTracker {
    /// An empty tracker of the best `k` objects.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            // Grows as objects arrive: `k` is a user's number and may be far above what a run finds.
            best: Vec::new(),
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

    /// Metrics of the held objects, diversity by `distance`; `None` before the first record.
    pub fn metrics(&self, distance: impl Fn(&[i32], &[i32]) -> f64) -> Option<TopKMetrics> {
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
                dist += distance(a, b);
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

/// The rewards of the most recent sampled objects, for the relative error of the mean sampled
/// reward to `E_{p*}[R]` (the bag task's monitor in Shen et al. 2023). A ring of `capacity`
/// rewards `R = exp(log R)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentRewards {
    capacity: usize,
    next: usize,
    rewards: Vec<f64>,
}

impl RecentRewards {
    /// An empty window of `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            next: 0,
            // Grows as samples arrive (a window may be longer than the run).
            rewards: Vec::new(),
        }
    }

    /// Record one sample's `log R`.
    pub fn record(&mut self, log_reward: f64) {
        if self.capacity == 0 {
            return;
        }
        let r = log_reward.exp();
        if self.rewards.len() < self.capacity {
            self.rewards.push(r);
        } else {
            self.rewards[self.next] = r;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// Metrics against `target_mean = E_{p*}[R]` when known; `None` before the first record.
    pub fn metrics(&self, target_mean: Option<f64>) -> Option<RecentMetrics> {
        if self.rewards.is_empty() {
            return None;
        }
        // Summed in slot order, so the value depends only on the window's contents and position.
        let mean_reward = self.rewards.iter().sum::<f64>() / self.rewards.len() as f64;
        Some(RecentMetrics {
            samples: self.rewards.len(),
            mean_reward,
            relative_error: target_mean.filter(|t| *t > 0.0).map(|t| (mean_reward - t) / t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hamming(a: &[i32], b: &[i32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64
    }

    #[test]
    fn keeps_the_best_distinct_objects() {
        let mut t = TopKTracker::new(3);
        assert!(t.metrics(hamming).is_none());
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
        let m = t.metrics(hamming).unwrap();
        assert_eq!(m.found, 3);
        let want = ((-0.1f64).exp() + (-0.5f64).exp() + (-1.0f64).exp()) / 3.0;
        assert!((m.mean_reward - want).abs() < 1e-15);
        // [0,0], [1,1], [0,1]: distances 2, 1, 1.
        assert!((m.diversity - 4.0 / 3.0).abs() < 1e-15);
        t.record(&[9, 9], f64::NAN);
        assert_eq!(t.metrics(hamming).unwrap().found, 3);
    }

    #[test]
    fn recent_rewards_keep_the_last_samples() {
        let mut w = RecentRewards::new(2);
        assert!(w.metrics(Some(1.0)).is_none());
        for r in [1.0f64, 2.0, 4.0] {
            w.record(r.ln());
        }
        let m = w.metrics(Some(2.0)).unwrap();
        assert_eq!(m.samples, 2);
        assert!((m.mean_reward - 3.0).abs() < 1e-12);
        assert!((m.relative_error.unwrap() - 0.5).abs() < 1e-12);
        assert!(w.metrics(None).unwrap().relative_error.is_none());
        let mut off = RecentRewards::new(0);
        off.record(0.0);
        assert!(off.metrics(None).is_none());
    }
}
