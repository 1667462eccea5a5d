//! # gfn-envs
//!
//! Environments for gfn. Each is one file implementing [`gfn_core::Env`].
//!
//! * [`Hypergrid`]: the `d`-dimensional grid of Bengio et al. (2021), exit allowed everywhere.

pub mod hypergrid;

pub use hypergrid::{Hypergrid, HypergridReward};
