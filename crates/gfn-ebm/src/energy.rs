//! Energy models on binary vectors: `f_φ(x) = −E_φ(x)`, the unnormalised log-density, for a batch
//! `x ∈ {0,1}^{n×D}` given as an f32 tensor.
//!
//! * [`MlpEnergy`]: `f(x) = MLP(x)`, `D → H (× layers, ELU) → 1`, as in the official synthetic
//!   experiments (H 256, 3 layers).
//! * [`IsingEnergy`]: `f(x) = sᵀ J s` with `s = 2x − 1` and `J = (G + Gᵀ)/2` with zero diagonal,
//!   `G` learned (papers.md §2.4; `b = 0`).

use candle_core::{D, DType, Device, Tensor, Var};
use rand::Rng;

use gfn_core::nn::Linear;
use gfn_core::{GfnError, GfnRng, Result};

/// An energy model: a differentiable unnormalised log-density on `{0,1}^D`.
pub trait EnergyModel: Send {
    /// `D`.
    fn dim(&self) -> usize;
    /// `f(x) = −E(x)`, `[n]`, for `x` `[n, D]` (f32 0/1), with gradients to the parameters.
    fn log_density(&self, x: &Tensor) -> Result<Tensor>;
    /// The parameters, named.
    fn named_params(&self) -> Vec<(String, Var)>;
    /// Re-impose constraints after an optimiser step (Ising: a zero diagonal). Default: none.
    fn project(&self) -> Result<()> {
        Ok(())
    }
    /// Short name (`mlp`, `ising`).
    fn kind(&self) -> &'static str;
    /// A regulariser added to the EBM loss (scalar, with gradients), or `None`. Default: none.
    fn penalty(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// Add `model`'s regulariser to `loss` (the contrastive EBM loss), if it has one.
pub fn with_penalty(model: &dyn EnergyModel, loss: Tensor) -> Result<Tensor> {
    Ok(match model.penalty()? {
        Some(p) => (loss + p)?,
        None => loss,
    })
}

/// `f(x) = MLP(x)` with ELU activations.
#[derive(Debug, Clone)]
pub struct MlpEnergy {
    dim: usize,
    layers: Vec<Linear>,
}

impl MlpEnergy {
    /// `dim → hidden (× layers) → 1`, parameters drawn from `rng`.
    pub fn new(dim: usize, hidden: usize, layers: usize, device: &Device, rng: &mut GfnRng) -> Result<Self> {
        if dim == 0 || hidden == 0 || layers == 0 {
            return Err(GfnError::invalid(
                "energy network",
                format!("dim {dim}, hidden {hidden}, layers {layers}"),
                "all must be at least 1",
            ));
        }
        let mut dims = vec![dim];
        dims.extend(std::iter::repeat_n(hidden, layers));
        dims.push(1);
        let layers = dims
            .windows(2)
            .map(|w| Linear::new(w[0], w[1], device, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { dim, layers })
    }
}

impl EnergyModel for MlpEnergy {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_density(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, false)?;
            if i < last {
                h = h.elu(1.0)?;
            }
        }
        Ok(h.squeeze(D::Minus1)?)
    }
    fn named_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("ebm.{i}.weight"), l.weight.clone()));
            out.push((format!("ebm.{i}.bias"), l.bias.clone()));
        }
        out
    }
    fn kind(&self) -> &'static str {
        "mlp"
    }
}

/// `f(x) = sᵀ J s`, `s = 2x − 1`, `J = (G + Gᵀ)/2` with zero diagonal; optional penalty
/// `l1 · Σ_ij |J_ij|` (the GWG Ising-learning protocol's `--l1`, 0.01 there).
#[derive(Debug, Clone)]
pub struct IsingEnergy {
    dim: usize,
    g: Var,
    off_diagonal: Tensor,
    l1: f64,
}

impl IsingEnergy {
    /// `G ∼ N(0, init_std²)` off the diagonal (the protocol's 0.01), zero on it.
    pub fn new(dim: usize, init_std: f64, device: &Device, rng: &mut GfnRng) -> Result<Self> {
        if dim < 2 {
            return Err(GfnError::invalid("dim", dim, "an Ising model needs at least 2 spins"));
        }
        let mut g = vec![0f32; dim * dim];
        for i in 0..dim {
            for j in 0..dim {
                if i != j {
                    g[i * dim + j] = (init_std * normal(rng)) as f32;
                }
            }
        }
        let mask: Vec<f32> = (0..dim * dim)
            .map(|k| if k / dim == k % dim { 0.0 } else { 1.0 })
            .collect();
        Ok(Self {
            dim,
            g: Var::from_tensor(&Tensor::from_vec(g, (dim, dim), device)?)?,
            off_diagonal: Tensor::from_vec(mask, (dim, dim), device)?,
            l1: 0.0,
        })
    }

    /// With the penalty `l1 · Σ_ij |J_ij|` added to the EBM loss (`l1 ≥ 0`; 0: none).
    pub fn with_l1(mut self, l1: f64) -> Result<Self> {
        if !(l1.is_finite() && l1 >= 0.0) {
            return Err(GfnError::invalid("ebm_l1", l1, "must be finite and ≥ 0"));
        }
        self.l1 = l1;
        Ok(self)
    }

    /// The symmetric coupling `J`, `[D, D]`.
    pub fn coupling_tensor(&self) -> Result<Tensor> {
        let g = self.g.as_tensor();
        Ok(((g + g.t()?)? * 0.5)?.mul(&self.off_diagonal)?)
    }

    /// `J` as f64, row-major.
    pub fn coupling(&self) -> Result<Vec<f64>> {
        let j = self.coupling_tensor()?.to_dtype(DType::F64)?;
        Ok(j.flatten_all()?.to_vec1::<f64>()?)
    }
}

impl EnergyModel for IsingEnergy {
    fn dim(&self) -> usize {
        self.dim
    }
    fn log_density(&self, x: &Tensor) -> Result<Tensor> {
        let s = ((x * 2.0)? - 1.0)?;
        let j = self.coupling_tensor()?;
        Ok(s.matmul(&j)?.mul(&s)?.sum(D::Minus1)?)
    }
    fn named_params(&self) -> Vec<(String, Var)> {
        vec![("ebm.g".into(), self.g.clone())]
    }
    fn project(&self) -> Result<()> {
        let g = self.g.as_tensor().mul(&self.off_diagonal)?;
        self.g.set(&g)?;
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "ising"
    }
    fn penalty(&self) -> Result<Option<Tensor>> {
        if self.l1 == 0.0 {
            return Ok(None);
        }
        Ok(Some((self.coupling_tensor()?.abs()?.sum_all()? * self.l1)?))
    }
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut GfnRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `[n, D]` f32 tensor of 0/1 rows from i32 values.
pub fn binary_tensor(x: &[i32], dim: usize, device: &Device) -> Result<Tensor> {
    let n = x.len() / dim.max(1);
    if x.len() != n * dim {
        return Err(GfnError::invalid(
            "x",
            x.len(),
            format!("must be a multiple of D = {dim}"),
        ));
    }
    let v: Vec<f32> = x.iter().map(|&b| b as f32).collect();
    Ok(Tensor::from_vec(v, (n, dim), device)?)
}

/// `f(x)` without gradients, as f64.
pub fn log_density_values(model: &dyn EnergyModel, x: &[i32], device: &Device) -> Result<Vec<f64>> {
    let t = binary_tensor(x, model.dim(), device)?;
    to_f64(&model.log_density(&t)?.detach())
}

/// A 1-D tensor as f64 values.
pub fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ising_matches_the_quadratic_form_and_stays_symmetric() {
        let dev = Device::Cpu;
        let mut rng = gfn_core::rng_from_seed(2);
        let m = IsingEnergy::new(4, 0.3, &dev, &mut rng).unwrap();
        let j = m.coupling().unwrap();
        for a in 0..4 {
            assert_eq!(j[a * 4 + a], 0.0);
            for b in 0..4 {
                assert!((j[a * 4 + b] - j[b * 4 + a]).abs() < 1e-7);
            }
        }
        let x = [1, 0, 0, 1, 0, 0, 0, 0];
        let f = log_density_values(&m, &x, &dev).unwrap();
        for (r, row) in x.chunks_exact(4).enumerate() {
            let s: Vec<f64> = row.iter().map(|&b| 2.0 * f64::from(b) - 1.0).collect();
            let want: f64 = (0..4)
                .flat_map(|a| (0..4).map(move |b| (a, b)))
                .map(|(a, b)| s[a] * j[a * 4 + b] * s[b])
                .sum();
            assert!((f[r] - want).abs() < 1e-5, "{} vs {want}", f[r]);
        }
        assert!(IsingEnergy::new(1, 0.1, &dev, &mut rng).is_err());
    }

    #[test]
    fn mlp_energy_shapes_and_gradients() {
        let dev = Device::Cpu;
        let mut rng = gfn_core::rng_from_seed(3);
        let m = MlpEnergy::new(5, 8, 2, &dev, &mut rng).unwrap();
        let x = binary_tensor(&[1, 0, 1, 0, 1, 0, 0, 0, 0, 1], 5, &dev).unwrap();
        let f = m.log_density(&x).unwrap();
        assert_eq!(f.dims(), &[2]);
        let grads = f.sum_all().unwrap().backward().unwrap();
        assert!(m.named_params().iter().all(|(_, v)| grads.get(v.as_tensor()).is_some()));
        assert!(MlpEnergy::new(5, 0, 2, &dev, &mut rng).is_err());
        assert!(binary_tensor(&[1, 0, 1], 2, &dev).is_err());
    }
}
