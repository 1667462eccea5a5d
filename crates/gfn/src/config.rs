//! The training configuration: one struct for command-line flags and TOML files, merged with a
//! clear error when the two disagree, and resolved against the defaults.
//!
//! Defaults are the trajectory-balance paper's hypergrid recipe as used by torchgfn
//! (`reference/baselines.md`): 4×8 hypergrid, R0 0.1; MLP 2×256 with P_B sharing the trunk;
//! Adam lr 1e-3, log Z lr 0.1; batch 16; on-policy.

use serde::{Deserialize, Serialize};

use gfn_core::{BackwardPolicy, GfnError, Result};
use gfn_ebm::joint::Negatives;
use gfn_ebm::mh::AcceptRule;
use gfn_envs::SetSize;
use gfn_envs::bitseq::BitSeqOrder;
use gfn_envs::data::synthetic::Dataset;
use gfn_objectives::ObjectiveName;

use crate::options::{
    Condition, DeviceChoice, EbmMethod, Engine, EnvName, EpsilonFinal, EvalConditions, GinNorm, GuideFloor,
    LocalSearchAccept, MisGraphs, Rule, TemperatureFinal,
};
use crate::replay::Priority;
use crate::seam::PolicyKind;
use gfn_core::nets::transformer::Positions;

/// The most intra-op threads a run may ask for.
pub const MAX_THREADS: usize = 1024;

/// The most gradient updates a run may take on one batch (LED-GFN's MIS code takes 30).
pub const MAX_UPDATES_PER_BATCH: usize = 1000;

/// The most training or test graphs of the MIS task (LED-GFN: 4,000 and 500).
pub const MAX_MIS_GRAPHS: usize = 100_000;

/// The most samples per MIS test graph in an evaluation (LED-GFN: 20).
pub const MAX_MIS_SAMPLES: usize = 10_000;

macro_rules! config {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $default:expr ),* $(,)?) => {
        /// A fully resolved training configuration (what `config.toml` in a run directory holds).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct TrainConfig {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        /// Options as given on the command line or in a TOML file; `None` = not given.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "clap", derive(clap::Args))]
        #[serde(deny_unknown_fields)]
        pub struct ConfigArgs {
            $( $(#[$doc])* #[cfg_attr(feature = "clap", arg(long))] pub $field: Option<$ty>, )*
        }

        impl Default for TrainConfig {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl ConfigArgs {
            /// Merge flags (`self`) with a file's values, then fill defaults. A key given in both
            /// with different values is an error naming it.
            pub fn resolve(self, file: ConfigArgs, file_name: &str) -> Result<TrainConfig> {
                let d = TrainConfig::default();
                let mut given = self.given();
                given.extend(file.given());
                let mut c = TrainConfig { $( $field: merge(stringify!($field), self.$field, file.$field, d.$field, file_name)?, )* };
                c.apply_loss_defaults(&given);
                Ok(c)
            }

            /// Names of the options that were given.
            pub fn given(&self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( if self.$field.is_some() { v.push(stringify!($field)); } )*
                v
            }
        }
    };
}

fn merge<T: PartialEq + std::fmt::Debug>(
    name: &'static str,
    flag: Option<T>,
    file: Option<T>,
    default: T,
    file_name: &str,
) -> Result<T> {
    match (flag, file) {
        (Some(a), Some(b)) if a != b => Err(GfnError::invalid(
            name,
            format!("{a:?}"),
            format!("given as {a:?} on the command line but as {b:?} in {file_name}; give it once"),
        )),
        (Some(a), _) => Ok(a),
        (None, Some(b)) => Ok(b),
        (None, None) => Ok(default),
    }
}

config! {
    /// Environment: `hypergrid`, `set`, `bag`, `bitseq`, `bayesnet`, or an energy-based-modelling task (EB-GFN):
    /// `ebm-2d`, `ising`, `digits` [default: hypergrid].
    env: EnvName = EnvName::Hypergrid,
    /// Seed of the task's own random parts (the bag task's modes) [default: 0].
    task_seed: u64 = 0,
    /// Conditional GFlowNet: `none`, or `beta=LO..HI` (one sampler for every reward exponent β
    /// in the range, `R^β`; exact evaluation per condition) [default: none].
    condition: Condition = Condition::None,
    /// Conditions evaluated: `auto` (for beta=LO..HI: LO, √(LO·HI), HI) or a list such as
    /// `0.5;1;2` [default: auto].
    eval_conditions: EvalConditions = EvalConditions::Auto,
    /// Set generation: small (|U| 30, k 20), medium (80, 60) or large (100, 80) [default: small].
    size: SetSize = SetSize::Small,
    /// bitseq: sequence length n in bits (≤ 128, a multiple of 8) [default: 120].
    bitseq_length: usize = 120,
    /// bitseq: word size k in bits (each step writes one word) [default: 8].
    bitseq_word: usize = 8,
    /// bitseq: number of modes (each 8-bit block one of five; at most 5^(n/8)) [default: 60].
    bitseq_modes: usize = 60,
    /// bitseq: `append` (left to right; the DAG is a tree) or `fill` (any empty word slot)
    /// [default: append].
    bitseq_order: BitSeqOrder = BitSeqOrder::Append,
    /// bayesnet: nodes d (2–6; exact evaluation up to 5) [default: 5].
    bn_nodes: usize = 5,
    /// bayesnet: linear-Gaussian observations N [default: 100].
    bn_samples: usize = 100,
    /// bayesnet: observation noise standard deviation [default: 0.1].
    bn_noise: f64 = 0.1,
    /// graph-building: the largest graph (nodes, ≤ 16; exact evaluation up to 4 or 5) [default: 4].
    graph_nodes: usize = 4,
    /// graph-building: node types [default: 2].
    graph_node_types: usize = 2,
    /// graph-building: edge types [default: 1].
    graph_edge_types: usize = 1,
    /// graph-building: directed edges [default: false].
    graph_directed: bool = false,
    /// graph-building: only acyclic graphs (DAGs when directed, forests otherwise) [default: false].
    graph_acyclic: bool = false,
    /// graph-building: the reward `log R = graph_per_edge·#edges − graph_size_penalty·|n −
    /// graph_target_nodes|`; its preferred node count [default: 3].
    graph_target_nodes: usize = 3,
    /// graph-building: log-reward per edge [default: 0.5].
    graph_per_edge: f64 = 0.5,
    /// graph-building: log-reward lost per node away from `graph_target_nodes` [default: 1].
    graph_size_penalty: f64 = 1.0,
    /// mis: the RB graphs, `reduced` (20–60 nodes) or `small` (200–300, LED-GFN's) [default:
    /// reduced].
    mis_graphs: MisGraphs = MisGraphs::Reduced,
    /// mis: training graphs (drawn once from `task_seed`) [default: 4000].
    mis_train: usize = 4000,
    /// mis: held-out test graphs [default: 500].
    mis_test: usize = 500,
    /// mis: samples per test graph in each evaluation (the average set size is over them, then
    /// over the test graphs) [default: 20].
    mis_samples: usize = 20,
    /// mis: the reward exponent β of `log R = β·|I|` at the start of training [default: 1].
    beta_start: f64 = 1.0,
    /// mis: β after the anneal [default: 500].
    beta_end: f64 = 500.0,
    /// mis: trajectories (training graphs seen) over which β moves linearly from `beta_start` to
    /// `beta_end`; 0 = `beta_end` throughout [default: 40000].
    beta_anneal: u64 = 40_000,
    /// ebm-2d: data set: 2spirals, 8gaussians, circles, moons, pinwheel, swissroll, checkerboard
    /// [default: 2spirals].
    dataset: Dataset = Dataset::TwoSpirals,
    /// ising: lattice side L (D = L², periodic) [default: 10].
    lattice: usize = 10,
    /// ising: coupling σ of the true J = σ·A [default: 0.1].
    sigma: f64 = 0.1,
    /// ising: Gibbs-sampled training examples [default: 2000].
    ising_samples: usize = 2000,
    /// ising: single-site Gibbs updates of every chain that make the training data
    /// [default: 1000000].
    ising_updates: usize = 1_000_000,
    /// EBM tasks: training method, `ebgfn` (EBM with a GFlowNet sampler) or `pcd` (persistent
    /// contrastive divergence with Gibbs negatives) [default: ebgfn].
    ebm_method: EbmMethod = EbmMethod::Ebgfn,
    /// EBM tasks: energy MLP width (ignored by ising's quadratic model) [default: 256].
    ebm_hidden: usize = 256,
    /// EBM tasks: energy MLP hidden layers [default: 3].
    ebm_layers: usize = 3,
    /// EBM tasks: Adam learning rate of the energy model [default: 0.001].
    ebm_lr: f64 = 1e-3,
    /// ising: weight of the penalty `ebm_l1 · Σ_ij |J_ij|` on the learned couplings (the GWG
    /// Ising-learning protocol uses 0.01) [default: 0].
    ebm_l1: f64 = 0.0,
    /// EB-GFN: weight α of the TB loss on backward trajectories from data [default: 0.5].
    back_ratio: f64 = 0.5,
    /// EB-GFN: iterations over which the back-and-forth depth K grows to D [default: 100000].
    warmup_k: usize = 100_000,
    /// EB-GFN: GFlowNet steps per iteration, each on the iteration's data batch; the EBM steps
    /// once (the official code's `train_steps`) [default: 1].
    gfn_steps: usize = 1,
    /// EB-GFN: negatives, `mh` (back-and-forth proposal + accept step) or `gfn` (GFlowNet
    /// samples) [default: mh].
    negatives: Negatives = Negatives::BackAndForth,
    /// EB-GFN: accept rule, `mh` (Metropolis–Hastings) or `barker` (the official code's)
    /// [default: mh].
    accept: AcceptRule = AcceptRule::MetropolisHastings,
    /// PCD: single-site Gibbs updates per iteration; 0 = one sweep (D updates) [default: 0].
    gibbs_steps: usize = 0,
    /// EBM tasks: importance samples for log Z when D > 20 [default: 100000].
    eval_log_z_samples: usize = 100_000,
    /// EBM tasks: test examples in each evaluation (ebm-2d draws fresh ones) [default: 2000].
    eval_test: usize = 2000,
    /// EB-GFN: backward trajectories per test example in the GFlowNet likelihood [default: 20].
    eval_backward: usize = 20,
    /// Hypergrid dimension d [default: 4].
    ndim: usize = 4,
    /// Hypergrid side H, at least 2 [default: 8].
    height: usize = 8,
    /// Hypergrid base reward R0 [default: 0.1].
    r0: f64 = 0.1,
    /// Hypergrid outer-region bonus R1 [default: 0.5].
    r1: f64 = 0.5,
    /// Hypergrid mode bonus R2 [default: 2.0].
    r2: f64 = 2.0,
    /// Objective: fm, db, tb, subtb, fl-db, fl-subtb, mdb, led-db, led-subtb, or policy
    /// gradient pg-u (uniform P_B), pg-b (P_B trained by policy gradient), pg-g (P_B trained
    /// toward a guide), pg-trpo (uniform P_B, trust-region P_F step; separate trunks: its
    /// shared_trunk default is false), vi (reverse-KL variational inference by REINFORCE) or
    /// soft-q (soft Q-learning)
    /// [default: tb].
    loss: ObjectiveName = ObjectiveName::Tb,
    /// SubTB(λ) weight λ > 0 [default: 0.9].
    lambda: f64 = 0.9,
    /// Replay: terminal objects kept from training (the last N), re-sampled backward with P_B
    /// and trained on beside each on-policy batch; 0 = off [default: 0].
    replay_size: usize = 0,
    /// Replay: objects replayed per iteration; 0 = batch_size [default: 0].
    replay_batch: usize = 0,
    /// Replay: `uniform` or `reward` (in proportion to R(x)) [default: uniform].
    replay_priority: Priority = Priority::Uniform,
    /// Replay in a data-parallel run: every rank's new objects enter every rank's buffer (one
    /// shared buffer; required for replay with more than one rank) [default: false].
    replay_shared: bool = false,
    /// Local search (LS-GFN): each object of the batch is refined by K steps back with P_B and K
    /// forward with P_F, kept or rejected (`local_search_accept`), and the results are re-sampled
    /// backward and trained on beside the batch; 0 = off. With an exit action (hypergrid,
    /// bayesnet) the forward part runs until P_F exits, and acceptance must be greedy [default: 0].
    local_search: usize = 0,
    /// Local search: `greedy` (keep x' when R(x') ≥ R(x), as LS-GFN) or `mh` (Metropolis–Hastings
    /// toward R; environments without exit action) [default: greedy].
    local_search_accept: LocalSearchAccept = LocalSearchAccept::Greedy,
    /// Policy gradient (pg-*): GAE's λ in [0, 1] [default: 0.99].
    gae_lambda: f64 = 0.99,
    /// pg-g: states with log R(s) at or below this floor get the guide's capped exit
    /// probability; `auto` = log R0 on hypergrid [default: auto].
    guide_floor: GuideFloor = GuideFloor(Rule::Rule),
    /// pg-trpo: KL limit δ of the trust region (mean KL from the old to the new P_F) [default: 0.01].
    trpo_max_kl: f64 = 0.01,
    /// pg-trpo: conjugate-gradient iterations [default: 10].
    trpo_cg_iters: usize = 10,
    /// pg-trpo: step halvings tried before the step is rejected [default: 20].
    trpo_backtracks: usize = 20,
    /// pg-trpo: damping added to the Fisher matrix [default: 0.1].
    trpo_damping: f64 = 0.1,
    /// pg-trpo: steps of the batch used for Fisher-vector products (every k-th) [default: 1024].
    trpo_fisher_rows: usize = 1024,
    /// Trajectories per iteration [default: 16].
    batch_size: usize = 16,
    /// Training iterations [default: 10000].
    iterations: usize = 10_000,
    /// Seed of the run's random number generator [default: 0].
    seed: u64 = 0,
    /// ε-uniform exploration mixed into P_F when sampling, in [0, 1] [default: 0].
    epsilon: f64 = 0.0,
    /// Sampling temperature of P_F, > 0 [default: 1].
    temperature: f64 = 1.0,
    /// ε at the end of the schedule, reached linearly from `epsilon` over
    /// `schedule_iterations`; `none` keeps ε constant [default: none].
    epsilon_final: EpsilonFinal = EpsilonFinal(Rule::Rule),
    /// Temperature at the end of the schedule, reached linearly from `temperature`; `none` keeps
    /// it constant [default: none].
    temperature_final: TemperatureFinal = TemperatureFinal(Rule::Rule),
    /// Length of the ε and temperature schedules in iterations (constant afterwards); 0 = the
    /// run's `iterations` [default: 0].
    schedule_iterations: usize = 0,
    /// Adam learning rate of the networks [default: 0.001].
    lr: f64 = 1e-3,
    /// Adam learning rate of log Z [default: 0.1].
    lr_logz: f64 = 0.1,
    /// Decoupled weight decay of the networks (AdamW); 0 = Adam [default: 0].
    weight_decay: f64 = 0.0,
    /// Policy network: `mlp` (every objective; the tape and device engines), `transformer`
    /// (a pre-LayerNorm transformer encoder over the environment's token encoding, bitseq: d_model
    /// = `hidden`, `layers` blocks, `heads`, `d_ff`, `positions`) or `gin` (a graph isomorphism
    /// network over the environment's graph encoding, mis: `hidden` wide, `layers` GIN layers,
    /// P_B uniform); the last two train by the balance losses tb, db, subtb, fl-db, fl-subtb, mdb,
    /// led-db, led-subtb and vi, flow matching and soft Q, with replay, local search and the
    /// gradient analysis, on the graph engine [default: mlp].
    policy: PolicyKind = PolicyKind::Mlp,
    /// Hidden width of the MLP, or the transformer's d_model [default: 256].
    hidden: usize = 256,
    /// Number of hidden layers of the MLP, or of transformer blocks [default: 2].
    layers: usize = 2,
    /// Transformer: attention heads (must divide `hidden`) [default: 4].
    heads: usize = 4,
    /// Transformer: feed-forward width; 0 = 4 · hidden [default: 0].
    d_ff: usize = 0,
    /// GIN: normalisation, `auto` (GraphNorm on mis, none elsewhere), `graph` or `none` [default:
    /// auto].
    gin_norm: GinNorm = GinNorm::Auto,
    /// Transformer: position encoding, `learned` or `sinusoidal` [default: learned].
    positions: Positions = Positions::Learned,
    /// Gradient updates on each sampled batch (the loss recomputed after each; LED-GFN's MIS code
    /// takes 30 steps per rollout); the balance losses, flow matching and soft Q on the cpu
    /// engines [default: 1].
    updates_per_batch: usize = 1,
    /// Share one trunk between P_F, P_B and log F, or give each its own MLP [default: true;
    /// false with loss = pg-trpo].
    shared_trunk: bool = true,
    /// Backward policy: learned or uniform [default: learned].
    backward_policy: BackwardPolicy = BackwardPolicy::Learned,
    /// Evaluate (exact metrics), log and checkpoint every this many iterations [default: 100].
    eval_every: usize = 100,
    /// Number of best distinct sampled objects in the top-k metrics [default: 100].
    top_k: usize = 100,
    /// Trajectories drawn each iteration from the policy without exploration (ε 0, temperature
    /// 1), only to measure it: they feed the top-k and recent-reward metrics; 0 = measure the
    /// training samples instead. Not counted in training time [default: 0].
    metric_batch: usize = 0,
    /// Number of most recent measured samples whose mean reward is compared to `E_{p*}[R]`
    /// (relative error) [default: 800].
    recent_window: usize = 800,
    /// Number of most recent sampled terminal states in the empirical distribution [default: 200000].
    empirical_window: usize = 200_000,
    /// Intra-op threads for matrix products; 1 is fastest at these sizes [default: 1].
    threads: usize = 1,
    /// Training engine: `auto` (tape on CPU, graph elsewhere), `tape` (rollout outputs reused,
    /// hand-written batched backward), or `graph` (candle autograd over one batched forward)
    /// [default: auto].
    engine: Engine = Engine::Auto,
    /// Where training runs: `cpu`, or `cuda` / `cuda:N` (a build with the `cuda` feature and an
    /// NVIDIA GPU: the whole loop on the device, environments and sampling included; hypergrid,
    /// bitseq and ising-fixed with tb or subtb), or `cpu-kernels` (that device engine on its CPU
    /// reference ops: slow, for checking) [default: cpu].
    device: DeviceChoice = DeviceChoice::Cpu,
    /// Device engine: every this many rollout steps, stop if every trajectory is done (one
    /// scalar read back); 0 = always roll out the longest possible length [default: 8].
    done_check_every: usize = 8,
    /// Device engine: roll out with one fused kernel per step (features, MLP, sampling,
    /// transition) instead of one kernel per layer and stage [default: true].
    fused_rollout: bool = true,
    /// Device engine: trajectories per thread block of the fused rollout kernel (1, 2, 4, 8 or
    /// 16; the samples are the same for every value), or 0 to choose from the batch size and the
    /// GPU's multiprocessors [default: 0].
    rollout_rows: usize = 0,
    /// Device engine: the hand-written training pass and backward (fused head gradients, one
    /// product per weight gradient) instead of candle autograd; the two agree to float rounding
    /// [default: true].
    manual_backward: bool = true,
    /// LED: hidden width of the potential network; 0 = the policy's `hidden`, as in the official
    /// code (at width 256 its nine passes per iteration cost ~5× the GFlowNet step) [default: 32].
    led_hidden: usize = 32,
    /// LED: learning rate of the potential network [default: 0.001].
    led_lr: f64 = 1e-3,
    /// LED: dropout rate γ of the decomposition loss in [0, 1); negative = the paper's rule
    /// (0.1 below 10 transitions, 0.2 otherwise) [default: -1].
    led_drop_rate: f64 = -1.0,
    /// LED: extra potential updates per iteration, replayed from the buffer [default: 8].
    led_steps: usize = 8,
    /// LED: batches kept in the replay buffer [default: 300].
    led_buffer: usize = 300,
    /// Gradient analysis (SubTB paper): at every evaluation whose iteration is a multiple of this,
    /// record the cosine between small-batch TB/DB/SubTB gradients and a large-batch TB gradient;
    /// 0 = off [default: 0].
    grad_cosine_every: usize = 0,
    /// Trajectories in the large TB batch of the gradient analysis [default: 1024].
    grad_cosine_batch: usize = 1024,
    /// Small batches averaged over in the gradient analysis [default: 8].
    grad_cosine_repeats: usize = 8,
}

impl TrainConfig {
    /// Where the device engine runs: `None` for `cpu` (the CPU engines), `Some(None)` for
    /// `cpu-kernels` (the device engine on its CPU reference ops), `Some(Some(n))` for CUDA
    /// device `n`.
    pub fn engine_device(&self) -> Option<Option<usize>> {
        self.device.engine_device()
    }

    /// pg-trpo's trust-region settings.
    pub fn trust_region(&self) -> gfn_objectives::trpo::TrustRegionConfig {
        gfn_objectives::trpo::TrustRegionConfig {
            max_kl: self.trpo_max_kl,
            cg_iters: self.trpo_cg_iters,
            backtracks: self.trpo_backtracks,
            damping: self.trpo_damping,
            fisher_rows: self.trpo_fisher_rows,
        }
    }

    /// What the device engine supports: hypergrid, bitseq and ising-fixed, with tb or subtb,
    /// on-policy (ε and temperature allowed), without replay, local search or metric sampling.
    fn validate_device(&self) -> Result<()> {
        if self.engine_device().is_none() {
            return Ok(());
        }
        let why = |field: &'static str, value: String, allowed: &str| {
            Err(GfnError::invalid(
                field,
                value,
                format!("{allowed} with device = {}", self.device),
            ))
        };
        if !matches!(self.env, EnvName::Hypergrid | EnvName::Bitseq | EnvName::IsingFixed) {
            return why("env", self.env.to_string(), "must be hypergrid, bitseq or ising-fixed");
        }
        if !matches!(self.loss, ObjectiveName::Tb | ObjectiveName::SubTb) {
            return why("loss", self.loss.to_string(), "must be tb or subtb");
        }
        if self.replay_size > 0 {
            return why("replay_size", self.replay_size.to_string(), "must be 0");
        }
        if self.local_search > 0 {
            return why("local_search", self.local_search.to_string(), "must be 0");
        }
        if self.metric_batch > 0 {
            return why("metric_batch", self.metric_batch.to_string(), "must be 0");
        }
        if self.grad_cosine_every > 0 {
            return why("grad_cosine_every", self.grad_cosine_every.to_string(), "must be 0");
        }
        if self.engine == Engine::Tape {
            return why("engine", self.engine.to_string(), "must be auto or graph");
        }
        Ok(())
    }

    /// What the networks behind the seam (transformer, GIN) support: the balance losses over
    /// the terms (LED's forms included), fm, soft-q and the policy-gradient family (on the GIN
    /// only those with a uniform P_B), with replay, local search and the gradient analysis, on
    /// the graph engine and the CPU; a width the heads divide.
    fn validate_policy(&self) -> Result<()> {
        if self.policy == PolicyKind::Mlp {
            return Ok(());
        }
        if self.policy == PolicyKind::Transformer && (self.heads == 0 || !self.hidden.is_multiple_of(self.heads)) {
            return Err(GfnError::invalid(
                "heads",
                self.heads,
                format!("must be at least 1 and divide hidden = {}", self.hidden),
            ));
        }
        let why = |field: &'static str, value: String, allowed: &str| {
            Err(GfnError::invalid(
                field,
                value,
                format!("{allowed} with policy = {}", self.policy),
            ))
        };
        if self.policy == PolicyKind::Gin && matches!(self.loss, ObjectiveName::PgBackward | ObjectiveName::PgGuided) {
            return why(
                "loss",
                self.loss.to_string(),
                "must not train P_B (the GIN's P_B is uniform over the parents): use pg-u or pg-trpo",
            );
        }
        if self.engine == Engine::Tape {
            return why("engine", self.engine.to_string(), "must be auto or graph");
        }
        if self.device != DeviceChoice::Cpu {
            return why("device", self.device.to_string(), "must be cpu");
        }
        Ok(())
    }

    /// `(ε, temperature)` at the end of their schedules (the start values where constant).
    pub fn schedule_ends(&self) -> (f64, f64) {
        (
            self.epsilon_final.0.or(self.epsilon),
            self.temperature_final.0.or(self.temperature),
        )
    }

    /// ε and temperature at iteration `t` (0-based): linear from the start values to
    /// [`TrainConfig::schedule_ends`] over `schedule_iterations` (0: `iterations`), then constant.
    pub fn sampling_at(&self, t: u64) -> gfn_core::SamplingOptions {
        let (eps_end, temp_end) = self.schedule_ends();
        let len = if self.schedule_iterations == 0 {
            self.iterations
        } else {
            self.schedule_iterations
        };
        let f = if len <= 1 {
            1.0
        } else {
            (t as f64 / (len - 1) as f64).min(1.0)
        };
        gfn_core::SamplingOptions {
            epsilon: self.epsilon + (eps_end - self.epsilon) * f,
            temperature: self.temperature + (temp_end - self.temperature) * f,
        }
    }

    /// The objective of `loss`, with its settings (`lambda`, `gae_lambda`, `guide_floor`).
    pub fn objective(&self) -> Result<gfn_objectives::Objective> {
        let objective = gfn_objectives::Objective::new(self.loss, self.lambda)?;
        let floor = match self.guide_floor.0 {
            Rule::Value(v) => v,
            Rule::Rule if self.env == EnvName::Hypergrid => self.r0.ln() + 1e-9,
            Rule::Rule if self.loss == ObjectiveName::PgGuided => {
                return Err(GfnError::invalid(
                    "guide_floor",
                    "auto",
                    format!(
                        "only hypergrid has an automatic floor (log R0); give a number for {}",
                        self.env
                    ),
                ));
            }
            Rule::Rule => f64::NEG_INFINITY,
        };
        objective.with_pg_settings(self.gae_lambda, floor)
    }

    /// Check every field's range, naming the first bad one, and that the environment builds.
    pub fn validate(&self) -> Result<()> {
        self.validate_training()?;
        if self.env.is_ebm() {
            return crate::ebm::validate(self).map_err(|e| GfnError::Other(format!("{e:#}")));
        }
        if self.env == EnvName::Hypergrid && self.r0 == 0.0 {
            return Err(GfnError::invalid(
                "r0",
                self.r0,
                "must be > 0 for training: with r0 = 0 the objects outside the reward bands have R = 0 (log R = −∞), which no balance loss can fit; use a small positive r0 such as 1e-4",
            ));
        }
        if self.env == EnvName::Mis {
            for (field, v, most) in [
                ("mis_train", self.mis_train, MAX_MIS_GRAPHS),
                ("mis_test", self.mis_test, MAX_MIS_GRAPHS),
                ("mis_samples", self.mis_samples, MAX_MIS_SAMPLES),
            ] {
                if v == 0 || v > most {
                    return Err(GfnError::invalid(field, v, format!("must be in 1 ..= {most}")));
                }
            }
        }
        if self.env == EnvName::Bayesnet {
            // Its data are drawn while the environment is built: check them first.
            let data = crate::memory::Need {
                field: "bn_samples",
                value: self.bn_samples.to_string(),
                what: "the observations".into(),
                bytes: self.bn_samples as f64 * self.bn_nodes as f64 * 8.0,
            };
            crate::memory::check(&[data], crate::memory::machine_memory())?;
        }
        let env = crate::envs::build_env(self)?;
        if self.policy == PolicyKind::Transformer && env.token_space().is_none() {
            return Err(GfnError::invalid(
                "policy",
                self.policy,
                format!(
                    "needs an environment with a token encoding of its states (bitseq); {} has none",
                    env.name()
                ),
            ));
        }
        if self.policy == PolicyKind::Gin && env.graph_space().is_none() {
            return Err(GfnError::invalid(
                "policy",
                self.policy,
                format!(
                    "needs an environment with a graph encoding of its states (mis); {} has none",
                    env.name()
                ),
            ));
        }
        crate::memory::check(&self.memory_needs(env.as_ref()), crate::memory::machine_memory())
    }

    /// Lower bounds on what a run of this configuration allocates on `env`, each with the field
    /// that sizes it (see [`crate::memory`]).
    pub fn memory_needs(&self, env: &dyn gfn_core::Env) -> Vec<crate::memory::Need> {
        use crate::memory::{Need, network_need, trajectory_need};
        let (h, l) = (self.hidden, self.layers);
        let outputs = env.n_actions() + env.n_backward_actions() + 1;
        let mut needs = vec![
            network_need(
                "the GFlowNet's network",
                ("hidden", "layers"),
                env.feature_dim(),
                h,
                l,
                outputs,
            ),
            trajectory_need(
                "batch_size",
                "one training batch's trajectories",
                env,
                self.batch_size,
                h,
                l,
            ),
        ];
        if let Some(states) = env.enumeration_size() {
            let (field, value) = if self.env == EnvName::Hypergrid {
                ("ndim", format!("{} (height {})", self.ndim, self.height))
            } else {
                ("env", self.env.to_string())
            };
            needs.push(crate::memory::exact_need(field, value, env, states));
        }
        if self.metric_batch > 0 {
            needs.push(trajectory_need(
                "metric_batch",
                "one measurement batch's trajectories",
                env,
                self.metric_batch,
                h,
                l,
            ));
        }
        if self.replay_size > 0 {
            let batch = if self.replay_batch == 0 {
                self.batch_size
            } else {
                self.replay_batch
            };
            needs.push(trajectory_need(
                "replay_batch",
                "one batch of replayed trajectories",
                env,
                batch,
                h,
                l,
            ));
            let held = self.replay_size.min(self.iterations.saturating_mul(self.batch_size));
            needs.push(Need {
                field: "replay_size",
                value: self.replay_size.to_string(),
                what: "the replay buffer's objects".into(),
                bytes: held as f64 * (4.0 * env.state_dim() as f64 + 8.0),
            });
        }
        if self.grad_cosine_every > 0 {
            needs.push(trajectory_need(
                "grad_cosine_batch",
                "the gradient analysis's trajectories",
                env,
                self.grad_cosine_batch,
                h,
                l,
            ));
        }
        if self.loss.is_led() {
            let led_h = if self.led_hidden == 0 { h } else { self.led_hidden };
            needs.push(network_need(
                "LED's potential network",
                ("led_hidden", "layers"),
                2 * env.feature_dim(),
                led_h,
                l,
                1,
            ));
            let stored = self.led_buffer.min(self.iterations) as f64;
            needs.push(Need {
                field: "led_buffer",
                value: self.led_buffer.to_string(),
                what: "LED's buffer of stored batches".into(),
                // At least one transition (its two feature rows and an index) per trajectory.
                bytes: stored * self.batch_size as f64 * (8.0 * env.feature_dim() as f64 + 4.0),
            });
        }
        needs
    }

    /// Defaults that depend on the objective, for the options not `given`: pg-trpo's
    /// trust-region step moves the P_F network alone, so it gets separate trunks.
    pub fn apply_loss_defaults(&mut self, given: &[&str]) {
        if self.loss == ObjectiveName::PgTrustRegion && !given.contains(&"shared_trunk") {
            self.shared_trunk = false;
        }
    }

    /// Refuse an option that was given (on the command line or in a TOML file: `given`) but has
    /// no effect on this run — it belongs to another environment, objective, method or device, or
    /// to a feature that is off — naming the option and what it belongs to.
    pub fn check_given(&self, given: &[&'static str]) -> Result<()> {
        for &field in given {
            if let Some(belongs) = self.inapplicable(field) {
                return Err(GfnError::invalid(
                    field,
                    self.value_of(field),
                    format!("has no effect here: it applies {belongs}"),
                ));
            }
        }
        Ok(())
    }

    /// The value of `field` as TOML writes it.
    pub fn value_of(&self, field: &str) -> String {
        toml::to_string(self)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(&format!("{field} = ")).map(str::to_string))
            })
            .unwrap_or_default()
    }

    /// Where `field` applies, if not to this run (`None`: it applies, or it applies everywhere).
    pub fn inapplicable(&self, field: &str) -> Option<String> {
        use EnvName as E;
        use ObjectiveName as L;
        let env = self.env;
        let ebm = env.is_ebm();
        let loss = self.loss;
        let gflownet_loss = |ok: bool| ok && !ebm;
        let objective = (!ebm).then(|| gfn_objectives::Objective::new(loss, 1.0).ok()).flatten();
        let only = |ok: bool, belongs: &str| (!ok).then(|| belongs.to_string());
        match field {
            "ndim" | "height" | "r0" | "r1" | "r2" => only(env == E::Hypergrid, "to env = hypergrid"),
            "size" => only(env == E::Set, "to env = set"),
            "condition" => only(!ebm, "to GFlowNet tasks (not the EBM tasks)"),
            "eval_conditions" => only(
                self.condition != Condition::None && !ebm,
                "to a conditional GFlowNet (condition = beta=LO..HI)",
            ),
            "task_seed" => only(
                matches!(env, E::Bag | E::Bayesnet | E::Bitseq | E::Ising | E::Mis),
                "to env = bag, bayesnet, bitseq, ising and mis (the task's random parts)",
            ),
            "bitseq_length" | "bitseq_word" | "bitseq_modes" | "bitseq_order" => {
                only(env == E::Bitseq, "to env = bitseq")
            }
            "bn_nodes" | "bn_samples" | "bn_noise" => only(env == E::Bayesnet, "to env = bayesnet"),
            "graph_nodes" | "graph_node_types" | "graph_edge_types" | "graph_directed" | "graph_acyclic"
            | "graph_target_nodes" | "graph_per_edge" | "graph_size_penalty" => {
                only(env == E::GraphBuilding, "to env = graph-building")
            }
            "mis_graphs" | "mis_train" | "mis_test" | "mis_samples" | "beta_start" | "beta_end" | "beta_anneal" => {
                only(env == E::Mis, "to env = mis")
            }
            "dataset" => only(env == E::Ebm2d, "to env = ebm-2d"),
            "lattice" | "sigma" => only(
                matches!(env, E::Ising | E::IsingFixed),
                "to env = ising and ising-fixed",
            ),
            "ising_samples" | "ising_updates" | "ebm_l1" => only(env == E::Ising, "to env = ising"),
            "ebm_method" | "ebm_lr" | "eval_log_z_samples" | "eval_test" => {
                only(ebm, "to the EBM tasks (env = ebm-2d, ising, digits)")
            }
            "ebm_hidden" | "ebm_layers" => only(
                matches!(env, E::Ebm2d | E::Digits),
                "to the energy MLP of env = ebm-2d and digits (ising's energy is quadratic)",
            ),
            "back_ratio" | "warmup_k" | "gfn_steps" | "negatives" | "accept" | "eval_backward" => only(
                ebm && self.ebm_method == EbmMethod::Ebgfn,
                "to EB-GFN (an EBM task with ebm_method = ebgfn)",
            ),
            "gibbs_steps" => only(
                ebm && self.ebm_method == EbmMethod::Pcd,
                "to PCD (an EBM task with ebm_method = pcd)",
            ),
            "loss" => only(!ebm, "to GFlowNet tasks (the EBM tasks train their sampler with TB)"),
            "lambda" => only(
                gflownet_loss(loss.has_lambda()),
                "to loss = subtb, fl-subtb and led-subtb",
            ),
            "replay_batch" | "replay_priority" | "replay_shared" => {
                only(self.replay_size > 0, "with replay (replay_size > 0)")
            }
            "local_search_accept" => only(self.local_search > 0, "with local search (local_search > 0)"),
            "gae_lambda" => only(
                gflownet_loss(loss.is_policy_gradient()),
                "to the policy-gradient losses (pg-u, pg-b, pg-g, pg-trpo)",
            ),
            "guide_floor" => only(gflownet_loss(loss == L::PgGuided), "to loss = pg-g"),
            "trpo_max_kl" | "trpo_cg_iters" | "trpo_backtracks" | "trpo_damping" | "trpo_fisher_rows" => {
                only(gflownet_loss(loss == L::PgTrustRegion), "to loss = pg-trpo")
            }
            "led_hidden" | "led_lr" | "led_drop_rate" | "led_steps" | "led_buffer" => {
                only(gflownet_loss(loss.is_led()), "to loss = led-db and led-subtb")
            }
            "grad_cosine_batch" | "grad_cosine_repeats" => only(
                self.grad_cosine_every > 0,
                "with the gradient analysis (grad_cosine_every > 0)",
            ),
            "schedule_iterations" => only(
                self.epsilon_final.0 != Rule::Rule || self.temperature_final.0 != Rule::Rule,
                "to a schedule (epsilon_final or temperature_final)",
            ),
            "done_check_every" | "fused_rollout" | "rollout_rows" | "manual_backward" => only(
                self.device != DeviceChoice::Cpu,
                "to the device engine (device = cuda or cpu-kernels)",
            ),
            "updates_per_batch" => only(
                gflownet_loss(!loss.is_policy_gradient()) && self.device == DeviceChoice::Cpu,
                "to the balance losses, fm and soft-q on the cpu engines (not the policy-gradient losses or the device engine)",
            ),
            "gin_norm" => only(self.policy == PolicyKind::Gin && !ebm, "to policy = gin"),
            "shared_trunk" => only(
                self.policy == PolicyKind::Mlp,
                "to policy = mlp (a transformer or GIN shares its encoder between every head)",
            ),
            "heads" | "d_ff" | "positions" => only(
                self.policy == PolicyKind::Transformer && !ebm,
                "to policy = transformer",
            ),
            "lr_logz" => objective.and_then(|o| {
                only(
                    o.uses_log_z(),
                    "to the objectives with a learned log Z (tb, the policy-gradient losses, vi)",
                )
            }),
            "backward_policy" => objective.and_then(|o| {
                if self.policy == PolicyKind::Gin {
                    Some("to policy = mlp and transformer; the GIN's P_B is uniform over the parents".into())
                } else if !o.uses_backward_policy() {
                    Some(format!("to objectives that use P_B; loss = {loss} fixes it"))
                } else if matches!(loss, L::PgBackward | L::PgGuided) && self.backward_policy != BackwardPolicy::Learned
                {
                    Some(format!(
                        "as learned only with loss = {loss}, which trains P_B (uniform: use pg-u)"
                    ))
                } else {
                    None
                }
            }),
            _ => None,
        }
    }

    /// Check every field except the environment's (for a user-supplied environment).
    pub fn validate_training(&self) -> Result<()> {
        let positive = |field: &'static str, v: usize| {
            if v == 0 {
                Err(GfnError::invalid(field, v, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("batch_size", self.batch_size)?;
        positive("iterations", self.iterations)?;
        positive("hidden", self.hidden)?;
        positive("eval_every", self.eval_every)?;
        positive("empirical_window", self.empirical_window)?;
        positive("threads", self.threads)?;
        if self.threads > MAX_THREADS {
            return Err(GfnError::invalid(
                "threads",
                self.threads,
                format!("must be at most {MAX_THREADS} (one intra-op thread is the fastest on small machines)"),
            ));
        }
        if ![0, 1, 2, 4, 8, 16].contains(&self.rollout_rows) {
            return Err(GfnError::invalid(
                "rollout_rows",
                self.rollout_rows,
                "must be 0 (automatic), 1, 2, 4, 8 or 16",
            ));
        }
        positive("updates_per_batch", self.updates_per_batch)?;
        if self.updates_per_batch > MAX_UPDATES_PER_BATCH {
            return Err(GfnError::invalid(
                "updates_per_batch",
                self.updates_per_batch,
                format!("must be at most {MAX_UPDATES_PER_BATCH}"),
            ));
        }
        positive("grad_cosine_batch", self.grad_cosine_batch)?;
        positive("grad_cosine_repeats", self.grad_cosine_repeats)?;
        // Values are checked whether or not the run uses them.
        positive("top_k", self.top_k)?;
        positive("recent_window", self.recent_window)?;
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return Err(GfnError::invalid("lambda", self.lambda, "must be finite and > 0"));
        }
        if !(0.0..=1.0).contains(&self.gae_lambda) {
            return Err(GfnError::invalid("gae_lambda", self.gae_lambda, "must be in [0, 1]"));
        }
        self.trust_region().validate()?;
        if !(self.led_drop_rate.is_finite() && self.led_drop_rate < 1.0) {
            return Err(GfnError::invalid(
                "led_drop_rate",
                self.led_drop_rate,
                "must be below 1 (negative: the paper's rule)",
            ));
        }
        for (field, v) in [("lr", self.lr), ("lr_logz", self.lr_logz), ("led_lr", self.led_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(GfnError::invalid(field, v, "must be finite and > 0"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(GfnError::invalid(
                "weight_decay",
                self.weight_decay,
                "must be finite and ≥ 0",
            ));
        }
        if self.replay_size > 0 && self.loss.is_on_policy() {
            return Err(GfnError::invalid(
                "replay_size",
                self.replay_size,
                format!(
                    "replay needs an off-policy objective (fm, tb, db, subtb, fl-db, fl-subtb, mdb, soft-q), not {}",
                    self.loss
                ),
            ));
        }
        if self.loss == ObjectiveName::PgTrustRegion && self.shared_trunk && self.policy == PolicyKind::Mlp {
            return Err(GfnError::invalid(
                "shared_trunk",
                self.shared_trunk,
                "must be false with loss = pg-trpo: the trust-region step moves the P_F network alone, so it cannot share a trunk with the value head",
            ));
        }
        if self.local_search > 0 {
            if self.replay_size > 0 {
                return Err(GfnError::invalid(
                    "local_search",
                    self.local_search,
                    "and replay_size both add backward trajectories: use one of them",
                ));
            }
            if self.loss.is_on_policy() {
                return Err(GfnError::invalid(
                    "local_search",
                    self.local_search,
                    format!(
                        "needs an off-policy objective (fm, tb, db, subtb, fl-db, fl-subtb, mdb, soft-q), not {}",
                        self.loss
                    ),
                ));
            }
        }
        self.validate_policy()?;
        self.validate_device()?;
        gfn_core::SamplingOptions {
            epsilon: self.epsilon,
            temperature: self.temperature,
        }
        .validate()?;
        let (eps_end, temp_end) = self.schedule_ends();
        gfn_core::SamplingOptions {
            epsilon: eps_end,
            temperature: temp_end,
        }
        .validate()?;
        self.objective()?;
        Ok(())
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a TrainConfig always serialises")
    }

    /// The hash that binds a checkpoint to this configuration: FNV-1a of its TOML with
    /// `iterations` set to 0 (the one field `--resume` may change). Options added since the
    /// checkpoint format ([`ADDED_OPTIONS`]) are left out while at their defaults, so a run
    /// written before they existed still resumes.
    pub fn binding_hash(&self) -> String {
        let mut c = self.clone();
        c.iterations = 0;
        let defaults = TrainConfig::default().to_toml();
        let text: String = c
            .to_toml()
            .lines()
            .filter(|line| {
                let key = line.split(" = ").next().unwrap_or("");
                !(ADDED_OPTIONS.contains(&key) && defaults.lines().any(|d| d == *line))
            })
            .flat_map(|line| [line, "\n"])
            .collect();
        format!(
            "{:016x}",
            crate::checkpoint::fnv1a(0xcbf2_9ce4_8422_2325, text.as_bytes())
        )
    }
}

/// Options added after checkpoint format 2: [`TrainConfig::binding_hash`] leaves them out at
/// their defaults.
pub const ADDED_OPTIONS: &[&str] = &[
    "policy",
    "heads",
    "d_ff",
    "positions",
    "condition",
    "eval_conditions",
    "replay_shared",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl Fn(&mut TrainConfig)) -> TrainConfig {
        let mut c = TrainConfig::default();
        f(&mut c);
        c
    }

    /// The cases: an option given for another environment, objective, method or device
    /// is refused, naming it and where it belongs; the same option where it applies is fine.
    #[test]
    fn options_that_do_not_apply_are_refused() {
        let tb = TrainConfig::default();
        for (field, belongs) in [
            ("lambda", "subtb"),
            ("size", "env = set"),
            ("ebm_method", "EBM tasks"),
            ("trpo_max_kl", "pg-trpo"),
            ("gae_lambda", "policy-gradient"),
            ("led_hidden", "led-db"),
            ("replay_batch", "replay_size > 0"),
            ("local_search_accept", "local_search > 0"),
            ("rollout_rows", "device engine"),
            ("bitseq_modes", "env = bitseq"),
            ("gibbs_steps", "PCD"),
            ("schedule_iterations", "schedule"),
            ("grad_cosine_batch", "grad_cosine_every > 0"),
        ] {
            let e = tb.check_given(&[field]).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(belongs), "{field}: {e}");
        }
        assert_eq!(
            tb.check_given(&["ndim", "height", "r0", "lr", "lr_logz", "backward_policy", "seed"])
                .ok(),
            Some(())
        );
        assert!(
            with(|c| c.loss = "subtb".parse().unwrap())
                .inapplicable("lambda")
                .is_none()
        );
        assert!(
            with(|c| c.loss = "db".parse().unwrap())
                .inapplicable("lr_logz")
                .is_some()
        );
        assert!(
            with(|c| c.loss = "fm".parse().unwrap())
                .inapplicable("backward_policy")
                .is_some()
        );
        let pgb = with(|c| {
            c.loss = "pg-b".parse().unwrap();
            c.backward_policy = BackwardPolicy::Uniform;
        });
        let e = pgb.check_given(&["backward_policy"]).unwrap_err().to_string();
        assert!(e.contains("pg-b") && e.contains("uniform"), "{e}");
        assert!(
            with(|c| c.loss = "pg-b".parse().unwrap())
                .inapplicable("backward_policy")
                .is_none()
        );
        let ising = with(|c| c.env = "ising".parse().unwrap());
        assert!(ising.inapplicable("ndim").is_some());
        assert!(ising.inapplicable("loss").is_some());
        assert!(ising.inapplicable("back_ratio").is_none());
        assert!(
            with(|c| {
                c.env = "ising".parse().unwrap();
                c.ebm_method = "pcd".parse().unwrap();
            })
            .inapplicable("back_ratio")
            .is_some()
        );
        assert!(
            with(|c| c.device = "cuda".parse().unwrap())
                .inapplicable("rollout_rows")
                .is_none()
        );
    }

    /// pg-trpo gets separate trunks unless shared_trunk is given (then it must be false).
    #[test]
    fn defaults_follow_the_loss() {
        let args = |shared: Option<bool>| ConfigArgs {
            loss: Some(ObjectiveName::PgTrustRegion),
            shared_trunk: shared,
            ..ConfigArgs::default()
        };
        let c = args(None).resolve(ConfigArgs::default(), "").unwrap();
        assert!(!c.shared_trunk);
        c.validate().unwrap();
        let c = args(Some(true)).resolve(ConfigArgs::default(), "").unwrap();
        assert!(c.shared_trunk);
        assert!(c.validate().unwrap_err().to_string().contains("shared_trunk"));
        let tb = ConfigArgs::default().resolve(ConfigArgs::default(), "").unwrap();
        assert!(tb.shared_trunk);
    }

    /// Values are checked even where the run does not use them; text values are refused where
    /// they enter (here a TOML file), naming the field.
    #[test]
    fn unused_options_still_need_valid_values() {
        for (c, field) in [
            (with(|c| c.top_k = 0), "top_k"),
            (with(|c| c.recent_window = 0), "recent_window"),
            (with(|c| c.trpo_max_kl = -1.0), "trpo_max_kl"),
            (with(|c| c.lambda = 0.0), "lambda"),
            (with(|c| c.gae_lambda = 2.0), "gae_lambda"),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        for (field, bad) in [
            ("ebm_method", "abc"),
            ("size", "huge"),
            ("bitseq_order", "middle"),
            ("negatives", "x"),
            ("guide_floor", "low"),
            ("loss", "tbb"),
            ("env", "grid"),
            ("device", "cuda:x"),
            ("epsilon_final", "nan"),
            ("engine", "fast"),
        ] {
            let e = toml::from_str::<ConfigArgs>(&format!("{field} = \"{bad}\""))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("invalid {field} = {bad}")), "{field}: {e}");
        }
    }

    #[test]
    fn schedules_are_linear_then_constant() {
        let c = TrainConfig {
            epsilon: 0.5,
            epsilon_final: "0.1".parse().unwrap(),
            temperature_final: "none".parse().unwrap(),
            iterations: 5,
            ..TrainConfig::default()
        };
        let eps: Vec<f64> = (0..7).map(|t| c.sampling_at(t).epsilon).collect();
        for (a, b) in eps.iter().zip([0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1]) {
            assert!((a - b).abs() < 1e-12, "{eps:?}");
        }
        assert!((0..7).all(|t| c.sampling_at(t).temperature == 1.0));
        let e = "lots".parse::<EpsilonFinal>().unwrap_err().to_string();
        assert!(e.contains("epsilon_final"), "{e}");
        let bad = TrainConfig {
            temperature_final: "0".parse().unwrap(),
            ..TrainConfig::default()
        };
        assert!(bad.validate_training().is_err());
    }
}
