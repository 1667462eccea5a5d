//! The trainer's network: the MLP [`Estimator`] (every objective; the tape and device engines), or
//! a network behind the policy seam ([`SeamNet`]: `policy = transformer`, over the environment's
//! token encoding) trained by a balance loss object. Evaluation, likelihoods, sampling and
//! checkpoints go through [`Net`], whichever it is.

use candle_core::{DType, Device, Tensor, Var};

use gfn_core::exact::ExactEvaluator;
use gfn_core::nets::gin::GinConfig;
use gfn_core::nets::transformer::TransformerConfig;
use gfn_core::obs::GraphActions;
use gfn_core::obs::{ObservationKind, Observations, observe};
use gfn_core::optim::{Adam, AdamParams};
use gfn_core::policy::{
    GinPolicy, GraphBuildPolicy, Observe, Policy, PolicyOutput, SeamForward, SeamRollout, TransformerPolicy,
    exact_log_pf,
};
use gfn_core::{BackwardPolicy, Env, Estimator, GfnError, GfnRng, Result, Sampler, SamplingOptions, TrajectoryBatch};
use gfn_objectives::loss::{BalanceLoss, LossInputs, Needs, RowLoss, balance_loss};
use gfn_objectives::{BalanceTerms, Objective};

use crate::config::TrainConfig;
use crate::options::{EnvName, GinNorm};

gfn_core::choice! {
    /// The policy network of a run.
    pub enum PolicyKind("policy") {
        /// The MLP over dense features (every objective; the tape and device engines).
        Mlp = "mlp",
        /// A pre-LayerNorm transformer encoder over the environment's token encoding (bitseq),
        /// trained by the balance losses through the policy seam.
        Transformer = "transformer",
        /// A graph isomorphism network over the environment's graph encoding (mis): one logit per
        /// node, log F from the graph readout, a uniform P_B; trained by the balance losses
        /// through the policy seam.
        Gin = "gin",
    }
}

/// The network behind the seam.
#[derive(Debug)]
pub enum SeamPolicy {
    /// A transformer over token sequences.
    Transformer(TransformerPolicy),
    /// A GIN over graphs, one action per node.
    Gin(GinPolicy),
    /// A GIN over graphs with graph-building actions (node types, typed edges on pairs, stop).
    GraphBuild(GraphBuildPolicy),
}

impl SeamPolicy {
    /// The `log Z` parameter.
    pub fn log_z_param(&self) -> &Var {
        match self {
            Self::Transformer(p) => p.log_z_param(),
            Self::Gin(p) => p.log_z_param(),
            Self::GraphBuild(p) => p.log_z_param(),
        }
    }
    fn inner(&self) -> &dyn Policy {
        match self {
            Self::Transformer(p) => p,
            Self::Gin(p) => p,
            Self::GraphBuild(p) => p,
        }
    }
}

impl Policy for SeamPolicy {
    fn forward(&self, obs: &Observations) -> Result<PolicyOutput> {
        self.inner().forward(obs)
    }
    fn named_params(&self) -> Vec<(String, Var)> {
        self.inner().named_params()
    }
    fn log_z(&self) -> Option<&Var> {
        Some(self.log_z_param())
    }
    fn device(&self) -> &Device {
        self.inner().device()
    }
    fn has_backward(&self) -> bool {
        self.inner().has_backward()
    }
}

/// The loss a network behind the seam trains by: a balance loss over the terms, or a row loss over
/// the policy's outputs on every row (flow matching, with the parents' rows; soft Q).
/// The policy-gradient family trains through the trainer's own step (value head as log F, RL-T's
/// trust region through [`gfn_objectives::trpo::FiniteDifferenceJvp`]).
#[derive(Debug)]
enum SeamLoss {
    Balance(Box<dyn BalanceLoss>),
    Row(Box<dyn RowLoss>),
    PolicyGradient(Needs),
}

impl SeamLoss {
    fn needs(&self) -> Needs {
        match self {
            Self::Balance(b) => b.needs(),
            Self::Row(r) => r.needs(),
            Self::PolicyGradient(n) => *n,
        }
    }
}

/// A network behind the policy seam with the loss it trains by.
#[derive(Debug)]
pub struct SeamNet {
    policy: SeamPolicy,
    kind: ObservationKind,
    loss: SeamLoss,
    /// Whether the policy has a log F head (the loss needs it, or the environment is conditional).
    flow: bool,
    /// Useful FLOPs per evaluated state of a training step.
    flops_per_row: f64,
}

/// The network a run trains.
#[derive(Debug)]
pub enum Net {
    /// The MLP estimator.
    Mlp(Estimator),
    /// A network behind the policy seam.
    Seam(Box<SeamNet>),
}

impl SeamNet {
    /// The network of `config.policy` for `env` (a transformer over its token encoding, a GIN over
    /// its graph encoding), with the balance loss of `objective`, parameters drawn from `rng`,
    /// and its optimiser (network at `lr` with `weight_decay`, log Z at `lr_logz` where the loss
    /// learns it).
    pub fn new(
        config: &TrainConfig,
        env: &dyn Env,
        objective: Objective,
        device: &Device,
        rng: &mut GfnRng,
    ) -> Result<(Self, Adam)> {
        let loss = match (balance_loss(config.loss, config.lambda), objective) {
            (Ok(b), _) => SeamLoss::Balance(b),
            (Err(_), Objective::FlowMatching | Objective::SoftQ) => SeamLoss::Row(objective.as_loss()),
            (Err(_), Objective::PolicyGradient(c)) => SeamLoss::PolicyGradient(Needs {
                log_flow: true,
                log_z: true,
                backward_batch: c.variant.trains_backward(),
                ..Needs::default()
            }),
            (Err(_), _) => {
                return Err(GfnError::invalid(
                    "loss",
                    config.loss,
                    format!(
                        "must be one the seam trains with policy = {}: tb, db, subtb, fl-db, fl-subtb, mdb, led-db, led-subtb, vi, fm, soft-q or a policy-gradient loss",
                        config.policy
                    ),
                ));
            }
        };
        let needs = loss.needs();
        // A conditional environment's log Z(c) is the flow head at s_0(c).
        let flow = needs.log_flow || env.condition_space().is_some();
        if let SeamLoss::Balance(b) = &loss {
            b.check(env, flow, true)?;
        }
        let learned_pb = objective.uses_backward_policy() && config.backward_policy == BackwardPolicy::Learned;
        let (policy, kind, flops_per_row) = match config.policy {
            PolicyKind::Gin => {
                let (policy, flops) = gin_policy(config, env, flow, device, rng)?;
                (policy, ObservationKind::Graphs, flops)
            }
            _ => {
                let (policy, flops) = transformer_policy(config, env, learned_pb, flow, device, rng)?;
                (SeamPolicy::Transformer(policy), ObservationKind::Tokens, flops)
            }
        };
        let mut params: Vec<_> = policy.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
        if objective.uses_log_z() {
            params.push(("log_z".into(), policy.log_z_param().clone(), 1));
        }
        let adam = Adam::new(
            params,
            vec![
                AdamParams {
                    weight_decay: config.weight_decay,
                    ..AdamParams::adam(config.lr)
                },
                AdamParams::adam(config.lr_logz),
            ],
        );
        let net = Self {
            policy,
            kind,
            loss,
            flow,
            flops_per_row,
        };
        Ok((net, adam))
    }

    /// The states' observations.
    pub fn observe(&self, env: &dyn Env, states: &[i32]) -> Result<Observations> {
        observe(env, self.kind, states, self.policy.device())
    }

    /// The policy.
    pub fn policy(&self) -> &SeamPolicy {
        &self.policy
    }

    /// The policy as the sampler's (forward and backward) rollout policy and local search's
    /// state policy, its states observed by `observe`.
    pub fn rollout<'a>(&'a self, env: &dyn Env, observe: &'a Observe<'a>) -> SeamRollout<'a> {
        SeamRollout {
            policy: &self.policy,
            observe,
            n_backward: env.n_backward_actions(),
        }
    }

    /// The loss of `batch`: one forward over its rows with the graph (the balance terms through
    /// the seam), then the run's loss object, with LED's `potentials` where it has them.
    pub fn loss(&self, env: &dyn Env, batch: &TrajectoryBatch, potentials: Option<&[f64]>) -> Result<Tensor> {
        match &self.loss {
            SeamLoss::Balance(b) => self.loss_with(b.as_ref(), env, batch, potentials),
            SeamLoss::PolicyGradient(_) => Err(GfnError::Other(
                "the policy-gradient losses train through the trainer's policy-gradient step (Objective::pg_parts)"
                    .into(),
            )),
            SeamLoss::Row(r) => {
                let obs = |s: &[i32]| self.observe(env, s);
                let inputs = LossInputs {
                    env,
                    batch,
                    log_z: Some(self.policy.log_z_param().as_tensor()),
                    potentials,
                };
                r.row_loss(
                    &inputs,
                    &mut SeamForward {
                        policy: &self.policy,
                        observe: &obs,
                    },
                )
            }
        }
    }

    /// [`SeamNet::loss`] with another balance loss (the gradient analysis compares several).
    pub fn loss_with(
        &self,
        loss: &dyn BalanceLoss,
        env: &dyn Env,
        batch: &TrajectoryBatch,
        potentials: Option<&[f64]>,
    ) -> Result<Tensor> {
        let obs = |s: &[i32]| self.observe(env, s);
        let terms = BalanceTerms::through(batch, &self.policy, &obs)?;
        let inputs = LossInputs {
            env,
            batch,
            log_z: Some(self.policy.log_z_param().as_tensor()),
            potentials,
        };
        loss.loss(terms, &inputs)
    }

    /// Whether the policy has a log F head (in the last column of the pooled head).
    pub fn has_flow(&self) -> bool {
        self.flow
    }

    /// Useful FLOPs per evaluated state of a training step (see [`transformer_policy`] and
    /// [`gin_policy`]).
    pub fn flops_per_row(&self) -> f64 {
        self.flops_per_row
    }
}

impl Net {
    /// The MLP, for what only it supports (the configuration refuses the rest).
    pub fn mlp(&self) -> Result<&Estimator> {
        match self {
            Self::Mlp(e) => Ok(e),
            Self::Seam(_) => Err(GfnError::invalid(
                "policy",
                "transformer",
                "this part of training takes the MLP only; use policy = mlp",
            )),
        }
    }

    /// The trainable parameters by name (`log Z` apart), in the optimiser's order.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        match self {
            Self::Mlp(e) => e.named_params(),
            Self::Seam(s) => s.policy.named_params(),
        }
    }

    /// `log Z`.
    pub fn log_z(&self) -> &Var {
        match self {
            Self::Mlp(e) => e.log_z(),
            Self::Seam(s) => s.policy.log_z_param(),
        }
    }

    /// Number of scalar parameters (`log Z` apart).
    pub fn num_params(&self) -> usize {
        self.named_params().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Where the parameters live.
    pub fn device(&self) -> &Device {
        match self {
            Self::Mlp(e) => e.device(),
            Self::Seam(s) => s.policy.device(),
        }
    }

    /// Sample `n` trajectories on-policy with `opts` into `batch` (the MLP through its fastest
    /// inference path).
    pub fn sample(
        &self,
        env: &dyn Env,
        sampler: &mut Sampler,
        n: usize,
        opts: SamplingOptions,
        rng: &mut GfnRng,
        batch: &mut TrajectoryBatch,
    ) -> Result<()> {
        match self {
            Self::Mlp(e) => match gfn_core::fast::Inference::new(e) {
                Some(mut fast) => sampler.sample_forward_with(env, &mut fast, n, opts, rng, batch),
                None => sampler.sample_forward(env, e, n, opts, rng, batch),
            },
            Self::Seam(s) => {
                let obs = |st: &[i32]| s.observe(env, st);
                sampler.sample_forward_with(env, &mut s.rollout(env, &obs), n, opts, rng, batch)
            }
        }
    }

    /// One trajectory on-policy from each of `starts` (initial states, e.g. of chosen conditions)
    /// with `opts` into `batch`.
    pub fn sample_from(
        &self,
        env: &dyn Env,
        sampler: &mut Sampler,
        starts: &[i32],
        opts: SamplingOptions,
        rng: &mut GfnRng,
        batch: &mut TrajectoryBatch,
    ) -> Result<()> {
        match self {
            Self::Mlp(e) => match gfn_core::fast::Inference::new(e) {
                Some(mut fast) => sampler.sample_forward_from(env, &mut fast, starts, opts, rng, batch),
                None => sampler.sample_forward_from(env, &mut &*e, starts, opts, rng, batch),
            },
            Self::Seam(s) => {
                let obs = |st: &[i32]| s.observe(env, st);
                sampler.sample_forward_from(env, &mut s.rollout(env, &obs), starts, opts, rng, batch)
            }
        }
    }

    /// `log P_F(a|s)` of every state of an enumerable environment.
    pub fn exact_log_pf(&self, ev: &ExactEvaluator, env: &dyn Env) -> Result<Vec<f64>> {
        match self {
            Self::Mlp(e) => ev.policy_log_probs(e),
            Self::Seam(s) => exact_log_pf(ev, env, &s.policy, &|st: &[i32]| s.observe(env, st)),
        }
    }

    /// `log P̂_T(x)` of each object from `m` backward trajectories
    /// ([`gfn_objectives::likelihood`]).
    pub fn log_terminal_probs(&self, env: &dyn Env, objects: &[i32], m: usize, rng: &mut GfnRng) -> Result<Vec<f64>> {
        match self {
            Self::Mlp(e) => gfn_objectives::likelihood::log_terminal_probs(env, e, objects, m, rng),
            Self::Seam(s) => gfn_objectives::likelihood::log_terminal_probs_through(
                env,
                &s.policy,
                &|st: &[i32]| s.observe(env, st),
                objects,
                m,
                rng,
            ),
        }
    }

    /// The model's estimate of `log Z`: the learned `log Z` (TB, VI), `log F(s_0)` (the flow
    /// losses; `log F̃(s_0)` in the forward-looking forms, whose initial offset is 0), or
    /// `log R(s_0) − log P_F(exit|s_0)` (modified DB).
    pub fn log_z_estimate(&self, objective: &Objective, env: &dyn Env) -> Result<f64> {
        let s = match self {
            Self::Mlp(e) => return objective.log_z_estimate(env, e),
            Self::Seam(s) => s,
        };
        let needs = s.loss.needs();
        // A conditional environment's log Z(c) is log F(s_0(c)).
        let conditional = env.condition_space().is_some();
        if needs.log_z && !conditional {
            return Ok(f64::from(s.policy.log_z_param().as_tensor().to_vec1::<f32>()?[0]));
        }
        let mut s0 = vec![0; env.state_dim()];
        env.initial_state(&mut s0);
        let out = s.policy.forward(&s.observe(env, &s0)?)?;
        let mut mask = vec![false; env.n_actions()];
        env.forward_mask(&s0, &mut mask);
        let logits: Vec<f64> = out.pf_logits.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let allowed = || logits.iter().zip(&mask).filter(|(_, m)| **m).map(|(l, _)| *l);
        if let SeamLoss::Row(_) = &s.loss {
            // Flow matching's logits are log edge flows: log Z is their total out of s_0 (soft Q:
            // the soft value V(s_0), log Z on a tree).
            return Ok(gfn_core::exact::logsumexp(allowed()));
        }
        if needs.log_flow || conditional {
            let f = out
                .log_flow
                .ok_or_else(|| GfnError::Other("the policy has no log F head".into()))?;
            return Ok(f.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0]);
        }
        let exit = env
            .exit_action()
            .ok_or_else(|| GfnError::Other(format!("{} has no exit action", env.name())))?;
        Ok(env.log_reward(&s0) - (logits[exit] - gfn_core::exact::logsumexp(allowed())))
    }
}

/// The transformer of `config` over `env`'s token encoding, and its useful FLOPs per evaluated
/// state of a training step: forward and backward (twice the forward) over the `L + 1` positions
/// of every layer: the four `d×d` projections, the two feed-forward products, and the `(L+1)·d`
/// products of the attention scores and values.
fn transformer_policy(
    config: &TrainConfig,
    env: &dyn Env,
    learned_pb: bool,
    flow: bool,
    device: &Device,
    rng: &mut GfnRng,
) -> Result<(TransformerPolicy, f64)> {
    let space = env.token_space().ok_or_else(|| {
        GfnError::invalid(
            "policy",
            "transformer",
            format!(
                "needs an environment with a token encoding of its states (bitseq); {} has none",
                env.name()
            ),
        )
    })?;
    let tc = TransformerConfig {
        vocab: space.vocab,
        max_len: space.max_len,
        d_model: config.hidden,
        heads: config.heads,
        layers: config.layers,
        d_ff: if config.d_ff == 0 {
            4 * config.hidden
        } else {
            config.d_ff
        },
        positions: config.positions,
        position_outputs: 0,
        pooled_outputs: 0,
    };
    let policy = TransformerPolicy::new(
        tc,
        env.n_actions(),
        learned_pb.then(|| env.n_backward_actions()),
        flow,
        device,
        rng,
    )?;
    let c = policy.encoder().config();
    let (t, d, f) = ((c.max_len + 1) as f64, c.d_model as f64, c.d_ff as f64);
    let macs_per_layer = t * (4.0 * d * d + 2.0 * d * f + 2.0 * t * d);
    let head = d * (c.pooled_outputs as f64);
    let flops = 3.0 * 2.0 * (c.layers as f64 * macs_per_layer + head);
    Ok((policy, flops))
}

/// Linear layers in each GIN layer's MLP (LED-GFN's MIS code: two).
pub const GIN_MLP_LAYERS: usize = 2;

/// The GIN of `config` (`hidden` wide, `layers` GIN layers, learnable ε, sum aggregation,
/// GraphNorm after every layer but the last with `gin_norm` (on mis by default: the official
/// code's BatchNorm keeps the dense RB graphs' sums on one scale, and GraphNorm does so without
/// making a state's outputs depend on its batch)) over `env`'s graph encoding, with the heads of its actions: one logit per node (node
/// `i` is forward action `i`; [`GinPolicy`]) or the graph-building actions ([`GraphBuildPolicy`]);
/// log F from the graph readout, P_B uniform. Its useful FLOPs per evaluated state of a training
/// step at the largest graph (an upper bound): forward and backward (twice the forward) through
/// the input layer, every layer's MLP and the heads, per node (and per pair for the pair head).
fn gin_policy(
    config: &TrainConfig,
    env: &dyn Env,
    flow: bool,
    device: &Device,
    rng: &mut GfnRng,
) -> Result<(SeamPolicy, f64)> {
    let space = env.graph_space().ok_or_else(|| {
        GfnError::invalid(
            "policy",
            "gin",
            format!(
                "needs an environment with a graph encoding of its states (mis, graph-building); {} has none",
                env.name()
            ),
        )
    })?;
    let gc = GinConfig {
        node_features: space.node_features,
        edge_features: space.edge_features,
        hidden: config.hidden,
        layers: config.layers,
        mlp_layers: GIN_MLP_LAYERS,
        node_outputs: 1,
        graph_outputs: 1,
        learn_eps: true,
        graph_norm: match config.gin_norm {
            GinNorm::Graph => true,
            GinNorm::None => false,
            GinNorm::Auto => config.env == EnvName::Mis,
        },
    };
    let (f, h) = (space.node_features as f64, config.hidden as f64);
    let macs_per_node = f * h + (config.layers * GIN_MLP_LAYERS) as f64 * h * h + h;
    match space.actions {
        GraphActions::PerNode => {
            let exit = env.exit_action().is_some();
            let nodes = env.n_actions() - usize::from(exit);
            let policy = GinPolicy::new(gc, nodes, exit, flow, device, rng)?;
            Ok((SeamPolicy::Gin(policy), 3.0 * 2.0 * nodes as f64 * macs_per_node))
        }
        GraphActions::Build {
            node_types,
            edge_types,
            pairs,
            directed,
            virtual_node,
        } => {
            let nodes =
                pairs.iter().map(|&(i, j)| i.max(j) as usize + 1).max().unwrap_or(1) + usize::from(virtual_node);
            let pair_macs = pairs.len() as f64 * 2.0 * h * edge_types as f64;
            let policy = GraphBuildPolicy::new(
                gc,
                node_types,
                edge_types,
                pairs,
                directed,
                virtual_node,
                flow,
                device,
                rng,
            )?;
            if policy.n_actions() != env.n_actions() {
                return Err(GfnError::invalid(
                    "policy",
                    "gin",
                    format!(
                        "gives {} graph-building actions, {} has {}",
                        policy.n_actions(),
                        env.name(),
                        env.n_actions()
                    ),
                ));
            }
            let flops = 3.0 * 2.0 * (nodes as f64 * macs_per_node + pair_macs);
            Ok((SeamPolicy::GraphBuild(policy), flops))
        }
    }
}
