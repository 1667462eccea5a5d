//! # gfn-core
//!
//! The ground layer of gfn: the [`Env`] trait for discrete DAG environments (batch-first), the
//! padded [`TrajectoryBatch`], candle [`Estimator`]s (P_F, P_B, log F, log Z) with a fused Adam
//! optimiser, seeded [`Sampler`]s, and exact evaluation on enumerable environments
//! ([`exact::ExactEvaluator`]).
//!
//! Every random draw comes from a [`GfnRng`] that the caller owns and passes in.

pub mod batch;
pub mod choice;
pub mod conditional;
pub mod dag;
pub mod denormals;
pub mod env;
pub mod error;
pub mod estimator;
pub mod exact;
pub mod fast;
pub mod local_search;
pub mod nets;
pub mod nn;
pub mod obs;
pub mod optim;
pub mod policy;
pub mod rng;
pub mod sampler;
pub mod tape;
pub mod topk;

pub use batch::TrajectoryBatch;
pub use env::Env;
pub use error::{GfnError, Result};
pub use estimator::{
    BackwardPolicy, BackwardRolloutPolicy, Estimator, EstimatorConfig, EstimatorOutput, LogitLayout, RolloutPolicy,
    RowForward,
};
pub use rng::{GfnRng, rng_from_seed};
pub use sampler::{Sampler, SamplingOptions};

/// Re-export of candle's core crate, so users need not pin it themselves.
pub use candle_core;
