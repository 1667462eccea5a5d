//! # gfn-ebm
//!
//! EB-GFN (Zhang et al. 2022, "Generative Flow Networks for Discrete Probabilistic Modeling"):
//! an energy-based model `E_φ` on binary vectors trained jointly with a GFlowNet sampler whose
//! reward is `exp(−E_φ)`. The GFlowNet supplies the EBM's negatives, directly or through a
//! back-and-forth Metropolis–Hastings proposal
//! ([`gfn_core::local_search::back_and_forth`]) accepted by [`mh`].
//!
//! * [`energy`]: the energy models, an MLP and the Ising form.
//! * [`eval`]: NLL of the EBM (exact or importance-sampled log Z) and of the GFlowNet, MMD.
//! * [`joint`]: the joint loop: a TB step of the GFlowNet on forward and backward trajectories,
//!   then a contrastive EBM step on its negatives.
//! * [`pcd`]: the baseline, persistent contrastive divergence with Gibbs negatives.
//! * [`mh`]: the acceptance step, the true Metropolis–Hastings ratio or the official code's
//!   Barker rule.

pub mod energy;
pub mod eval;
pub mod joint;
pub mod mh;
pub mod pcd;

pub use energy::{EnergyModel, IsingEnergy, MlpEnergy};
pub use joint::{JointConfig, JointTrainer, Negatives, StepStats};
pub use mh::AcceptRule;
pub use pcd::PcdTrainer;
