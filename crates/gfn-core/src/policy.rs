//! The policy seam: what samplers, losses and exact evaluation need from a network, whatever it
//! is and whatever it reads.
//!
//! A [`Policy`] maps a batch of [`Observations`] (dense features, token sequences or graphs) to
//! P_F logits and, where it has them, P_B logits and `log F(s)`; it lists its parameters by name
//! and may hold `log Z`. [`Estimator`] (the MLP) is one, [`TransformerPolicy`] (the transformer
//! encoder's pooled head) another, [`GinPolicy`] (node-level actions from a GIN) a third, and
//! [`ModulePolicy`] makes any candle `Module` over dense features one. An environment's states become observations through an
//! [`Observe`] function, so a user's environment chooses its own encoding.
//!
//! On this seam: [`exact_log_pf`] (P_F of every state of an enumerable environment, for
//! [`ExactEvaluator::metrics_for`]) and [`tb_loss_on_policy`] (trajectory balance on trajectories
//! sampled from the policy with the graph recorded, uniform P_B).

use candle_core::{D, DType, Device, Tensor, Var};
use rand::Rng;

use crate::exact::ExactEvaluator;
use crate::nets::gin::{Gin, GinConfig};
use crate::nets::transformer::{TransformerConfig, TransformerEncoder};
use crate::nn::scalar_var;
use crate::obs::Observations;
use crate::{Env, Estimator, GfnError, GfnRng, Result};

/// What a policy gives for a batch of `B` states.
#[derive(Debug, Clone)]
pub struct PolicyOutput {
    /// Unmasked forward logits, `[B, A]`.
    pub pf_logits: Tensor,
    /// Unmasked backward logits, `[B, A_B]`, for a learned P_B.
    pub pb_logits: Option<Tensor>,
    /// `log F(s)`, `[B]`, with a flow head.
    pub log_flow: Option<Tensor>,
}

/// A GFlowNet policy network.
pub trait Policy {
    /// Every head on a batch of observations, recording the autograd graph.
    fn forward(&self, obs: &Observations) -> Result<PolicyOutput>;
    /// The trainable network parameters by name (`log Z` apart).
    fn named_params(&self) -> Vec<(String, Var)>;
    /// The scalar `log Z`, if the policy holds one.
    fn log_z(&self) -> Option<&Var>;
    /// Where the parameters live.
    fn device(&self) -> &Device;
    /// Whether [`Policy::forward`] gives P_B logits (else P_B is uniform over the parents, and a
    /// backward walk needs no forward pass).
    fn has_backward(&self) -> bool {
        true
    }
}

/// States (row-major, `state_dim` values each) to the observations a policy reads.
pub type Observe<'a> = dyn Fn(&[i32]) -> Result<Observations> + 'a;

impl Policy for Estimator {
    fn forward(&self, obs: &Observations) -> Result<PolicyOutput> {
        let Observations::Dense(x) = obs else {
            return Err(GfnError::invalid(
                "observations",
                "tokens or graphs",
                "the MLP estimator reads dense features: use a sequence or graph policy",
            ));
        };
        let out = Estimator::forward(self, x)?;
        Ok(PolicyOutput {
            pf_logits: out.pf_logits,
            pb_logits: out.pb_logits,
            log_flow: out.log_flow,
        })
    }
    fn named_params(&self) -> Vec<(String, Var)> {
        Estimator::named_params(self)
    }
    fn log_z(&self) -> Option<&Var> {
        Some(Estimator::log_z(self))
    }
    fn device(&self) -> &Device {
        Estimator::device(self)
    }
    fn has_backward(&self) -> bool {
        self.config().backward == crate::BackwardPolicy::Learned
    }
}

/// A transformer encoder as a policy on token sequences: its pooled head gives the columns
/// `[P_F logits (A) | P_B logits (A_B, if learned) | log F (if a flow head)]`.
#[derive(Debug, Clone)]
pub struct TransformerPolicy {
    encoder: TransformerEncoder,
    n_actions: usize,
    n_backward: Option<usize>,
    flow: bool,
    log_z: Var,
}

impl TransformerPolicy {
    /// An encoder of `config` (its head widths are set here: no per-position head, a pooled head
    /// of `A + A_B + 1` columns as needed) for `n_actions` forward actions, a learned P_B of
    /// `n_backward` actions if given, and a flow head if `flow`; `log Z` starts at 0.
    pub fn new(
        config: TransformerConfig,
        n_actions: usize,
        n_backward: Option<usize>,
        flow: bool,
        device: &Device,
        rng: &mut GfnRng,
    ) -> Result<Self> {
        if n_actions == 0 {
            return Err(GfnError::invalid("n_actions", 0, "must be at least 1"));
        }
        let config = TransformerConfig {
            position_outputs: 0,
            pooled_outputs: n_actions + n_backward.unwrap_or(0) + usize::from(flow),
            ..config
        };
        Ok(Self {
            encoder: TransformerEncoder::new(config, DType::F32, device, rng)?,
            n_actions,
            n_backward,
            flow,
            log_z: scalar_var(0.0, device)?,
        })
    }
    /// The `log Z` parameter.
    pub fn log_z_param(&self) -> &Var {
        &self.log_z
    }
    /// The encoder.
    pub fn encoder(&self) -> &TransformerEncoder {
        &self.encoder
    }
}

impl Policy for TransformerPolicy {
    fn forward(&self, obs: &Observations) -> Result<PolicyOutput> {
        let Observations::Tokens(tokens) = obs else {
            return Err(GfnError::invalid(
                "observations",
                "dense or graphs",
                "a transformer policy reads token sequences",
            ));
        };
        let pooled = self
            .encoder
            .forward(tokens)?
            .pooled
            .ok_or_else(|| GfnError::Other("transformer policy without a pooled head".into()))?;
        let pf_logits = pooled.narrow(D::Minus1, 0, self.n_actions)?;
        let mut col = self.n_actions;
        let pb_logits = match self.n_backward {
            Some(nb) => {
                col += nb;
                Some(pooled.narrow(D::Minus1, self.n_actions, nb)?)
            }
            None => None,
        };
        let log_flow = if self.flow {
            Some(pooled.narrow(D::Minus1, col, 1)?.squeeze(D::Minus1)?)
        } else {
            None
        };
        Ok(PolicyOutput {
            pf_logits,
            pb_logits,
            log_flow,
        })
    }
    fn named_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.encoder.named_params("transformer", &mut out);
        out
    }
    fn log_z(&self) -> Option<&Var> {
        Some(&self.log_z)
    }
    fn device(&self) -> &Device {
        self.log_z.device()
    }
    fn has_backward(&self) -> bool {
        self.n_backward.is_some()
    }
}

/// Any candle [`Module`](candle_core::Module) over dense features as a policy: its output
/// `[B, A (+ A_B) (+ 1)]` is split into P_F logits, P_B logits (if `n_backward`) and log F (if
/// `flow`). The parameters are the caller's (a `candle_nn::VarMap`'s, say, through
/// [`ModulePolicy::from_varmap`]); `log Z` is the policy's own, from 0. candle-nn's initialisers
/// draw from candle's RNG: for a run fixed by its seed, set the weights from [`GfnRng`].
pub struct ModulePolicy<M> {
    module: M,
    params: Vec<(String, Var)>,
    n_actions: usize,
    n_backward: Option<usize>,
    flow: bool,
    log_z: Var,
}

impl<M: candle_core::Module> ModulePolicy<M> {
    /// `module` with its named `params`, for `n_actions` forward actions, a learned P_B of
    /// `n_backward` actions if given, and a flow column if `flow`.
    pub fn new(
        module: M,
        params: Vec<(String, Var)>,
        n_actions: usize,
        n_backward: Option<usize>,
        flow: bool,
        device: &Device,
    ) -> Result<Self> {
        if n_actions == 0 {
            return Err(GfnError::invalid("n_actions", 0, "must be at least 1"));
        }
        Ok(Self {
            module,
            params,
            n_actions,
            n_backward,
            flow,
            log_z: scalar_var(0.0, device)?,
        })
    }

    /// `module` with every variable of `varmap`, sorted by name (a fixed order for optimisers
    /// and checkpoints).
    pub fn from_varmap(
        module: M,
        varmap: &candle_nn::VarMap,
        n_actions: usize,
        n_backward: Option<usize>,
        flow: bool,
        device: &Device,
    ) -> Result<Self> {
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| GfnError::Other("the VarMap's lock is poisoned".into()))?
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self::new(module, params, n_actions, n_backward, flow, device)
    }
}

impl<M: candle_core::Module> Policy for ModulePolicy<M> {
    fn forward(&self, obs: &Observations) -> Result<PolicyOutput> {
        let Observations::Dense(x) = obs else {
            return Err(GfnError::invalid(
                "observations",
                "tokens or graphs",
                "a module policy reads dense features",
            ));
        };
        let out = self.module.forward(x)?;
        let want = self.n_actions + self.n_backward.unwrap_or(0) + usize::from(self.flow);
        if out.dims().last() != Some(&want) || out.rank() != 2 {
            return Err(GfnError::invalid(
                "module output",
                format!("{:?}", out.dims()),
                format!("must be [B, {want}] (P_F, then P_B, then log F columns)"),
            ));
        }
        let pf_logits = out.narrow(1, 0, self.n_actions)?;
        let pb_logits = match self.n_backward {
            Some(nb) => Some(out.narrow(1, self.n_actions, nb)?),
            None => None,
        };
        let log_flow = if self.flow {
            Some(out.narrow(1, want - 1, 1)?.squeeze(1)?)
        } else {
            None
        };
        Ok(PolicyOutput {
            pf_logits,
            pb_logits,
            log_flow,
        })
    }
    fn named_params(&self) -> Vec<(String, Var)> {
        self.params.clone()
    }
    fn log_z(&self) -> Option<&Var> {
        Some(&self.log_z)
    }
    fn device(&self) -> &Device {
        self.log_z.device()
    }
    fn has_backward(&self) -> bool {
        self.n_backward.is_some()
    }
}

/// A GIN as a policy on graph states whose node-level actions are "act on node i" (a
/// maximum-independent-set task; graphs of up to `nodes` nodes, node i of a graph is action i):
/// the P_F logits are
/// `[one per node (the node head) | exit (graph head column 0), if any]`, `log F` the next graph
/// head column; a uniform P_B (no P_B head). Node actions stay equivariant: relabelling the nodes
/// permutes their logits.
#[derive(Debug, Clone)]
pub struct GinPolicy {
    gin: Gin,
    nodes: usize,
    exit: bool,
    flow: bool,
    log_z: Var,
}

impl GinPolicy {
    /// A GIN of `config` (its head widths are set here: one output per node; a graph head of the
    /// exit and log F columns as needed) for graphs of at most `nodes` nodes (node `i` of a graph
    /// is forward action `i`; a smaller graph's missing nodes get logit 0, masked by the
    /// environment); `log Z` starts at 0.
    pub fn new(
        config: GinConfig,
        nodes: usize,
        exit: bool,
        flow: bool,
        device: &Device,
        rng: &mut GfnRng,
    ) -> Result<Self> {
        if nodes == 0 {
            return Err(GfnError::invalid("nodes", 0, "must be at least 1"));
        }
        let config = GinConfig {
            node_outputs: 1,
            graph_outputs: usize::from(exit) + usize::from(flow),
            ..config
        };
        Ok(Self {
            gin: Gin::new(config, DType::F32, device, rng)?,
            nodes,
            exit,
            flow,
            log_z: scalar_var(0.0, device)?,
        })
    }
    /// The network.
    pub fn gin(&self) -> &Gin {
        &self.gin
    }
    /// The `log Z` parameter.
    pub fn log_z_param(&self) -> &Var {
        &self.log_z
    }
    /// The largest graph (number of node actions).
    pub fn nodes(&self) -> usize {
        self.nodes
    }
}

/// Where each node's logit goes in the `[G, nodes]` action matrix, when some graph has fewer
/// than `nodes` nodes (`None` when every graph has exactly `nodes`). Nodes of a graph are
/// consecutive in the batch ([`GraphBatch`](crate::obs::GraphBatch)'s layout); a graph with more
/// than `nodes` nodes is an error naming it.
fn node_slots(graphs: &crate::obs::GraphBatch, nodes: usize) -> Result<Option<Vec<u32>>> {
    let (n, _) = graphs.sizes()?;
    let g = graphs.num_graphs;
    let owner = graphs.node_graph.to_vec1::<u32>()?;
    let mut pos = Vec::with_capacity(n);
    let mut counts = vec![0usize; g];
    let mut last = 0u32;
    for &o in &owner {
        if o < last || o as usize >= g {
            return Err(GfnError::invalid(
                "graphs",
                format!("node of graph {o} after graph {last}"),
                "must list each graph's nodes together, graphs in order",
            ));
        }
        last = o;
        let k = counts[o as usize];
        if k >= nodes {
            return Err(GfnError::invalid(
                "graphs",
                format!("graph {o} with more than {nodes} nodes"),
                format!("must have at most {nodes} nodes (the policy's node actions)"),
            ));
        }
        counts[o as usize] += 1;
        pos.push((o as usize * nodes + k) as u32);
    }
    Ok((n != g * nodes).then_some(pos))
}

impl Policy for GinPolicy {
    fn forward(&self, obs: &Observations) -> Result<PolicyOutput> {
        let Observations::Graphs(graphs) = obs else {
            return Err(GfnError::invalid(
                "observations",
                "dense or tokens",
                "a GIN policy reads graphs",
            ));
        };
        let g = graphs.num_graphs;
        let slots = node_slots(graphs, self.nodes)?;
        let out = self.gin.forward(graphs)?;
        let node_logits = out
            .nodes
            .ok_or_else(|| GfnError::Other("GIN policy without a node head".into()))?;
        let node_logits = match slots {
            // Every graph has all `nodes` nodes: the stack is already `[G, nodes]`.
            None => node_logits.reshape((g, self.nodes))?,
            // Smaller graphs: each node's logit goes to its own slot; the missing nodes' slots
            // stay 0 (their actions are masked by the environment).
            Some(pos) => {
                let pos = Tensor::from_vec(pos, node_logits.dim(0)?, node_logits.device())?;
                let flat = node_logits.flatten_all()?;
                Tensor::zeros(g * self.nodes, flat.dtype(), flat.device())?
                    .index_add(&pos, &flat, 0)?
                    .reshape((g, self.nodes))?
            }
        };
        let graph_cols = out.graphs;
        let pf_logits = match (&graph_cols, self.exit) {
            (Some(cols), true) => Tensor::cat(&[&node_logits, &cols.narrow(1, 0, 1)?], 1)?,
            _ => node_logits,
        };
        let log_flow = match (&graph_cols, self.flow) {
            (Some(cols), true) => Some(cols.narrow(1, usize::from(self.exit), 1)?.squeeze(1)?),
            _ => None,
        };
        Ok(PolicyOutput {
            pf_logits,
            pb_logits: None,
            log_flow,
        })
    }
    fn named_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.gin.named_params("gin", &mut out);
        out
    }
    fn log_z(&self) -> Option<&Var> {
        Some(&self.log_z)
    }
    fn device(&self) -> &Device {
        self.log_z.device()
    }
    fn has_backward(&self) -> bool {
        false
    }
}

/// A GIN as a graph-building policy ([`GraphActions::Build`](crate::obs::GraphActions::Build):
/// add a node of a type, add a typed edge between two existing nodes, stop), as torchgfn's
/// graph-action GNN: the GIN's node states `h` of a graph give
///
/// * "add a node of type t" and "stop": columns of the graph head (sum readout);
/// * "add an edge of type k on the pair (i, j)": the pair head `W·φ(h_i, h_j) + b`, with
///   `φ = [h_i + h_j, h_i ⊙ h_j]` for undirected pairs (symmetric) and `[h_i, h_j]` for directed ones;
///   a pair whose nodes the graph does not have yet gets logit 0 (masked by the environment);
/// * `log F`: one more graph-head column; P_B uniform.
#[derive(Debug, Clone)]
pub struct GraphBuildPolicy {
    gin: Gin,
    pair: crate::nn::Linear,
    node_types: usize,
    edge_types: usize,
    pairs: Vec<(u32, u32)>,
    directed: bool,
    virtual_node: bool,
    flow: bool,
    log_z: Var,
}

impl GraphBuildPolicy {
    /// A GIN of `config` (its heads set here: no node head; a graph head of `node_types` + stop
    /// (+ log F) columns) with a pair head of `edge_types` outputs over the slots `pairs`, for
    /// graphs whose node 0 is virtual where `virtual_node` (the real nodes follow it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: GinConfig,
        node_types: usize,
        edge_types: usize,
        pairs: Vec<(u32, u32)>,
        directed: bool,
        virtual_node: bool,
        flow: bool,
        device: &Device,
        rng: &mut GfnRng,
    ) -> Result<Self> {
        if node_types == 0 || edge_types == 0 {
            return Err(GfnError::invalid(
                "node_types",
                format!("{node_types} node and {edge_types} edge types"),
                "must both be at least 1",
            ));
        }
        let config = GinConfig {
            node_outputs: 0,
            graph_outputs: node_types + 1 + usize::from(flow),
            ..config
        };
        let gin = Gin::new(config, DType::F32, device, rng)?;
        let pair = crate::nn::Linear::new(2 * config.hidden, edge_types, device, rng)?;
        Ok(Self {
            gin,
            pair,
            node_types,
            edge_types,
            pairs,
            directed,
            virtual_node,
            flow,
            log_z: scalar_var(0.0, device)?,
        })
    }

    /// The GIN.
    pub fn gin(&self) -> &Gin {
        &self.gin
    }

    /// The `log Z` parameter.
    pub fn log_z_param(&self) -> &Var {
        &self.log_z
    }

    /// Number of forward actions.
    pub fn n_actions(&self) -> usize {
        self.node_types + self.pairs.len() * self.edge_types + 1
    }

    /// `[G, P·K]` edge logits from the node states `h` (`owner`: each node's graph).
    fn pair_logits(&self, h: &Tensor, owner: &[u32], graphs: usize) -> Result<Tensor> {
        let (p, k) = (self.pairs.len(), self.edge_types);
        let mut offset = vec![0u32; graphs + 1];
        for &o in owner {
            offset[o as usize + 1] += 1;
        }
        let count: Vec<u32> = offset[1..].to_vec();
        for g in 0..graphs {
            offset[g + 1] += offset[g];
        }
        // Real node `i` of a graph with a virtual node is its node `i + 1`.
        let skip = u32::from(self.virtual_node);
        let count: Vec<u32> = count.iter().map(|&c| c.saturating_sub(skip)).collect();
        let offset: Vec<u32> = offset.iter().map(|&o| o + skip).collect();
        let (mut src, mut dst, mut slot) = (Vec::new(), Vec::new(), Vec::new());
        for g in 0..graphs {
            for (q, &(i, j)) in self.pairs.iter().enumerate() {
                if i < count[g] && j < count[g] {
                    src.push(offset[g] + i);
                    dst.push(offset[g] + j);
                    slot.push((g * p + q) as u32);
                }
            }
        }
        let zeros = Tensor::zeros((graphs * p, k), h.dtype(), h.device())?;
        if slot.is_empty() {
            return Ok(zeros.reshape((graphs, p * k))?);
        }
        let n = slot.len();
        let index = |v: Vec<u32>| Tensor::from_vec(v, n, h.device());
        let (hi, hj) = (h.index_select(&index(src)?, 0)?, h.index_select(&index(dst)?, 0)?);
        let features = if self.directed {
            Tensor::cat(&[&hi, &hj], 1)?
        } else {
            Tensor::cat(&[&(&hi + &hj)?, &(&hi * &hj)?], 1)?
        };
        let logits = self.pair.forward(&features, false)?;
        Ok(zeros.index_add(&index(slot)?, &logits, 0)?.reshape((graphs, p * k))?)
    }
}

impl Policy for GraphBuildPolicy {
    fn forward(&self, obs: &Observations) -> Result<PolicyOutput> {
        let Observations::Graphs(graphs) = obs else {
            return Err(GfnError::invalid(
                "observations",
                "dense or tokens",
                "a graph-building GIN policy reads graphs",
            ));
        };
        let g = graphs.num_graphs;
        let owner = graphs.node_graph.to_vec1::<u32>()?;
        let out = self.gin.forward(graphs)?;
        let cols = out
            .graphs
            .ok_or_else(|| GfnError::Other("graph-building policy without a graph head".into()))?;
        let t = self.node_types;
        let pf_logits = Tensor::cat(
            &[
                &cols.narrow(1, 0, t)?,
                &self.pair_logits(&out.hidden, &owner, g)?,
                &cols.narrow(1, t, 1)?,
            ],
            1,
        )?;
        let log_flow = self.flow.then(|| cols.narrow(1, t + 1, 1)?.squeeze(1)).transpose()?;
        Ok(PolicyOutput {
            pf_logits,
            pb_logits: None,
            log_flow,
        })
    }
    fn named_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.gin.named_params("gin", &mut out);
        out.push(("pair.weight".into(), self.pair.weight.clone()));
        out.push(("pair.bias".into(), self.pair.bias.clone()));
        out
    }
    fn log_z(&self) -> Option<&Var> {
        Some(&self.log_z)
    }
    fn device(&self) -> &Device {
        self.log_z.device()
    }
    fn has_backward(&self) -> bool {
        false
    }
}

/// A [`Policy`] as the losses' [`RowForward`](crate::RowForward): one forward with the graph over
/// the batch's rows (and the extra rows flow matching evaluates, by their states), so every
/// row-level loss (flow matching, soft Q) runs through the seam as the balance losses do.
pub struct SeamForward<'a> {
    /// The policy.
    pub policy: &'a dyn Policy,
    /// Its observations of a batch of states.
    pub observe: &'a Observe<'a>,
}

impl crate::RowForward for SeamForward<'_> {
    fn forward_rows(
        &mut self,
        batch: &crate::TrajectoryBatch,
        extra: &[f32],
        extra_rows: usize,
    ) -> Result<crate::EstimatorOutput> {
        if extra_rows > 0 {
            return Err(GfnError::Other(format!(
                "a seam policy observes states: {} extra rows came as features only (call forward_rows_with_states)",
                extra.len()
            )));
        }
        self.forward_rows_with_states(batch, &[], &[], 0)
    }
    fn log_z(&self) -> Tensor {
        match self.policy.log_z() {
            Some(z) => z.as_tensor().clone(),
            None => Tensor::zeros(1, DType::F32, self.policy.device()).expect("a [1] zero tensor"),
        }
    }
    fn forward_rows_with_states(
        &mut self,
        batch: &crate::TrajectoryBatch,
        _extra: &[f32],
        extra_states: &[i32],
        _extra_rows: usize,
    ) -> Result<crate::EstimatorOutput> {
        let obs = if extra_states.is_empty() {
            (self.observe)(&batch.states)?
        } else {
            let mut all = Vec::with_capacity(batch.states.len() + extra_states.len());
            all.extend_from_slice(&batch.states);
            all.extend_from_slice(extra_states);
            (self.observe)(&all)?
        };
        let out = self.policy.forward(&obs)?;
        // Heads are often column views of one output: the losses' gathers want contiguous tensors.
        Ok(crate::EstimatorOutput {
            pf_logits: out.pf_logits.contiguous()?,
            pb_logits: out.pb_logits.map(|t| t.contiguous()).transpose()?,
            log_flow: out.log_flow.map(|t| t.contiguous()).transpose()?,
        })
    }
}

/// A [`Policy`] as the [`Sampler`](crate::Sampler)'s rollout policy: each step's states are
/// observed and evaluated without a graph. `Sampler::sample_forward_with(env, &mut rollout, …)`
/// then fills a [`TrajectoryBatch`](crate::TrajectoryBatch) for any objective
/// (`gfn_objectives::terms::BalanceTerms::through`).
pub struct SeamRollout<'a> {
    /// The policy.
    pub policy: &'a dyn Policy,
    /// Its observations of a batch of states.
    pub observe: &'a Observe<'a>,
    /// The environment's backward actions (the width of a uniform P_B's zero logits).
    pub n_backward: usize,
}

impl crate::estimator::RolloutPolicy for SeamRollout<'_> {
    fn pf_logits(&mut self, _x: &[f32], _rows: usize, _out: &mut Vec<f32>) -> Result<usize> {
        Err(GfnError::Other(
            "a seam policy observes states: call pf_logits_of (the sampler does)".into(),
        ))
    }
    fn pf_logits_of(&mut self, states: &[i32], _x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<usize> {
        let logits = self.policy.forward(&(self.observe)(states)?)?.pf_logits.detach();
        let (r, width) = logits.dims2()?;
        if r != rows {
            return Err(GfnError::Other(format!(
                "the policy gave {r} rows of logits for {rows} states"
            )));
        }
        *out = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(width)
    }
}

impl crate::estimator::BackwardRolloutPolicy for SeamRollout<'_> {
    fn pb_logits(&mut self, _x: &[f32], _rows: usize, _out: &mut Vec<f32>) -> Result<crate::estimator::LogitLayout> {
        Err(GfnError::Other(
            "a seam policy observes states: call pb_logits_of (the sampler does)".into(),
        ))
    }
    /// The learned P_B logits, or zeros (uniform over the allowed parents) without a P_B head.
    fn pb_logits_of(
        &mut self,
        states: &[i32],
        _x: &[f32],
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<crate::estimator::LogitLayout> {
        let learned = if self.policy.has_backward() {
            self.policy.forward(&(self.observe)(states)?)?.pb_logits
        } else {
            None
        };
        match learned {
            Some(logits) => {
                let (r, width) = logits.dims2()?;
                if r != rows {
                    return Err(GfnError::Other(format!(
                        "the policy gave {r} rows of backward logits for {rows} states"
                    )));
                }
                *out = logits.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(crate::estimator::LogitLayout {
                    stride: width,
                    offset: 0,
                })
            }
            None => {
                let width = self.n_backward;
                out.clear();
                out.resize(rows * width, 0.0);
                Ok(crate::estimator::LogitLayout {
                    stride: width,
                    offset: 0,
                })
            }
        }
    }
}

/// A seam policy as local search's [`StatePolicy`](crate::local_search::StatePolicy): P_F and
/// P_B logits of states (zeros for a uniform P_B), without a graph.
impl crate::local_search::StatePolicy for SeamRollout<'_> {
    fn logits(&mut self, states: &[i32], rows: usize, pf: &mut Vec<f32>, pb: &mut Vec<f32>) -> Result<()> {
        let out = self.policy.forward(&(self.observe)(states)?)?;
        let host = |t: &Tensor| -> Result<Vec<f32>> {
            if t.dim(0)? != rows {
                return Err(GfnError::Other(format!(
                    "the policy gave {} rows of logits for {rows} states",
                    t.dim(0)?
                )));
            }
            Ok(t.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        *pf = host(&out.pf_logits)?;
        *pb = match &out.pb_logits {
            Some(l) => host(l)?,
            None => vec![0.0; rows * self.n_backward],
        };
        Ok(())
    }
}

/// `log P_F(a | s)` of every state and action of `eval`'s enumeration through `policy` (no
/// graph, in chunks of 4096 states), `[S · A]` f64, −∞ on forbidden actions: the input of
/// [`ExactEvaluator::metrics_for`].
pub fn exact_log_pf(eval: &ExactEvaluator, env: &dyn Env, policy: &dyn Policy, observe: &Observe) -> Result<Vec<f64>> {
    const CHUNK: usize = 4096;
    let (sd, na) = (env.state_dim(), env.n_actions());
    let states = eval.states();
    let n = eval.num_states();
    let mut logits = Vec::with_capacity(n * na);
    for start in (0..n).step_by(CHUNK) {
        let rows = CHUNK.min(n - start);
        let obs = observe(&states[start * sd..(start + rows) * sd])?;
        let out = policy.forward(&obs)?.pf_logits.detach();
        if out.dims() != [rows, na] {
            return Err(GfnError::Other(format!(
                "the policy gave P_F logits of shape {:?} for {rows} states of {} actions",
                out.dims(),
                na
            )));
        }
        logits.extend(out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(ExactEvaluator::log_softmax_masked(&logits, eval.forward_mask(), na))
}

/// Trajectory balance on `batch` trajectories sampled from `policy` mixed with `epsilon` of
/// uniform exploration over the allowed actions (the autograd graph recorded while sampling, so
/// each log-probability is computed once; the loss uses the policy's own log P_F) with a uniform
/// P_B:
///
/// `L = mean_b (log Z + Σ_t log P_F(s_{t+1}|s_t) − Σ_t log P_B(s_t|s_{t+1}) − log R(x_b))²`,
///
/// `log P_B(s_t|s_{t+1}) = −log #parents(s_{t+1})` (0 for the exit step). Each step forwards every
/// row (finished rows are masked out), so the batch keeps its shape. Returns the loss and the
/// terminal states `[B · state_dim]`.
pub fn tb_loss_on_policy(
    env: &dyn Env,
    policy: &dyn Policy,
    observe: &Observe,
    batch: usize,
    epsilon: f64,
    rng: &mut GfnRng,
) -> Result<(Tensor, Vec<i32>)> {
    if !(0.0..=1.0).contains(&epsilon) {
        return Err(GfnError::invalid("epsilon", epsilon, "must be in [0, 1]"));
    }
    if env.condition_space().is_some() {
        return Err(GfnError::invalid(
            "env",
            env.name(),
            "is conditional: its log Z(c) is a function of the condition (the log F head at s_0(c)), not the scalar this loop trains; use the balance losses through BalanceTerms",
        ));
    }
    let log_z = policy
        .log_z()
        .ok_or_else(|| GfnError::invalid("policy", "without log Z", "TB needs a policy with log Z"))?;
    let dev = policy.device().clone();
    let (sd, na, nb) = (env.state_dim(), env.n_actions(), env.n_backward_actions());
    let exit = env.exit_action();
    let mut states = vec![0i32; batch * sd];
    for s in states.chunks_exact_mut(sd) {
        env.initial_state(s);
    }
    let mut done = vec![false; batch];
    let mut log_pb_sum = vec![0f64; batch];
    let mut log_pf_sum = Tensor::zeros(batch, DType::F32, &dev)?;
    let (mut mask, mut bmask) = (vec![false; na], vec![false; nb]);
    for _ in 0..env.max_actions() {
        if done.iter().all(|&d| d) {
            break;
        }
        let logits = policy.forward(&observe(&states)?)?.pf_logits.to_dtype(DType::F32)?;
        let mut allowed = vec![0u8; batch * na];
        for (b, s) in states.chunks_exact(sd).enumerate() {
            if done[b] {
                allowed[b * na] = 1; // any one action: the row is masked out below
                continue;
            }
            env.forward_mask(s, &mut mask);
            for (a, &m) in mask.iter().enumerate() {
                allowed[b * na + a] = u8::from(m);
            }
        }
        let allowed_t = Tensor::from_vec(allowed.clone(), (batch, na), &dev)?;
        let masked = allowed_t.where_cond(&logits, &Tensor::full(-1e30f32, (batch, na), &dev)?)?;
        let log_probs = candle_nn::ops::log_softmax(&masked, D::Minus1)?;
        let probs = log_probs.detach().exp()?.to_vec2::<f32>()?;
        let mut actions = vec![0u32; batch];
        let mut active = vec![0f32; batch];
        for b in 0..batch {
            if done[b] {
                continue;
            }
            let n_allowed = allowed[b * na..(b + 1) * na].iter().filter(|&&m| m != 0).count() as f64;
            let u: f64 = rng.random();
            let (mut acc, mut pick) = (0f64, None);
            for a in 0..na {
                if allowed[b * na + a] == 0 {
                    continue;
                }
                acc += (1.0 - epsilon) * f64::from(probs[b][a]) + epsilon / n_allowed;
                pick = Some(a);
                if u < acc {
                    break;
                }
            }
            let a = pick.ok_or_else(|| {
                GfnError::Other(format!(
                    "no allowed action in state {:?}",
                    &states[b * sd..(b + 1) * sd]
                ))
            })?;
            actions[b] = a as u32;
            active[b] = 1.0;
            let s = &mut states[b * sd..(b + 1) * sd];
            if Some(a) == exit {
                done[b] = true;
                continue;
            }
            env.step(s, a);
            env.backward_mask(s, &mut bmask);
            let parents = bmask.iter().filter(|&&m| m).count();
            log_pb_sum[b] -= (parents as f64).ln();
            if exit.is_none() && env.is_terminal(s) {
                done[b] = true;
            }
        }
        let chosen = log_probs
            .gather(&Tensor::from_vec(actions, (batch, 1), &dev)?, 1)?
            .squeeze(1)?;
        log_pf_sum = (log_pf_sum + chosen.mul(&Tensor::from_vec(active, batch, &dev)?)?)?;
    }
    if !done.iter().all(|&d| d) {
        return Err(GfnError::Other(format!(
            "{}: a trajectory did not finish in max_actions = {} steps",
            env.name(),
            env.max_actions()
        )));
    }
    let rest: Vec<f32> = states
        .chunks_exact(sd)
        .zip(&log_pb_sum)
        .map(|(s, pb)| (pb + env.log_reward(s)) as f32)
        .collect();
    let resid = log_pf_sum
        .broadcast_add(&log_z.as_tensor().to_dtype(DType::F32)?)?
        .sub(&Tensor::from_vec(rest, batch, &dev)?)?;
    Ok((resid.sqr()?.mean_all()?, states))
}

/// The policy's parameters and `log Z` (named `log_z`), by name.
fn all_params(policy: &dyn Policy) -> Vec<(String, Var)> {
    let mut params = policy.named_params();
    if let Some(z) = policy.log_z() {
        params.push(("log_z".into(), z.clone()));
    }
    params
}

/// Save the policy's named parameters and `log Z` to a safetensors file, written beside `path`
/// and renamed into place (a reader never sees a torn file).
pub fn save_params(policy: &dyn Policy, path: &std::path::Path) -> Result<()> {
    let tensors: std::collections::HashMap<String, Tensor> = all_params(policy)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("params");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        GfnError::Other(format!("cannot write {}: {e}", path.display()))
    })
}

/// Load parameters saved by [`save_params`] into `policy`: every parameter must be in the file
/// with its shape (the first missing or mismatched one is named), and the file must hold nothing
/// else.
pub fn load_params(policy: &dyn Policy, path: &std::path::Path) -> Result<()> {
    let mut saved = candle_core::safetensors::load(path, policy.device())
        .map_err(|e| GfnError::Other(format!("cannot read {}: {e}", path.display())))?;
    let params = all_params(policy);
    for (name, var) in &params {
        let Some(t) = saved.remove(name) else {
            return Err(GfnError::invalid(
                "parameters",
                name,
                format!("missing from {}", path.display()),
            ));
        };
        if t.dims() != var.dims() {
            return Err(GfnError::invalid(
                "parameters",
                name,
                format!(
                    "has shape {:?} in {}, the policy expects {:?}",
                    t.dims(),
                    path.display(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    if let Some(extra) = saved.keys().min() {
        return Err(GfnError::invalid(
            "parameters",
            extra,
            format!("in {} is not a parameter of this policy", path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GIN policy over graphs of up to 5 nodes: a 3-node graph's node logits are the same
    /// alone, beside a full 5-node graph, or beside another small one (its missing nodes' slots
    /// are 0); a graph over 5 nodes is refused by name.
    #[test]
    fn gin_node_logits_do_not_depend_on_padding() {
        use crate::nets::gin::GinConfig;
        use crate::obs::{GraphBatch, HostGraph};
        let dev = Device::Cpu;
        let config = GinConfig {
            node_features: 2,
            edge_features: 0,
            hidden: 8,
            layers: 2,
            mlp_layers: 2,
            node_outputs: 1,
            graph_outputs: 1,
            learn_eps: true,
            graph_norm: true,
        };
        let policy = GinPolicy::new(config, 5, false, true, &dev, &mut crate::rng_from_seed(1)).unwrap();
        let graph = |n: u32, f: f32| HostGraph {
            node_features: (0..2 * n).map(|i| f + i as f32 * 0.1).collect(),
            edges: (1..n).flat_map(|i| [(i - 1, i), (i, i - 1)]).collect(),
            edge_features: Vec::new(),
        };
        let (small, full, other) = (graph(3, 0.2), graph(5, -0.4), graph(2, 0.7));
        let logits = |gs: &[HostGraph]| {
            let b = GraphBatch::from_graphs(gs, 2, 0, &dev).unwrap();
            let out = policy.forward(&Observations::Graphs(b)).unwrap();
            (
                out.pf_logits.to_vec2::<f32>().unwrap(),
                out.log_flow.unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        let (alone, flow_alone) = logits(std::slice::from_ref(&small));
        assert_eq!(alone[0][3..], [0.0, 0.0]);
        for (batch, at) in [(vec![full.clone(), small.clone()], 1), (vec![small.clone(), other], 0)] {
            let (l, f) = logits(&batch);
            for (a, b) in alone[0].iter().zip(&l[at]) {
                assert!((a - b).abs() < 1e-6, "{:?} vs {:?}", alone[0], l[at]);
            }
            assert!((flow_alone[0] - f[at]).abs() < 1e-5);
        }
        let (l, _) = logits(std::slice::from_ref(&full));
        assert!(l[0].iter().all(|&x| x != 0.0), "{l:?}");
        let too_big = GraphBatch::from_graphs(&[graph(6, 0.1)], 2, 0, &dev).unwrap();
        let err = policy.forward(&Observations::Graphs(too_big)).unwrap_err().to_string();
        assert!(err.contains("more than 5 nodes"), "{err}");
    }

    /// A candle-nn module behind the seam: columns split as declared, parameters reached by the
    /// gradient, a wrong output width and non-dense input refused by name.
    #[test]
    fn any_candle_module_is_a_policy() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let layer = candle_nn::linear(4, 6, vb.pp("head")).unwrap();
        let p = ModulePolicy::from_varmap(layer.clone(), &varmap, 3, Some(2), true, &dev).unwrap();
        let names: Vec<String> = p.named_params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["head.bias", "head.weight"]);
        let x = Tensor::from_vec((0..8).map(|i| i as f32 / 8.0).collect::<Vec<_>>(), (2, 4), &dev).unwrap();
        let out = p.forward(&Observations::Dense(x.clone())).unwrap();
        let full = candle_core::Module::forward(&layer, &x)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(out.pf_logits.to_vec2::<f32>().unwrap()[1], full[1][..3]);
        assert_eq!(out.pb_logits.unwrap().to_vec2::<f32>().unwrap()[0], full[0][3..5]);
        assert_eq!(out.log_flow.as_ref().unwrap().to_vec1::<f32>().unwrap()[1], full[1][5]);
        let grads = out.log_flow.unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in p.named_params() {
            assert!(grads.get(v.as_tensor()).is_some(), "{name} gets no gradient");
        }
        let narrow = ModulePolicy::from_varmap(layer, &varmap, 3, None, false, &dev).unwrap();
        let e = narrow.forward(&Observations::Dense(x)).unwrap_err().to_string();
        assert!(e.contains("module output") && e.contains("[B, 3]"), "{e}");
        let tokens = crate::obs::TokenBatch::from_sequences(&[vec![1]], 2, 2, &dev).unwrap();
        let e = narrow.forward(&Observations::Tokens(tokens)).unwrap_err().to_string();
        assert!(e.contains("dense"), "{e}");
    }

    /// Parameters round-trip through safetensors, and a file of another policy is refused naming
    /// the tensor.
    #[test]
    fn parameters_round_trip_and_mismatches_are_named() {
        use crate::nets::transformer::{Positions, TransformerConfig};
        let dev = Device::Cpu;
        let config = TransformerConfig {
            vocab: 5,
            max_len: 4,
            d_model: 8,
            heads: 2,
            layers: 1,
            d_ff: 16,
            positions: Positions::Learned,
            position_outputs: 0,
            pooled_outputs: 0,
        };
        let a = TransformerPolicy::new(config.clone(), 4, None, true, &dev, &mut crate::rng_from_seed(1)).unwrap();
        let b = TransformerPolicy::new(config.clone(), 4, None, true, &dev, &mut crate::rng_from_seed(2)).unwrap();
        a.log_z().unwrap().set(&Tensor::new(&[1.5f32], &dev).unwrap()).unwrap();
        let path = std::env::temp_dir().join(format!("gfn-policy-{}.safetensors", std::process::id()));
        save_params(&a, &path).unwrap();
        load_params(&b, &path).unwrap();
        for ((n, x), (_, y)) in all_params(&a).iter().zip(all_params(&b)) {
            let (x, y) = (
                x.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(x, y, "{n}");
        }
        let wider = TransformerConfig {
            d_model: 12,
            heads: 3,
            ..config
        };
        let c = TransformerPolicy::new(wider, 4, None, true, &dev, &mut crate::rng_from_seed(3)).unwrap();
        let e = load_params(&c, &path).unwrap_err().to_string();
        assert!(e.contains("shape") && e.contains("transformer."), "{e}");
        let _ = std::fs::remove_file(path);
    }
}
