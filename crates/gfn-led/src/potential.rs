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

    /// The network.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
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
        self.forward(&self.inputs(batch))
    }

    /// The network inputs of `batch`'s decomposed transitions, kept so that the same
    /// transitions can be evaluated again later (LED's replay of recent batches).
    pub fn inputs(&self, batch: &TrajectoryBatch) -> TransitionInputs {
        let (b, t) = (batch.batch_size, batch.max_length());
        let f = self.feature_dim;
        let mut x: Vec<f32> = Vec::new();
        let mut slots = Vec::with_capacity(b * t);
        let mut m = 0u32;
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
        TransitionInputs {
            x,
            index: slots.into_iter().map(|s| s.unwrap_or(m)).collect(),
            transitions: m as usize,
            batch: b,
            steps: t,
        }
    }

    /// Potentials `[B, T]` of stored transition inputs, with gradients.
    pub fn forward(&self, inputs: &TransitionInputs) -> Result<Tensor> {
        let (b, t, m) = (inputs.batch, inputs.steps, inputs.transitions);
        let y = if m > 0 {
            let input = Tensor::from_slice(&inputs.x, (m, 2 * self.feature_dim), &self.device)?;
            self.mlp.forward(&input, false)?.flatten_all()?
        } else {
            Tensor::zeros(0, candle_core::DType::F32, &self.device)?
        };
        let padded = Tensor::cat(&[&y, &Tensor::zeros(1, y.dtype(), &self.device)?], 0)?;
        let idx = Tensor::from_slice(&inputs.index, b * t, &self.device)?;
        Ok(padded.index_select(&idx, 0)?.reshape((b, t))?)
    }
}

/// The potential network's inputs for one batch: `[transitions, 2·feature_dim]` features of
/// `(s, s')`, and where each output goes in the padded `[B, T]` layout.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionInputs {
    x: Vec<f32>,
    index: Vec<u32>,
    transitions: usize,
    batch: usize,
    steps: usize,
}

impl TransitionInputs {
    /// Rebuild stored inputs from their parts (a checkpoint's replay buffer): `x` holds
    /// `transitions` rows, `index` maps each of the `batch · steps` slots to a row or to
    /// `transitions` (padding). Inconsistent parts are an error.
    pub fn from_parts(x: Vec<f32>, index: Vec<u32>, transitions: usize, batch: usize, steps: usize) -> Result<Self> {
        let bad = |what: String| gfn_core::GfnError::invalid("transition inputs", what, "inconsistent parts");
        if index.len() != batch * steps {
            return Err(bad(format!("{} slots for a {batch}×{steps} layout", index.len())));
        }
        if transitions > 0 && !x.len().is_multiple_of(transitions) {
            return Err(bad(format!("{} values for {transitions} transitions", x.len())));
        }
        if index.iter().any(|&i| i as usize > transitions) {
            return Err(bad(format!("a slot index above {transitions}")));
        }
        Ok(Self {
            x,
            index,
            transitions,
            batch,
            steps,
        })
    }

    /// Where each `[B, T]` slot's value comes from: a transition row, or `transitions` for
    /// padding.
    pub fn index(&self) -> &[u32] {
        &self.index
    }

    /// `(B, T)` of the padded layout.
    pub fn shape(&self) -> (usize, usize) {
        (self.batch, self.steps)
    }

    /// The inputs `[transitions, 2·feature_dim]`.
    pub fn features(&self) -> &[f32] {
        &self.x
    }

    /// Number of decomposed transitions.
    pub fn transitions(&self) -> usize {
        self.transitions
    }

    /// Scatter per-transition values into the padded `[B, T]` layout (0 elsewhere).
    pub fn scatter(&self, values: &[f32]) -> Vec<f64> {
        self.index
            .iter()
            .map(|&i| values.get(i as usize).map_or(0.0, |&v| f64::from(v)))
            .collect()
    }

    /// Gather `[B, T]` values back to one per transition (the inverse of [`Self::scatter`]).
    pub fn gather(&self, padded: &[f64]) -> Vec<f32> {
        let mut out = vec![0f32; self.transitions];
        for (slot, &i) in self.index.iter().enumerate() {
            if let Some(o) = out.get_mut(i as usize) {
                *o = padded[slot] as f32;
            }
        }
        out
    }
}
