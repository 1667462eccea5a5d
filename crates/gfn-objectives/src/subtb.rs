//! Sub-trajectory balance SubTB(λ) (Madan et al. 2023, "Learning GFlowNets from partial episodes
//! for improved convergence and stability"; papers.md §A).
//!
//! For all `0 ≤ i < j ≤ n`:
//! `δ_ij = log F(s_i) + Σ_{k=i}^{j−1} log P_F(s_{k+1}|s_k) − log F(s_j) − Σ_{k=i}^{j−1} log P_B(s_k|s_{k+1})`,
//! with `F(s_n) := R(x)`, and
//! `L(τ) = Σ_{i<j} λ^{j−i} δ_ij² / Σ_{i<j} λ^{j−i}`, averaged over the batch (torchgfn's
//! `geometric_within` weighting).
//!
//! Computed without a loop over pairs: with `A_k = Σ_{t<k} (log P_F − log P_B)_t` and
//! `g_k = log F(s_k) − A_k`, every residual is `δ_ij = g_i − g_j`, so the whole loss is one
//! `[B, T+1, T+1]` broadcast difference weighted by a constant matrix. The weights are
//! normalised per trajectory in f64 before use, so λ far from 1 (λ → 0⁺ gives the per-trajectory
//! mean of the DB residuals; λ → ∞ gives TB with `Z = F(s_0)`) neither underflows nor overflows.

use candle_core::Tensor;
use gfn_core::{GfnError, Result};

use crate::terms::{BalanceTerms, constant};

/// `tables[n][k] = λ^k / S(n)` for every length `n ≤ t` that occurs (`None` otherwise), with
/// `S(n) = Σ_{k=1}^{n} (n − k + 1) λ^k = Σ_{0≤i<j≤n} λ^{j−i}` taken as a log-sum-exp in f64, so λ
/// far from 1 neither underflows nor overflows. A weight depends only on the gap `k = j − i` and
/// the length, so each distinct length costs `O(n)` exponentials.
fn gap_tables(lengths: &[usize], t: usize, lambda: f64) -> Result<Vec<Option<Vec<f64>>>> {
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(GfnError::invalid("lambda", lambda, "must be finite and > 0"));
    }
    let ln_l = lambda.ln();
    let mut tables: Vec<Option<Vec<f64>>> = vec![None; t + 1];
    for &n in lengths {
        if n == 0 || n > t || tables[n].is_some() {
            continue;
        }
        let lse = gfn_core::exact::logsumexp((1..=n).map(|k| ((n - k + 1) as f64).ln() + k as f64 * ln_l));
        tables[n] = Some((0..=n).map(|k| (k as f64 * ln_l - lse).exp()).collect());
    }
    Ok(tables)
}

/// Normalised geometric weights `[B, T+1, T+1]`: `w_ij ∝ λ^{j−i}` for `i < j ≤ n_b`, summing to 1
/// per trajectory (the dense form of what [`subtrajectory_balance`] uses).
pub fn subtb_weights(lengths: &[usize], t: usize, lambda: f64) -> Result<Vec<f64>> {
    let tables = gap_tables(lengths, t, lambda)?;
    let w = t + 1;
    let mut out = vec![0.0; lengths.len() * w * w];
    for (b, &n) in lengths.iter().enumerate() {
        let Some(table) = tables.get(n).and_then(Option::as_ref) else {
            continue;
        };
        let block = &mut out[b * w * w..(b + 1) * w * w];
        for i in 0..n {
            for j in i + 1..=n {
                block[i * w + j] = table[j - i];
            }
        }
    }
    Ok(out)
}

/// `g_k = log F(s_k) − Σ_{t<k}(log P_F − log P_B)_t`, `[B, T+1]`.
fn potentials(terms: &BalanceTerms) -> Result<Tensor> {
    let nodes = terms.node_log_flows()?;
    let (b, _) = terms.log_pf.dims2()?;
    let inc = (&terms.log_pf - &terms.log_pb)?;
    let cum = inc.cumsum(1)?;
    let zero = Tensor::zeros((b, 1), inc.dtype(), inc.device())?;
    let a = Tensor::cat(&[&zero, &cum], 1)?;
    Ok((nodes - a)?)
}

/// SubTB(λ) loss.
///
/// On the CPU it is one fused op ([`SubTbOp`]) over the potentials `g` `[B, T+1]`: the value and its
/// gradient are sums over the `(i, j)` pairs computed in place, with no `[B, T+1, T+1]` tensor. On
/// other devices it is the dense broadcast `Σ w ⊙ (g_i − g_j)²`.
pub fn subtrajectory_balance(terms: &BalanceTerms, lambda: f64) -> Result<Tensor> {
    terms.validate()?;
    let t = terms.max_len();
    let g = potentials(terms)?;
    let b = terms.batch_size();
    if g.device().is_cpu() {
        let op = SubTbOp {
            lengths: terms.lengths.clone(),
            tables: gap_tables(&terms.lengths, t, lambda)?,
            width: t + 1,
        };
        return Ok(g.contiguous()?.apply_op1(op)?);
    }
    let w = constant(
        subtb_weights(&terms.lengths, t, lambda)?,
        &[b, t + 1, t + 1],
        g.dtype(),
        g.device(),
    )?;
    let diff = g.unsqueeze(2)?.broadcast_sub(&g.unsqueeze(1)?)?;
    Ok(((diff.sqr()? * w)?.sum_all()? / b as f64)?)
}

/// The fused SubTB(λ) loss over the potentials `g` `[B, T+1]` (CPU, f32 or f64, accumulated in
/// f64): `L = (1/B) Σ_b Σ_{0≤i<j≤n_b} w_{n_b}(j−i) (g_bi − g_bj)²` and
/// `∂L/∂g_bi = (2/B) Σ_j w (g_bi − g_bj)`, antisymmetric in the pair.
pub struct SubTbOp {
    lengths: Vec<usize>,
    tables: Vec<Option<Vec<f64>>>,
    width: usize,
}

impl SubTbOp {
    /// Calls `f(b, i, j, w_ij)` for every weighted pair.
    fn pairs(&self, mut f: impl FnMut(usize, usize, usize, f64)) {
        for (b, &n) in self.lengths.iter().enumerate() {
            let Some(table) = self.tables.get(n).and_then(Option::as_ref) else {
                continue;
            };
            for i in 0..n {
                for j in i + 1..=n {
                    f(b, i, j, table[j - i]);
                }
            }
        }
    }

    fn value(&self, g: &[f64]) -> f64 {
        let w = self.width;
        let mut total = 0.0;
        self.pairs(|b, i, j, wt| {
            let d = g[b * w + i] - g[b * w + j];
            total += wt * d * d;
        });
        total / self.lengths.len().max(1) as f64
    }

    fn gradient(&self, g: &[f64], scale: f64) -> Vec<f64> {
        let w = self.width;
        let mut out = vec![0.0; g.len()];
        let c = 2.0 * scale / self.lengths.len().max(1) as f64;
        self.pairs(|b, i, j, wt| {
            let d = c * wt * (g[b * w + i] - g[b * w + j]);
            out[b * w + i] += d;
            out[b * w + j] -= d;
        });
        out
    }

    fn check(&self, len: usize) -> candle_core::Result<()> {
        if len != self.lengths.len() * self.width {
            candle_core::bail!(
                "subtb: potentials have {len} values, expected {} × {}",
                self.lengths.len(),
                self.width
            );
        }
        Ok(())
    }
}

impl candle_core::CustomOp1 for SubTbOp {
    fn name(&self) -> &'static str {
        "subtb-fused"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("subtb: potentials must be contiguous");
        };
        self.check(end - start)?;
        let out = match storage {
            CpuStorage::F32(v) => {
                let g: Vec<f64> = v[start..end].iter().map(|&x| f64::from(x)).collect();
                CpuStorage::F32(vec![self.value(&g) as f32])
            }
            CpuStorage::F64(v) => CpuStorage::F64(vec![self.value(&v[start..end])]),
            _ => candle_core::bail!("subtb: potentials must be f32 or f64"),
        };
        Ok((out, candle_core::Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use candle_core::DType;
        let g = arg.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.check(g.len())?;
        let scale = grad_res.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0];
        let d = Tensor::from_vec(self.gradient(&g, scale), arg.shape(), arg.device())?;
        Ok(Some(d.to_dtype(arg.dtype())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, pair by pair.
    fn naive(lengths: &[usize], t: usize, lambda: f64) -> Vec<f64> {
        let w = t + 1;
        let mut out = vec![0.0; lengths.len() * w * w];
        for (b, &n) in lengths.iter().enumerate() {
            let total: f64 = (0..n)
                .flat_map(|i| (i + 1..=n).map(move |j| lambda.powi((j - i) as i32)))
                .sum();
            for i in 0..n {
                for j in i + 1..=n {
                    out[b * w * w + i * w + j] = lambda.powi((j - i) as i32) / total;
                }
            }
        }
        out
    }

    /// The fused op and the dense broadcast agree on value and gradient.
    #[test]
    fn fused_op_matches_the_dense_form() {
        use candle_core::{DType, Device, Var};
        let lengths = vec![3usize, 5, 1, 5, 0];
        let (t, lambda) = (5usize, 0.9);
        let w = t + 1;
        let g: Vec<f64> = (0..lengths.len() * w)
            .map(|k| ((k * 37 % 11) as f64 - 5.0) * 0.3)
            .collect();
        let dev = Device::Cpu;
        let gv = Var::from_vec(g.clone(), (lengths.len(), w), &dev).unwrap();
        let op = SubTbOp {
            lengths: lengths.clone(),
            tables: gap_tables(&lengths, t, lambda).unwrap(),
            width: w,
        };
        let fused = gv.as_tensor().apply_op1(op).unwrap();
        let weights =
            Tensor::from_vec(subtb_weights(&lengths, t, lambda).unwrap(), (lengths.len(), w, w), &dev).unwrap();
        let x = gv.as_tensor();
        let diff = x.unsqueeze(2).unwrap().broadcast_sub(&x.unsqueeze(1).unwrap()).unwrap();
        let dense = ((diff.sqr().unwrap() * weights).unwrap().sum_all().unwrap() / lengths.len() as f64).unwrap();
        let (a, b) = (fused.to_scalar::<f64>().unwrap(), dense.to_scalar::<f64>().unwrap());
        approx::assert_relative_eq!(a, b, max_relative = 1e-12);
        let ga = fused
            .backward()
            .unwrap()
            .get(x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let gb = dense
            .backward()
            .unwrap()
            .get(x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (p, q) in ga.iter().zip(&gb) {
            approx::assert_relative_eq!(p, q, max_relative = 1e-10, epsilon = 1e-14);
        }
        // f32 storage works too.
        let f = x.to_dtype(DType::F32).unwrap();
        let op = SubTbOp {
            lengths: lengths.clone(),
            tables: gap_tables(&lengths, t, lambda).unwrap(),
            width: w,
        };
        let v32 = f.apply_op1(op).unwrap().to_scalar::<f32>().unwrap();
        approx::assert_relative_eq!(f64::from(v32), a, max_relative = 1e-5);
    }

    #[test]
    fn weights_match_the_definition() {
        let lengths = [1, 4, 7, 4, 0, 9];
        for lambda in [0.05, 0.5, 0.9, 1.0, 1.9, 20.0] {
            let fast = subtb_weights(&lengths, 9, lambda).unwrap();
            let slow = naive(&lengths, 9, lambda);
            for (a, b) in fast.iter().zip(&slow) {
                approx::assert_relative_eq!(a, b, max_relative = 1e-12, epsilon = 1e-300);
            }
        }
        assert!(subtb_weights(&lengths, 9, 0.0).is_err());
        assert!(subtb_weights(&lengths, 9, f64::NAN).is_err());
    }
}
