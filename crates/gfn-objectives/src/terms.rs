//! The per-step quantities every balance objective is built from, gathered from one batched
//! forward pass over a [`TrajectoryBatch`].
//!
//! For trajectory `b` with `n = lengths[b]` actions, nodes `0 … n` and steps `0 … n−1`:
//! * `log_pf[b, t] = log P_F(s_{t+1} | s_t)` (the exit step included),
//! * `log_pb[b, t] = log P_B(s_t | s_{t+1})` (0 for the exit step),
//! * `log_flow[b, t] = log F(s_t)` for `t < n`; node `n` (the sink after an exit, or the terminal
//!   object itself) has `log F := log R(x)` — the terminal boundary condition,
//! * `log_reward[b] = log R(x)`.
//!
//! Entries past a trajectory's end are 0. All tensors share one dtype (f32 in training, f64 in
//! tests) and one device.

use candle_core::{DType, Device, Tensor};
use gfn_core::batch::TrajectoryBatch;
use gfn_core::estimator::{EstimatorOutput, masked_log_softmax};
use gfn_core::{GfnError, Result};

/// Padded per-step log-probabilities, flows and rewards of a batch of trajectories.
#[derive(Debug, Clone)]
pub struct BalanceTerms {
    /// `[B, T]` log P_F per step.
    pub log_pf: Tensor,
    /// `[B, T]` log P_B per step.
    pub log_pb: Tensor,
    /// `[B, T]` log F of node `t` (`t < n`), if the estimator has a flow head.
    pub log_flow: Option<Tensor>,
    /// `[B]` log R(x).
    pub log_reward: Tensor,
    /// Number of actions of each trajectory.
    pub lengths: Vec<usize>,
    /// `[B, T+1]` `log P_F(exit | s_k)` of every node that has a row (0 elsewhere), when the
    /// environment has an exit action: what modified DB needs, gathered from the same
    /// log-softmax as `log_pf`.
    pub log_pf_exit: Option<Tensor>,
    /// Forward-looking parameterisation (FL, LED): `[B, T+1]` cumulative log-reward increments
    /// `D_k = Σ_{t<k} Δ_t` of every node (`D_0 = 0`, `D_n = log R(x)`, 0 past the end), and
    /// `log_flow` holds `log F̃` with `log F(s_k) = log F̃(s_k) + D_k`. `None`: plain flows.
    pub offsets: Option<Tensor>,
}

impl BalanceTerms {
    /// Number of trajectories.
    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    /// Padded step count `T`.
    pub fn max_len(&self) -> usize {
        self.log_pf.dim(1).unwrap_or(0)
    }

    /// Check shapes and lengths.
    pub fn validate(&self) -> Result<()> {
        let (b, t) = self.log_pf.dims2()?;
        if b == 0 || b != self.lengths.len() {
            return Err(GfnError::invalid(
                "lengths",
                self.lengths.len(),
                format!("must be the batch size {b} (≥ 1)"),
            ));
        }
        if let Some(&bad) = self.lengths.iter().find(|&&n| n == 0 || n > t) {
            return Err(GfnError::invalid("lengths", bad, format!("each must be in 1..={t}")));
        }
        if self.log_pb.dims2()? != (b, t) || self.log_reward.dims1()? != b {
            return Err(GfnError::Other(
                "balance terms: log_pb must be [B, T] and log_reward [B]".into(),
            ));
        }
        if let Some(f) = &self.log_flow
            && f.dims2()? != (b, t)
        {
            return Err(GfnError::Other("balance terms: log_flow must be [B, T]".into()));
        }
        Ok(())
    }

    /// `[B, T]` mask, 1 for `t < n_b`.
    pub fn step_mask(&self) -> Result<Tensor> {
        let t = self.max_len();
        let m: Vec<f32> = self
            .lengths
            .iter()
            .flat_map(|&n| (0..t).map(move |k| f32::from(u8::from(k < n))))
            .collect();
        let dev = self.log_pf.device();
        Ok(Tensor::from_vec(m, (self.batch_size(), t), dev)?.to_dtype(self.log_pf.dtype())?)
    }

    /// `[B, T+1]` flow of every node with the terminal boundary: `log F(s_t)` for `t < n`,
    /// `log R(x)` at `t = n`, 0 after. In the forward-looking parameterisation (`offsets`), node
    /// `k` is `log F̃(s_k) + D_k` and node `n` is `D_n = log R(x)`.
    pub fn node_log_flows(&self) -> Result<Tensor> {
        let flow = self
            .log_flow
            .as_ref()
            .ok_or_else(|| GfnError::Other("this objective needs a log F head".into()))?;
        let (b, t) = flow.dims2()?;
        let dev = flow.device();
        let dt = flow.dtype();
        let mut below = vec![0f32; b * (t + 1)];
        let mut at_end = vec![0f32; b * (t + 1)];
        for (i, &n) in self.lengths.iter().enumerate() {
            below[i * (t + 1)..i * (t + 1) + n].fill(1.0);
            at_end[i * (t + 1) + n] = 1.0;
        }
        let below = Tensor::from_vec(below, (b, t + 1), dev)?.to_dtype(dt)?;
        let at_end = Tensor::from_vec(at_end, (b, t + 1), dev)?.to_dtype(dt)?;
        let padded = Tensor::cat(&[flow, &Tensor::zeros((b, 1), dt, dev)?], 1)?;
        let nodes = (padded * below)?;
        match &self.offsets {
            // log F̃(s_k) + D_k, and D_n = log R(x) at the end: F̃(x) = 1.
            Some(d) => Ok((nodes + d)?),
            None => {
                let boundary = at_end.broadcast_mul(&self.log_reward.unsqueeze(1)?)?;
                Ok((nodes + boundary)?)
            }
        }
    }

    /// The terms of `batch` through any [`Policy`](gfn_core::policy::Policy): every row's state
    /// observed by `observe`, one forward with the autograd graph, then [`BalanceTerms::from_batch`].
    pub fn through(
        batch: &TrajectoryBatch,
        policy: &dyn gfn_core::policy::Policy,
        observe: &gfn_core::policy::Observe,
    ) -> Result<Self> {
        let out = policy.forward(&observe(&batch.states[..batch.num_rows() * batch.state_dim])?)?;
        // Heads are often column views of one output: the gathers below want contiguous tensors.
        Self::from_batch(
            batch,
            &EstimatorOutput {
                pf_logits: out.pf_logits.contiguous()?,
                pb_logits: out.pb_logits.map(|t| t.contiguous()).transpose()?,
                log_flow: out.log_flow.map(|t| t.contiguous()).transpose()?,
            },
        )
    }

    /// Gather the terms of `batch` from the estimator's outputs on all of its rows (in row order).
    /// A uniform P_B (`out.pb_logits` is `None`) gives constant `log_pb`.
    pub fn from_batch(batch: &TrajectoryBatch, out: &EstimatorOutput) -> Result<Self> {
        let dev = out.pf_logits.device().clone();
        let (bsz, t) = (batch.batch_size, batch.max_length());
        let (na, nb) = (batch.n_actions, batch.n_backward);
        let rows = batch.num_rows();
        let mut idx_pf = vec![0u32; bsz * t];
        let mut idx_pb = vec![0u32; bsz * t];
        let mut pb_mask = vec![0f32; bsz * t];
        let mut idx_node = vec![0u32; bsz * t];
        let lengths: Vec<usize> = batch.lengths.iter().map(|&n| n as usize).collect();
        for b in 0..bsz {
            for k in 0..lengths[b] {
                let row = batch.node_row(b, k);
                idx_pf[b * t + k] = row * na as u32 + batch.action(b, k);
                idx_node[b * t + k] = row;
                let back = batch.backward_action(b, k);
                if back != gfn_core::batch::NONE {
                    idx_pb[b * t + k] = batch.node_row(b, k + 1) * nb as u32 + back;
                    pb_mask[b * t + k] = 1.0;
                }
            }
        }
        let step_mask: Vec<f32> = lengths
            .iter()
            .flat_map(|&n| (0..t).map(move |k| f32::from(u8::from(k < n))))
            .collect();
        let dt = out.pf_logits.dtype();
        let step_mask = Tensor::from_vec(step_mask, (bsz, t), &dev)?.to_dtype(dt)?;
        let u8_tensor = |v: &[u8], w: usize| Tensor::from_slice(v, (rows, w), &dev);
        let idx = |v: Vec<u32>| Tensor::from_vec(v, bsz * t, &dev);

        let fmask = u8_tensor(&batch.forward_masks, na)?;
        let lpf_all = masked_log_softmax(&out.pf_logits, &fmask)?.flatten_all()?;
        let log_pf = (lpf_all.index_select(&idx(idx_pf)?, 0)?.reshape((bsz, t))? * &step_mask)?;

        let pb_mask_t = Tensor::from_vec(pb_mask.clone(), (bsz, t), &dev)?.to_dtype(dt)?;
        let log_pb = match &out.pb_logits {
            Some(pb) => {
                let bmask = u8_tensor(&batch.backward_masks, nb)?;
                let lpb_all = masked_log_softmax(pb, &bmask)?.flatten_all()?;
                (lpb_all.index_select(&idx(idx_pb)?, 0)?.reshape((bsz, t))? * &pb_mask_t)?
            }
            None => {
                // Uniform: −log(number of allowed backward actions at s_{t+1}).
                let v: Vec<f32> = idx_pb
                    .iter()
                    .zip(&pb_mask)
                    .map(|(&i, &m)| {
                        if m == 0.0 {
                            return 0.0;
                        }
                        let row = i as usize / nb;
                        let k = batch.backward_masks[row * nb..(row + 1) * nb]
                            .iter()
                            .filter(|&&x| x != 0)
                            .count();
                        -(k as f32).ln()
                    })
                    .collect();
                Tensor::from_vec(v, (bsz, t), &dev)?.to_dtype(dt)?
            }
        };
        let log_flow = match &out.log_flow {
            Some(f) => Some((f.index_select(&idx(idx_node)?, 0)?.reshape((bsz, t))? * &step_mask)?),
            None => None,
        };
        let log_pf_exit = match batch.exit_action {
            Some(e) => {
                let mut idx_exit = vec![0u32; bsz * (t + 1)];
                let mut has = vec![0f32; bsz * (t + 1)];
                for b in 0..bsz {
                    for k in 0..=lengths[b] {
                        let row = batch.node_row(b, k);
                        if row != gfn_core::batch::NONE {
                            idx_exit[b * (t + 1) + k] = row * na as u32 + e as u32;
                            has[b * (t + 1) + k] = 1.0;
                        }
                    }
                }
                let has = Tensor::from_vec(has, (bsz, t + 1), &dev)?.to_dtype(dt)?;
                let idx = Tensor::from_vec(idx_exit, bsz * (t + 1), &dev)?;
                Some((lpf_all.index_select(&idx, 0)?.reshape((bsz, t + 1))? * has)?)
            }
            None => None,
        };
        let log_reward = batch.log_reward.clone();
        let log_reward = Tensor::from_vec(log_reward, bsz, &dev)?.to_dtype(dt)?;
        let terms = Self {
            log_pf,
            log_pb,
            log_flow,
            log_reward,
            lengths,
            log_pf_exit,
            offsets: None,
        };
        Ok(terms)
    }
}

/// `Tensor` of f64 values in `dtype` on `dev`.
pub(crate) fn constant(values: Vec<f64>, shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)
}
