//! The potential network `φ_θ(s → s') = MLP([features(s); features(s')])`, one scalar per
//! transition (the official code uses the flow network's width and depth).

use candle_core::{Device, Tensor, Var};

use gfn_core::GfnRng;
use gfn_core::Result;
use gfn_core::batch::TrajectoryBatch;
use gfn_core::nn::Mlp;

use crate::decomposition::decomposed_len;

/// A learned potential on transitions.
#[derive(Debug, Clone)]
pub struct PotentialNet {
    mlp: Mlp,
    feature_dim: usize,
    device: Device,
}

impl PotentialNet {
    /// `2·feature_dim → hidden (× layers) → 1`, parameters drawn from `rng`.
    pub fn new(feature_dim: usize, hidden: usize, layers: usize, device: &Device, rng: &mut GfnRng) -> Result<Self> {
        Ok(Self {
            mlp: Mlp::new(2 * feature_dim, hidden, layers, 1, device, rng)?,
            feature_dim,
            device: device.clone(),
        })
    }

    /// Parameters, named `phi.<layer>.weight|bias`.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.mlp.named_params("phi", &mut out);
        out
    }

    /// Potentials of every decomposed transition of `batch`, padded to `[B, T]` with zeros (an
    /// exit transition and steps past the end are 0), with gradients.
    pub fn potentials(&self, batch: &TrajectoryBatch) -> Result<Tensor> {
        let (b, t) = (batch.batch_size, batch.max_length());
        let f = self.feature_dim;
        let mut x: Vec<f32> = Vec::new();
        // Position of each transition's output, or the index of the appended zero.
        let mut index = Vec::with_capacity(b * t);
        let mut m = 0u32;
        let mut slots = Vec::with_capacity(b * t);
        for i in 0..b {
            let n = decomposed_len(batch, i);
            for k in 0..t {
                if k < n {
                    let from = batch.node_row(i, k) as usize;
                    let to = batch.node_row(i, k + 1) as usize;
                    x.extend_from_slice(&batch.features[from * f..(from + 1) * f]);
                    x.extend_from_slice(&batch.features[to * f..(to + 1) * f]);
                    slots.push(Some(m));
                    m += 1;
                } else {
                    slots.push(None);
                }
            }
        }
        index.extend(slots.into_iter().map(|s| s.unwrap_or(m)));
        let y = if m > 0 {
            let input = Tensor::from_vec(x, (m as usize, 2 * f), &self.device)?;
            self.mlp.forward(&input, false)?.flatten_all()?
        } else {
            Tensor::zeros(0, candle_core::DType::F32, &self.device)?
        };
        let padded = Tensor::cat(&[&y, &Tensor::zeros(1, y.dtype(), &self.device)?], 0)?;
        let idx = Tensor::from_vec(index, b * t, &self.device)?;
        Ok(padded.index_select(&idx, 0)?.reshape((b, t))?)
    }
}
