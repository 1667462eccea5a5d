//! The GFlowNet's own likelihood of given objects, by importance sampling over backward
//! trajectories (the TB paper's test-set correlation, EB-GFN's data likelihood):
//!
//! `log P̂_T(x) = logsumexp_j [log P_F(τ_j) − log P_B(τ_j|x)] − log M`, `τ_j ∼ P_B(·|x)`,
//!
//! an unbiased estimate of `P_T(x) = Σ_τ P_F(τ)` inside the log (its log is biased low). Where
//! every object has one parent path (P_B deterministic), one trajectory gives `log P_T` exactly.

use candle_core::D;

use gfn_core::exact::logsumexp;
use gfn_core::{Env, Estimator, GfnError, GfnRng, Result, Sampler, TrajectoryBatch};

use crate::terms::BalanceTerms;

/// `(Σ_t log P_F, Σ_t log P_B)` of every trajectory of `batch`, from one batched forward pass
/// without gradients, in f64.
pub fn trajectory_log_probs(estimator: &Estimator, batch: &TrajectoryBatch) -> Result<(Vec<f64>, Vec<f64>)> {
    let x = estimator.features_tensor(&batch.features, batch.num_rows())?;
    let out = estimator.forward_detached(&x)?;
    let terms = BalanceTerms::from_batch(batch, &out)?;
    let host =
        |t: &candle_core::Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?) };
    Ok((
        host(&terms.log_pf.sum(D::Minus1)?)?,
        host(&terms.log_pb.sum(D::Minus1)?)?,
    ))
}

/// `log P̂_T(x)` of each object of `objects` (rows of `state_dim` values, terminal objects of
/// `env`) from `m` backward trajectories each, drawn from P_B with `rng`, in batches of about
/// 4,096 trajectories.
pub fn log_terminal_probs<E: Env + ?Sized>(
    env: &E,
    estimator: &Estimator,
    objects: &[i32],
    m: usize,
    rng: &mut GfnRng,
) -> Result<Vec<f64>> {
    importance_sampled(env, objects, m, MLP_CHUNK, rng, |sampler, rows, rng, batch| {
        sampler.sample_backward(env, estimator, rows, rng, batch)?;
        trajectory_log_probs(estimator, batch)
    })
}

/// [`log_terminal_probs`] through any [`Policy`](gfn_core::policy::Policy) (its learned P_B, or
/// a uniform one without a P_B head), the states observed by `observe`, in batches of about
/// [`SEAM_CHUNK`] trajectories (a sequence or graph network's activations over every state of
/// 4,096 trajectories would not fit in memory).
pub fn log_terminal_probs_through<E: Env + ?Sized>(
    env: &E,
    policy: &dyn gfn_core::policy::Policy,
    observe: &gfn_core::policy::Observe,
    objects: &[i32],
    m: usize,
    rng: &mut GfnRng,
) -> Result<Vec<f64>> {
    importance_sampled(env, objects, m, SEAM_CHUNK, rng, |sampler, rows, rng, batch| {
        let mut walker = gfn_core::policy::SeamRollout {
            policy,
            observe,
            n_backward: env.n_backward_actions(),
        };
        sampler.sample_backward_with(env, &mut walker, rows, rng, batch)?;
        let terms = BalanceTerms::through(batch, policy, observe)?;
        let host = |t: &candle_core::Tensor| -> Result<Vec<f64>> {
            Ok(t.detach().to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?)
        };
        Ok((
            host(&terms.log_pf.sum(D::Minus1)?)?,
            host(&terms.log_pb.sum(D::Minus1)?)?,
        ))
    })
}

/// Backward trajectories per batch of [`log_terminal_probs`] (the MLP's rows are small).
pub const MLP_CHUNK: usize = 4096;
/// Backward trajectories per batch of [`log_terminal_probs_through`].
pub const SEAM_CHUNK: usize = 128;

/// The estimate of every object, given `walk`: backward trajectories from the rows (each object
/// `m` times, about `chunk` trajectories at a time) into the batch, returning each trajectory's
/// `(Σ log P_F, Σ log P_B)`.
fn importance_sampled<E: Env + ?Sized>(
    env: &E,
    objects: &[i32],
    m: usize,
    chunk: usize,
    rng: &mut GfnRng,
    mut walk: impl FnMut(&mut Sampler, &[i32], &mut GfnRng, &mut TrajectoryBatch) -> Result<(Vec<f64>, Vec<f64>)>,
) -> Result<Vec<f64>> {
    let sd = env.state_dim();
    let n = objects.len() / sd;
    if n == 0 || objects.len() != n * sd || m == 0 {
        return Err(GfnError::invalid(
            "objects",
            objects.len(),
            format!("need rows of state_dim = {sd} values and m ≥ 1 backward trajectories"),
        ));
    }
    let mut sampler = Sampler::new();
    let mut batch = TrajectoryBatch::default();
    let mut out = Vec::with_capacity(n);
    let per_batch = (chunk / m).max(1);
    let mut rows = Vec::with_capacity(per_batch * m * sd);
    for start in (0..n).step_by(per_batch) {
        let end = (start + per_batch).min(n);
        rows.clear();
        for i in start..end {
            for _ in 0..m {
                rows.extend_from_slice(&objects[i * sd..(i + 1) * sd]);
            }
        }
        let (lpf, lpb) = walk(&mut sampler, &rows, rng, &mut batch)?;
        for i in 0..end - start {
            let terms = (0..m).map(|j| lpf[i * m + j] - lpb[i * m + j]);
            out.push(logsumexp(terms) - (m as f64).ln());
        }
    }
    Ok(out)
}
