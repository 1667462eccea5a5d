//! Building the environment a configuration names.

use gfn_core::{Env, GfnError, Result};
use gfn_envs::bayesnet::{BayesNetConfig, BayesNetEnv};
use gfn_envs::binary::{BinaryEnv, LogDensity};
use gfn_envs::bitseq::{BitSeqConfig, BitSeqEnv};
use gfn_envs::data::ising::LatticeIsing;
use gfn_envs::graph_building::{Builtin, GraphBuildingConfig, GraphBuildingEnv};
use gfn_envs::mis::{Anneal, MisEnv};
use gfn_envs::{BagEnv, Hypergrid, HypergridReward, SetEnv, Tempered};

use crate::config::TrainConfig;
use crate::options::{Condition, EnvName};

/// Build the environment of `config` (a GFlowNet task: the EBM tasks build theirs in
/// [`crate::ebm`]).
pub fn build_env(config: &TrainConfig) -> Result<Box<dyn Env>> {
    let env = unconditional_env(config)?;
    match config.condition {
        Condition::None => Ok(env),
        Condition::Beta { lo, hi } => Ok(Box::new(Tempered::new(env, lo, hi)?)),
    }
}

/// The environment of `config` before any conditioning.
fn unconditional_env(config: &TrainConfig) -> Result<Box<dyn Env>> {
    match config.env {
        EnvName::Hypergrid => Ok(Box::new(Hypergrid::new(
            config.ndim,
            config.height,
            HypergridReward {
                r0: config.r0,
                r1: config.r1,
                r2: config.r2,
            },
        )?)),
        EnvName::Bag => Ok(Box::new(BagEnv::new(config.task_seed))),
        EnvName::Set => Ok(Box::new(SetEnv::new(config.size))),
        EnvName::Bitseq => Ok(Box::new(bitseq_env(config)?)),
        EnvName::Bayesnet => Ok(Box::new(BayesNetEnv::new(BayesNetConfig {
            num_nodes: config.bn_nodes,
            num_samples: config.bn_samples,
            obs_noise: config.bn_noise,
            data_seed: config.task_seed,
            ..BayesNetConfig::default()
        })?)),
        EnvName::IsingFixed => Ok(Box::new(ising_fixed_env(config)?)),
        EnvName::Mis => Ok(Box::new(mis_env(config)?)),
        EnvName::GraphBuilding => Ok(Box::new(graph_building_env(config)?)),
        other => Err(GfnError::invalid(
            "env",
            other,
            "is an energy-based-modelling task: it trains through gfn::ebm, not a GFlowNet trainer",
        )),
    }
}

/// `ising-fixed`: binary vectors of length `L²` built one spin at a time, with the fixed lattice
/// Ising reward `log R(x) = sᵀJs`, `J = σ·A` on the `L×L` torus (`lattice`, `sigma`; gfnx's
/// Ising task at σ = 0.1).
pub fn ising_fixed_env(config: &TrainConfig) -> Result<BinaryEnv> {
    let model = ising_fixed_model(config)?;
    let dim = model.dim();
    let f: LogDensity = std::sync::Arc::new(move |x: &[i32]| model.log_unnormalised(x).unwrap_or(f64::NAN));
    BinaryEnv::with_log_density(dim, f)
}

/// The lattice Ising model of `ising-fixed`.
pub fn ising_fixed_model(config: &TrainConfig) -> Result<LatticeIsing> {
    LatticeIsing::new(config.lattice, config.sigma)
}

/// The bit-sequence task of `config` (`bitseq_length`, `bitseq_word`, `bitseq_order`, modes from
/// `task_seed`).
pub fn bitseq_env(config: &TrainConfig) -> Result<BitSeqEnv> {
    BitSeqEnv::new(BitSeqConfig {
        n: config.bitseq_length,
        k: config.bitseq_word,
        order: config.bitseq_order,
        n_modes: config.bitseq_modes,
        seed: config.task_seed,
        ..BitSeqConfig::default()
    })
}

/// The maximum-independent-set task of `config`: `mis_train` and `mis_test` RB graphs of the
/// `mis_graphs` setting drawn from `task_seed`, `log R = β·|I|` with β annealed from `beta_start`
/// to `beta_end` over `beta_anneal` trajectories.
pub fn mis_env(config: &TrainConfig) -> Result<MisEnv> {
    MisEnv::rb(
        &config.mis_graphs.params(),
        config.mis_train,
        config.mis_test,
        config.task_seed,
        Anneal {
            start: config.beta_start,
            end: config.beta_end,
            over: config.beta_anneal,
        },
    )
}

/// The graph-building task of `config`: graphs of up to `graph_nodes` nodes of `graph_node_types`
/// types and edges of `graph_edge_types` types (`graph_directed`, `graph_acyclic`), reward
/// `log R = graph_per_edge·#edges − graph_size_penalty·|n − graph_target_nodes|`.
pub fn graph_building_env(config: &TrainConfig) -> Result<GraphBuildingEnv> {
    GraphBuildingEnv::with_builtin(
        GraphBuildingConfig {
            max_nodes: config.graph_nodes,
            node_types: config.graph_node_types,
            edge_types: config.graph_edge_types,
            directed: config.graph_directed,
            acyclic: config.graph_acyclic,
        },
        Builtin::EdgesAndSize {
            per_edge: config.graph_per_edge,
            target_nodes: config.graph_target_nodes,
            size_penalty: config.graph_size_penalty,
        },
    )
}
