//! [`EnvSpec`]: an environment as the kernels see it — a `#[repr(C)]` parameter block plus the
//! per-state rules (masks, steps, features, reward) that every kernel and its CPU reference share.
//!
//! Rows of a trajectory buffer are `W = S + 3` u32 values: the state in columns `0..S`
//! (hypergrid: the coordinates; binary vectors and bit sequences: `0` for an empty slot, else
//! `value + 1`), the number of steps taken ([`EnvSpec::steps_col`]), the done flag
//! ([`EnvSpec::done_col`]) and the action taken from this state ([`EnvSpec::act_col`],
//! [`NO_ACTION`] when none). The initial state of every supported environment is the zero row.
//!
//! The methods here are the CPU twins of the `__device__` functions of `kernels.cu`, line for
//! line; change both together.

use gfn_core::{GfnError, Result};
use gfn_envs::Hypergrid;
use gfn_envs::bitseq::{BitSeqEnv, BitSeqOrder};

/// "No action": a done row, the exit's backward action, or the last row of a trajectory.
pub const NO_ACTION: u32 = u32::MAX;

/// Environment kinds with kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum EnvKind {
    /// [`gfn_envs::Hypergrid`] (exit anywhere).
    Hypergrid = 0,
    /// [`gfn_envs::BinaryEnv`] with a quadratic (Ising) log-reward `sᵀJs`.
    Binary = 1,
    /// [`gfn_envs::bitseq::BitSeqEnv`], append order.
    BitSeqAppend = 2,
    /// [`gfn_envs::bitseq::BitSeqEnv`], fill order.
    BitSeqFill = 3,
}

/// The kernels' parameter block (`struct EnvP` in `kernels.cu`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct EnvSpec {
    /// [`EnvKind`] as an integer.
    pub kind: i32,
    /// State width `S`.
    pub sdim: i32,
    /// Forward actions `A`.
    pub n_actions: i32,
    /// Backward actions.
    pub n_back: i32,
    /// Hypergrid height `H`.
    pub height: i32,
    /// Bit-sequence word size `k`.
    pub k: i32,
    /// Bit-sequence vocabulary `2^k`.
    pub vocab: i32,
    /// Rows of the reward table (bit-sequence modes).
    pub n_aux: i32,
    /// Hypergrid `R0`.
    pub r0: f32,
    /// Hypergrid `R1`.
    pub r1: f32,
    /// Hypergrid `R2`.
    pub r2: f32,
    /// Bit-sequence reward scale.
    pub scale: f32,
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
// SAFETY: plain old data, `#[repr(C)]`, laid out as `struct EnvP`.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for EnvSpec {}

const BLANK: EnvSpec = EnvSpec {
    kind: 0,
    sdim: 0,
    n_actions: 0,
    n_back: 0,
    height: 0,
    k: 0,
    vocab: 0,
    n_aux: 0,
    r0: 0.0,
    r1: 0.0,
    r2: 0.0,
    scale: 0.0,
};

/// An [`EnvSpec`] with the table its reward needs (`[S, S]` couplings or `[M, S]` modes; one
/// zero for the hypergrid), row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEnv {
    /// The parameter block.
    pub spec: EnvSpec,
    /// The reward's table.
    pub aux: Vec<f32>,
    /// A name for messages and results.
    pub name: String,
}

impl DeviceEnv {
    /// The hypergrid `env` (its reward constants are kept in f32 inside the kernels; the log
    /// reward is computed in f64 from them and rounded to f32).
    pub fn hypergrid(env: &Hypergrid) -> Self {
        let r = env.reward();
        let (d, h) = (env.ndim() as i32, env.height() as i32);
        Self {
            spec: EnvSpec {
                kind: EnvKind::Hypergrid as i32,
                sdim: d,
                n_actions: d + 1,
                n_back: d,
                height: h,
                r0: r.r0 as f32,
                r1: r.r1 as f32,
                r2: r.r2 as f32,
                ..BLANK
            },
            aux: vec![0.0],
            name: format!("hypergrid-{d}x{h}"),
        }
    }

    /// Binary vectors of length `dim` with `log R(x) = sᵀJs`, `s = 2x − 1`, for the row-major
    /// `[dim, dim]` coupling `j` (the lattice Ising model of [`gfn_envs::data::ising`]).
    pub fn ising(dim: usize, j: Vec<f32>) -> Result<Self> {
        if dim == 0 || j.len() != dim * dim {
            return Err(GfnError::invalid(
                "coupling",
                j.len(),
                format!("must hold dim² = {} values (dim {dim} ≥ 1)", dim * dim),
            ));
        }
        let d = dim as i32;
        Ok(Self {
            spec: EnvSpec {
                kind: EnvKind::Binary as i32,
                sdim: d,
                n_actions: 2 * d,
                n_back: d,
                ..BLANK
            },
            aux: j,
            name: format!("ising-{dim}"),
        })
    }

    /// The lattice Ising model `model` (`log R = sᵀJs`, `J = σ·A` on the torus).
    pub fn lattice_ising(model: &gfn_envs::data::ising::LatticeIsing) -> Result<Self> {
        let j = model.coupling_matrix().into_iter().map(|v| v as f32).collect();
        let mut env = Self::ising(model.dim(), j)?;
        env.name = format!("ising-{}x{}", model.side(), model.side());
        Ok(env)
    }

    /// The bit-sequence task `env`.
    pub fn bitseq(env: &BitSeqEnv) -> Result<Self> {
        let cfg = env.config();
        let (words, k) = (cfg.n / cfg.k, cfg.k);
        if k > 16 {
            return Err(GfnError::invalid("bitseq_word", k, "must be at most 16 on the GPU"));
        }
        let vocab = 1i32 << k;
        let (kind, n_actions, n_back) = match cfg.order {
            BitSeqOrder::Append => (EnvKind::BitSeqAppend, vocab, 1),
            BitSeqOrder::Fill => (EnvKind::BitSeqFill, words as i32 * vocab, words as i32),
        };
        let modes = env.modes();
        let mut aux = Vec::with_capacity(modes.len() * words);
        let mask = (1u128 << k) - 1;
        for &m in modes {
            aux.extend((0..words).map(|w| ((m >> (cfg.n - k * (w + 1))) & mask) as f32));
        }
        Ok(Self {
            spec: EnvSpec {
                kind: kind as i32,
                sdim: words as i32,
                n_actions,
                n_back,
                k: k as i32,
                vocab,
                n_aux: modes.len() as i32,
                scale: env.reward_scale() as f32,
                ..BLANK
            },
            aux,
            name: format!("bitseq-{}x{}", cfg.n, k),
        })
    }
}

impl EnvSpec {
    /// The kind.
    pub fn env_kind(&self) -> EnvKind {
        match self.kind {
            0 => EnvKind::Hypergrid,
            1 => EnvKind::Binary,
            2 => EnvKind::BitSeqAppend,
            _ => EnvKind::BitSeqFill,
        }
    }
    /// State width `S`.
    pub fn state_dim(&self) -> usize {
        self.sdim as usize
    }
    /// Row width `W = S + 3`.
    pub fn row_width(&self) -> usize {
        self.sdim as usize + 3
    }
    /// Column of the step count.
    pub fn steps_col(&self) -> usize {
        self.sdim as usize
    }
    /// Column of the done flag.
    pub fn done_col(&self) -> usize {
        self.sdim as usize + 1
    }
    /// Column of the action taken.
    pub fn act_col(&self) -> usize {
        self.sdim as usize + 2
    }
    /// Forward actions.
    pub fn n_actions(&self) -> usize {
        self.n_actions as usize
    }
    /// Backward actions.
    pub fn n_backward(&self) -> usize {
        self.n_back as usize
    }
    /// Network input width.
    pub fn feature_dim(&self) -> usize {
        match self.env_kind() {
            EnvKind::Hypergrid => (self.sdim * self.height) as usize,
            EnvKind::Binary => self.sdim as usize,
            EnvKind::BitSeqAppend | EnvKind::BitSeqFill => 2 * (self.sdim * self.k) as usize,
        }
    }
    /// Longest trajectory (in actions, the exit included).
    pub fn max_steps(&self) -> usize {
        match self.env_kind() {
            EnvKind::Hypergrid => (self.sdim * (self.height - 1) + 1) as usize,
            _ => self.sdim as usize,
        }
    }

    /// Is forward action `a` allowed from the (not done) row `s`?
    pub fn fwd_allowed(&self, s: &[u32], a: usize) -> bool {
        match self.env_kind() {
            EnvKind::Hypergrid => a == self.sdim as usize || s[a] < (self.height - 1) as u32,
            EnvKind::Binary => s[a >> 1] == 0,
            EnvKind::BitSeqAppend => s[self.steps_col()] < self.sdim as u32,
            EnvKind::BitSeqFill => s[a / self.vocab as usize] == 0,
        }
    }
    /// Is backward action `a` allowed from row `s`?
    pub fn bwd_allowed(&self, s: &[u32], a: usize) -> bool {
        match self.env_kind() {
            EnvKind::Hypergrid => s[a] > 0,
            EnvKind::Binary | EnvKind::BitSeqFill => s[a] != 0,
            EnvKind::BitSeqAppend => s[self.steps_col()] > 0,
        }
    }
    /// The backward action undoing forward action `a` ([`NO_ACTION`] for the exit).
    pub fn bwd_action(&self, a: u32) -> u32 {
        if a == NO_ACTION {
            return NO_ACTION;
        }
        match self.env_kind() {
            EnvKind::Hypergrid if a == self.sdim as u32 => NO_ACTION,
            EnvKind::Hypergrid => a,
            EnvKind::Binary => a >> 1,
            EnvKind::BitSeqAppend => 0,
            EnvKind::BitSeqFill => a / self.vocab as u32,
        }
    }
    /// Apply forward action `a` to row `s` in place.
    pub fn apply_step(&self, s: &mut [u32], a: u32) {
        let steps = s[self.steps_col()] + 1;
        s[self.steps_col()] = steps;
        match self.env_kind() {
            EnvKind::Hypergrid => {
                if a == self.sdim as u32 {
                    s[self.done_col()] = 1;
                } else {
                    s[a as usize] += 1;
                }
                return;
            }
            EnvKind::Binary => s[(a >> 1) as usize] = (a & 1) + 1,
            EnvKind::BitSeqAppend => s[steps as usize - 1] = a + 1,
            EnvKind::BitSeqFill => s[(a / self.vocab as u32) as usize] = a % self.vocab as u32 + 1,
        }
        if steps == self.sdim as u32 {
            s[self.done_col()] = 1;
        }
    }
    /// Feature `f` of row `s`.
    pub fn feature(&self, s: &[u32], f: usize) -> f32 {
        match self.env_kind() {
            EnvKind::Hypergrid => {
                let h = self.height as usize;
                if s[f / h] == (f % h) as u32 { 1.0 } else { 0.0 }
            }
            EnvKind::Binary => s[f] as f32 - 1.0,
            EnvKind::BitSeqAppend | EnvKind::BitSeqFill => {
                let (b, k) = (f >> 1, self.k as usize);
                let v = s[b / k];
                if v == 0 {
                    return 0.0;
                }
                let bit = ((v - 1) >> (k - 1 - b % k)) & 1;
                if f & 1 == 1 { (1 - bit) as f32 } else { bit as f32 }
            }
        }
    }
    /// `log R` of the complete row `s` (see `gfn_log_reward`).
    pub fn log_reward(&self, s: &[u32], aux: &[f32]) -> f32 {
        let d = self.sdim as usize;
        match self.env_kind() {
            EnvKind::Hypergrid => {
                let (mut outer, mut band) = (true, true);
                let h1 = self.height - 1;
                for &x in &s[..d] {
                    let c = (2 * x as i32 - h1).abs();
                    outer = outer && 2 * c > h1;
                    band = band && 6 * h1 < 10 * c && 10 * c < 8 * h1;
                }
                let rw = f64::from(self.r0)
                    + if outer { f64::from(self.r1) } else { 0.0 }
                    + if band { f64::from(self.r2) } else { 0.0 };
                rw.ln() as f32
            }
            EnvKind::Binary => {
                let spin = |v: u32| if v == 2 { 1.0 } else { -1.0 };
                let mut acc = 0.0f64;
                for i in 0..d {
                    let mut row = 0.0f64;
                    for j in 0..d {
                        row += f64::from(aux[i * d + j]) * spin(s[j]);
                    }
                    acc += spin(s[i]) * row;
                }
                acc as f32
            }
            EnvKind::BitSeqAppend | EnvKind::BitSeqFill => {
                let mut best = 1i32 << 30;
                for m in aux.chunks_exact(d).take(self.n_aux as usize) {
                    let dist: i32 = (0..d)
                        .map(|i| (s[i].wrapping_sub(1) ^ m[i] as u32).count_ones() as i32)
                        .sum();
                    best = best.min(dist);
                }
                (-f64::from(self.scale) * f64::from(best)) as f32
            }
        }
    }

    /// The gfn-core state (`i32`, empty slots `−1`) of row `s`.
    pub fn core_state(&self, s: &[u32], out: &mut [i32]) {
        let d = self.sdim as usize;
        for (o, &v) in out.iter_mut().zip(&s[..d]) {
            *o = match self.env_kind() {
                EnvKind::Hypergrid => v as i32,
                _ => v as i32 - 1,
            };
        }
    }
}
