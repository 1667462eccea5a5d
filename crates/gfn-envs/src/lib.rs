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
//! * [`GraphBuildingEnv`]: labelled graphs built node by node and edge by edge (torchgfn's
//!   `GraphBuilding`), typed nodes and edges, directed or not, optionally acyclic, user reward.
//! * [`mis_graphs`]: RB-model random graphs (the MIS benchmark's generator), the greedy
//!   minimum-degree heuristic and an exact branch-and-bound maximum independent set.
//! * [`MisEnv`]: maximum independent sets of RB graphs (LED-GFN / GFlowNet-CombOpt), a conditional
//!   GFlowNet over problem instances (train and held-out test graphs) with an annealed reward
//!   exponent ([`Anneal`]); graph observations for the GIN.
//! * [`Tempered`]: any of these conditioned on a reward exponent `β` (`R^β`, a conditional
//!   GFlowNet over a range of `β`).

pub mod bag;
pub mod bayesnet;
pub mod binary;
pub mod bitseq;
pub mod data;
pub mod graph_building;
pub mod hypergrid;
pub mod indset;
pub mod mis;
pub mod mis_graphs;
pub mod sequence;
pub mod set;
pub mod tempered;

pub use bag::BagEnv;
pub use bayesnet::BayesNetEnv;
pub use binary::BinaryEnv;
pub use bitseq::BitSeqEnv;
pub use graph_building::{GraphBuildingConfig, GraphBuildingEnv};
pub use hypergrid::{Hypergrid, HypergridReward};
pub use indset::IndSetEnv;
pub use mis::{Anneal, MisEnv};
pub use sequence::{SequenceEnv, SequenceOrder, SequenceReward};
pub use set::{SetAnalysis, SetEnv, SetSize};
pub use tempered::Tempered;
