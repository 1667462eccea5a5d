//! # gfn-ebm
//!
//! EB-GFN (Zhang et al. 2022, "Generative Flow Networks for Discrete Probabilistic Modeling"):
//! an energy-based model `E_φ` on binary vectors trained jointly with a GFlowNet sampler whose
//! reward is `exp(−E_φ)`. The GFlowNet supplies the EBM's negatives, directly or through a
//! back-and-forth Metropolis–Hastings proposal
//! ([`gfn_core::local_search::back_and_forth`]) accepted by [`mh`].
//!
//! * [`mh`]: the acceptance step, the true Metropolis–Hastings ratio or the official code's
//!   Barker rule.

pub mod mh;

pub use mh::AcceptRule;
