//! Gradient analysis of the SubTB(λ) paper (Madan et al., 2023, §5): how well a small-batch
//! gradient of each objective estimates the large-batch trajectory-balance gradient.
//!
//! At an evaluation, with the current parameters θ:
//!
//! ```text
//! g_big   = ∇_θ L_TB(B_big)          one on-policy batch of `grad_cosine_batch` trajectories
//! g_k^obj = ∇_θ L_obj(B_k),  k = 1..R R small batches of `batch_size` trajectories
//! cos_obj = (1/R) Σ_k ⟨g_k^obj, g_big⟩ / (‖g_k^obj‖ ‖g_big‖)     obj ∈ {TB, DB, SubTB(λ)}
//! ```
//!
//! θ is the policy's parameters (P_F and P_B): the flow head's weights, which TB does not use,
//! and log Z, which DB does not use, are left out, so every objective is compared on the same
//! coordinates. TB needs a log Z: a model trained without one uses its own estimate, log F(s_0).
//! The expected TB gradient with respect to θ does not depend on that value (on-policy,
//! E[∇ log P_F(τ)] = 0), only its variance does. All three objectives see the same small
//! batches. The batches come from an RNG of their own (seeded from the run's seed and the
//! iteration), so enabling the analysis does not change the training run.

use anyhow::Result;
use candle_core::{Tensor, backprop::GradStore};
use serde::{Deserialize, Serialize};

use gfn_core::policy::Policy;
use gfn_core::{Estimator, GfnRng, Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed};
use gfn_objectives::Objective;

use crate::seam::{Net, SeamNet};
use crate::train::Trainer;

/// Mean cosine similarities between small-batch gradients and the large-batch TB gradient.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradCosine {
    /// Trajectories in the large TB batch.
    pub large_batch: usize,
    /// Trajectories per small batch.
    pub small_batch: usize,
    /// Small batches averaged over.
    pub repeats: usize,
    /// Small-batch TB.
    pub tb: f64,
    /// Small-batch DB (models with a flow head only).
    pub db: Option<f64>,
    /// Small-batch SubTB(λ), λ of the run (models with a flow head only).
    pub subtb: Option<f64>,
}

/// The policy-parameter gradient as one f64 vector (flow head and log Z left out).
fn policy_gradient(est: &Estimator, grads: &GradStore) -> Result<Vec<f64>> {
    let cfg = est.config();
    let nets = est.nets();
    // Separate trunks: the flow net is the last one. Shared trunk: the last output column.
    let (n_nets, drop_last_col) = match (cfg.flow_head, cfg.shared_trunk) {
        (true, false) => (nets.len() - 1, false),
        (true, true) => (nets.len(), true),
        (false, _) => (nets.len(), false),
    };
    let mut out = Vec::new();
    for net in &nets[..n_nets] {
        let last = net.layers.len() - 1;
        for (l, layer) in net.layers.iter().enumerate() {
            for var in [&layer.weight, &layer.bias] {
                let t = var.as_tensor();
                let g: Vec<f32> = match grads.get(t) {
                    Some(g) => g.flatten_all()?.to_vec1()?,
                    None => vec![0.0; t.elem_count()],
                };
                let cols = *t.dims().last().unwrap_or(&1);
                let skip_col = (drop_last_col && l == last).then(|| cols - 1);
                out.extend(
                    g.iter()
                        .enumerate()
                        .filter(|(i, _)| skip_col != Some(i % cols))
                        .map(|(_, &v)| f64::from(v)),
                );
            }
        }
    }
    Ok(out)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
}

/// The gradient of a network behind the seam as one f64 vector: every parameter, the pooled
/// head's log F column left out where the policy has one (its last column).
fn seam_policy_gradient(seam: &SeamNet, grads: &GradStore) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (name, var) in seam.policy().named_params() {
        let t = var.as_tensor();
        let g: Vec<f32> = match grads.get(t) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; t.elem_count()],
        };
        let cols = *t.dims().last().unwrap_or(&1);
        let head = [
            "pooled_head.weight",
            "pooled_head.bias",
            "graph_head.weight",
            "graph_head.bias",
        ]
        .iter()
        .any(|h| name.ends_with(h));
        let skip_col = (seam.has_flow() && head).then(|| cols - 1);
        out.extend(
            g.iter()
                .enumerate()
                .filter(|(i, _)| skip_col != Some(i % cols))
                .map(|(_, &v)| f64::from(v)),
        );
    }
    Ok(out)
}

/// Gradient of `objective` on `batch` with respect to the policy parameters.
fn gradient(t: &Trainer, objective: Objective, batch: &TrajectoryBatch) -> Result<Vec<f64>> {
    match &t.net {
        Net::Mlp(est) => {
            let loss = objective.loss(t.env.as_ref(), batch, &mut &*est)?;
            policy_gradient(est, &loss.backward()?)
        }
        Net::Seam(seam) => {
            let loss = gfn_objectives::loss::balance_loss(objective.kind(), t.config.lambda)?;
            let value = seam.loss_with(loss.as_ref(), t.env.as_ref(), batch, None)?;
            seam_policy_gradient(seam, &value.backward()?)
        }
    }
}

/// `n` on-policy trajectories of the trainer's network (the MLP through candle's graph path, as
/// the analysis always sampled).
fn sample(t: &Trainer, sampler: &mut Sampler, n: usize, rng: &mut GfnRng, batch: &mut TrajectoryBatch) -> Result<()> {
    let opts = SamplingOptions::default();
    match &t.net {
        Net::Mlp(est) => sampler.sample_forward(t.env.as_ref(), est, n, opts, rng, batch)?,
        Net::Seam(_) => t.net.sample(t.env.as_ref(), sampler, n, opts, rng, batch)?,
    }
    Ok(())
}

/// The analysis at the trainer's current parameters (which it leaves unchanged).
pub fn grad_cosines(t: &Trainer, large_batch: usize, repeats: usize) -> Result<GradCosine> {
    let env = t.env.as_ref();
    let small = t.config.batch_size;
    let seed = t.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t.iteration ^ 0x0067_7261_6463_6f73;
    let mut rng = rng_from_seed(seed);
    let mut sampler = Sampler::new();
    let mut batch = TrajectoryBatch::default();

    // TB needs log Z: borrow the model's own estimate when it was not trained with one.
    let log_z = t.net.log_z();
    let saved_log_z = log_z.as_tensor().copy()?;
    if !t.objective.uses_log_z() {
        let estimate = t.net.log_z_estimate(&t.objective, env)? as f32;
        log_z.set(&Tensor::new(&[estimate], log_z.device())?)?;
    }
    let result = (|| -> Result<GradCosine> {
        let tb = Objective::parse("tb", t.config.lambda)?;
        sample(t, &mut sampler, large_batch, &mut rng, &mut batch)?;
        let g_big = gradient(t, tb, &batch)?;
        let flow = match &t.net {
            Net::Mlp(est) => est.config().flow_head,
            Net::Seam(seam) => seam.has_flow(),
        };
        let others: Vec<Objective> = if flow {
            vec![
                Objective::parse("db", t.config.lambda)?,
                Objective::parse("subtb", t.config.lambda)?,
            ]
        } else {
            Vec::new()
        };
        let mut sums = [0.0f64; 3];
        for _ in 0..repeats {
            sample(t, &mut sampler, small, &mut rng, &mut batch)?;
            sums[0] += cosine(&gradient(t, tb, &batch)?, &g_big);
            for (k, &obj) in others.iter().enumerate() {
                sums[k + 1] += cosine(&gradient(t, obj, &batch)?, &g_big);
            }
        }
        let r = repeats as f64;
        Ok(GradCosine {
            large_batch,
            small_batch: small,
            repeats,
            tb: sums[0] / r,
            db: flow.then(|| sums[1] / r),
            subtb: flow.then(|| sums[2] / r),
        })
    })();
    log_z.set(&saved_log_z)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
