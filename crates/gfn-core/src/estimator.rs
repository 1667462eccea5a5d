//! Estimators: one MLP (or one per head) giving P_F logits, P_B logits, log F(s), and a scalar log Z.
//!
//! With a shared trunk the last layer emits `[P_F logits | P_B logits | log F]` in one matmul and
//! the heads are column slices; with separate trunks each head has its own MLP. A uniform P_B has
//! no parameters. The device is whatever the caller passes: CPU now, CUDA later.

use candle_core::{D, DType, Device, Tensor, Var};

use crate::nn::{Mlp, scalar_var};
use crate::{GfnError, GfnRng, Result};

/// How the backward policy P_B is parameterised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackwardPolicy {
    /// Learned, a head of the network.
    Learned,
    /// Uniform over the allowed backward actions; no parameters.
    Uniform,
}

impl std::str::FromStr for BackwardPolicy {
    type Err = GfnError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "learned" => Ok(Self::Learned),
            "uniform" => Ok(Self::Uniform),
            other => Err(GfnError::invalid(
                "backward_policy",
                other,
                "must be learned or uniform",
            )),
        }
    }
}

/// Shape of the estimator.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimatorConfig {
    /// Width of each hidden layer.
    pub hidden: usize,
    /// Number of hidden layers.
    pub layers: usize,
    /// One trunk for every head (true) or one MLP per head.
    pub shared_trunk: bool,
    /// P_B learned or uniform.
    pub backward: BackwardPolicy,
    /// Whether to have a log F(s) head (DB, SubTB).
    pub flow_head: bool,
}

impl EstimatorConfig {
    /// Check the sizes, naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 {
            return Err(GfnError::invalid("hidden", self.hidden, "must be at least 1"));
        }
        Ok(())
    }
}

/// Network outputs for a batch of states `[n, feature_dim]`.
#[derive(Debug, Clone)]
pub struct EstimatorOutput {
    /// Unmasked forward logits `[n, n_actions]` (log edge flows for flow matching).
    pub pf_logits: Tensor,
    /// Unmasked backward logits `[n, n_backward_actions]`; `None` for a uniform P_B.
    pub pb_logits: Option<Tensor>,
    /// `log F(s)`, `[n]`; `None` without a flow head.
    pub log_flow: Option<Tensor>,
}

/// The GFlowNet's parameterised functions.
#[derive(Debug, Clone)]
pub struct Estimator {
    config: EstimatorConfig,
    feature_dim: usize,
    n_actions: usize,
    n_backward: usize,
    /// Shared: one net. Separate: P_F, then P_B (if learned), then F (if a flow head).
    nets: Vec<Mlp>,
    log_z: Var,
    device: Device,
}

impl Estimator {
    /// Build with parameters drawn from `rng` (in a fixed order, so a seed fixes every weight).
    pub fn new(
        config: EstimatorConfig,
        feature_dim: usize,
        n_actions: usize,
        n_backward: usize,
        device: &Device,
        rng: &mut GfnRng,
    ) -> Result<Self> {
        config.validate()?;
        let learned_pb = config.backward == BackwardPolicy::Learned;
        let (h, l) = (config.hidden, config.layers);
        let nets = if config.shared_trunk {
            let out = n_actions + if learned_pb { n_backward } else { 0 } + usize::from(config.flow_head);
            vec![Mlp::new(feature_dim, h, l, out, device, rng)?]
        } else {
            let mut nets = vec![Mlp::new(feature_dim, h, l, n_actions, device, rng)?];
            if learned_pb {
                nets.push(Mlp::new(feature_dim, h, l, n_backward, device, rng)?);
            }
            if config.flow_head {
                nets.push(Mlp::new(feature_dim, h, l, 1, device, rng)?);
            }
            nets
        };
        Ok(Self {
            config,
            feature_dim,
            n_actions,
            n_backward,
            nets,
            log_z: scalar_var(0.0, device)?,
            device: device.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EstimatorConfig {
        &self.config
    }
    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Input width.
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }
    /// The scalar `log Z` parameter, shape `[1]`.
    pub fn log_z(&self) -> &Var {
        &self.log_z
    }
    /// Current value of `log Z`.
    pub fn log_z_value(&self) -> Result<f64> {
        Ok(f64::from(self.log_z.as_tensor().to_vec1::<f32>()?[0]))
    }

    /// Network parameters by name (sorted by construction order: `net{k}.{layer}.weight|bias`).
    /// `log Z` is separate ([`Estimator::log_z`]) because it has its own learning rate.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (k, net) in self.nets.iter().enumerate() {
            net.named_params(&format!("net{k}"), &mut out);
        }
        out
    }

    /// Number of scalar parameters, `log Z` included.
    pub fn num_params(&self) -> usize {
        self.nets.iter().map(Mlp::num_params).sum::<usize>() + 1
    }

    /// Every head on a batch of features `[n, feature_dim]`, recording the autograd graph.
    pub fn forward(&self, features: &Tensor) -> Result<EstimatorOutput> {
        self.forward_impl(features, false)
    }

    /// Every head without recording a graph (evaluation).
    pub fn forward_detached(&self, features: &Tensor) -> Result<EstimatorOutput> {
        self.forward_impl(features, true)
    }

    /// Only the P_F logits, without a graph: what a rollout needs.
    pub fn pf_logits_detached(&self, features: &Tensor) -> Result<Tensor> {
        let out = self.nets[0].forward(features, true)?;
        if self.config.shared_trunk {
            Ok(out.narrow(D::Minus1, 0, self.n_actions)?)
        } else {
            Ok(out)
        }
    }

    /// Only the P_B logits, without a graph (`None` for a uniform P_B).
    pub fn pb_logits_detached(&self, features: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.forward_impl(features, true)?.pb_logits)
    }

    /// The MLPs: shared trunk: one; separate: P_F, then P_B (if learned), then F (if a head).
    pub fn nets(&self) -> &[Mlp] {
        &self.nets
    }

    /// Number of forward actions.
    pub fn n_actions(&self) -> usize {
        self.n_actions
    }

    /// Number of backward actions.
    pub fn n_backward(&self) -> usize {
        self.n_backward
    }

    /// Where the P_B logits are: `(net, first column)` in the outputs of `nets()[net]`
    /// (shared trunk: net 0 after the P_F columns; separate trunks: net 1 from column 0), or
    /// `None` for a uniform P_B.
    pub fn pb_location(&self) -> Option<(usize, usize)> {
        match (self.config.backward, self.config.shared_trunk) {
            (BackwardPolicy::Uniform, _) => None,
            (BackwardPolicy::Learned, true) => Some((0, self.n_actions)),
            (BackwardPolicy::Learned, false) => Some((1, 0)),
        }
    }

    /// Split per-net outputs (`outs[k]` from `nets()[k]`, `[n, width_k]`) into the heads.
    pub fn split_heads(&self, outs: &[Tensor]) -> Result<EstimatorOutput> {
        let learned_pb = self.config.backward == BackwardPolicy::Learned;
        if self.config.shared_trunk {
            let out = &outs[0];
            let pf_logits = out.narrow(D::Minus1, 0, self.n_actions)?;
            let mut col = self.n_actions;
            let pb_logits = if learned_pb {
                col += self.n_backward;
                Some(out.narrow(D::Minus1, self.n_actions, self.n_backward)?)
            } else {
                None
            };
            let log_flow = if self.config.flow_head {
                Some(out.narrow(D::Minus1, col, 1)?.squeeze(D::Minus1)?.contiguous()?)
            } else {
                None
            };
            Ok(EstimatorOutput {
                pf_logits,
                pb_logits,
                log_flow,
            })
        } else {
            let mut k = 1;
            let pb_logits = if learned_pb {
                k += 1;
                Some(outs[1].clone())
            } else {
                None
            };
            let log_flow = if self.config.flow_head {
                Some(outs[k].squeeze(D::Minus1)?.contiguous()?)
            } else {
                None
            };
            Ok(EstimatorOutput {
                pf_logits: outs[0].clone(),
                pb_logits,
                log_flow,
            })
        }
    }

    fn forward_impl(&self, features: &Tensor, detached: bool) -> Result<EstimatorOutput> {
        let outs = self
            .nets
            .iter()
            .map(|n| n.forward(features, detached))
            .collect::<Result<Vec<_>>>()?;
        self.split_heads(&outs)
    }

    /// Upload a feature buffer `[rows, feature_dim]` to the estimator's device.
    pub fn features_tensor(&self, features: &[f32], rows: usize) -> Result<Tensor> {
        Ok(Tensor::from_slice(features, (rows, self.feature_dim), &self.device)?)
    }
}

/// What a rollout needs from a policy: forward logits for a batch of new states.
pub trait RolloutPolicy {
    /// Evaluate `rows` states with features `x` (`[rows, feature_dim]`), writing `rows × stride`
    /// values into `out` whose first `n_actions` columns per row are the P_F logits; returns the
    /// stride.
    fn pf_logits(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<usize>;
    /// [`RolloutPolicy::pf_logits`] given the rows' states too (`rows × state_dim`): what a policy
    /// that reads something other than the dense features (token sequences, graphs) implements.
    /// By default, the features.
    fn pf_logits_of(&mut self, states: &[i32], x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<usize> {
        let _ = states;
        self.pf_logits(x, rows, out)
    }
}

impl RolloutPolicy for &Estimator {
    fn pf_logits(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<usize> {
        let t = self.pf_logits_detached(&self.features_tensor(x, rows)?)?;
        *out = to_vec_f32(&t)?;
        Ok(self.n_actions)
    }
}

/// Where a [`BackwardRolloutPolicy`] put the P_B logits: row `i`'s are
/// `out[i * stride + offset..][..n_backward]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogitLayout {
    /// Values per row.
    pub stride: usize,
    /// First column of the logits within a row.
    pub offset: usize,
}

/// What a backward rollout needs from a policy: backward logits for a batch of states.
pub trait BackwardRolloutPolicy {
    /// Evaluate `rows` states with features `x` (`[rows, feature_dim]`), writing `rows × stride`
    /// values into `out` that hold each row's P_B logits (zeros for a uniform P_B) where the
    /// returned layout says.
    fn pb_logits(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<LogitLayout>;
    /// [`BackwardRolloutPolicy::pb_logits`] given the rows' states too (`rows × state_dim`): what
    /// a policy that reads something other than the dense features implements. By default, the
    /// features.
    fn pb_logits_of(&mut self, states: &[i32], x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<LogitLayout> {
        let _ = states;
        self.pb_logits(x, rows, out)
    }
}

impl BackwardRolloutPolicy for &Estimator {
    fn pb_logits(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<LogitLayout> {
        match self.pb_logits_detached(&self.features_tensor(x, rows)?)? {
            Some(l) => *out = to_vec_f32(&l)?,
            None => {
                out.clear();
                out.resize(rows * self.n_backward, 0.0);
            }
        }
        Ok(LogitLayout {
            stride: self.n_backward,
            offset: 0,
        })
    }
}

/// What a loss needs from the estimator: outputs, with gradients, for every row of a batch (in
/// row order) followed by extra rows (the parents that flow matching evaluates).
pub trait RowForward {
    /// Outputs over `batch.num_rows() + extra_rows` rows; `extra` holds the extra rows' features.
    fn forward_rows(
        &mut self,
        batch: &crate::TrajectoryBatch,
        extra: &[f32],
        extra_rows: usize,
    ) -> Result<EstimatorOutput>;
    /// The `log Z` parameter, shape `[1]`.
    fn log_z(&self) -> Tensor;
    /// [`RowForward::forward_rows`] with the extra rows' states beside their features (a policy
    /// behind the seam observes states); the default reads the features only.
    fn forward_rows_with_states(
        &mut self,
        batch: &crate::TrajectoryBatch,
        extra: &[f32],
        _extra_states: &[i32],
        extra_rows: usize,
    ) -> Result<EstimatorOutput> {
        self.forward_rows(batch, extra, extra_rows)
    }
}

/// The reference path: one candle forward pass with an autograd graph over all rows.
impl RowForward for &Estimator {
    fn forward_rows(
        &mut self,
        batch: &crate::TrajectoryBatch,
        extra: &[f32],
        extra_rows: usize,
    ) -> Result<EstimatorOutput> {
        let rows = batch.num_rows();
        let x = if extra_rows == 0 {
            self.features_tensor(&batch.features, rows)?
        } else {
            let mut all = Vec::with_capacity(batch.features.len() + extra.len());
            all.extend_from_slice(&batch.features);
            all.extend_from_slice(extra);
            self.features_tensor(&all, rows + extra_rows)?
        };
        self.forward(&x)
    }
    fn log_z(&self) -> Tensor {
        Estimator::log_z(self).as_tensor().clone()
    }
}

/// Fill value for masked logits: finite, so a row with nothing allowed (the backward logits of
/// `s_0`) gives finite values and finite gradients instead of NaN, yet `exp` of it is exactly 0.
pub const MASK_FILL: f32 = -1.0e30;

/// Masked log-softmax over the last dimension: `mask` is `u8` (1 = allowed), same shape.
pub fn masked_log_softmax(logits: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let fill = Tensor::new(MASK_FILL, logits.device())?
        .to_dtype(logits.dtype())?
        .broadcast_as(logits.shape())?;
    let masked = mask.where_cond(logits, &fill)?;
    Ok(candle_nn::ops::log_softmax(&masked, D::Minus1)?)
}

/// Masked log-sum-exp over the last dimension (same masking as [`masked_log_softmax`]).
pub fn masked_logsumexp(logits: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let fill = Tensor::new(MASK_FILL, logits.device())?
        .to_dtype(logits.dtype())?
        .broadcast_as(logits.shape())?;
    Ok(mask.where_cond(logits, &fill)?.log_sum_exp(D::Minus1)?)
}

/// Convert a tensor to `Vec<f32>` row-major (any shape, any float dtype).
pub fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}
