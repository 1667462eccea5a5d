//! # gfn-envs
//!
//! Environments for gfn. Each is one file implementing [`gfn_core::Env`].
//!
//! * [`Hypergrid`]: the `d`-dimensional grid of Bengio et al. (2021), exit allowed everywhere.
//! * [`BinaryEnv`]: binary vectors set one position at a time in any order (EB-GFN).
//! * [`BagEnv`]: bag (multiset) generation, 7 letters, 13 per bag (LED-GFN).
//! * [`SetEnv`]: set generation with additive element energies (FL-GFN, LED-GFN).
//! * [`BitSeqEnv`]: 120-bit sequences written 8 bits at a time, reward by Hamming distance to
//!   60 modes (TB paper; appended left to right, a tree, or filled in any order).
//! * [`BayesNetEnv`]: DAG structures on 5 nodes built edge by edge, reward the BGe score of
//!   linear-Gaussian data (GFN-PG, DAG-GFlowNet); all 29,281 DAGs enumerable.

pub mod bag;
pub mod bayesnet;
pub mod binary;
pub mod bitseq;
pub mod data;
pub mod hypergrid;
pub mod indset;
pub mod set;

pub use bag::BagEnv;
pub use bayesnet::BayesNetEnv;
pub use binary::BinaryEnv;
pub use bitseq::BitSeqEnv;
pub use hypergrid::{Hypergrid, HypergridReward};
pub use indset::IndSetEnv;
pub use set::{SetAnalysis, SetEnv, SetSize};
