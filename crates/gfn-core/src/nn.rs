//! Small neural-network building blocks on candle, laid out for speed on CPU.
//!
//! Weights are stored `[in, out]` so the forward pass is `x.matmul(w) + b` with no transpose and
//! the weight gradient arrives contiguous (see `reference/candle-cpu.md` §3b: 1.4× faster than
//! candle-nn's `[out, in]` Linear). Parameters are initialised from the library's seeded RNG,
//! never from candle's thread-local one.

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use crate::{GfnRng, Result};

/// A fully connected layer `y = x·W + b` with `W: [in, out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight, `[in, out]`.
    pub weight: Var,
    /// Bias, `[out]`.
    pub bias: Var,
}

impl Linear {
    /// PyTorch's default initialisation: `W, b ~ U(−1/√in, 1/√in)`, drawn from `rng`.
    pub fn new(input: usize, output: usize, device: &Device, rng: &mut GfnRng) -> Result<Self> {
        let bound = 1.0 / (input as f32).sqrt();
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let w = draw(input * output);
        let b = draw(output);
        Ok(Self {
            weight: Var::from_tensor(&Tensor::from_vec(w, (input, output), device)?)?,
            bias: Var::from_tensor(&Tensor::from_vec(b, output, device)?)?,
        })
    }

    /// `x·W + b`; `detached` runs without recording an autograd graph.
    pub fn forward(&self, x: &Tensor, detached: bool) -> Result<Tensor> {
        let (w, b) = if detached {
            (self.weight.as_tensor().detach(), self.bias.as_tensor().detach())
        } else {
            (self.weight.as_tensor().clone(), self.bias.as_tensor().clone())
        };
        Ok(x.matmul(&w)?.broadcast_add(&b)?)
    }
}

/// A multilayer perceptron with ReLU between layers and a linear output.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// The layers, input first.
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// `input → hidden (× n_hidden layers) → output`. `n_hidden = 0` gives a linear model.
    pub fn new(
        input: usize,
        hidden: usize,
        n_hidden: usize,
        output: usize,
        device: &Device,
        rng: &mut GfnRng,
    ) -> Result<Self> {
        let mut dims = vec![input];
        dims.extend(std::iter::repeat_n(hidden, n_hidden));
        dims.push(output);
        let layers = dims
            .windows(2)
            .map(|w| Linear::new(w[0], w[1], device, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Forward pass over a batch `[n, input]`.
    pub fn forward(&self, x: &Tensor, detached: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, detached)?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Named parameters: `{prefix}.{i}.weight`, `{prefix}.{i}.bias`.
    pub fn named_params(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("{prefix}.{i}.weight"), l.weight.clone()));
            out.push((format!("{prefix}.{i}.bias"), l.bias.clone()));
        }
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weight.elem_count() + l.bias.elem_count())
            .sum()
    }
}

/// A scalar parameter such as `log Z`, shape `[1]`.
pub fn scalar_var(value: f32, device: &Device) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::new(&[value], device)?.to_dtype(DType::F32)?)?)
}

/// LayerNorm's variance floor.
pub const LN_EPS: f64 = 1e-5;

/// LayerNorm over the last axis: `y = (x − μ) / √(σ² + ε) · g + β`, with `μ`, `σ²` the mean and
/// (biased) variance of the row and `ε = 1e-5`; the gain starts at 1 and the shift at 0 (no
/// random draw).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// The gain `g`, `[d]`.
    pub gain: Var,
    /// The shift `β`, `[d]`.
    pub bias: Var,
}

impl LayerNorm {
    /// Gain 1 and shift 0 over rows of width `d`.
    pub fn new(d: usize, dtype: candle_core::DType, device: &Device) -> Result<Self> {
        Ok(Self {
            gain: Var::ones(d, dtype, device)?,
            bias: Var::zeros(d, dtype, device)?,
        })
    }

    /// Normalise every row of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xc = x.broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1)?)?;
        let std = (xc.sqr()?.mean_keepdim(candle_core::D::Minus1)? + LN_EPS)?.sqrt()?;
        Ok(xc
            .broadcast_div(&std)?
            .broadcast_mul(self.gain.as_tensor())?
            .broadcast_add(self.bias.as_tensor())?)
    }

    /// `{prefix}.gain`, `{prefix}.bias`.
    pub fn named_params(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        out.push((format!("{prefix}.gain"), self.gain.clone()));
        out.push((format!("{prefix}.bias"), self.bias.clone()));
    }
}
