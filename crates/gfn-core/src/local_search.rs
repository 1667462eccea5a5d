//! The back-and-forth proposal: from a complete object `x`, `K` backward steps with P_B, then `K`
//! forward steps with P_F, giving `x'` and both proposal log-probabilities. It is EB-GFN's
//! Metropolis–Hastings proposal for an energy model's negatives (Zhang et al. 2022, papers.md
//! §2.2) and the move of local-search GFlowNets (Kim et al. 2023); both use this one function.
//!
//! With `s_{D−K}` the state reached backward (`x = s_D`) and `x' = s'_D` the state reached again
//! forward:
//!
//! ```text
//! log q(x → x') = Σ_{j} log P_B(s_{j−1} | s_j) + Σ_{j} log P_F(s'_{j} | s'_{j−1})
//! log q(x' → x) = Σ_{j} log P_B(s'_{j−1} | s'_j) + Σ_{j} log P_F(s_{j} | s_{j−1})
//! ```
//!
//! Every state on both paths is evaluated once: `2K + 1` rows per chain (the backward path's
//! states give their P_B logits for the walk and their P_F logits for the reverse move; the
//! forward path's give P_F for the walk and P_B for the reverse move; `x'` adds its P_B).
//!
//! Without an exit action the environment must reach a terminal state after the `K` forward
//! steps (graded DAGs such as binary vectors or fixed-size sets); anything else is an error.
//!
//! **With an exit action** (hypergrid, Bayesian networks: every state is an object), the walk
//! goes back `min(K, depth)` steps (it stops at `s_0`), then forward with P_F until P_F exits:
//!
//! ```text
//! log q(x → x') = Σ log P_B(back path) + Σ log P_F(forward path, its exit at x' included)
//! log q(x' → x) = Σ log P_B(forward path, reversed) + Σ log P_F(back path, reversed, and the exit at x)
//! ```
//!
//! The forward part's length `m` is random, so `log q(x' → x)` is the probability of the reverse
//! *path* under a walk that goes back `m` steps: a Metropolis–Hastings ratio from it is exact only
//! when `m = K`. Use these proposals with a greedy acceptance (LS-GFN's filter); the training
//! loop refuses MH acceptance on exit environments.

use crate::estimator::to_vec_f32;
use crate::exact::ExactEvaluator;
use crate::fast::Inference;
use crate::rng::{GfnRng, sample_weighted};
use crate::{Env, Estimator, GfnError, Result};

/// P_F and P_B logits of states: what the proposal needs from a policy.
pub trait StatePolicy {
    /// Logits of the `rows` states in `states` (`[rows, state_dim]`): forward into `pf`
    /// (`[rows, n_actions]`), backward into `pb` (`[rows, n_backward]`); both are resized.
    fn logits(&mut self, states: &[i32], rows: usize, pf: &mut Vec<f32>, pb: &mut Vec<f32>) -> Result<()>;
}

/// An [`Estimator`] as a [`StatePolicy`] (a uniform backward policy gives zero P_B logits).
pub struct EstimatorPolicy<'a, E: Env + ?Sized> {
    env: &'a E,
    estimator: &'a Estimator,
    features: Vec<f32>,
}

impl<'a, E: Env + ?Sized> EstimatorPolicy<'a, E> {
    /// The policy of `estimator` on `env`.
    pub fn new(env: &'a E, estimator: &'a Estimator) -> Self {
        Self {
            env,
            estimator,
            features: Vec::new(),
        }
    }
}

impl<E: Env + ?Sized> StatePolicy for EstimatorPolicy<'_, E> {
    fn logits(&mut self, states: &[i32], rows: usize, pf: &mut Vec<f32>, pb: &mut Vec<f32>) -> Result<()> {
        self.features.clear();
        self.features.resize(rows * self.env.feature_dim(), 0.0);
        self.env.featurize_batch(states, &mut self.features);
        let x = self.estimator.features_tensor(&self.features, rows)?;
        let out = self.estimator.forward_detached(&x)?;
        *pf = to_vec_f32(&out.pf_logits)?;
        *pb = match &out.pb_logits {
            Some(l) => to_vec_f32(l)?,
            None => vec![0.0; rows * self.env.n_backward_actions()],
        };
        Ok(())
    }
}

/// An [`Estimator`] as a [`StatePolicy`] through the CPU fast path's no-grad forward
/// ([`Inference`]): the same logits as [`EstimatorPolicy`] up to float rounding, without a tensor
/// or an allocation per call once the buffers have grown.
pub struct InferencePolicy<'a, E: Env + ?Sized> {
    env: &'a E,
    inference: Inference<'a>,
    features: Vec<f32>,
}

impl<'a, E: Env + ?Sized> InferencePolicy<'a, E> {
    /// The policy of `estimator` on `env`, or `None` when the estimator cannot use the fast path
    /// ([`crate::fast::FastPath::supports`]).
    pub fn new(env: &'a E, estimator: &'a Estimator) -> Option<Self> {
        Some(Self {
            env,
            inference: Inference::new(estimator)?,
            features: Vec::new(),
        })
    }
}

impl<E: Env + ?Sized> StatePolicy for InferencePolicy<'_, E> {
    fn logits(&mut self, states: &[i32], rows: usize, pf: &mut Vec<f32>, pb: &mut Vec<f32>) -> Result<()> {
        self.features.clear();
        self.features.resize(rows * self.env.feature_dim(), 0.0);
        self.env.featurize_batch(states, &mut self.features);
        self.inference.logits(&self.features, rows, pf, pb)
    }
}

/// A policy given by its log-probabilities on every state of an enumerated environment (exact
/// solutions in tests, tabular policies).
pub struct TabularPolicy<'a> {
    evaluator: &'a ExactEvaluator,
    log_pf: &'a [f64],
    log_pb: &'a [f64],
}

impl<'a> TabularPolicy<'a> {
    /// The policy `log_pf` (`[S, n_actions]`) and `log_pb` (`[S, n_backward]`) over the states
    /// of `evaluator`.
    pub fn new(evaluator: &'a ExactEvaluator, log_pf: &'a [f64], log_pb: &'a [f64]) -> Self {
        Self {
            evaluator,
            log_pf,
            log_pb,
        }
    }
}

impl StatePolicy for TabularPolicy<'_> {
    fn logits(&mut self, states: &[i32], rows: usize, pf: &mut Vec<f32>, pb: &mut Vec<f32>) -> Result<()> {
        let sd = states.len() / rows.max(1);
        let na = self.log_pf.len() / self.evaluator.num_states();
        let nb = self.log_pb.len() / self.evaluator.num_states();
        pf.clear();
        pb.clear();
        for s in states.chunks_exact(sd.max(1)).take(rows) {
            let i = self
                .evaluator
                .state_index(s)
                .ok_or_else(|| GfnError::Other(format!("state {s:?} is not in the enumeration")))?;
            // Masked entries are −∞; logits only need to be finite where allowed.
            pf.extend(self.log_pf[i * na..(i + 1) * na].iter().map(|&v| v.max(-1e30) as f32));
            pb.extend(self.log_pb[i * nb..(i + 1) * nb].iter().map(|&v| v.max(-1e30) as f32));
        }
        Ok(())
    }
}

/// Proposals for a batch of objects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    /// `x'`, `[n, state_dim]`.
    pub states: Vec<i32>,
    /// `log q(x → x')` per chain.
    pub log_q_forward: Vec<f64>,
    /// `log q(x' → x)` per chain.
    pub log_q_reverse: Vec<f64>,
}

/// Log-softmax of `logits` restricted to `mask`, at index `a`.
fn masked_log_prob(logits: &[f32], mask: &[bool], a: usize) -> f64 {
    let max = logits
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(&l, _)| f64::from(l))
        .fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = logits
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(&l, _)| (f64::from(l) - max).exp())
        .sum();
    f64::from(logits[a]) - max - total.ln()
}

/// Draw from the masked softmax of `logits`; returns the action and its log-probability (the
/// same bits as [`masked_log_prob`], from the one pass over the row).
fn draw(logits: &[f32], mask: &[bool], rng: &mut GfnRng, weights: &mut Vec<f64>) -> Result<(usize, f64)> {
    let max = logits
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(&l, _)| f64::from(l))
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return Err(GfnError::Other(format!(
            "back-and-forth proposal: no allowed action, or non-finite logits ({max})"
        )));
    }
    weights.clear();
    weights.extend(
        logits
            .iter()
            .zip(mask)
            .map(|(&l, &m)| if m { (f64::from(l) - max).exp() } else { 0.0 }),
    );
    let total: f64 = weights.iter().sum();
    let a = sample_weighted(rng, weights, total);
    Ok((a, f64::from(logits[a]) - max - total.ln()))
}

/// Propose `x'` for every object of `xs` (`[n, state_dim]`, terminal) by `k` backward then `k`
/// forward steps (see the module documentation).
pub fn back_and_forth<E: Env + ?Sized, P: StatePolicy + ?Sized>(
    env: &E,
    policy: &mut P,
    xs: &[i32],
    k: usize,
    rng: &mut GfnRng,
) -> Result<Proposal> {
    let (sd, na, nb) = (env.state_dim(), env.n_actions(), env.n_backward_actions());
    let n = xs.len() / sd;
    if n == 0 || xs.len() != n * sd {
        return Err(GfnError::invalid(
            "xs",
            xs.len(),
            format!("must hold a positive multiple of state_dim = {sd} values"),
        ));
    }
    if k == 0 || k > env.max_actions() {
        return Err(GfnError::invalid(
            "k",
            k,
            format!("must be in 1..={} (max_actions)", env.max_actions()),
        ));
    }
    if let Some(exit) = env.exit_action() {
        return back_and_forth_exit(env, policy, xs, k, exit, rng);
    }
    if let Some(x) = xs.chunks_exact(sd).find(|x| !env.is_terminal(x)) {
        return Err(GfnError::invalid("xs", format!("{x:?}"), "must be terminal objects"));
    }
    let mut cur = xs.to_vec();
    let mut log_fwd = vec![0.0; n];
    let mut log_rev = vec![0.0; n];
    let (mut pf, mut pb) = (Vec::new(), Vec::new());
    let mut fmask = vec![false; na];
    let mut bmask = vec![false; nb];
    let mut weights = Vec::new();
    // The forward action that each backward step undid, per chain, latest last.
    let mut undone: Vec<usize> = Vec::with_capacity(n * k);
    // Backward phase: at s_j (j = D … D−K+1) draw a deletion with P_B; P_F at s_{j−1} of the
    // undone action enters log q(x' → x), scored at the next evaluation of s_{j−1}.
    for step in 0..=k {
        policy.logits(&cur, n, &mut pf, &mut pb)?;
        for b in 0..n {
            let s = &mut cur[b * sd..(b + 1) * sd];
            if step > 0 {
                env.forward_mask(s, &mut fmask);
                let a = undone[(step - 1) * n + b];
                if !fmask[a] {
                    return Err(GfnError::Other("back-and-forth: undone action not allowed".into()));
                }
                log_rev[b] += masked_log_prob(&pf[b * na..(b + 1) * na], &fmask, a);
            }
            if step < k {
                env.backward_mask(s, &mut bmask);
                let logits = &pb[b * nb..(b + 1) * nb];
                let (a, log_p) = draw(logits, &bmask, rng, &mut weights)?;
                log_fwd[b] += log_p;
                undone.push(env.backward_step(s, a));
            }
        }
    }
    // Forward phase: from s_{D−K}, whose P_F logits are in `pf` already.
    let mut redo_back: Vec<usize> = Vec::with_capacity(n * k);
    for step in 0..k {
        if step > 0 {
            policy.logits(&cur, n, &mut pf, &mut pb)?;
        }
        for b in 0..n {
            let s = &mut cur[b * sd..(b + 1) * sd];
            if step > 0 {
                // P_B at s'_j of the step just taken: part of log q(x' → x).
                env.backward_mask(s, &mut bmask);
                let a = redo_back[(step - 1) * n + b];
                log_rev[b] += masked_log_prob(&pb[b * nb..(b + 1) * nb], &bmask, a);
            }
            env.forward_mask(s, &mut fmask);
            let logits = &pf[b * na..(b + 1) * na];
            let (a, log_p) = draw(logits, &fmask, rng, &mut weights)?;
            log_fwd[b] += log_p;
            redo_back.push(env.step(s, a));
        }
    }
    // x' itself: P_B of the last forward step.
    policy.logits(&cur, n, &mut pf, &mut pb)?;
    for b in 0..n {
        let s = &cur[b * sd..(b + 1) * sd];
        if !env.is_terminal(s) {
            return Err(GfnError::Other(format!(
                "back-and-forth: {} forward steps from a depth-{k} ancestor end at {s:?}, not a terminal state",
                k
            )));
        }
        env.backward_mask(s, &mut bmask);
        let a = redo_back[(k - 1) * n + b];
        log_rev[b] += masked_log_prob(&pb[b * nb..(b + 1) * nb], &bmask, a);
    }
    Ok(Proposal {
        states: cur,
        log_q_forward: log_fwd,
        log_q_reverse: log_rev,
    })
}

/// [`back_and_forth`] on an environment with an exit action `exit` (see the module
/// documentation): back `min(k, depth)` steps with P_B, forward with P_F until it exits.
fn back_and_forth_exit<E: Env + ?Sized, P: StatePolicy + ?Sized>(
    env: &E,
    policy: &mut P,
    xs: &[i32],
    k: usize,
    exit: usize,
    rng: &mut GfnRng,
) -> Result<Proposal> {
    let (sd, na, nb) = (env.state_dim(), env.n_actions(), env.n_backward_actions());
    let n = xs.len() / sd;
    let mut cur = xs.to_vec();
    let mut log_fwd = vec![0.0; n];
    let mut log_rev = vec![0.0; n];
    let (mut pf, mut pb) = (Vec::new(), Vec::new());
    let mut fmask = vec![false; na];
    let mut bmask = vec![false; nb];
    let mut weights = Vec::new();
    // The forward action each chain's latest backward step undid (`usize::MAX`: none, the chain
    // stopped at s_0).
    let mut undone = vec![usize::MAX; n];
    // Backward phase: evaluation `step` scores the P_F of the action undone at `step − 1` (the
    // reverse path) and draws the next deletion; evaluation 0 also scores the exit at x.
    for step in 0..=k {
        policy.logits(&cur, n, &mut pf, &mut pb)?;
        for b in 0..n {
            let s = &mut cur[b * sd..(b + 1) * sd];
            env.forward_mask(s, &mut fmask);
            let logits = &pf[b * na..(b + 1) * na];
            if step == 0 {
                if !fmask[exit] {
                    return Err(GfnError::invalid(
                        "xs",
                        format!("{s:?}"),
                        "must be objects the policy can exit at",
                    ));
                }
                log_rev[b] += masked_log_prob(logits, &fmask, exit);
            } else if undone[b] != usize::MAX {
                if !fmask[undone[b]] {
                    return Err(GfnError::Other("back-and-forth: undone action not allowed".into()));
                }
                log_rev[b] += masked_log_prob(logits, &fmask, undone[b]);
            }
            undone[b] = usize::MAX;
            if step < k {
                env.backward_mask(s, &mut bmask);
                if !bmask.iter().any(|&m| m) {
                    continue; // at s_0: this chain's walk back is over
                }
                let logits = &pb[b * nb..(b + 1) * nb];
                let (a, log_p) = draw(logits, &bmask, rng, &mut weights)?;
                log_fwd[b] += log_p;
                undone[b] = env.backward_step(s, a);
            }
        }
    }
    // Forward phase from s' (its P_F logits are in `pf`): evaluation `step` scores the P_B of the
    // step taken at `step − 1`, then draws the next action; a chain is done when it exits.
    let mut done = vec![false; n];
    let mut redo = vec![usize::MAX; n];
    for step in 0..=env.max_actions() {
        if done.iter().all(|&d| d) {
            return Ok(Proposal {
                states: cur,
                log_q_forward: log_fwd,
                log_q_reverse: log_rev,
            });
        }
        if step > 0 {
            policy.logits(&cur, n, &mut pf, &mut pb)?;
        }
        for b in 0..n {
            if done[b] {
                continue;
            }
            let s = &mut cur[b * sd..(b + 1) * sd];
            if redo[b] != usize::MAX {
                env.backward_mask(s, &mut bmask);
                log_rev[b] += masked_log_prob(&pb[b * nb..(b + 1) * nb], &bmask, redo[b]);
            }
            env.forward_mask(s, &mut fmask);
            let logits = &pf[b * na..(b + 1) * na];
            let (a, log_p) = draw(logits, &fmask, rng, &mut weights)?;
            log_fwd[b] += log_p;
            if a == exit {
                done[b] = true;
            } else {
                redo[b] = env.step(s, a);
            }
        }
    }
    Err(GfnError::Other(format!(
        "back-and-forth: a forward walk took more than max_actions = {} steps without exiting",
        env.max_actions()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::DagEnv;
    use crate::rng_from_seed;

    #[test]
    fn draw_returns_the_log_prob_of_its_action_bit_for_bit() {
        let mut rng = rng_from_seed(7);
        let mut weights = Vec::new();
        let logits: Vec<f32> = (0..13).map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0).collect();
        for m in 1..(1u32 << 13) {
            let mask: Vec<bool> = (0..13).map(|i| m >> i & 1 == 1).collect();
            let (a, log_p) = draw(&logits, &mask, &mut rng, &mut weights).unwrap();
            assert!(mask[a], "drew a masked-out action {a}");
            assert_eq!(log_p.to_bits(), masked_log_prob(&logits, &mask, a).to_bits());
        }
    }

    /// A uniform policy: every logit 0.
    struct Uniform(usize, usize);

    impl StatePolicy for Uniform {
        fn logits(&mut self, states: &[i32], rows: usize, pf: &mut Vec<f32>, pb: &mut Vec<f32>) -> Result<()> {
            let _ = states;
            *pf = vec![0.0; rows * self.0];
            *pb = vec![0.0; rows * self.1];
            Ok(())
        }
    }

    fn uniform_log_prob(mask: &[bool]) -> f64 {
        -(mask.iter().filter(|&&m| m).count() as f64).ln()
    }

    /// Exact `q(x → ·)` of the uniform policy by enumerating every back path of length
    /// `min(k, depth)` and every forward path to an exit.
    fn exact_kernel(env: &DagEnv, x: usize, k: usize) -> Vec<f64> {
        let n = env.num_nodes();
        let (na, nb) = (env.n_actions(), env.n_backward_actions());
        let exit = env.exit_action().unwrap();
        // P_F(reach the exit at y | from s), by recursion on the DAG (nodes in topological order).
        fn forward(env: &DagEnv, s: usize, p: f64, out: &mut [f64], na: usize, exit: usize) {
            let mut mask = vec![false; na];
            env.forward_mask(&[s as i32], &mut mask);
            let lp = uniform_log_prob(&mask).exp();
            for a in (0..na).filter(|&a| mask[a]) {
                if a == exit {
                    out[s] += p * lp;
                } else {
                    let mut t = [s as i32];
                    env.step(&mut t, a);
                    forward(env, t[0] as usize, p * lp, out, na, exit);
                }
            }
        }
        fn back(env: &DagEnv, s: usize, p: f64, left: usize, out: &mut [f64], na: usize, nb: usize, exit: usize) {
            let mut mask = vec![false; nb];
            env.backward_mask(&[s as i32], &mut mask);
            if left == 0 || !mask.iter().any(|&m| m) {
                forward(env, s, p, out, na, exit);
                return;
            }
            let lp = uniform_log_prob(&mask).exp();
            for a in (0..nb).filter(|&a| mask[a]) {
                let mut t = [s as i32];
                env.backward_step(&mut t, a);
                back(env, t[0] as usize, p * lp, left - 1, out, na, nb, exit);
            }
        }
        let mut out = vec![0.0; n];
        back(env, x, 1.0, k, &mut out, na, nb, exit);
        out
    }

    #[test]
    fn exit_proposals_follow_the_exact_kernel() {
        let mut rng = rng_from_seed(11);
        let env = DagEnv::random(7, 0.4, true, &mut rng).unwrap();
        let (na, nb) = (env.n_actions(), env.n_backward_actions());
        for (x, k) in [(6usize, 2usize), (4, 1), (5, 5)] {
            let exact = exact_kernel(&env, x, k);
            approx::assert_relative_eq!(exact.iter().sum::<f64>(), 1.0, max_relative = 1e-12);
            let draws = 20_000;
            let xs = vec![x as i32; draws];
            let p = back_and_forth(&env, &mut Uniform(na, nb), &xs, k, &mut rng).unwrap();
            let mut counts = vec![0.0; env.num_nodes()];
            for (i, &y) in p.states.iter().enumerate() {
                counts[y as usize] += 1.0;
                // A path's probability is at most its endpoint's total.
                assert!(p.log_q_forward[i] <= exact[y as usize].ln() + 1e-9);
                assert!(p.log_q_forward[i].is_finite() && p.log_q_reverse[i].is_finite());
            }
            for (y, (&c, &q)) in counts.iter().zip(&exact).enumerate() {
                let f = c / draws as f64;
                let se = (q * (1.0 - q) / draws as f64).sqrt();
                assert!(
                    (f - q).abs() <= 5.0 * se + 1e-12,
                    "x {x}, k {k}, x' {y}: {f} vs exact {q}"
                );
            }
        }
    }

    /// On a chain every path is determined by its length, so `q(x → x')` is the path's
    /// probability: `log q(x → x')` and `log q(x' → x)` are exact there.
    #[test]
    fn exit_proposal_log_probabilities_are_the_path_probabilities() {
        let n = 6;
        let adj: Vec<bool> = (0..n * n).map(|ij| ij % n == ij / n + 1).collect();
        let env = DagEnv::new(n, adj, vec![0.0; n], true).unwrap();
        let (na, nb) = (env.n_actions(), env.n_backward_actions());
        let mut rng = rng_from_seed(3);
        for (x, k) in [(3usize, 2usize), (1, 3)] {
            let exact = exact_kernel(&env, x, k);
            let p = back_and_forth(&env, &mut Uniform(na, nb), &vec![x as i32; 200], k, &mut rng).unwrap();
            for (i, &y) in p.states.iter().enumerate() {
                approx::assert_relative_eq!(p.log_q_forward[i], exact[y as usize].ln(), max_relative = 1e-12);
                // The reverse path goes back from x' as far as the walk came forward.
                let from_y = exact_kernel(&env, y as usize, (y as usize).abs_diff(x.saturating_sub(k)));
                approx::assert_relative_eq!(p.log_q_reverse[i], from_y[x].ln(), max_relative = 1e-12);
            }
        }
    }
}
