//! Seeded samplers: forward rollouts with P_F (ε-uniform mixing and a temperature), and backward
//! rollouts from given terminal objects with P_B.
//!
//! Rollouts run the network without recording an autograd graph, one batched forward per time
//! step over the still-active trajectories; the training loss then evaluates every visited state in
//! one batched forward with gradients. Measured on 4×8 hypergrid, TB, batch 16 (see
//! `docs/PERFORMANCE.md`), this beats keeping each step's graph alive for the loss, whose backward
//! pass then walks dozens of tiny per-step matmuls.
//!
//! Both rollouts take the policy as a trait ([`RolloutPolicy`], [`BackwardRolloutPolicy`]): the
//! estimator itself (candle forward passes), the fast path's no-grad forward
//! ([`crate::fast::Inference`]), or its taped view ([`crate::fast::Taped`]), which records every
//! evaluated state's outputs so that the loss reads them instead of evaluating the states again.

use crate::batch::{NONE, TrajectoryBatch};
use crate::estimator::{BackwardRolloutPolicy, Estimator, RolloutPolicy};
use crate::rng::{GfnRng, sample_weighted};
use crate::{Env, GfnError, Result};

/// Exploration settings of a forward rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingOptions {
    /// Probability mass mixed in uniformly over the allowed actions, in `[0, 1]`.
    pub epsilon: f64,
    /// Softmax temperature of P_F, `> 0` (1 = on-policy).
    pub temperature: f64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            epsilon: 0.0,
            temperature: 1.0,
        }
    }
}

impl SamplingOptions {
    /// Check ranges, naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.epsilon) {
            return Err(GfnError::invalid("epsilon", self.epsilon, "must be in [0, 1]"));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(GfnError::invalid(
                "temperature",
                self.temperature,
                "must be finite and > 0",
            ));
        }
        Ok(())
    }

    /// Whether this is the policy itself (no exploration).
    pub fn is_on_policy(&self) -> bool {
        self.epsilon == 0.0 && self.temperature == 1.0
    }
}

/// Scratch buffers reused across calls: a sampler allocates nothing per step once warm.
#[derive(Debug, Default)]
pub struct Sampler {
    current: Vec<i32>,
    active: Vec<usize>,
    next_active: Vec<usize>,
    weights: Vec<f64>,
    logits: Vec<f32>,
    path_states: Vec<i32>,
    path_forward: Vec<u32>,
    path_backward: Vec<u32>,
    path_log_pb: Vec<f32>,
    depth: Vec<usize>,
    features: Vec<f32>,
    active_states: Vec<i32>,
    masks: Vec<bool>,
}

/// Draw one action from masked `logits` with temperature and ε-mixing; returns `(action, log p)`.
fn draw_action(
    rng: &mut GfnRng,
    logits: &[f32],
    mask: impl Fn(usize) -> bool,
    opts: SamplingOptions,
    weights: &mut Vec<f64>,
) -> Result<(usize, f64)> {
    weights.clear();
    let inv_t = 1.0 / opts.temperature;
    let mut max = f64::NEG_INFINITY;
    let mut n_valid = 0usize;
    for (a, &l) in logits.iter().enumerate() {
        if mask(a) {
            max = max.max(f64::from(l) * inv_t);
            n_valid += 1;
        }
    }
    if n_valid == 0 {
        return Err(GfnError::Other("a non-terminal state has no allowed action".into()));
    }
    if !max.is_finite() {
        return Err(GfnError::Other(format!("policy logits are not finite ({max})")));
    }
    let mut total = 0.0;
    for (a, &l) in logits.iter().enumerate() {
        let w = if mask(a) {
            (f64::from(l) * inv_t - max).exp()
        } else {
            0.0
        };
        total += w;
        weights.push(w);
    }
    let eps = opts.epsilon;
    if eps > 0.0 {
        let u = eps / n_valid as f64;
        for (a, w) in weights.iter_mut().enumerate() {
            if mask(a) {
                *w = (1.0 - eps) * *w / total + u;
            }
        }
        total = 1.0;
    }
    let a = sample_weighted(rng, weights, total);
    Ok((a, (weights[a] / total).ln()))
}

impl Sampler {
    /// A sampler with empty scratch buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sample `n` trajectories forward from `s_0` with the estimator's P_F into `batch`.
    pub fn sample_forward<E: Env + ?Sized>(
        &mut self,
        env: &E,
        estimator: &Estimator,
        n: usize,
        opts: SamplingOptions,
        rng: &mut GfnRng,
        batch: &mut TrajectoryBatch,
    ) -> Result<()> {
        self.sample_forward_with(env, &mut &*estimator, n, opts, rng, batch)
    }

    /// Sample `n` trajectories forward with any [`RolloutPolicy`] (e.g. the fast path's taped
    /// view, which records the outputs for the loss).
    pub fn sample_forward_with<E: Env + ?Sized, P: RolloutPolicy + ?Sized>(
        &mut self,
        env: &E,
        policy: &mut P,
        n: usize,
        opts: SamplingOptions,
        rng: &mut GfnRng,
        batch: &mut TrajectoryBatch,
    ) -> Result<()> {
        self.forward(env, policy, n, None, opts, rng, batch)
    }

    /// Sample one trajectory forward from each of the given initial states (`starts`, rows of
    /// `state_dim`: e.g. `s_0(c)` of chosen conditions, written by
    /// [`Env::conditioned_initial_state`]) instead of drawing them.
    pub fn sample_forward_from<E: Env + ?Sized, P: RolloutPolicy + ?Sized>(
        &mut self,
        env: &E,
        policy: &mut P,
        starts: &[i32],
        opts: SamplingOptions,
        rng: &mut GfnRng,
        batch: &mut TrajectoryBatch,
    ) -> Result<()> {
        let sd = env.state_dim();
        if starts.is_empty() || !starts.len().is_multiple_of(sd) {
            return Err(GfnError::invalid(
                "starts",
                starts.len(),
                format!("must be a positive multiple of state_dim = {sd}"),
            ));
        }
        if let Some(s) = starts.chunks_exact(sd).find(|s| !env.is_initial(s)) {
            return Err(GfnError::invalid("starts", format!("{s:?}"), "must be initial states"));
        }
        self.forward(env, policy, starts.len() / sd, Some(starts), opts, rng, batch)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward<E: Env + ?Sized, P: RolloutPolicy + ?Sized>(
        &mut self,
        env: &E,
        policy: &mut P,
        n: usize,
        starts: Option<&[i32]>,
        opts: SamplingOptions,
        rng: &mut GfnRng,
        batch: &mut TrajectoryBatch,
    ) -> Result<()> {
        opts.validate()?;
        if n == 0 {
            return Err(GfnError::invalid("batch_size", n, "must be at least 1"));
        }
        let (sd, na, nf) = (env.state_dim(), env.n_actions(), env.feature_dim());
        let exit = env.exit_action();
        batch.reset(env, n);
        self.current.clear();
        match starts {
            Some(s) => self.current.extend_from_slice(s),
            None => {
                self.current.resize(n * sd, 0);
                // One condition per trajectory for a conditional environment (no draw otherwise).
                for s in self.current.chunks_exact_mut(sd) {
                    env.draw_initial_state(rng, s);
                }
            }
        }
        self.active.clear();
        self.active.extend(0..n);
        let mut t = 0;
        while !self.active.is_empty() {
            if t > batch.cap {
                return Err(GfnError::Other(format!(
                    "{}: a trajectory exceeded max_actions = {}",
                    env.name(),
                    batch.cap
                )));
            }
            let first_row = batch.num_rows();
            for &b in &self.active {
                batch.push_row(env, b, t, &self.current[b * sd..(b + 1) * sd]);
            }
            let rows = self.active.len();
            let stride = policy.pf_logits_of(
                &batch.states[first_row * sd..(first_row + rows) * sd],
                &batch.features[first_row * nf..],
                rows,
                &mut self.logits,
            )?;
            let logits = &self.logits;
            self.next_active.clear();
            for (i, &b) in self.active.iter().enumerate() {
                let state = &mut self.current[b * sd..(b + 1) * sd];
                if exit.is_none() && env.is_terminal(state) {
                    batch.finish_unscored(b, t, state);
                    continue;
                }
                let row = first_row + i;
                let mask = &batch.forward_masks[row * na..(row + 1) * na];
                let (a, log_p) = draw_action(
                    rng,
                    &logits[i * stride..i * stride + na],
                    |a| mask[a] != 0,
                    opts,
                    &mut self.weights,
                )?;
                if Some(a) == exit {
                    batch.set_step(b, t, a as u32, NONE, log_p as f32, 0.0);
                    batch.finish_unscored(b, t + 1, state);
                } else {
                    let back = env.step(state, a);
                    batch.set_step(b, t, a as u32, back as u32, log_p as f32, 0.0);
                    self.next_active.push(b);
                }
            }
            std::mem::swap(&mut self.active, &mut self.next_active);
            t += 1;
        }
        batch.score(env)
    }

    /// Sample one backward trajectory with P_B from each terminal object in `terminals`
    /// (`[n, state_dim]`) down to `s_0`, and store them in forward orientation in `batch`.
    /// `batch.log_pb` holds the sampled log P_B; `batch.log_pf` is left at 0. Rows are laid out
    /// as [`Sampler::sample_backward_with`] describes.
    pub fn sample_backward<E: Env + ?Sized>(
        &mut self,
        env: &E,
        estimator: &Estimator,
        terminals: &[i32],
        rng: &mut GfnRng,
        batch: &mut TrajectoryBatch,
    ) -> Result<()> {
        self.sample_backward_with(env, &mut &*estimator, terminals, rng, batch)
    }

    /// [`Sampler::sample_backward`] with any [`BackwardRolloutPolicy`] (e.g. the fast path's
    /// taped view, which records the outputs for the loss).
    ///
    /// The walk runs all trajectories in lockstep, one batched evaluation per step over the
    /// trajectories that have not reached `s_0`. The batch's rows are the states in the order the
    /// walk evaluated them (every trajectory's terminal object, then the states one step back,
    /// …), followed by the last `n` rows: each trajectory's initial state, which the walk reaches
    /// but never evaluates, in trajectory order. A policy that records what it evaluates thus
    /// holds the batch's first `num_rows() − n` rows in row order.
    pub fn sample_backward_with<E: Env + ?Sized, P: BackwardRolloutPolicy + ?Sized>(
        &mut self,
        env: &E,
        policy: &mut P,
        terminals: &[i32],
        rng: &mut GfnRng,
        batch: &mut TrajectoryBatch,
    ) -> Result<()> {
        let (sd, nb, nf, na) = (
            env.state_dim(),
            env.n_backward_actions(),
            env.feature_dim(),
            env.n_actions(),
        );
        let n = terminals.len() / sd;
        if n == 0 || terminals.len() != n * sd {
            return Err(GfnError::invalid(
                "terminals",
                terminals.len(),
                format!("must hold a positive multiple of state_dim = {sd} values"),
            ));
        }
        let cap = env.max_actions();
        let exit = env.exit_action();
        self.masks.resize(na.max(nb), false);
        for x in terminals.chunks_exact(sd) {
            let ok = match exit {
                Some(e) => {
                    env.forward_mask(x, &mut self.masks[..na]);
                    self.masks[e]
                }
                None => env.is_terminal(x),
            };
            if !ok {
                return Err(GfnError::invalid(
                    "terminals",
                    format!("{x:?}"),
                    "must be terminal objects of the environment",
                ));
            }
        }
        // Walk back, all trajectories in lockstep; path k = k-th state from the end.
        let stride = (cap + 1) * sd;
        self.path_states.clear();
        self.path_states.resize(n * stride, 0);
        self.path_forward.clear();
        self.path_forward.resize(n * cap, NONE);
        self.path_backward.clear();
        self.path_backward.resize(n * cap, NONE);
        self.path_log_pb.clear();
        self.path_log_pb.resize(n * cap, 0.0);
        self.depth.clear();
        self.depth.resize(n, 0);
        self.current.clear();
        self.current.extend_from_slice(terminals);
        self.active.clear();
        for b in 0..n {
            self.path_states[b * stride..b * stride + sd].copy_from_slice(&terminals[b * sd..(b + 1) * sd]);
            if !env.is_initial(&terminals[b * sd..(b + 1) * sd]) {
                self.active.push(b);
            }
        }
        let on_policy = SamplingOptions::default();
        let mut k = 0;
        while !self.active.is_empty() {
            if k >= cap {
                return Err(GfnError::Other(format!(
                    "{}: a backward walk exceeded max_actions",
                    env.name()
                )));
            }
            let rows = self.active.len();
            self.features.clear();
            self.features.resize(rows * nf, 0.0);
            self.active_states.clear();
            for (i, &b) in self.active.iter().enumerate() {
                let state = &self.current[b * sd..(b + 1) * sd];
                env.featurize(state, &mut self.features[i * nf..(i + 1) * nf]);
                self.active_states.extend_from_slice(state);
            }
            let layout = policy.pb_logits_of(&self.active_states, &self.features, rows, &mut self.logits)?;
            let logits = &self.logits;
            if logits.len() < rows * layout.stride || layout.offset + nb > layout.stride {
                return Err(GfnError::Other(format!(
                    "backward policy: {} logits for {rows} rows of {nb} backward actions at {layout:?}",
                    logits.len()
                )));
            }
            self.next_active.clear();
            for (i, &b) in self.active.iter().enumerate() {
                let state = &mut self.current[b * sd..(b + 1) * sd];
                env.backward_mask(state, &mut self.masks[..nb]);
                let mask = &self.masks[..nb];
                let at = i * layout.stride + layout.offset;
                let (a, log_p) = draw_action(rng, &logits[at..at + nb], |a| mask[a], on_policy, &mut self.weights)?;
                let fwd = env.backward_step(state, a);
                self.path_forward[b * cap + k] = fwd as u32;
                self.path_backward[b * cap + k] = a as u32;
                self.path_log_pb[b * cap + k] = log_p as f32;
                self.depth[b] = k + 1;
                let off = b * stride + (k + 1) * sd;
                self.path_states[off..off + sd].copy_from_slice(state);
                if !env.is_initial(state) {
                    self.next_active.push(b);
                }
            }
            std::mem::swap(&mut self.active, &mut self.next_active);
            k += 1;
        }
        // Rows in the walk's order: at walk step k, path index k of every trajectory deeper than
        // k (the active set, which stays in trajectory order), forward node depth − k.
        batch.reset(env, n);
        let max_depth = self.depth.iter().max().copied().unwrap_or(0);
        for k in 0..max_depth {
            for b in 0..n {
                let depth = self.depth[b];
                if k < depth {
                    let off = b * stride + k * sd;
                    batch.push_row(env, b, depth - k, &self.path_states[off..off + sd]);
                }
            }
        }
        // Then every trajectory's initial state (path index depth).
        for b in 0..n {
            let off = b * stride + self.depth[b] * sd;
            batch.push_row(env, b, 0, &self.path_states[off..off + sd]);
        }
        // Forward step t goes from path p = depth − t to p − 1, undone by backward move p − 1.
        for b in 0..n {
            let depth = self.depth[b];
            for t in 0..depth {
                let j = b * cap + (depth - 1 - t);
                batch.set_step(
                    b,
                    t,
                    self.path_forward[j],
                    self.path_backward[j],
                    0.0,
                    self.path_log_pb[j],
                );
            }
        }
        for b in 0..n {
            let m = self.depth[b] + 1;
            let x = &terminals[b * sd..(b + 1) * sd];
            match exit {
                Some(e) => {
                    batch.set_step(b, m - 1, e as u32, NONE, 0.0, 0.0);
                    batch.finish_unscored(b, m, x);
                }
                None => batch.finish_unscored(b, m - 1, x),
            }
        }
        batch.score(env)
    }
}
