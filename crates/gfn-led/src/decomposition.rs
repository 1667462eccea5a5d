//! LED's energy decomposition (Jang et al. 2024; papers.md §1.1): potentials on the transitions
//! of a trajectory are regressed so that they add up to its log reward, then re-centred and used
//! as the per-transition log-reward increments of the forward-looking objectives.
//!
//! * Decomposition loss, per trajectory with `T` decomposed transitions and a dropout mask `z`:
//!   `ℓ = (T · Σ_t z_t φ_θ(s_t → s_{t+1}) / Σ_t z_t − log R(x))²`, averaged over the batch
//!   (an exit transition is not decomposed: its potential is 0).
//! * Re-centring: `φ̂_t = φ_t + (log R(x) − Σ_u φ_u) / T`, so `Σ_t φ̂_t = log R(x)` exactly; the
//!   GFlowNet sees `φ̂` as constants.
//! * LED-DB and LED-SubTB are FL-DB and FL-SubTB with the increments `φ̂` instead of the true
//!   intermediate energies: [`led_offsets`] feeds [`gfn_objectives::BalanceTerms::with_offsets`].

use candle_core::Tensor;

use gfn_core::batch::TrajectoryBatch;
use gfn_core::{GfnError, Result};

/// Number of decomposed transitions of trajectory `b`: its actions, minus a final exit action.
pub fn decomposed_len(batch: &TrajectoryBatch, b: usize) -> usize {
    let n = batch.lengths[b] as usize;
    match batch.exit_action {
        Some(e) if n > 0 && batch.action(b, n - 1) as usize == e => n - 1,
        _ => n,
    }
}

/// The decomposition loss over a batch: `phi` `[B, T]` potentials (with gradients; entries past
/// each trajectory's decomposed length are ignored), `masks` `[B, T]` dropout masks (1 = kept,
/// at least one kept per trajectory with a transition), `lens[b]` decomposed lengths,
/// `log_reward[b]`. Trajectories without a decomposed transition contribute nothing.
pub fn decomposition_loss(phi: &Tensor, masks: &[f32], lens: &[usize], log_reward: &[f64]) -> Result<Tensor> {
    let (b, t) = phi.dims2()?;
    if masks.len() != b * t || lens.len() != b || log_reward.len() != b {
        return Err(GfnError::Other(format!(
            "decomposition loss: masks {} (want {}), lengths {}, rewards {} for a [{b}, {t}] batch",
            masks.len(),
            b * t,
            lens.len(),
            log_reward.len()
        )));
    }
    // Per-entry weights T_b · z / Σ z, zero past the end.
    let mut w = vec![0f64; b * t];
    let mut used = 0usize;
    for i in 0..b {
        let n = lens[i].min(t);
        let row = &masks[i * t..i * t + n];
        let kept: f64 = row.iter().map(|&v| f64::from(v)).sum();
        if n == 0 {
            continue;
        }
        if kept == 0.0 {
            return Err(GfnError::invalid(
                "masks",
                format!("row {i}"),
                "must keep at least one transition",
            ));
        }
        used += 1;
        for k in 0..n {
            w[i * t + k] = n as f64 * f64::from(row[k]) / kept;
        }
    }
    let dev = phi.device();
    let dt = phi.dtype();
    let w = Tensor::from_vec(w, (b, t), dev)?.to_dtype(dt)?;
    let target = Tensor::from_vec(log_reward.to_vec(), b, dev)?.to_dtype(dt)?;
    let active: Vec<f64> = lens.iter().map(|&n| f64::from(u8::from(n > 0))).collect();
    let active = Tensor::from_vec(active, b, dev)?.to_dtype(dt)?;
    let estimate = (phi * w)?.sum(1)?;
    let resid = ((estimate - target)? * active)?;
    Ok((resid.sqr()?.sum_all()? / used.max(1) as f64)?)
}

/// The decomposition loss and its gradient with respect to the potentials, in plain f64 (the CPU
/// fast path, no autograd): same value as [`decomposition_loss`];
/// `∂L/∂φ_bk = 2 r_b w_bk / B'` with `r_b = Σ_k w_bk φ_bk − log R_b`, `w_bk = T_b z_bk / Σ z_b`
/// and `B'` the trajectories with a decomposed transition. `phi`, `masks` and the returned
/// gradient are `[B, T]`.
pub fn decomposition_loss_and_grad(
    phi: &[f64],
    t: usize,
    masks: &[f32],
    lens: &[usize],
    log_reward: &[f64],
) -> Result<(f64, Vec<f64>)> {
    let b = lens.len();
    if phi.len() != b * t || masks.len() != b * t || log_reward.len() != b {
        return Err(GfnError::Other(format!(
            "decomposition loss: potentials {}, masks {}, rewards {} for a [{b}, {t}] batch",
            phi.len(),
            masks.len(),
            log_reward.len()
        )));
    }
    let used = lens.iter().filter(|&&n| n > 0).count().max(1) as f64;
    let mut grad = vec![0.0; b * t];
    let mut loss = 0.0;
    for i in 0..b {
        let n = lens[i].min(t);
        if n == 0 {
            continue;
        }
        let row = &masks[i * t..i * t + n];
        let kept: f64 = row.iter().map(|&v| f64::from(v)).sum();
        if kept == 0.0 {
            return Err(GfnError::invalid(
                "masks",
                format!("row {i}"),
                "must keep at least one transition",
            ));
        }
        let w = |k: usize| n as f64 * f64::from(row[k]) / kept;
        let r: f64 = (0..n).map(|k| w(k) * phi[i * t + k]).sum::<f64>() - log_reward[i];
        loss += r * r;
        for k in 0..n {
            grad[i * t + k] = 2.0 * r * w(k) / used;
        }
    }
    Ok((loss / used, grad))
}

/// Re-centred potentials `[B, T]` (f64): `φ̂_t = φ_t + (log R − Σ_u φ_u)/T_b` for `t < T_b`, 0
/// after; each row sums to its log reward exactly (up to rounding).
pub fn recentre(phi: &[f64], t: usize, lens: &[usize], log_reward: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; lens.len() * t];
    for (i, &n) in lens.iter().enumerate() {
        let n = n.min(t);
        if n == 0 {
            continue;
        }
        let row = &phi[i * t..i * t + n];
        let shift = (log_reward[i] - row.iter().sum::<f64>()) / n as f64;
        for k in 0..n {
            out[i * t + k] = row[k] + shift;
        }
    }
    out
}

/// Node offsets `[B, T+1]` for [`gfn_objectives::BalanceTerms::with_offsets`] from re-centred
/// potentials `[B, T]` (`T` = the batch's padded length): `D_0 = 0`, `D_k = Σ_{t<k} φ̂_t`, an
/// exit transition adds 0, `D_n = log R(x)`, 0 past the end.
pub fn led_offsets(batch: &TrajectoryBatch, phi_hat: &[f64]) -> Result<Vec<f64>> {
    let (b, t) = (batch.batch_size, batch.max_length());
    if phi_hat.len() != b * t {
        return Err(GfnError::Other(format!(
            "led offsets: {} potentials for a [{b}, {t}] batch",
            phi_hat.len()
        )));
    }
    let mut out = vec![0.0; b * (t + 1)];
    for i in 0..b {
        let n = batch.lengths[i] as usize;
        let m = decomposed_len(batch, i);
        let row = &mut out[i * (t + 1)..(i + 1) * (t + 1)];
        for k in 1..=n {
            let inc = if k - 1 < m { phi_hat[i * t + k - 1] } else { 0.0 };
            row[k] = row[k - 1] + inc;
        }
        // Exact boundary F̃(x) = 1, whatever the rounding of the sum.
        row[n] = batch.log_reward[i];
    }
    Ok(out)
}
