//! Exact evaluation on enumerable environments, in f64.
//!
//! The terminating distribution of a forward policy by dynamic programming over the DAG in
//! topological order (papers.md §A): `u(s_0) = 1`, `u(s') = Σ_{s ∈ Par(s')} u(s) P_F(s'|s)`,
//! `P_T(x) = u(x) P_F(exit|x)` (or `u(x)` for environments without an exit action). Compared with
//! the target `p*(x) = R(x)/Z` by total variation, L1 (summed and per-state mean), Jensen–Shannon
//! divergence and `KL(p*‖P_T)`. Also the exact flows and policies that satisfy every balance
//! condition for a given P_B, used to test the objectives.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::batch::NONE;
use crate::estimator::{Estimator, to_vec_f32};
use crate::{Env, GfnError, Result};

/// `log Σ exp(xs)` in f64, `−∞` for an empty or all-`−∞` input.
pub fn logsumexp(xs: impl IntoIterator<Item = f64> + Clone) -> f64 {
    let max = xs.clone().into_iter().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + xs.into_iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

pub use gfn_record::f64_or_nan;

/// Divergences between a model distribution `p` and the target `q` over the same support.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct DistributionMetrics {
    /// Total variation `½ Σ|p − q|`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub tv: f64,
    /// `Σ|p − q|`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub l1_sum: f64,
    /// `Σ|p − q| / |X|` (the TB paper's convention).
    #[serde(deserialize_with = "f64_or_nan")]
    pub l1_mean: f64,
    /// Jensen–Shannon divergence (natural log).
    #[serde(deserialize_with = "f64_or_nan")]
    pub jsd: f64,
    /// `KL(q ‖ p)` = KL(p* ‖ P_T); infinite when `p` misses part of the target's support.
    #[serde(deserialize_with = "f64_or_nan")]
    pub kl: f64,
}

impl DistributionMetrics {
    /// Compare `p` (model) with `q` (target).
    pub fn compare(p: &[f64], q: &[f64]) -> Self {
        assert_eq!(p.len(), q.len(), "distributions over different supports");
        let (mut l1, mut jsd, mut kl) = (0.0, 0.0, 0.0);
        let xlogx = |a: f64, b: f64| if a > 0.0 { a * (a / b).ln() } else { 0.0 };
        for (&pi, &qi) in p.iter().zip(q) {
            l1 += (pi - qi).abs();
            let m = 0.5 * (pi + qi);
            jsd += 0.5 * xlogx(pi, m) + 0.5 * xlogx(qi, m);
            kl += xlogx(qi, pi);
        }
        Self {
            tv: 0.5 * l1,
            l1_sum: l1,
            l1_mean: l1 / p.len() as f64,
            jsd,
            kl,
        }
    }
}

/// Everything exact evaluation needs, computed once per environment.
#[derive(Debug, Clone)]
pub struct ExactEvaluator {
    state_dim: usize,
    n_actions: usize,
    n_backward: usize,
    exit: Option<usize>,
    states: Vec<i32>,
    features: Vec<f32>,
    forward_mask: Vec<bool>,
    /// Child index for `[s * n_actions + a]` (exit and invalid: `NONE`).
    children: Vec<u32>,
    /// Backward action at the child that undoes `[s * n_actions + a]`.
    child_backward: Vec<u32>,
    /// Parent index and forward action for `[s * n_backward + b]`.
    parents: Vec<(u32, u32)>,
    backward_mask: Vec<bool>,
    terminal: Vec<u32>,
    terminal_of_state: Vec<u32>,
    log_reward: Vec<f64>,
    target: Vec<f64>,
    log_z: f64,
    modes: Vec<bool>,
    initial: usize,
    index: HashMap<Vec<i32>, u32>,
}

impl ExactEvaluator {
    /// Enumerate `env` and precompute the DAG's structure, rewards and target.
    pub fn new<E: Env + ?Sized>(env: &E) -> Result<Self> {
        let states = env
            .enumerate_states()
            .ok_or_else(|| GfnError::NotEnumerable(env.name()))?;
        let (sd, na, nb, nf) = (
            env.state_dim(),
            env.n_actions(),
            env.n_backward_actions(),
            env.feature_dim(),
        );
        let n = states.len() / sd;
        let index: HashMap<Vec<i32>, u32> = states
            .chunks_exact(sd)
            .enumerate()
            .map(|(i, s)| (s.to_vec(), i as u32))
            .collect();
        if index.len() != n {
            return Err(GfnError::Other(format!(
                "{}: enumerate_states lists a state twice",
                env.name()
            )));
        }
        let lookup = |s: &[i32]| -> Result<u32> {
            index
                .get(s)
                .copied()
                .ok_or_else(|| GfnError::Other(format!("{}: state {s:?} reachable but not enumerated", env.name())))
        };
        let exit = env.exit_action();
        let mut features = vec![0.0; n * nf];
        env.featurize_batch(&states, &mut features);
        let mut forward_mask = vec![false; n * na];
        env.forward_masks(&states, &mut forward_mask);
        let mut backward_mask = vec![false; n * nb];
        env.backward_masks(&states, &mut backward_mask);
        let mut children = vec![NONE; n * na];
        let mut child_backward = vec![NONE; n * na];
        let mut parents = vec![(NONE, NONE); n * nb];
        let mut buf = vec![0; sd];
        let mut initial = None;
        for (i, s) in states.chunks_exact(sd).enumerate() {
            if env.is_initial(s) {
                initial = Some(i);
            }
            for a in 0..na {
                if !forward_mask[i * na + a] || Some(a) == exit {
                    continue;
                }
                buf.copy_from_slice(s);
                let back = env.step(&mut buf, a);
                let c = lookup(&buf)?;
                if c as usize <= i {
                    return Err(GfnError::Other(format!(
                        "{}: enumerate_states is not in topological order ({s:?} → {buf:?})",
                        env.name()
                    )));
                }
                children[i * na + a] = c;
                child_backward[i * na + a] = back as u32;
            }
            for b in 0..nb {
                if !backward_mask[i * nb + b] {
                    continue;
                }
                buf.copy_from_slice(s);
                let fwd = env.backward_step(&mut buf, b);
                parents[i * nb + b] = (lookup(&buf)?, fwd as u32);
            }
        }
        let initial = initial.ok_or_else(|| GfnError::Other(format!("{}: s_0 not enumerated", env.name())))?;
        let is_terminal = |i: usize, s: &[i32]| match exit {
            Some(e) => forward_mask[i * na + e],
            None => env.is_terminal(s),
        };
        let mut terminal = Vec::new();
        let mut terminal_of_state = vec![NONE; n];
        let mut modes = Vec::new();
        let mut objects = Vec::new();
        for (i, s) in states.chunks_exact(sd).enumerate() {
            if is_terminal(i, s) {
                terminal_of_state[i] = terminal.len() as u32;
                terminal.push(i as u32);
                objects.extend_from_slice(s);
                modes.push(env.is_mode(s));
            }
        }
        // Every object scored by one batch call (a reward model or a Python callback).
        let mut log_reward = vec![0.0; terminal.len()];
        env.log_rewards(&objects, &mut log_reward)?;
        for (s, &lr) in objects.chunks_exact(sd).zip(&log_reward) {
            if lr.is_nan() || lr == f64::INFINITY {
                return Err(GfnError::Other(format!("{}: log_reward({s:?}) = {lr}", env.name())));
            }
        }
        let log_z = logsumexp(log_reward.iter().copied());
        let target = log_reward.iter().map(|lr| (lr - log_z).exp()).collect();
        Ok(Self {
            state_dim: sd,
            n_actions: na,
            n_backward: nb,
            exit,
            states,
            features,
            forward_mask,
            children,
            child_backward,
            parents,
            backward_mask,
            terminal,
            terminal_of_state,
            log_reward,
            target,
            log_z,
            modes,
            initial,
            index,
        })
    }

    /// Number of states.
    pub fn num_states(&self) -> usize {
        self.states.len() / self.state_dim
    }
    /// Number of terminal objects |X|.
    pub fn num_terminal(&self) -> usize {
        self.terminal.len()
    }
    /// Exact `log Z = log Σ_x R(x)`.
    pub fn log_z(&self) -> f64 {
        self.log_z
    }
    /// Target distribution `p*` over terminal objects.
    pub fn target(&self) -> &[f64] {
        &self.target
    }
    /// `log R` of each terminal object.
    pub fn log_rewards(&self) -> &[f64] {
        &self.log_reward
    }
    /// `E_{p*}[R]` and the mean reward of the best `top_k` terminal objects.
    pub fn target_summary(&self, top_k: usize) -> crate::env::TargetSummary {
        let mean_reward = self
            .target
            .iter()
            .zip(&self.log_reward)
            .map(|(p, lr)| p * lr.exp())
            .sum();
        let mut sorted = self.log_reward.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let top = &sorted[..top_k.clamp(1, sorted.len().max(1)).min(sorted.len())];
        let top_k_mean_reward = if top.is_empty() {
            f64::NAN
        } else {
            top.iter().map(|lr| lr.exp()).sum::<f64>() / top.len() as f64
        };
        crate::env::TargetSummary {
            mean_reward,
            top_k_mean_reward,
        }
    }
    /// Which terminal objects are modes.
    pub fn modes(&self) -> &[bool] {
        &self.modes
    }
    /// Number of modes.
    pub fn num_modes(&self) -> usize {
        self.modes.iter().filter(|&&m| m).count()
    }
    /// All states, flattened, topological order.
    pub fn states(&self) -> &[i32] {
        &self.states
    }
    /// Index of the initial state.
    pub fn initial(&self) -> usize {
        self.initial
    }
    /// Index of a state.
    pub fn state_index(&self, s: &[i32]) -> Option<usize> {
        self.index.get(s).map(|&i| i as usize)
    }
    /// Terminal-object index of a terminal state.
    pub fn terminal_index(&self, s: &[i32]) -> Option<usize> {
        let i = self.state_index(s)?;
        let t = self.terminal_of_state[i];
        (t != NONE).then_some(t as usize)
    }
    /// Terminal-object index → state index.
    pub fn terminal_state_index(&self, t: usize) -> usize {
        self.terminal[t] as usize
    }
    /// Child of state `s` by forward action `a`, if any (not for the exit).
    pub fn child(&self, s: usize, a: usize) -> Option<(usize, usize)> {
        let c = self.children[s * self.n_actions + a];
        (c != NONE).then(|| (c as usize, self.child_backward[s * self.n_actions + a] as usize))
    }
    /// Parent of state `s` by backward action `b`, with the forward action from it.
    pub fn parent(&self, s: usize, b: usize) -> Option<(usize, usize)> {
        let (p, a) = self.parents[s * self.n_backward + b];
        (p != NONE).then_some((p as usize, a as usize))
    }
    /// Forward mask of every state, `[S * n_actions]`.
    pub fn forward_mask(&self) -> &[bool] {
        &self.forward_mask
    }
    /// Backward mask of every state, `[S * n_backward]`.
    pub fn backward_mask(&self) -> &[bool] {
        &self.backward_mask
    }
    /// Features of every state.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// Masked log-softmax of raw logits `[S * width]` in f64 (`−∞` on disallowed entries).
    pub fn log_softmax_masked(logits: &[f32], mask: &[bool], width: usize) -> Vec<f64> {
        let mut out = vec![f64::NEG_INFINITY; logits.len()];
        for ((l, m), o) in logits
            .chunks_exact(width)
            .zip(mask.chunks_exact(width))
            .zip(out.chunks_exact_mut(width))
        {
            let lse = logsumexp(l.iter().zip(m).filter(|(_, m)| **m).map(|(x, _)| f64::from(*x)));
            for a in 0..width {
                if m[a] {
                    o[a] = f64::from(l[a]) - lse;
                }
            }
        }
        out
    }

    /// The estimator's forward logits on every state (batched, no graph), as f32.
    pub fn policy_logits(&self, estimator: &Estimator) -> Result<Vec<f32>> {
        const CHUNK: usize = 8192;
        let nf = estimator.feature_dim();
        let n = self.num_states();
        let mut out = Vec::with_capacity(n * self.n_actions);
        for start in (0..n).step_by(CHUNK) {
            let rows = CHUNK.min(n - start);
            let x = Tensor::from_slice(
                &self.features[start * nf..(start + rows) * nf],
                (rows, nf),
                estimator.device(),
            )?;
            out.extend(to_vec_f32(&estimator.pf_logits_detached(&x)?)?);
        }
        Ok(out)
    }

    /// `log P_F(a|s)` for every state and action, `[S * n_actions]`.
    pub fn policy_log_probs(&self, estimator: &Estimator) -> Result<Vec<f64>> {
        Ok(Self::log_softmax_masked(
            &self.policy_logits(estimator)?,
            &self.forward_mask,
            self.n_actions,
        ))
    }

    /// Terminating distribution `P_T` over terminal objects for forward log-probs `[S * n_actions]`.
    pub fn terminating_distribution(&self, log_pf: &[f64]) -> Vec<f64> {
        let n = self.num_states();
        let na = self.n_actions;
        let mut u = vec![0.0f64; n];
        u[self.initial] = 1.0;
        for s in 0..n {
            if u[s] == 0.0 {
                continue;
            }
            for a in 0..na {
                let c = self.children[s * na + a];
                if c != NONE {
                    u[c as usize] += u[s] * log_pf[s * na + a].exp();
                }
            }
        }
        self.terminal
            .iter()
            .map(|&s| {
                let s = s as usize;
                match self.exit {
                    Some(e) => u[s] * log_pf[s * na + e].exp(),
                    None => u[s],
                }
            })
            .collect()
    }

    /// Exact metrics of `estimator`'s forward policy, with `log_z_learned` the model's estimate.
    pub fn evaluate(&self, estimator: &Estimator, log_z_learned: f64) -> Result<ExactMetrics> {
        let log_pf = self.policy_log_probs(estimator)?;
        Ok(self.metrics_for(&log_pf, log_z_learned))
    }

    /// Exact metrics of given forward log-probs.
    pub fn metrics_for(&self, log_pf: &[f64], log_z_learned: f64) -> ExactMetrics {
        let p = self.terminating_distribution(log_pf);
        let dist = DistributionMetrics::compare(&p, &self.target);
        ExactMetrics {
            dist,
            log_z_learned,
            log_z_true: self.log_z,
            log_z_error: (log_z_learned - self.log_z).abs(),
        }
    }

    /// The flows and policies that satisfy every balance condition for the backward policy
    /// `log_pb` (`[S * n_backward]`, normalised over allowed actions; see
    /// [`ExactEvaluator::uniform_log_pb`]), by dynamic programming in reverse topological order:
    /// `F(s) = R(s)·1[s terminal] + Σ_{s→s'} F(s') P_B(s|s')`, `P_F(s'|s) = F(s') P_B(s|s') / F(s)`,
    /// `P_F(exit|s) = R(s)/F(s)`, `Z = F(s_0)`.
    pub fn exact_solution(&self, log_pb: &[f64]) -> ExactSolution {
        let (n, na, nb) = (self.num_states(), self.n_actions, self.n_backward);
        let mut log_flow = vec![f64::NEG_INFINITY; n];
        let mut log_edge = vec![f64::NEG_INFINITY; n * na];
        for s in (0..n).rev() {
            let t = self.terminal_of_state[s];
            let mut terms = Vec::with_capacity(na + 1);
            for a in 0..na {
                let c = self.children[s * na + a];
                if c != NONE {
                    let b = self.child_backward[s * na + a] as usize;
                    let e = log_flow[c as usize] + log_pb[c as usize * nb + b];
                    log_edge[s * na + a] = e;
                    terms.push(e);
                }
            }
            if t != NONE {
                let lr = self.log_reward[t as usize];
                if let Some(e) = self.exit {
                    log_edge[s * na + e] = lr;
                }
                terms.push(lr);
            }
            log_flow[s] = logsumexp(terms.iter().copied());
        }
        let log_pf = (0..n * na)
            .map(|i| {
                let f = log_flow[i / na];
                if self.forward_mask[i] && f > f64::NEG_INFINITY {
                    log_edge[i] - f
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect();
        ExactSolution {
            log_z: log_flow[self.initial],
            log_flow,
            log_edge_flow: log_edge,
            log_pf,
            log_pb: log_pb.to_vec(),
        }
    }

    /// Uniform backward policy over allowed backward actions, `[S * n_backward]`.
    pub fn uniform_log_pb(&self) -> Vec<f64> {
        let nb = self.n_backward;
        let mut out = vec![f64::NEG_INFINITY; self.backward_mask.len()];
        for (m, o) in self.backward_mask.chunks_exact(nb).zip(out.chunks_exact_mut(nb)) {
            let k = m.iter().filter(|&&x| x).count();
            for b in 0..nb {
                if m[b] {
                    o[b] = -(k as f64).ln();
                }
            }
        }
        out
    }
}

/// Exact metrics of a policy.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExactMetrics {
    /// Divergences between P_T and p*.
    #[serde(flatten)]
    pub dist: DistributionMetrics,
    /// The model's `log Ẑ`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub log_z_learned: f64,
    /// The exact `log Z`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub log_z_true: f64,
    /// `|log Ẑ − log Z|`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub log_z_error: f64,
}

/// Exact flows and policies (see [`ExactEvaluator::exact_solution`]); per-state arrays are indexed
/// like [`ExactEvaluator::states`].
#[derive(Debug, Clone)]
pub struct ExactSolution {
    /// `log F(s)`.
    pub log_flow: Vec<f64>,
    /// `log F(s → s')` per `[s * n_actions + a]` (the exit edge carries `R(s)`); `−∞` if invalid.
    pub log_edge_flow: Vec<f64>,
    /// `log P_F(a|s)`.
    pub log_pf: Vec<f64>,
    /// `log P_B(b|s)`.
    pub log_pb: Vec<f64>,
    /// `log Z = log F(s_0)`.
    pub log_z: f64,
}

/// The empirical distribution of the last `window` sampled terminal objects, and the set of modes
/// ever visited.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EmpiricalTracker {
    window: usize,
    ring: Vec<u32>,
    next: usize,
    visited_modes: Vec<u32>,
    #[serde(skip)]
    mode_seen: Vec<bool>,
}

impl EmpiricalTracker {
    /// Track the last `window` (≥ 1) samples.
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            ring: Vec::new(),
            next: 0,
            visited_modes: Vec::new(),
            mode_seen: Vec::new(),
        }
    }

    /// Record one sampled terminal object by its terminal index.
    pub fn record(&mut self, terminal: usize, is_mode: bool) {
        if self.ring.len() < self.window {
            self.ring.push(terminal as u32);
        } else {
            self.ring[self.next] = terminal as u32;
        }
        self.next = (self.next + 1) % self.window;
        if is_mode {
            if self.mode_seen.len() <= terminal {
                self.rebuild_seen(terminal + 1);
            }
            if !self.mode_seen[terminal] {
                self.mode_seen[terminal] = true;
                self.visited_modes.push(terminal as u32);
            }
        }
    }

    fn rebuild_seen(&mut self, len: usize) {
        self.mode_seen.resize(len, false);
        for &m in &self.visited_modes {
            let m = m as usize;
            if m >= self.mode_seen.len() {
                self.mode_seen.resize(m + 1, false);
            }
            self.mode_seen[m] = true;
        }
    }

    /// Number of distinct modes ever recorded.
    pub fn modes_found(&self) -> usize {
        self.visited_modes.len()
    }

    /// Number of samples in the window.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Divergences between the window's empirical distribution and `target`.
    pub fn metrics(&self, target: &[f64]) -> DistributionMetrics {
        let mut counts = vec![0.0; target.len()];
        for &t in &self.ring {
            counts[t as usize] += 1.0;
        }
        let n = self.ring.len().max(1) as f64;
        counts.iter_mut().for_each(|c| *c /= n);
        DistributionMetrics::compare(&counts, target)
    }
}
