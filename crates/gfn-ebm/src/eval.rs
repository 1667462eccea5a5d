//! Evaluation of an EBM and its GFlowNet (papers.md §2.1, §2.3).
//!
//! * EBM negative log-likelihood `NLL = −mean f(x) + log Z`, with `log Z` exact by enumeration
//!   for `D ≤ 20` ([`exact_log_z`]) and otherwise by importance sampling over GFlowNet
//!   trajectories ([`importance_log_z`]): `Z = E_{τ∼P_F}[R(x)·P_B(τ|x)/P_F(τ)]`.
//! * GFlowNet likelihood of data by importance sampling over `M` backward trajectories
//!   ([`gfn_log_likelihood`]): `log p̂(x) = logsumexp_j [log P_F(τ_j) − log P_B(τ_j|x)] − log M`,
//!   `τ_j ∼ P_B(·|x)`.
//! * MMD with the exponential Hamming kernel `k(x, y) = exp(−0.1·H(x, y))`, unbiased ([`mmd`]).
//!
//! Every estimate comes with its standard error.

use candle_core::Device;

use gfn_core::exact::logsumexp;
use gfn_core::{Estimator, GfnError, GfnRng, Result, Sampler, SamplingOptions, TrajectoryBatch};
use gfn_envs::BinaryEnv;

use crate::energy::{EnergyModel, log_density_values};

/// Largest `D` whose `2^D` states [`exact_log_z`] enumerates.
pub const MAX_EXACT_DIM: usize = 20;

/// `log Z = log Σ_{x ∈ {0,1}^D} exp f(x)` by enumeration (`D ≤ 20`), in chunks.
pub fn exact_log_z(model: &dyn EnergyModel, device: &Device) -> Result<f64> {
    let d = model.dim();
    if d > MAX_EXACT_DIM {
        return Err(GfnError::invalid(
            "dim",
            d,
            format!("exact log Z enumerates 2^D states, D ≤ {MAX_EXACT_DIM}"),
        ));
    }
    let total = 1usize << d;
    let chunk = total.min(1 << 14);
    let mut parts = Vec::with_capacity(total / chunk + 1);
    let mut x = Vec::with_capacity(chunk * d);
    for start in (0..total).step_by(chunk) {
        x.clear();
        for code in start..(start + chunk).min(total) {
            x.extend((0..d).map(|i| ((code >> i) & 1) as i32));
        }
        let f = log_density_values(model, &x, device)?;
        parts.push(logsumexp(f.iter().copied()));
    }
    Ok(logsumexp(parts.iter().copied()))
}

pub use gfn_objectives::likelihood::trajectory_log_probs;
pub use gfn_record::Estimate;

/// `log Z` by importance sampling over `n` GFlowNet trajectories (in batches of `chunk`):
/// `log Ẑ = logsumexp_i [f(x_i) + log P_B(τ_i|x_i) − log P_F(τ_i)] − log n`. The standard error is
/// the delta method's, `sd(w) / (mean(w) √n)` with the weights `w` scaled by their maximum.
pub fn importance_log_z(
    env: &BinaryEnv,
    estimator: &Estimator,
    model: &dyn EnergyModel,
    n: usize,
    chunk: usize,
    rng: &mut GfnRng,
) -> Result<Estimate> {
    if n < 2 || chunk == 0 {
        return Err(GfnError::invalid(
            "samples",
            n,
            "need at least 2 samples and a chunk ≥ 1",
        ));
    }
    let device = estimator.device().clone();
    let mut sampler = Sampler::new();
    let mut batch = TrajectoryBatch::default();
    let mut log_w = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let m = left.min(chunk);
        sampler.sample_forward(env, estimator, m, SamplingOptions::default(), rng, &mut batch)?;
        let (lpf, lpb) = trajectory_log_probs(estimator, &batch)?;
        let f = log_density_values(model, &batch.terminal_states, &device)?;
        log_w.extend((0..m).map(|i| f[i] + lpb[i] - lpf[i]));
        left -= m;
    }
    Ok(log_mean_exp(&log_w))
}

/// `log Z` by importance sampling from the uniform distribution on `{0,1}^D` (the ALOE protocol
/// behind the EB-GFN paper's synthetic NLLs): `log Ẑ = logsumexp_i f(u_i) + D log 2 − log n`.
/// Unbiased for `Z`, but for a peaked model `log Ẑ` is biased low (the NLL it gives is then too
/// optimistic); it is reported beside the GFlowNet estimate so that methods without a sampler
/// (PCD) get the same measurement.
pub fn uniform_log_z(
    model: &dyn EnergyModel,
    n: usize,
    chunk: usize,
    rng: &mut GfnRng,
    device: &Device,
) -> Result<Estimate> {
    if n < 2 || chunk == 0 {
        return Err(GfnError::invalid(
            "samples",
            n,
            "need at least 2 samples and a chunk ≥ 1",
        ));
    }
    let d = model.dim();
    let mut log_w = Vec::with_capacity(n);
    let mut x = Vec::with_capacity(chunk * d);
    let mut left = n;
    while left > 0 {
        let m = left.min(chunk);
        x.clear();
        x.extend((0..m * d).map(|_| i32::from(gfn_core::rng::uniform(rng) < 0.5)));
        let f = log_density_values(model, &x, device)?;
        log_w.extend(f.iter().map(|v| v + d as f64 * std::f64::consts::LN_2));
        left -= m;
    }
    Ok(log_mean_exp(&log_w))
}

/// `log Z` by annealed importance sampling (Neal 2001, "Annealed importance sampling") from the
/// uniform distribution on `{0,1}^D`: `chains` independent chains through the intermediate
/// densities `π_k ∝ exp(β_k f)`, `β_k = k / temps`; each adds `(β_k − β_{k−1}) f(x)` to its log
/// weight, then makes one Metropolis sweep (single-site flips, sites in order) that leaves `π_k`
/// invariant. `log Ẑ = D log 2 + log mean exp(log w)`, with the delta-method standard error over
/// chains. Unbiased for `Z` like [`uniform_log_z`], but the annealing makes the weights far less
/// spread for a peaked model, so `log Ẑ` is far less biased low: the estimate for methods without
/// a sampler (PCD). `temps · D` batched evaluations of `f` on `[chains, D]`.
pub fn ais_log_z(
    model: &dyn EnergyModel,
    chains: usize,
    temps: usize,
    rng: &mut GfnRng,
    device: &Device,
) -> Result<Estimate> {
    if chains < 2 || temps == 0 {
        return Err(GfnError::invalid(
            "ais",
            format!("{chains} chains, {temps} temperatures"),
            "need at least 2 chains and 1 temperature",
        ));
    }
    let d = model.dim();
    let mut x: Vec<i32> = (0..chains * d)
        .map(|_| i32::from(gfn_core::rng::uniform(rng) < 0.5))
        .collect();
    let mut f = log_density_values(model, &x, device)?;
    let mut log_w = vec![d as f64 * std::f64::consts::LN_2; chains];
    let mut prop = x.clone();
    for k in 1..=temps {
        let (b0, b1) = ((k - 1) as f64 / temps as f64, k as f64 / temps as f64);
        for (w, fx) in log_w.iter_mut().zip(&f) {
            *w += (b1 - b0) * fx;
        }
        for i in 0..d {
            prop.copy_from_slice(&x);
            for c in 0..chains {
                prop[c * d + i] ^= 1;
            }
            let fp = log_density_values(model, &prop, device)?;
            for c in 0..chains {
                let a = b1 * (fp[c] - f[c]);
                if a >= 0.0 || gfn_core::rng::uniform(rng).ln() < a {
                    x[c * d + i] ^= 1;
                    f[c] = fp[c];
                }
            }
        }
    }
    if let Some(bad) = log_w.iter().find(|w| !w.is_finite()) {
        return Err(GfnError::Other(format!(
            "AIS: a non-finite log weight ({bad}); the model's f is not finite"
        )));
    }
    Ok(log_mean_exp(&log_w))
}

/// `log mean exp(log_w)` with the delta-method standard error.
pub fn log_mean_exp(log_w: &[f64]) -> Estimate {
    let n = log_w.len();
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = log_w.iter().map(|l| (l - max).exp()).collect();
    let e = Estimate::of(&w);
    Estimate {
        value: max + e.value.ln(),
        std_err: if e.value > 0.0 {
            e.std_err / e.value
        } else {
            f64::INFINITY
        },
        n,
    }
}

/// The EBM's mean NLL of `x` (`[n, D]`) given `log Z`: per example `log Z − f(x)`; the standard
/// error adds `log Z`'s in quadrature.
pub fn ebm_nll(model: &dyn EnergyModel, x: &[i32], log_z: Estimate, device: &Device) -> Result<Estimate> {
    let f = log_density_values(model, x, device)?;
    let per: Vec<f64> = f.iter().map(|fx| log_z.value - fx).collect();
    let e = Estimate::of(&per);
    Ok(Estimate {
        value: e.value,
        std_err: e.std_err.hypot(log_z.std_err),
        n: e.n,
    })
}

/// The GFlowNet's mean NLL of `x` (`[n, D]`) by importance sampling over `m` backward
/// trajectories per example (see the module documentation); standard error over examples.
pub fn gfn_log_likelihood(
    env: &BinaryEnv,
    estimator: &Estimator,
    x: &[i32],
    m: usize,
    rng: &mut GfnRng,
) -> Result<Estimate> {
    let d = env.dim();
    if x.is_empty() || !x.len().is_multiple_of(d) || m == 0 {
        return Err(GfnError::invalid(
            "x",
            x.len(),
            format!("need rows of D = {d} values and m ≥ 1 backward samples"),
        ));
    }
    let log_p = gfn_objectives::likelihood::log_terminal_probs(env, estimator, x, m, rng)?;
    let nll: Vec<f64> = log_p.iter().map(|l| -l).collect();
    Ok(Estimate::of(&nll))
}

/// Unbiased MMD² between samples `x` and `y` (`[·, D]`, 0/1) with `k(a, b) = exp(−0.1·H(a, b))`.
pub fn mmd(x: &[i32], y: &[i32], d: usize) -> Result<f64> {
    let (n, m) = (x.len() / d.max(1), y.len() / d.max(1));
    if d == 0 || n < 2 || m < 2 || x.len() != n * d || y.len() != m * d {
        return Err(GfnError::invalid(
            "mmd samples",
            format!("{} and {} values", x.len(), y.len()),
            format!("need at least 2 rows of D = {d} on each side"),
        ));
    }
    let kernel = |a: &[i32], b: &[i32]| (-0.1 * a.iter().zip(b).filter(|(p, q)| p != q).count() as f64).exp();
    let within = |s: &[i32], n: usize| {
        let mut t = 0.0;
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    t += kernel(&s[i * d..(i + 1) * d], &s[j * d..(j + 1) * d]);
                }
            }
        }
        t / (n * (n - 1)) as f64
    };
    let mut cross = 0.0;
    for i in 0..n {
        for j in 0..m {
            cross += kernel(&x[i * d..(i + 1) * d], &y[j * d..(j + 1) * d]);
        }
    }
    Ok(within(x, n) + within(y, m) - 2.0 * cross / (n * m) as f64)
}

/// 0/1 rows held as `u8` (data sets) as the `i32` rows the samplers and models take.
pub fn rows_i32(x: &[u8]) -> Vec<i32> {
    x.iter().map(|&v| i32::from(v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ais_matches_the_exact_log_z() {
        // A peaked 10-bit Ising model: uniform IS is off, AIS is within a few standard errors.
        let dev = Device::Cpu;
        let mut rng = gfn_core::rng_from_seed(3);
        let model = crate::IsingEnergy::new(10, 0.6, &dev, &mut rng).unwrap();
        let exact = exact_log_z(&model, &dev).unwrap();
        let ais = ais_log_z(&model, 200, 200, &mut rng, &dev).unwrap();
        assert!(
            (ais.value - exact).abs() < 4.0 * ais.std_err + 0.02,
            "AIS {} ± {} vs exact {exact}",
            ais.value,
            ais.std_err
        );
        let short = ais_log_z(&model, 200, 1, &mut rng, &dev).unwrap();
        assert!(short.std_err > ais.std_err, "annealing should narrow the weights");
        assert!(ais_log_z(&model, 1, 10, &mut rng, &dev).is_err());
    }

    #[test]
    fn estimates_and_mmd() {
        let e = Estimate::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(e.value, 2.5);
        assert!((e.std_err - (5.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-15);
        let l = log_mean_exp(&[0.0, 2f64.ln()]);
        assert!((l.value - 1.5f64.ln()).abs() < 1e-15);
        // Identical samples: MMD² = k_within terms cancel to 0 only in expectation; two copies
        // of the same two points give 2k(a,b) − 2·(2 + 2k(a,b))/4 = k(a,b) − 1.
        let a = [0, 0, 1, 1];
        let m = mmd(&a, &a, 2).unwrap();
        let k = (-0.2f64).exp();
        assert!((m - (k - 1.0)).abs() < 1e-15, "{m}");
        assert!(mmd(&a, &[0, 1], 2).is_err());
    }
}
