//! The CPU training path built on [`crate::tape`]: a rollout records every visited state's network
//! outputs, the loss reads them as a leaf tensor, and one batched backward pass produces the
//! parameter gradients for the fused Adam step.
//!
//! ```text
//! rollout ──(forward_taped per time step)──▶ tape[0] ─┐
//! other nets / FM parents ──(forward_taped, batched)──▶ tapes ─┤─▶ leaf Var(s) ─▶ loss ─▶ candle backward
//!                                                              └◀── backward_taped (batched GEMMs) ◀── ∂L/∂leaf
//! ```

use candle_core::{Tensor, Var, backprop::GradStore};

use crate::estimator::{Estimator, EstimatorOutput, RolloutPolicy, RowForward};
use crate::tape::{MlpGrads, MlpTape};
use crate::{GfnError, Result, TrajectoryBatch};

/// Buffers of the fast path, reused from one iteration to the next.
#[derive(Debug, Default)]
pub struct FastPath {
    tapes: Vec<MlpTape>,
    leaves: Vec<Var>,
    grads: Vec<MlpGrads>,
}

impl FastPath {
    /// Whether `estimator` can use the fast path (f32 parameters on the CPU).
    pub fn supports(estimator: &Estimator) -> bool {
        estimator.device().is_cpu()
            && estimator
                .nets()
                .iter()
                .all(|n| n.layers.iter().all(|l| l.weight.dtype() == candle_core::DType::F32))
    }

    /// Start a new iteration.
    pub fn clear(&mut self) {
        self.tapes.iter_mut().for_each(MlpTape::clear);
        self.leaves.clear();
    }

    /// A view that records rollouts and serves the loss.
    pub fn view<'a>(&'a mut self, estimator: &'a Estimator) -> Taped<'a> {
        self.tapes.resize_with(estimator.nets().len(), MlpTape::default);
        Taped { estimator, fast: self }
    }

    /// After `loss.backward()`: parameter gradients of every network, in the order of
    /// [`Estimator::named_params`] (per net, per layer: weight, bias).
    pub fn backward(&mut self, estimator: &Estimator, grads: &GradStore) -> Result<Vec<&[f32]>> {
        self.grads.resize_with(estimator.nets().len(), MlpGrads::default);
        for (k, net) in estimator.nets().iter().enumerate() {
            let leaf = self
                .leaves
                .get(k)
                .ok_or_else(|| GfnError::Other("fast path: backward before the loss".into()))?;
            let d_out: Vec<f32> = match grads.get(leaf.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1()?,
                None => vec![0.0; leaf.elem_count()],
            };
            net.backward_taped(&self.tapes[k], &d_out, &mut self.grads[k])?;
        }
        Ok(self
            .grads
            .iter()
            .flat_map(|g| g.layers.iter().flat_map(|(w, b)| [w.as_slice(), b.as_slice()]))
            .collect())
    }
}

/// [`FastPath`] bound to an estimator for one iteration.
pub struct Taped<'a> {
    estimator: &'a Estimator,
    fast: &'a mut FastPath,
}

impl RolloutPolicy for Taped<'_> {
    fn pf_logits(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<usize> {
        let net = &self.estimator.nets()[0];
        let y = net.forward_taped(x, rows, &mut self.fast.tapes[0])?;
        out.clear();
        out.extend_from_slice(y);
        Ok(y.len() / rows.max(1))
    }
}

impl RowForward for Taped<'_> {
    fn forward_rows(&mut self, batch: &TrajectoryBatch, extra: &[f32], extra_rows: usize) -> Result<EstimatorOutput> {
        let rows = batch.num_rows();
        if self.fast.tapes[0].rows() != rows {
            return Err(GfnError::Other(format!(
                "fast path: the tape holds {} rows but the batch has {rows}; sample the batch through this view",
                self.fast.tapes[0].rows()
            )));
        }
        let dev = self.estimator.device().clone();
        self.fast.leaves.clear();
        let mut outs = Vec::with_capacity(self.estimator.nets().len());
        for (k, net) in self.estimator.nets().iter().enumerate() {
            let tape = &mut self.fast.tapes[k];
            if k > 0 {
                tape.clear();
                net.forward_taped(&batch.features, rows, tape)?;
            }
            if extra_rows > 0 {
                net.forward_taped(extra, extra_rows, tape)?;
            }
            let leaf = Var::from_tensor(&Tensor::from_slice(
                tape.outputs(),
                (tape.rows(), tape.out_dim()),
                &dev,
            )?)?;
            outs.push(leaf.as_tensor().clone());
            self.fast.leaves.push(leaf);
        }
        self.estimator.split_heads(&outs)
    }

    fn log_z(&self) -> Tensor {
        self.estimator.log_z().as_tensor().clone()
    }
}

/// Sampling without gradients on the CPU fast path: the same hand-written forward as training,
/// with one scratch tape that is reset at every call (nothing is kept, nothing is allocated once
/// the buffers have grown). Used by `gfn sample` and the sampling benchmarks.
#[derive(Debug)]
pub struct Inference<'a> {
    estimator: &'a Estimator,
    tape: MlpTape,
}

impl<'a> Inference<'a> {
    /// An inference view of `estimator`, or `None` when it cannot use the fast path (see
    /// [`FastPath::supports`]).
    pub fn new(estimator: &'a Estimator) -> Option<Self> {
        FastPath::supports(estimator).then(|| Self {
            estimator,
            tape: MlpTape::default(),
        })
    }
}

impl RolloutPolicy for Inference<'_> {
    fn pf_logits(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<usize> {
        self.tape.clear();
        let y = self.estimator.nets()[0].forward_taped(x, rows, &mut self.tape)?;
        out.clear();
        out.extend_from_slice(y);
        Ok(y.len() / rows.max(1))
    }
}
