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

use crate::estimator::{BackwardRolloutPolicy, Estimator, EstimatorOutput, LogitLayout, RolloutPolicy, RowForward};
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

impl Taped<'_> {
    /// Evaluate `rows` more states (features `x`, `[rows, feature_dim]`) onto the tape without
    /// sampling from them: rows of a batch that no rollout through this view evaluated (the
    /// initial states of backward trajectories), in the batch's row order.
    pub fn record(&mut self, x: &[f32], rows: usize) -> Result<()> {
        self.estimator.nets()[0].forward_taped(x, rows, &mut self.fast.tapes[0])?;
        Ok(())
    }

    /// Rows recorded so far this iteration.
    pub fn rows(&self) -> usize {
        self.fast.tapes[0].rows()
    }

    /// After [`RowForward::forward_rows`]: the whole outputs of net `k` (`[rows, width]`, every
    /// head's columns), the leaf whose gradient [`FastPath::backward`] reads. A loss may use it
    /// instead of the split heads (e.g. a fused op over all columns).
    pub fn leaf(&self, k: usize) -> Option<Tensor> {
        self.fast.leaves.get(k).map(|v| v.as_tensor().clone())
    }
}

/// Zero P_B logits (a uniform P_B), `[rows, n_backward]`.
fn uniform_pb(out: &mut Vec<f32>, rows: usize, n_backward: usize) -> LogitLayout {
    out.clear();
    out.resize(rows * n_backward, 0.0);
    LogitLayout {
        stride: n_backward,
        offset: 0,
    }
}

/// The P_B logits of `x` from net `k` evaluated on `tape` (cleared first), copied into `out`.
fn pb_from_net(
    estimator: &Estimator,
    k: usize,
    offset: usize,
    x: &[f32],
    rows: usize,
    tape: &mut MlpTape,
    out: &mut Vec<f32>,
) -> Result<LogitLayout> {
    tape.clear();
    let y = estimator.nets()[k].forward_taped(x, rows, tape)?;
    out.clear();
    out.extend_from_slice(y);
    Ok(LogitLayout {
        stride: y.len() / rows.max(1),
        offset,
    })
}

/// A backward rollout through the view records every state it evaluates on the tape (net 0),
/// like a forward rollout, so that the loss finds their outputs there.
impl BackwardRolloutPolicy for Taped<'_> {
    fn pb_logits(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<LogitLayout> {
        let est = self.estimator;
        let y = est.nets()[0].forward_taped(x, rows, &mut self.fast.tapes[0])?;
        match est.pb_location() {
            Some((0, offset)) => {
                out.clear();
                out.extend_from_slice(y);
                Ok(LogitLayout {
                    stride: y.len() / rows.max(1),
                    offset,
                })
            }
            // A separate P_B net: its tape is scratch here, the loss rebuilds it over the batch.
            Some((k, offset)) => pb_from_net(est, k, offset, x, rows, &mut self.fast.tapes[k], out),
            None => Ok(uniform_pb(out, rows, est.n_backward())),
        }
    }
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

impl Inference<'_> {
    /// P_F logits (`[rows, n_actions]`) and P_B logits (`[rows, n_backward]`, zeros for a
    /// uniform P_B) of `rows` states with features `x`; `pf` and `pb` are overwritten.
    pub fn logits(&mut self, x: &[f32], rows: usize, pf: &mut Vec<f32>, pb: &mut Vec<f32>) -> Result<()> {
        let est = self.estimator;
        let (na, nb) = (est.n_actions(), est.n_backward());
        pf.clear();
        pb.clear();
        if rows == 0 {
            return Ok(());
        }
        self.tape.clear();
        let y = est.nets()[0].forward_taped(x, rows, &mut self.tape)?;
        let width = y.len() / rows;
        for row in y.chunks_exact(width) {
            pf.extend_from_slice(&row[..na]);
        }
        match est.pb_location() {
            Some((0, offset)) => {
                for row in y.chunks_exact(width) {
                    pb.extend_from_slice(&row[offset..offset + nb]);
                }
            }
            Some((k, _)) => {
                self.tape.clear();
                pb.extend_from_slice(est.nets()[k].forward_taped(x, rows, &mut self.tape)?);
            }
            None => pb.resize(rows * nb, 0.0),
        }
        Ok(())
    }
}

impl BackwardRolloutPolicy for Inference<'_> {
    fn pb_logits(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<LogitLayout> {
        match self.estimator.pb_location() {
            Some((k, offset)) => pb_from_net(self.estimator, k, offset, x, rows, &mut self.tape, out),
            None => Ok(uniform_pb(out, rows, self.estimator.n_backward())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::DagEnv;
    use crate::exact::ExactEvaluator;
    use crate::local_search::{EstimatorPolicy, InferencePolicy, StatePolicy};
    use crate::{BackwardPolicy, Env, EstimatorConfig, Sampler, rng_from_seed};
    use candle_core::Device;

    fn estimators(env: &DagEnv) -> Vec<Estimator> {
        let mut rng = rng_from_seed(11);
        let mut out = Vec::new();
        for shared_trunk in [true, false] {
            for backward in [BackwardPolicy::Learned, BackwardPolicy::Uniform] {
                let config = EstimatorConfig {
                    hidden: 16,
                    layers: 2,
                    shared_trunk,
                    backward,
                    flow_head: true,
                };
                let (nf, na, nb) = (env.feature_dim(), env.n_actions(), env.n_backward_actions());
                out.push(Estimator::new(config, nf, na, nb, &Device::Cpu, &mut rng).unwrap());
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs()))
    }

    /// Backward walks through the no-grad forward and through the taped view draw what the
    /// candle path draws (same seed), every estimator shape; the view's tape then holds all the
    /// batch's rows but the initial states, which `record` adds, and the loss's outputs are the
    /// estimator's outputs on the batch.
    #[test]
    fn backward_walks_agree_and_fill_the_tape() {
        let mut rng = rng_from_seed(5);
        for exit in [false, true] {
            let env = DagEnv::random(9, 0.4, exit, &mut rng).unwrap();
            let ev = ExactEvaluator::new(&env).unwrap();
            let terminals: Vec<i32> = (0..ev.num_terminal())
                .flat_map(|t| [ev.terminal_state_index(t) as i32; 3])
                .collect();
            for est in estimators(&env) {
                // Each walk from the same seed, through its own sampler.
                let walk = |policy: &mut dyn BackwardRolloutPolicy| {
                    let (mut batch, mut rng) = (TrajectoryBatch::default(), rng_from_seed(9));
                    Sampler::new()
                        .sample_backward_with(&env, policy, &terminals, &mut rng, &mut batch)
                        .unwrap();
                    (batch, rng)
                };
                let (reference, rng_ref) = walk(&mut &est);
                let (inferred, rng_inf) = walk(&mut Inference::new(&est).unwrap());
                let mut fast = FastPath::default();
                let mut view = fast.view(&est);
                let (taped, rng_tape) = walk(&mut view);
                for other in [&inferred, &taped] {
                    assert_eq!(other.actions, reference.actions);
                    assert_eq!(other.backward_actions, reference.backward_actions);
                    assert_eq!(other.node_rows, reference.node_rows);
                    assert_eq!(other.states, reference.states);
                    assert!(close(&other.log_pb, &reference.log_pb));
                }
                assert_eq!((&rng_inf, &rng_tape), (&rng_ref, &rng_ref));
                let n = taped.batch_size;
                let walked = taped.num_rows() - n;
                assert_eq!(view.rows(), walked);
                for b in 0..n {
                    let row = taped.node_row(b, 0) as usize;
                    assert_eq!(row, walked + b, "initial states come last, in trajectory order");
                }
                let nf = taped.feature_dim;
                view.record(&taped.features[walked * nf..], n).unwrap();
                let out = view.forward_rows(&taped, &[], 0).unwrap();
                let x = est.features_tensor(&taped.features, taped.num_rows()).unwrap();
                let want = est.forward_detached(&x).unwrap();
                let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(close(&v(&out.pf_logits.contiguous().unwrap()), &v(&want.pf_logits)));
                if let (Some(a), Some(b)) = (&out.pb_logits, &want.pb_logits) {
                    assert!(close(&v(&a.contiguous().unwrap()), &v(b)));
                }
                assert_eq!(out.pb_logits.is_some(), want.pb_logits.is_some());
            }
        }
    }

    /// The back-and-forth proposal's policy on the no-grad forward gives the candle logits.
    #[test]
    fn inference_policy_matches_the_estimator_policy() {
        let env = DagEnv::random(9, 0.4, true, &mut rng_from_seed(1)).unwrap();
        let states: Vec<i32> = (0..9).collect();
        for est in estimators(&env) {
            let (mut pf, mut pb, mut pf2, mut pb2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            EstimatorPolicy::new(&env, &est)
                .logits(&states, 9, &mut pf, &mut pb)
                .unwrap();
            let mut fast = InferencePolicy::new(&env, &est).unwrap();
            fast.logits(&states, 9, &mut pf2, &mut pb2).unwrap();
            assert!(close(&pf, &pf2) && close(&pb, &pb2));
            assert_eq!(
                (pf.len(), pb.len()),
                (9 * env.n_actions(), 9 * env.n_backward_actions())
            );
        }
    }
}
