//! Trajectory balance (Malkin et al. 2022, "Trajectory balance: improved credit assignment in
//! GFlowNets"; papers.md §A).
//!
//! `L_TB(τ) = (log Z + Σ_t log P_F(s_{t+1}|s_t) − log R(x) − Σ_t log P_B(s_t|s_{t+1}))²`,
//! averaged over the batch. `log Z` is a learned scalar.

use candle_core::{Tensor, WithDType};
use gfn_core::batch::{NONE, TrajectoryBatch};
use gfn_core::estimator::EstimatorOutput;
use gfn_core::{GfnError, Result};

use crate::terms::BalanceTerms;

/// Per-trajectory residuals `δ(τ) = log Z + Σ log P_F − log R − Σ log P_B`, `[B]`.
pub fn trajectory_balance_residuals(terms: &BalanceTerms, log_z: &Tensor) -> Result<Tensor> {
    terms.validate()?;
    let sum = (terms.log_pf.sum(1)? - terms.log_pb.sum(1)?)?;
    Ok((sum.broadcast_add(&log_z.flatten_all()?)? - &terms.log_reward)?)
}

/// Trajectory balance loss, mean over the batch.
pub fn trajectory_balance(terms: &BalanceTerms, log_z: &Tensor) -> Result<Tensor> {
    Ok(trajectory_balance_residuals(terms, log_z)?.sqr()?.mean_all()?)
}

/// Per-trajectory log-ratios `Σ_t log P_F(s_{t+1}|s_t) − Σ_t log P_B(s_t|s_{t+1})`, `[B]`, of every
/// trajectory of `batch`, straight from the network outputs of its rows: `outputs` is
/// `[rows, width]` with the P_F logits in columns `0..n_actions` and, for `pb_offset = Some(c)`,
/// the P_B logits in columns `c..c + n_backward` (`None`: a uniform P_B). TB's residual is then
/// `log Z + ratios − log R`: the same values as [`BalanceTerms::from_batch`] gives.
///
/// On the CPU this is one fused op ([`LogRatioOp`]): the masked log-softmax of only the entries
/// the steps use, accumulated in f64, and a hand-written gradient straight into `[rows, width]`,
/// with no intermediate tensor of the outputs' size (the fast path's leaf goes in as it is).
/// Elsewhere it is [`BalanceTerms::from_batch`] on column slices.
pub fn trajectory_log_ratios(batch: &TrajectoryBatch, outputs: &Tensor, pb_offset: Option<usize>) -> Result<Tensor> {
    let (rows, width) = outputs.dims2()?;
    let (na, nb) = (batch.n_actions, batch.n_backward);
    if rows != batch.num_rows() || width < na || pb_offset.is_some_and(|c| c + nb > width) {
        return Err(GfnError::Other(format!(
            "log-ratios: outputs [{rows}, {width}] for {} rows of {na} forward and {nb} backward logits \
             (P_B at {pb_offset:?})",
            batch.num_rows()
        )));
    }
    if outputs.device().is_cpu() {
        Ok(outputs
            .contiguous()?
            .apply_op1(LogRatioOp::new(batch, width, pb_offset)?)?)
    } else {
        log_ratios_from_terms(batch, outputs, pb_offset)
    }
}

/// [`trajectory_log_ratios`] through [`BalanceTerms`] (any device; the fused op's reference).
fn log_ratios_from_terms(batch: &TrajectoryBatch, outputs: &Tensor, pb_offset: Option<usize>) -> Result<Tensor> {
    let out = EstimatorOutput {
        pf_logits: outputs.narrow(1, 0, batch.n_actions)?,
        pb_logits: match pb_offset {
            Some(c) => Some(outputs.narrow(1, c, batch.n_backward)?),
            None => None,
        },
        log_flow: None,
    };
    let terms = BalanceTerms::from_batch(batch, &out)?;
    Ok((terms.log_pf.sum(1)? - terms.log_pb.sum(1)?)?)
}

/// Element types of the fused op.
trait Elem: WithDType {
    /// The terms of a masked softmax: `e_j = exp(l_j − max)` on the allowed entries, 0 on the
    /// others, into `e`; returns `(max, Σ e_j)` with the sum in f64 (NaN if an allowed logit is
    /// NaN or +∞, or all allowed logits are −∞), or `None` when nothing is allowed.
    fn softmax_terms(logits: &[Self], mask: &[u8], e: &mut [Self]) -> Option<(Self, f64)>;
}

/// f32, the training case: branch-free over the mask (masks follow the states, which a branch
/// predictor cannot guess) and with a polynomial exponential, so the loops vectorise.
impl Elem for f32 {
    fn softmax_terms(logits: &[f32], mask: &[u8], e: &mut [f32]) -> Option<(f32, f64)> {
        // Eight running maxima, so the loop needs no reduction order of its own.
        let mut acc = [f32::NEG_INFINITY; 8];
        let (lc, mc) = (logits.chunks_exact(8), mask.chunks_exact(8));
        let (lr, mr) = (lc.remainder(), mc.remainder());
        for (l8, m8) in lc.zip(mc) {
            for k in 0..8 {
                acc[k] = acc[k].max(if m8[k] != 0 { l8[k] } else { f32::NEG_INFINITY });
            }
        }
        for (k, (&l, &m)) in lr.iter().zip(mr).enumerate() {
            acc[k] = acc[k].max(if m != 0 { l } else { f32::NEG_INFINITY });
        }
        let max = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY && mask.iter().all(|&m| m == 0) {
            return None;
        }
        // A NaN or +∞ allowed logit (or all of them −∞) makes `l − max` NaN, which the clamp
        // and the polynomial carry into the total.
        for ((ej, &l), &m) in e.iter_mut().zip(logits).zip(mask) {
            let v = exp_nonpositive(l - max);
            *ej = if m != 0 { v } else { 0.0 };
        }
        let total: f64 = e[..logits.len()].iter().map(|&v| f64::from(v)).sum();
        Some((max, total))
    }
}

/// f64 (tests, references): the plain loops and the library's `exp`.
impl Elem for f64 {
    fn softmax_terms(logits: &[f64], mask: &[u8], e: &mut [f64]) -> Option<(f64, f64)> {
        let max = logits
            .iter()
            .zip(mask)
            .filter(|&(_, &m)| m != 0)
            .map(|(&l, _)| l)
            .fold(None, |acc: Option<f64>, l| {
                Some(acc.map_or(l, |a| if l > a || l.is_nan() { l } else { a }))
            })?;
        let mut total = 0.0;
        for ((ej, &l), &m) in e.iter_mut().zip(logits).zip(mask) {
            *ej = if m != 0 { (l - max).exp() } else { 0.0 };
            total += *ej;
        }
        Some((max, total))
    }
}

/// `e^x` for `x ≤ 0` (shifted logits), as straight-line arithmetic that vectorises (SSE2 is
/// enough): Cephes' `expf` (range reduction by `ln 2`, a degree-5 polynomial, the power of two
/// from the exponent bits), relative error about 1e-7. Below −87 it returns `e^−87` ≈ 1.6e-38
/// instead of a smaller number: nothing next to the softmax's largest term, which is 1. NaN
/// stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    // Round to the nearest integer by adding and removing 1.5·2²³ (no `floor`, which is a libm
    // call without SSE4.1); ties go to even rather than up, which only moves `r` within its range.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // The integer n sits in the low mantissa bits of `shifted` (|n| ≤ 126 < 2²²).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// The fused op of [`trajectory_log_ratios`] (CPU, f32 or f64). For trajectory `b` with output
/// gradient `g_b`, a forward step from row `r` by action `a` adds `g_b (e_a − softmax(r))` to the
/// row's allowed P_F logits, a backward step to row `r'` by `a'` subtracts `g_b (e_a' − softmax(r'))`
/// from its allowed P_B logits.
pub struct LogRatioOp {
    width: usize,
    n_actions: usize,
    n_backward: usize,
    pb_offset: Option<usize>,
    /// Forward steps `(row, action)`, trajectory `b`'s at `pf_start[b]..pf_start[b + 1]`.
    pf: Vec<(u32, u32)>,
    pf_start: Vec<usize>,
    /// Backward steps `(row of s_{t+1}, backward action)`, the exit step left out.
    pb: Vec<(u32, u32)>,
    pb_start: Vec<usize>,
    forward_masks: Vec<u8>,
    backward_masks: Vec<u8>,
}

impl LogRatioOp {
    /// The op for the rows and steps of `batch`, outputs `width` wide.
    pub fn new(batch: &TrajectoryBatch, width: usize, pb_offset: Option<usize>) -> Result<Self> {
        let n = batch.batch_size;
        let (mut pf, mut pb) = (
            Vec::with_capacity(batch.num_rows()),
            Vec::with_capacity(batch.num_rows()),
        );
        let (mut pf_start, mut pb_start) = (Vec::with_capacity(n + 1), Vec::with_capacity(n + 1));
        for b in 0..n {
            pf_start.push(pf.len());
            pb_start.push(pb.len());
            for t in 0..batch.lengths[b] as usize {
                let (row, a) = (batch.node_row(b, t), batch.action(b, t));
                if row as usize >= batch.num_rows() || a as usize >= batch.n_actions {
                    return Err(GfnError::Other(format!("log-ratios: trajectory {b} has no step {t}")));
                }
                pf.push((row, a));
                let back = batch.backward_action(b, t);
                if back != NONE {
                    let next = batch.node_row(b, t + 1);
                    if next as usize >= batch.num_rows() || back as usize >= batch.n_backward {
                        return Err(GfnError::Other(format!(
                            "log-ratios: trajectory {b} has no node {}",
                            t + 1
                        )));
                    }
                    pb.push((next, back));
                }
            }
        }
        pf_start.push(pf.len());
        pb_start.push(pb.len());
        Ok(Self {
            width,
            n_actions: batch.n_actions,
            n_backward: batch.n_backward,
            pb_offset,
            pf,
            pf_start,
            pb,
            pb_start,
            forward_masks: batch.forward_masks.clone(),
            backward_masks: batch.backward_masks.clone(),
        })
    }

    /// The P_F logits and mask of `row`, or its learned P_B logits and mask.
    fn head<'v, T>(&'v self, v: &'v [T], row: u32, backward: bool) -> (&'v [T], &'v [u8]) {
        let r = row as usize;
        let at = r * self.width;
        match (backward, self.pb_offset) {
            (true, Some(c)) => {
                let nb = self.n_backward;
                (&v[at + c..at + c + nb], &self.backward_masks[r * nb..(r + 1) * nb])
            }
            _ => {
                let na = self.n_actions;
                (&v[at..at + na], &self.forward_masks[r * na..(r + 1) * na])
            }
        }
    }

    fn log_prob<T: Elem>(
        &self,
        v: &[T],
        (row, a): (u32, u32),
        backward: bool,
        e: &mut [T],
    ) -> candle_core::Result<f64> {
        if backward && self.pb_offset.is_none() {
            // Uniform, as `BalanceTerms::from_batch` has it (an f32 constant).
            let (r, nb) = (row as usize, self.n_backward);
            let allowed = self.backward_masks[r * nb..(r + 1) * nb]
                .iter()
                .filter(|&&m| m != 0)
                .count();
            return Ok(f64::from(-(allowed as f32).ln()));
        }
        let (logits, mask) = self.head(v, row, backward);
        match T::softmax_terms(logits, mask, e) {
            Some((max, total)) if mask[a as usize] != 0 => Ok(logits[a as usize].to_f64() - max.to_f64() - total.ln()),
            _ => candle_core::bail!("log-ratios: action {a} is not allowed at row {row}"),
        }
    }

    fn value<T: Elem>(&self, v: &[T]) -> candle_core::Result<Vec<T>> {
        let n = self.pf_start.len() - 1;
        let mut out = Vec::with_capacity(n);
        let mut e = vec![T::zero(); self.n_actions.max(self.n_backward)];
        for b in 0..n {
            let mut s = 0.0;
            for &step in &self.pf[self.pf_start[b]..self.pf_start[b + 1]] {
                s += self.log_prob(v, step, false, &mut e)?;
            }
            for &step in &self.pb[self.pb_start[b]..self.pb_start[b + 1]] {
                s -= self.log_prob(v, step, true, &mut e)?;
            }
            out.push(T::from_f64(s));
        }
        Ok(out)
    }

    /// `d += g (e_a − softmax)` over the allowed entries of one head.
    fn add_softmax_grad<T: Elem>(logits: &[T], mask: &[u8], a: usize, g: f64, d: &mut [T], e: &mut [T]) {
        let Some((_, total)) = T::softmax_terms(logits, mask, e) else {
            return;
        };
        let scale = T::from_f64(g / total);
        for (dj, &ej) in d.iter_mut().zip(e.iter()) {
            *dj -= scale * ej;
        }
        d[a] += T::from_f64(g);
    }

    fn gradient<T: Elem>(&self, v: &[T], grad: &[f64]) -> Vec<T> {
        let mut d = vec![T::zero(); v.len()];
        let mut e = vec![T::zero(); self.n_actions.max(self.n_backward)];
        let w = self.width;
        for (b, &g) in grad.iter().enumerate() {
            if g == 0.0 {
                continue;
            }
            for &(row, a) in &self.pf[self.pf_start[b]..self.pf_start[b + 1]] {
                let (logits, mask) = self.head(v, row, false);
                let at = row as usize * w;
                let d = &mut d[at..at + self.n_actions];
                Self::add_softmax_grad(logits, mask, a as usize, g, d, &mut e);
            }
            if let Some(c) = self.pb_offset {
                for &(row, a) in &self.pb[self.pb_start[b]..self.pb_start[b + 1]] {
                    let (logits, mask) = self.head(v, row, true);
                    let at = row as usize * w + c;
                    let d = &mut d[at..at + self.n_backward];
                    Self::add_softmax_grad(logits, mask, a as usize, -g, d, &mut e);
                }
            }
        }
        d
    }

    fn check(&self, len: usize) -> candle_core::Result<()> {
        let rows = self.forward_masks.len() / self.n_actions.max(1);
        if len != rows * self.width {
            candle_core::bail!("log-ratios: {len} outputs, expected {rows} × {}", self.width);
        }
        Ok(())
    }
}

impl candle_core::CustomOp1 for LogRatioOp {
    fn name(&self) -> &'static str {
        "tb-log-ratios"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("log-ratios: outputs must be contiguous");
        };
        self.check(end - start)?;
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.value(&v[start..end])?),
            CpuStorage::F64(v) => CpuStorage::F64(self.value(&v[start..end])?),
            _ => candle_core::bail!("log-ratios: outputs must be f32 or f64"),
        };
        Ok((out, candle_core::Shape::from(self.pf_start.len() - 1)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use candle_core::{CpuStorage, DType, Storage};
        let grad = grad_res.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let arg = arg.contiguous()?;
        let (storage, layout) = arg.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("log-ratios: outputs must be contiguous");
        };
        self.check(end - start)?;
        let d = match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => {
                Tensor::from_vec(self.gradient(&v[start..end], &grad), arg.shape(), arg.device())?
            }
            Storage::Cpu(CpuStorage::F64(v)) => {
                Tensor::from_vec(self.gradient(&v[start..end], &grad), arg.shape(), arg.device())?
            }
            _ => candle_core::bail!("log-ratios: f32 or f64 outputs on the CPU only"),
        };
        Ok(Some(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use gfn_core::dag::DagEnv;
    use gfn_core::rng_from_seed;
    use rand::Rng;

    /// The polynomial exponential agrees with the library's to a few ulp on `[−87, 0]`.
    #[test]
    fn polynomial_exp_is_accurate() {
        let mut worst = 0.0f64;
        for k in 0..=870_000 {
            let x = -(k as f32) * 1e-4;
            let (a, b) = (f64::from(exp_nonpositive(x)), f64::from(x.exp()));
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e4) < 1e-37 && exp_nonpositive(f32::NEG_INFINITY) < 1e-37);
    }

    /// Masked softmax terms: zero where masked, NaN totals for NaN or +∞ allowed logits (so a
    /// diverged network is reported, not hidden), `None` with nothing allowed; f32 as f64.
    #[test]
    fn softmax_terms_mask_and_propagate() {
        let logits: Vec<f32> = (0..19).map(|k| (k as f32 * 0.37).sin() * 4.0).collect();
        let mask: Vec<u8> = (0..19).map(|k| u8::from(k % 3 != 1)).collect();
        let wide: Vec<f64> = logits.iter().map(|&l| f64::from(l)).collect();
        let (mut e, mut e64) = (vec![0f32; 19], vec![0f64; 19]);
        let (m, t) = f32::softmax_terms(&logits, &mask, &mut e).unwrap();
        let (m64, t64) = f64::softmax_terms(&wide, &mask, &mut e64).unwrap();
        assert_eq!(f64::from(m), m64);
        assert!((t - t64).abs() < 1e-6 * t64);
        for k in 0..19 {
            assert!((f64::from(e[k]) - e64[k]).abs() < 1e-6, "{k}");
            assert_eq!(e[k] == 0.0, mask[k] == 0, "{k}");
        }
        for bad in [f32::NAN, f32::INFINITY] {
            let mut l = logits.clone();
            l[5] = bad;
            assert!(f32::softmax_terms(&l, &mask, &mut e).unwrap().1.is_nan());
            l[4] = bad; // masked: ignored
            l[5] = 0.0;
            assert!(f32::softmax_terms(&l, &mask, &mut e).unwrap().1.is_finite());
        }
        assert!(f32::softmax_terms(&logits, &[0; 19], &mut e).is_none());
        assert!(f64::softmax_terms(&wide, &[0; 19], &mut e64).is_none());
    }

    /// The fused op gives the log-ratios and gradients of the `BalanceTerms` path, with and
    /// without an exit action, learned and uniform P_B, in f64 and f32.
    #[test]
    fn fused_log_ratios_match_balance_terms() {
        let mut rng = rng_from_seed(21);
        for exit in [false, true] {
            let env = DagEnv::random(8, 0.5, exit, &mut rng).unwrap();
            let paths: Vec<Vec<usize>> = (0..6).map(|_| env.random_path(&mut rng, false)).collect();
            let batch = env.batch_of_paths(&paths);
            let (na, nb) = (batch.n_actions, batch.n_backward);
            for pb_offset in [Some(na + 1), None] {
                let width = na + nb + 2;
                let values: Vec<f64> = (0..batch.num_rows() * width)
                    .map(|_| rng.random_range(-3.0..3.0))
                    .collect();
                let weights: Vec<f64> = (0..batch.batch_size).map(|_| rng.random_range(-1.0..1.0)).collect();
                for dtype in [DType::F64, DType::F32] {
                    let x = Var::from_vec(values.clone(), (batch.num_rows(), width), &Device::Cpu).unwrap();
                    let x = Var::from_tensor(&x.as_tensor().to_dtype(dtype).unwrap()).unwrap();
                    let w = Tensor::from_vec(weights.clone(), batch.batch_size, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    let run = |fused: bool| {
                        let r = if fused {
                            trajectory_log_ratios(&batch, x.as_tensor(), pb_offset).unwrap()
                        } else {
                            log_ratios_from_terms(&batch, x.as_tensor(), pb_offset).unwrap()
                        };
                        let loss = (&r * &w).unwrap().sum_all().unwrap();
                        let g = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
                        let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>();
                        (f(&r).unwrap(), f(&g).unwrap())
                    };
                    let ((ra, ga), (rb, gb)) = (run(true), run(false));
                    let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
                    for (a, b) in ra.iter().zip(&rb).chain(ga.iter().zip(&gb)) {
                        assert!(
                            (a - b).abs() <= tol * (1.0 + b.abs()),
                            "{a} vs {b} ({dtype:?}, {pb_offset:?})"
                        );
                    }
                    assert_eq!((ra.len(), ga.len()), (rb.len(), gb.len()));
                }
            }
        }
    }
}
