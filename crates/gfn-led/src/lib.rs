//! # gfn-led
//!
//! LED-GFN (Jang et al., "Learning energy decompositions for partial inference of GFlowNets",
//! ICLR 2024): a potential network on transitions learns to decompose a terminal object's log
//! reward into per-transition terms, which then play the part of the intermediate energies of the
//! forward-looking objectives, so local credit is available where only complete objects have a
//! reward.
//!
//! * [`potential::PotentialNet`]: `φ_θ(s → s')` on the concatenated features of both states.
//! * [`decomposition`]: the least-squares decomposition loss with the [`dropout`] regulariser,
//!   the re-centring that makes the potentials of a trajectory sum exactly to its log reward, and
//!   the node offsets that turn DB and SubTB(λ) into LED-DB and LED-SubTB
//!   (`gfn_objectives::BalanceTerms::with_offsets`, the same path FL-DB takes with true energies).

pub mod decomposition;
pub mod dropout;
pub mod potential;

pub use decomposition::{decomposed_len, decomposition_loss, decomposition_loss_and_grad, led_offsets, recentre};
pub use dropout::{default_drop_rate, draw_mask, dropout_sum};
pub use potential::{PotentialNet, TransitionInputs};
