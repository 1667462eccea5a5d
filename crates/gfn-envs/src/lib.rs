//! # gfn-envs
//!
//! Environments for gfn. Each is one file implementing [`gfn_core::Env`].
//!
//! * [`Hypergrid`]: the `d`-dimensional grid of Bengio et al. (2021), exit allowed everywhere.
//! * [`BinaryEnv`]: binary vectors set one position at a time in any order (EB-GFN).
//! * [`BagEnv`]: bag (multiset) generation, 7 letters, 13 per bag (LED-GFN).
//! * [`SetEnv`]: set generation with additive element energies (FL-GFN, LED-GFN).

pub mod bag;
pub mod bayesnet;
pub mod binary;
pub mod bitseq;
pub mod data;
pub mod hypergrid;
pub mod set;

pub use bag::BagEnv;
pub use binary::BinaryEnv;
pub use hypergrid::{Hypergrid, HypergridReward};
pub use set::{SetAnalysis, SetEnv, SetSize};
