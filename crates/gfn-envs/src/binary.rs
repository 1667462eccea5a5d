//! The GFlowNet MDP over `D`-dimensional binary vectors of EB-GFN (Zhang et al. 2022;
//! papers.md §2.1).
//!
//! A state is in `{−1, 0, 1}^D`, `−1` marking an unset ("void") position; `s_0 = (−1, …, −1)`.
//! Forward action `2i + v` sets void position `i` to `v ∈ {0, 1}`; backward action `i` voids
//! assigned position `i`. An object is complete, and terminal, after exactly `D` steps (there is
//! no exit action). The network input is the state itself (`−1`, `0`, `1` as floats), as in the
//! official code.
//!
//! On its own the environment's reward is a fixed log-density given at construction (uniform by
//! default); EB-GFN replaces the terminal rewards of every batch by the current energy model's
//! `−E_φ(x)`.

use std::fmt;
use std::sync::Arc;

use gfn_core::{Env, GfnError, Result};

/// Unset position.
pub const VOID: i32 = -1;
/// Largest `D` whose states ([`Env::enumerate_states`], `3^D` of them) are enumerated.
pub const MAX_ENUMERABLE_DIM: usize = 12;

/// `log R(x)` of a complete binary vector (0/1 entries).
pub type LogDensity = Arc<dyn Fn(&[i32]) -> f64 + Send + Sync>;

/// Binary vectors of length `D`, built one position at a time in any order.
#[derive(Clone)]
pub struct BinaryEnv {
    dim: usize,
    log_density: Option<LogDensity>,
}

impl fmt::Debug for BinaryEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryEnv")
            .field("dim", &self.dim)
            .field("log_density", &self.log_density.as_ref().map(|_| "fn"))
            .finish()
    }
}

impl BinaryEnv {
    /// Vectors of length `dim ≥ 1`, uniform reward.
    pub fn new(dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(GfnError::invalid("dim", dim, "must be at least 1"));
        }
        Ok(Self { dim, log_density: None })
    }

    /// Vectors of length `dim` with `log R(x) = log_density(x)`.
    pub fn with_log_density(dim: usize, log_density: LogDensity) -> Result<Self> {
        let mut env = Self::new(dim)?;
        env.log_density = Some(log_density);
        Ok(env)
    }

    /// `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

impl Env for BinaryEnv {
    fn name(&self) -> String {
        format!("binary-{}", self.dim)
    }
    fn state_dim(&self) -> usize {
        self.dim
    }
    fn n_actions(&self) -> usize {
        2 * self.dim
    }
    fn n_backward_actions(&self) -> usize {
        self.dim
    }
    fn exit_action(&self) -> Option<usize> {
        None
    }
    fn feature_dim(&self) -> usize {
        self.dim
    }
    fn max_actions(&self) -> usize {
        self.dim
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(VOID);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for (i, &x) in state.iter().enumerate() {
            mask[2 * i] = x == VOID;
            mask[2 * i + 1] = x == VOID;
        }
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for (m, &x) in mask.iter_mut().zip(state) {
            *m = x != VOID;
        }
    }
    /// Sets position `action / 2` to `action % 2`; the backward action undoing it is the position.
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        let i = action / 2;
        state[i] = (action % 2) as i32;
        i
    }
    /// Voids position `action`; the forward action redoing it is `2·action + value`.
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        let v = state[action];
        state[action] = VOID;
        2 * action + v as usize
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        self.log_density.as_ref().map_or(0.0, |f| f(state))
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(state) {
            *o = x as f32;
        }
    }
    fn is_terminal(&self, state: &[i32]) -> bool {
        state.iter().all(|&x| x != VOID)
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state.iter().all(|&x| x == VOID)
    }
    /// All `3^D` states by number of assigned positions (`D ≤ 12`).
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        if self.dim > MAX_ENUMERABLE_DIM {
            return None;
        }
        let d = self.dim;
        let total = 3usize.pow(d as u32);
        let mut by_level: Vec<Vec<i32>> = vec![Vec::new(); d + 1];
        for code in 0..total {
            let mut c = code;
            let mut s = vec![VOID; d];
            let mut assigned = 0;
            for x in s.iter_mut() {
                *x = (c % 3) as i32 - 1;
                c /= 3;
                if *x != VOID {
                    assigned += 1;
                }
            }
            by_level[assigned].extend_from_slice(&s);
        }
        Some(by_level.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariants_and_enumeration() {
        let env = BinaryEnv::new(3).unwrap();
        gfn_core::dag::check_env(&env).unwrap();
        let ev = gfn_core::exact::ExactEvaluator::new(&env).unwrap();
        assert_eq!(ev.num_states(), 27);
        assert_eq!(ev.num_terminal(), 8);
        // Uniform reward: log Z = D ln 2.
        assert!((ev.log_z() - 3.0 * 2f64.ln()).abs() < 1e-12);
        assert!(BinaryEnv::new(0).is_err());
        assert!(BinaryEnv::new(13).unwrap().enumerate_states().is_none());
    }

    #[test]
    fn steps_and_reward() {
        let f: LogDensity = Arc::new(|x: &[i32]| x.iter().sum::<i32>() as f64);
        let env = BinaryEnv::with_log_density(2, f).unwrap();
        let mut s = vec![VOID; 2];
        assert_eq!(env.step(&mut s, 3), 1);
        assert_eq!(s, vec![VOID, 1]);
        assert!(!env.is_terminal(&s));
        assert_eq!(env.step(&mut s, 0), 0);
        assert!(env.is_terminal(&s));
        assert_eq!(env.log_reward(&s), 1.0);
        assert_eq!(env.backward_step(&mut s, 1), 3);
        assert_eq!(s, vec![0, VOID]);
        let mut m = vec![false; 4];
        env.forward_mask(&s, &mut m);
        assert_eq!(m, vec![false, false, true, true]);
    }
}
