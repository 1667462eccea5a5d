//! Data sets for energy-based modelling (EB-GFN): binary vectors to fit, generated in Rust from
//! a seed or shipped as a small file.
//!
//! * [`synthetic`]: the seven 2D toy distributions, quantised to 32 bits with a Gray code.
//! * [`ising`]: lattice Ising models, Gibbs-sampled training data, exact enumeration of small lattices.
//! * [`digits`]: the 8×8 handwritten digits scikit-learn ships, binarised, with a fixed split.

pub mod digits;
pub mod ising;
pub mod synthetic;
