//! Bit sequences (TB paper, Malkin et al. 2022, as implemented in torchgfn `gym/bitSequence.py`
//! and gfnx `reward/bitseq.py`; papers.md §3.2).
//!
//! An object is a string of `n` bits (default 120) built from `L = n/k` words of `k` bits
//! (default `k = 8`: 15 words, vocabulary `V = 2^k = 256`). A state is the row of the `L` word
//! slots, `−1` for an empty slot, else the word value `0 … V−1`; `s_0` is all empty. An object is
//! terminal, and complete, once every slot is filled: always after exactly `L` steps. There is no
//! exit action (torchgfn adds one after the last word; with it or without, the objects and their
//! probabilities are the same).
//!
//! **Bit order.** Word `w` holds sequence bits `w·k … w·k+k−1`, its most significant bit first
//! (torchgfn's `format(x, "0kb")`). [`BitSeqEnv::bits_of`] packs a sequence into a `u128` read as
//! an `n`-bit binary number, sequence bit 0 the most significant: sequence bit `i` is bit `n−1−i`
//! of the integer, so the packed value is the concatenation of the words, `Σ_w word_w · 2^{n−k(w+1)}`.
//!
//! **Generation orders** ([`BitSeqOrder`]):
//! * `Append` (torchgfn, autoregressive): forward action `a ∈ 0 … V−1` writes word `a` into the
//!   first empty slot; one backward action, removing the last word. The DAG is a tree.
//! * `Fill` (gfnx, any order): forward action `slot·V + word` writes `word` into the empty slot
//!   `slot`; backward action `i` clears the filled slot `i` (`L` backward actions). Not a tree.
//!
//! **Modes.** `M` (60 by default) sequences, each the concatenation of `n/8` blocks drawn uniformly
//! from `H = {00000000, 11111111, 11110000, 00001111, 00111100}` ([`MODE_BLOCKS`]) with the task
//! seed's RNG, rejecting duplicates until `|M|` distinct modes exist (so `n` must be a multiple of 8).
//!
//! **Reward.** `log R(x) = −d_H(x, M) · s`, with `d_H(x, M) = min_{m∈M} d_H(x, m)` the Hamming
//! distance to the nearest mode (XOR + popcount on the packed bits) and the scale `s` from
//! [`BitSeqReward`]: `1/T` (torchgfn, `T = 1`) or `β/n` (gfnx, `β = 3`). The TB paper speaks of
//! edit distance; both reference codes use the Hamming distance, as here.
//!
//! **Evaluation.** [`Env::is_mode`] holds exactly for the modes themselves (distance 0); the
//! "modes found" metric is [`BitSeqEnv::modes_found`]: the number of modes with some sample within
//! Hamming distance `δ` ([`DEFAULT_DELTA`] = 30, gfnx). [`BitSeqEnv::test_set`] is the test set of
//! the correlation metric: each mode with `c = 0 … n−1` random bits flipped.

use std::collections::HashSet;

use rand::Rng;

use gfn_core::{Env, GfnError, GfnRng, Result, rng_from_seed};

/// The five 8-bit blocks modes are made of, as numbers read most significant bit first:
/// `00000000, 11111111, 11110000, 00001111, 00111100`.
pub const MODE_BLOCKS: [u8; 5] = [0x00, 0xFF, 0xF0, 0x0F, 0x3C];
/// Default number of modes `|M|`.
pub const DEFAULT_N_MODES: usize = 60;
/// Default "modes found" radius `δ` (gfnx).
pub const DEFAULT_DELTA: u32 = 30;
/// gfnx's default reward exponent `β`.
pub const DEFAULT_BETA: f64 = 3.0;
/// Largest word size `k`.
pub const MAX_WORD_BITS: usize = 16;
/// Largest sequence length `n` (a sequence packs into a `u128`).
pub const MAX_SEQ_BITS: usize = 128;
/// Largest number of modes accepted.
pub const MAX_N_MODES: usize = 1 << 20;
/// An empty slot.
pub const EMPTY: i32 = -1;

gfn_core::choice! {
    /// The order in which words are generated.
    pub enum BitSeqOrder("bitseq_order") {
        /// Left to right (torchgfn): a tree-shaped DAG.
        Append = "append",
        /// Any empty slot next (gfnx).
        Fill = "fill",
    }
}

/// How the distance to the modes becomes a log reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BitSeqReward {
    /// torchgfn: `log R = −d_H(x, M) / T`.
    Temperature(f64),
    /// gfnx (`reward_exponent`): `log R = −β · d_H(x, M) / n`.
    Exponent(f64),
}

impl Default for BitSeqReward {
    fn default() -> Self {
        BitSeqReward::Temperature(1.0)
    }
}

/// Configuration of [`BitSeqEnv`]; the default is torchgfn's task at `k = 8`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BitSeqConfig {
    /// Sequence length `n` in bits (`≤ 128`, a multiple of 8 and of `k`).
    pub n: usize,
    /// Word size `k` in bits (`1 … 16`).
    pub k: usize,
    /// Generation order.
    pub order: BitSeqOrder,
    /// Number of modes `|M|`.
    pub n_modes: usize,
    /// Reward form.
    pub reward: BitSeqReward,
    /// Seed of the mode set.
    pub seed: u64,
}

impl Default for BitSeqConfig {
    fn default() -> Self {
        Self {
            n: 120,
            k: 8,
            order: BitSeqOrder::Append,
            n_modes: DEFAULT_N_MODES,
            reward: BitSeqReward::default(),
            seed: 0,
        }
    }
}

/// The bit-sequence environment.
#[derive(Debug, Clone)]
pub struct BitSeqEnv {
    cfg: BitSeqConfig,
    words: usize,
    vocab: usize,
    scale: f64,
    modes: Vec<u128>,
}

impl BitSeqEnv {
    /// The task described by `cfg`, its modes drawn from `cfg.seed`.
    pub fn new(cfg: BitSeqConfig) -> Result<Self> {
        let (n, k) = (cfg.n, cfg.k);
        if k == 0 || k > MAX_WORD_BITS {
            return Err(GfnError::invalid("k", k, format!("must be in 1 … {MAX_WORD_BITS}")));
        }
        if n == 0 || n > MAX_SEQ_BITS {
            return Err(GfnError::invalid("n", n, format!("must be in 1 … {MAX_SEQ_BITS}")));
        }
        if n % k != 0 {
            return Err(GfnError::invalid("k", k, format!("must divide n = {n}")));
        }
        if n % 8 != 0 {
            return Err(GfnError::invalid(
                "n",
                n,
                "must be a multiple of 8 (modes are built from 8-bit blocks)",
            ));
        }
        let possible = (MODE_BLOCKS.len() as u128)
            .checked_pow((n / 8) as u32)
            .unwrap_or(u128::MAX);
        if cfg.n_modes == 0 || cfg.n_modes > MAX_N_MODES || cfg.n_modes as u128 > possible {
            return Err(GfnError::invalid(
                "n_modes",
                cfg.n_modes,
                format!("must be in 1 … min({MAX_N_MODES}, 5^(n/8) = {possible})"),
            ));
        }
        let scale = match cfg.reward {
            BitSeqReward::Temperature(t) if t.is_finite() && t > 0.0 => 1.0 / t,
            BitSeqReward::Temperature(t) => return Err(GfnError::invalid("temperature", t, "must be finite and > 0")),
            BitSeqReward::Exponent(b) if b.is_finite() && b >= 0.0 => b / n as f64,
            BitSeqReward::Exponent(b) => return Err(GfnError::invalid("beta", b, "must be finite and ≥ 0")),
        };
        let modes = draw_modes(n, cfg.n_modes, &mut rng_from_seed(cfg.seed));
        Ok(Self {
            cfg,
            words: n / k,
            vocab: 1 << k,
            scale,
            modes,
        })
    }

    /// The default task (`n = 120`, 60 modes, `T = 1`) with word size `k`, `order` and mode seed.
    pub fn standard(k: usize, order: BitSeqOrder, seed: u64) -> Result<Self> {
        Self::new(BitSeqConfig {
            k,
            order,
            seed,
            ..BitSeqConfig::default()
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BitSeqConfig {
        &self.cfg
    }
    /// Sequence length `n` in bits.
    pub fn seq_bits(&self) -> usize {
        self.cfg.n
    }
    /// Word size `k` in bits.
    pub fn word_bits(&self) -> usize {
        self.cfg.k
    }
    /// Words per sequence `L = n/k`.
    pub fn words(&self) -> usize {
        self.words
    }
    /// Vocabulary size `V = 2^k`.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
    /// The factor `s` in `log R = −s · d_H(x, M)`.
    pub fn reward_scale(&self) -> f64 {
        self.scale
    }

    /// The modes, packed as by [`BitSeqEnv::bits_of`], in the order drawn.
    pub fn modes(&self) -> &[u128] {
        &self.modes
    }

    /// The packed bits of a state (empty slots read as zeros).
    pub fn bits_of(&self, state: &[i32]) -> u128 {
        let (n, k) = (self.cfg.n, self.cfg.k);
        let mask = (1u128 << k) - 1;
        let mut bits = 0u128;
        for (w, &v) in state.iter().take(self.words).enumerate() {
            if v >= 0 {
                bits |= (v as u128 & mask) << (n - k * (w + 1));
            }
        }
        bits
    }

    /// The complete state whose packed bits are `bits` (bits above `n` are ignored).
    pub fn state_of(&self, bits: u128) -> Vec<i32> {
        let (n, k) = (self.cfg.n, self.cfg.k);
        let mask = (1u128 << k) - 1;
        (0..self.words)
            .map(|w| ((bits >> (n - k * (w + 1))) & mask) as i32)
            .collect()
    }

    /// The nearest mode of a packed sequence: `(mode index, Hamming distance)`, the first index
    /// on ties.
    pub fn nearest_mode_bits(&self, bits: u128) -> (usize, u32) {
        let mut best = (0, u32::MAX);
        for (i, &m) in self.modes.iter().enumerate() {
            let d = (bits ^ m).count_ones();
            if d < best.1 {
                best = (i, d);
            }
        }
        best
    }

    /// The nearest mode of a (complete) state: `(mode index, Hamming distance)`.
    pub fn nearest_mode(&self, state: &[i32]) -> (usize, u32) {
        self.nearest_mode_bits(self.bits_of(state))
    }

    /// `log R` of a packed sequence.
    pub fn log_reward_bits(&self, bits: u128) -> f64 {
        -self.scale * f64::from(self.nearest_mode_bits(bits).1)
    }

    /// Number of distinct modes `m` with some row of `terminal_states` (flattened, `L` values a
    /// row) within Hamming distance `delta` of `m` (the "modes found" metric, `δ` = [`DEFAULT_DELTA`]).
    pub fn modes_found(&self, terminal_states: &[i32], delta: u32) -> usize {
        let mut found = vec![false; self.modes.len()];
        for row in terminal_states.chunks_exact(self.words) {
            let bits = self.bits_of(row);
            for (f, &m) in found.iter_mut().zip(&self.modes) {
                *f |= (bits ^ m).count_ones() <= delta;
            }
        }
        found.into_iter().filter(|&f| f).count()
    }

    /// The correlation test set, flattened terminal rows: row `m·n + c` is mode `m` with `c`
    /// distinct random bits flipped, `c = 0 … n−1` (`60 × 120 = 7,200` rows by default).
    pub fn test_set(&self, seed: u64) -> Vec<i32> {
        let n = self.cfg.n;
        let mut rng = rng_from_seed(seed);
        let mut positions: Vec<usize> = (0..n).collect();
        let mut out = Vec::with_capacity(self.modes.len() * n * self.words);
        for &m in &self.modes {
            for c in 0..n {
                // Partial Fisher–Yates: the first c entries become c distinct random positions.
                for i in 0..c {
                    let j = rng.random_range(i..n);
                    positions.swap(i, j);
                }
                let flips = positions[..c].iter().fold(0u128, |acc, &p| acc | 1u128 << p);
                out.extend(self.state_of(m ^ flips));
            }
        }
        out
    }

    fn filled(&self, state: &[i32]) -> usize {
        state.iter().take_while(|&&v| v >= 0).count()
    }
}

/// `n_modes` distinct concatenations of `n/8` blocks of [`MODE_BLOCKS`], block `j` at sequence
/// bits `8j … 8j+7`.
fn draw_modes(n: usize, n_modes: usize, rng: &mut GfnRng) -> Vec<u128> {
    let mut seen = HashSet::with_capacity(n_modes);
    let mut modes = Vec::with_capacity(n_modes);
    while modes.len() < n_modes {
        let mut bits = 0u128;
        for j in 0..n / 8 {
            let block = MODE_BLOCKS[rng.random_range(0..MODE_BLOCKS.len())];
            bits |= u128::from(block) << (n - 8 * (j + 1));
        }
        if seen.insert(bits) {
            modes.push(bits);
        }
    }
    modes
}

impl Env for BitSeqEnv {
    fn name(&self) -> String {
        let order = match self.cfg.order {
            BitSeqOrder::Append => "append",
            BitSeqOrder::Fill => "fill",
        };
        format!("bitseq-{}-k{}-{order}", self.cfg.n, self.cfg.k)
    }
    fn state_dim(&self) -> usize {
        self.words
    }
    /// `V` (append) or `L·V` (fill).
    fn n_actions(&self) -> usize {
        match self.cfg.order {
            BitSeqOrder::Append => self.vocab,
            BitSeqOrder::Fill => self.words * self.vocab,
        }
    }
    /// `1` (append: remove the last word) or `L` (fill: clear slot `i`).
    fn n_backward_actions(&self) -> usize {
        match self.cfg.order {
            BitSeqOrder::Append => 1,
            BitSeqOrder::Fill => self.words,
        }
    }
    fn exit_action(&self) -> Option<usize> {
        None
    }
    /// Two values per sequence bit `b` (at `2b`, `2b+1`): `[1, 0]` for a 1, `[0, 1]` for a 0,
    /// `[0, 0]` while its slot is empty.
    fn feature_dim(&self) -> usize {
        2 * self.cfg.n
    }
    fn max_actions(&self) -> usize {
        self.words
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(EMPTY);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        match self.cfg.order {
            BitSeqOrder::Append => {
                let open = self.filled(state) < self.words;
                mask.iter_mut().for_each(|m| *m = open);
            }
            BitSeqOrder::Fill => {
                for (slot, m) in state.iter().zip(mask.chunks_exact_mut(self.vocab)) {
                    m.fill(*slot < 0);
                }
            }
        }
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        match self.cfg.order {
            BitSeqOrder::Append => mask[0] = self.filled(state) > 0,
            BitSeqOrder::Fill => {
                for (m, &v) in mask.iter_mut().zip(state) {
                    *m = v >= 0;
                }
            }
        }
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        match self.cfg.order {
            BitSeqOrder::Append => {
                let pos = self.filled(state);
                state[pos] = action as i32;
                0
            }
            BitSeqOrder::Fill => {
                let slot = action / self.vocab;
                state[slot] = (action % self.vocab) as i32;
                slot
            }
        }
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        let slot = match self.cfg.order {
            BitSeqOrder::Append => self.filled(state) - 1,
            BitSeqOrder::Fill => action,
        };
        let word = state[slot] as usize;
        state[slot] = EMPTY;
        match self.cfg.order {
            BitSeqOrder::Append => word,
            BitSeqOrder::Fill => slot * self.vocab + word,
        }
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        self.log_reward_bits(self.bits_of(state))
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        let k = self.cfg.k;
        for (b, o) in out.chunks_exact_mut(2).enumerate().take(self.cfg.n) {
            let v = state[b / k];
            if v < 0 {
                o.fill(0.0);
            } else {
                let bit = (v >> (k - 1 - b % k)) & 1 == 1;
                o[0] = f32::from(u8::from(bit));
                o[1] = f32::from(u8::from(!bit));
            }
        }
    }
    fn token_space(&self) -> Option<gfn_core::obs::TokenSpace> {
        Some(gfn_core::obs::TokenSpace {
            vocab: self.vocab() + 1,
            max_len: self.words(),
        })
    }
    fn observe_tokens(
        &self,
        states: &[i32],
        device: &gfn_core::candle_core::Device,
    ) -> Result<gfn_core::obs::TokenBatch> {
        self.tokens(states, device)
    }
    fn is_terminal(&self, state: &[i32]) -> bool {
        state.iter().all(|&v| v >= 0)
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state.iter().all(|&v| v < 0)
    }
    /// Exactly the modes (distance 0); the "modes found" metric is [`BitSeqEnv::modes_found`].
    fn is_mode(&self, state: &[i32]) -> bool {
        self.is_terminal(state) && self.nearest_mode(state).1 == 0
    }
    /// Hamming distance between the bit sequences (not between the words).
    fn object_distance(&self, a: &[i32], b: &[i32]) -> f64 {
        f64::from((self.bits_of(a) ^ self.bits_of(b)).count_ones())
    }
    /// Every state, by number of filled slots, where there are at most [`MAX_ENUMERABLE_STATES`]
    /// (e.g. n = 16, k = 4: 69,905 appended prefixes, 83,521 fill states); exact evaluation.
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        let (l, v) = (self.words(), self.vocab());
        let count = self.num_states()?;
        let mut out = Vec::with_capacity(count * l);
        match self.cfg.order {
            BitSeqOrder::Append => {
                for j in 0..=l {
                    let values = v.checked_pow(j as u32)?;
                    for code in 0..values {
                        let mut rest = code;
                        let start = out.len();
                        out.resize(start + l, EMPTY);
                        for w in (0..j).rev() {
                            out[start + w] = (rest % v) as i32;
                            rest /= v;
                        }
                    }
                }
            }
            BitSeqOrder::Fill => {
                let mut by_filled: Vec<Vec<i32>> = vec![Vec::new(); l + 1];
                for code in 0..count {
                    let mut rest = code;
                    let mut row = vec![EMPTY; l];
                    for slot in row.iter_mut().rev() {
                        let d = rest % (v + 1);
                        rest /= v + 1;
                        *slot = if d == 0 { EMPTY } else { (d - 1) as i32 };
                    }
                    let filled = row.iter().filter(|&&x| x >= 0).count();
                    by_filled[filled].extend_from_slice(&row);
                }
                out = by_filled.concat();
            }
        }
        Some(out)
    }
    /// Append order: `Σ_{i<j} V^i + value` for a prefix of `j` words; fill order: `None` (a map).
    fn state_index(&self, state: &[i32]) -> Option<usize> {
        if self.cfg.order != BitSeqOrder::Append || self.num_states().is_none() {
            return None;
        }
        let v = self.vocab();
        let j = state.iter().take_while(|&&x| x >= 0).count();
        let offset: usize = (0..j).map(|i| v.pow(i as u32)).sum();
        let value = state[..j].iter().fold(0usize, |acc, &w| acc * v + w as usize);
        Some(offset + value)
    }
}

/// Largest state space [`BitSeqEnv`] enumerates for exact evaluation.
pub const MAX_ENUMERABLE_STATES: usize = 1 << 20;

impl BitSeqEnv {
    /// States as token sequences for a sequence policy (the `Tokens` observation): one token per
    /// word slot, in slot order, the word's value `0 … V−1` or `V` for an empty slot; every token
    /// is real (vocabulary `V + 1`, length `L`).
    pub fn tokens(&self, states: &[i32], device: &gfn_core::candle_core::Device) -> Result<gfn_core::obs::TokenBatch> {
        let l = self.words();
        let v = self.vocab() as u32;
        let seqs: Vec<Vec<u32>> = states
            .chunks_exact(l)
            .map(|s| s.iter().map(|&w| if w == EMPTY { v } else { w as u32 }).collect())
            .collect();
        gfn_core::obs::TokenBatch::from_sequences(&seqs, self.vocab() + 1, l, device)
    }

    /// Number of states where it is at most [`MAX_ENUMERABLE_STATES`], else `None`.
    pub fn num_states(&self) -> Option<usize> {
        let (l, v) = (self.words() as u32, self.vocab());
        let count = match self.cfg.order {
            BitSeqOrder::Append => (0..=l).try_fold(0usize, |acc, j| acc.checked_add(v.checked_pow(j)?))?,
            BitSeqOrder::Fill => (v + 1).checked_pow(l)?,
        };
        (count <= MAX_ENUMERABLE_STATES).then_some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through the policy seam, a transformer trained with trajectory balance on a small
    /// enumerable bit-sequence task (n 8, k 2: 256 sequences) matches the exact target
    /// (TV ≤ 0.05), and the untrained one does not; the tokens are one per slot.
    #[test]
    fn a_transformer_policy_trains_to_the_exact_target() {
        use gfn_core::candle_core::Device;
        use gfn_core::nets::transformer::{Positions, TransformerConfig};
        use gfn_core::optim::{Adam, AdamParams};
        use gfn_core::policy::{Policy, TransformerPolicy, exact_log_pf, tb_loss_on_policy};
        const EPSILON: f64 = 0.0;
        let env = BitSeqEnv::new(BitSeqConfig {
            n: 8,
            k: 2,
            n_modes: 3,
            seed: 1,
            ..BitSeqConfig::default()
        })
        .unwrap();
        let dev = Device::Cpu;
        let t = env.tokens(&[EMPTY, 3, EMPTY, 0], &dev).unwrap();
        assert_eq!(t.ids.to_vec2::<u32>().unwrap(), vec![vec![4, 3, 4, 0]]);
        let eval = gfn_core::exact::ExactEvaluator::new(&env).unwrap();
        let mut rng = rng_from_seed(3);
        let config = TransformerConfig {
            vocab: env.vocab() + 1,
            max_len: env.words(),
            d_model: 32,
            heads: 4,
            layers: 2,
            d_ff: 64,
            positions: Positions::Learned,
            position_outputs: 0,
            pooled_outputs: 0,
        };
        let policy = TransformerPolicy::new(config, env.n_actions(), None, false, &dev, &mut rng).unwrap();
        let observe = |s: &[i32]| Ok(gfn_core::obs::Observations::Tokens(env.tokens(s, &dev)?));
        let tv = |p: &TransformerPolicy| {
            let log_pf = exact_log_pf(&eval, &env, p, &observe).unwrap();
            eval.metrics_for(&log_pf, 0.0).dist.tv
        };
        let untrained = tv(&policy);
        let mut params: Vec<(String, gfn_core::candle_core::Var, usize)> =
            policy.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
        params.push(("log_z".into(), policy.log_z().unwrap().clone(), 1));
        let mut adam = Adam::new(params, vec![AdamParams::adam(1e-3), AdamParams::adam(0.1)]);
        for _ in 0..600 {
            let (loss, _) = tb_loss_on_policy(&env, &policy, &observe, 32, EPSILON, &mut rng).unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
        }
        let trained = tv(&policy);
        eprintln!("transformer seam: TV {untrained} → {trained}");
        assert!(untrained > 0.2, "the untrained policy is already at TV {untrained}");
        assert!(trained <= 0.05, "TV {trained} after training (untrained {untrained})");
        let log_z = f64::from(policy.log_z().unwrap().as_tensor().to_vec1::<f32>().unwrap()[0]);
        assert!((log_z - eval.log_z()).abs() < 0.05, "log Z {log_z} vs {}", eval.log_z());
    }

    /// The MLP estimator through the seam (dense observations) gives exactly the exact
    /// evaluator's own P_F table, and a sequence policy refuses dense input by name.
    #[test]
    fn the_estimator_through_the_seam_is_the_estimator() {
        use gfn_core::candle_core::{Device, Tensor};
        use gfn_core::obs::Observations;
        use gfn_core::policy::exact_log_pf;
        use gfn_core::{BackwardPolicy, Estimator, EstimatorConfig};
        let env = BitSeqEnv::new(BitSeqConfig {
            n: 8,
            k: 2,
            n_modes: 3,
            ..BitSeqConfig::default()
        })
        .unwrap();
        let dev = Device::Cpu;
        let cfg = EstimatorConfig {
            hidden: 16,
            layers: 2,
            shared_trunk: true,
            backward: BackwardPolicy::Learned,
            flow_head: false,
        };
        let est = Estimator::new(
            cfg,
            env.feature_dim(),
            env.n_actions(),
            env.n_backward_actions(),
            &dev,
            &mut rng_from_seed(5),
        )
        .unwrap();
        let eval = gfn_core::exact::ExactEvaluator::new(&env).unwrap();
        let observe = |s: &[i32]| {
            let mut f = vec![0f32; s.len() / env.words() * env.feature_dim()];
            env.featurize_batch(s, &mut f);
            Ok(Observations::Dense(Tensor::from_vec(
                f,
                (s.len() / env.words(), env.feature_dim()),
                &dev,
            )?))
        };
        let seam = exact_log_pf(&eval, &env, &est, &observe).unwrap();
        assert_eq!(seam, eval.policy_log_probs(&est).unwrap());
        let tokens = Observations::Tokens(env.tokens(&[EMPTY; 4], &dev).unwrap());
        let e = gfn_core::policy::Policy::forward(&est, &tokens)
            .unwrap_err()
            .to_string();
        assert!(e.contains("observations") && e.contains("dense"), "{e}");
    }

    /// The default task at other sizes (5 modes where `n < 24` leaves fewer than 60 possible).
    fn env(n: usize, k: usize, order: BitSeqOrder) -> BitSeqEnv {
        BitSeqEnv::new(BitSeqConfig {
            n,
            k,
            order,
            n_modes: if n < 24 { 5 } else { DEFAULT_N_MODES },
            ..BitSeqConfig::default()
        })
        .unwrap()
    }

    /// Sequence bits as a vector, bit 0 first: the brute-force reference.
    fn bit_vec(env: &BitSeqEnv, state: &[i32]) -> Vec<u8> {
        let k = env.word_bits();
        (0..env.seq_bits())
            .map(|b| ((state[b / k] >> (k - 1 - b % k)) & 1) as u8)
            .collect()
    }

    fn brute_distance(env: &BitSeqEnv, state: &[i32]) -> u32 {
        let x = bit_vec(env, state);
        env.modes()
            .iter()
            .map(|&m| {
                let mv = bit_vec(env, &env.state_of(m));
                x.iter().zip(&mv).filter(|(a, b)| a != b).count() as u32
            })
            .min()
            .unwrap()
    }

    /// Checks masks, inverses and the tree property along random trajectories.
    fn check_trajectories(env: &BitSeqEnv, runs: usize, seed: u64) {
        let (l, na, nb, v) = (env.words(), env.n_actions(), env.n_backward_actions(), env.vocab());
        let mut rng = rng_from_seed(seed);
        let (mut fm, mut bm) = (vec![false; na], vec![false; nb]);
        for _ in 0..runs {
            let mut s = vec![0; l];
            env.initial_state(&mut s);
            assert!(env.is_initial(&s));
            for t in 0..=l {
                env.forward_mask(&s, &mut fm);
                env.backward_mask(&s, &mut bm);
                let filled: Vec<bool> = s.iter().map(|&x| x >= 0).collect();
                // The filled slots are exactly the steps taken; append fills a prefix.
                assert_eq!(filled.iter().filter(|&&f| f).count(), t);
                assert_eq!(env.is_terminal(&s), t == l);
                match env.config().order {
                    BitSeqOrder::Append => {
                        assert!(filled[..t].iter().all(|&f| f) && filled[t..].iter().all(|&f| !f));
                        assert!(fm.iter().all(|&m| m == (t < l)));
                        assert_eq!(bm, [t > 0], "a tree: one parent except at s_0");
                    }
                    BitSeqOrder::Fill => {
                        for a in 0..na {
                            assert_eq!(fm[a], !filled[a / v]);
                        }
                        assert_eq!(bm, filled);
                    }
                }
                // Every allowed backward action is undone by the forward action it returns.
                for b in (0..nb).filter(|&b| bm[b]) {
                    let mut p = s.clone();
                    let a = env.backward_step(&mut p, b);
                    let mut pm = vec![false; na];
                    env.forward_mask(&p, &mut pm);
                    assert!(pm[a]);
                    assert_eq!(env.step(&mut p, a), b);
                    assert_eq!(p, s);
                }
                if t == l {
                    break;
                }
                let allowed: Vec<usize> = (0..na).filter(|&a| fm[a]).collect();
                let a = allowed[rng.random_range(0..allowed.len())];
                let before = s.clone();
                let b = env.step(&mut s, a);
                env.backward_mask(&s, &mut bm);
                assert!(bm[b]);
                let mut back = s.clone();
                assert_eq!(env.backward_step(&mut back, b), a);
                assert_eq!(back, before);
            }
            if env.config().order == BitSeqOrder::Fill {
                assert_eq!(bm.iter().filter(|&&m| m).count(), l, "a full state has L parents");
            }
            assert!(env.log_reward(&s) <= 0.0);
        }
    }

    #[test]
    fn trajectories_invert_and_masks_agree() {
        for order in [BitSeqOrder::Append, BitSeqOrder::Fill] {
            check_trajectories(&env(120, 8, order), 20, 1);
            check_trajectories(&env(16, 4, order), 50, 2);
            check_trajectories(&env(24, 1, order), 20, 3);
            check_trajectories(&env(128, 16, order), 5, 4);
            check_trajectories(&env(120, 10, order), 10, 5);
        }
    }

    #[test]
    fn shapes_names_and_bit_order() {
        let a = env(120, 8, BitSeqOrder::Append);
        let f = env(120, 8, BitSeqOrder::Fill);
        assert_eq!(a.name(), "bitseq-120-k8-append");
        assert_eq!(f.name(), "bitseq-120-k8-fill");
        assert_eq!((a.state_dim(), a.n_actions(), a.n_backward_actions()), (15, 256, 1));
        assert_eq!(
            (f.state_dim(), f.n_actions(), f.n_backward_actions()),
            (15, 15 * 256, 15)
        );
        assert_eq!((a.max_actions(), a.feature_dim(), a.exit_action()), (15, 240, None));
        // Word 0's most significant bit is sequence bit 0, the integer's top bit.
        let mut s = vec![0; 15];
        s[0] = 0x80;
        assert_eq!(a.bits_of(&s), 1u128 << 119);
        s[0] = 0;
        s[14] = 1;
        assert_eq!(a.bits_of(&s), 1);
        let mut rng = rng_from_seed(9);
        for e in [&a, &env(128, 16, BitSeqOrder::Fill), &env(24, 3, BitSeqOrder::Fill)] {
            let mask = if e.seq_bits() == 128 {
                u128::MAX
            } else {
                (1u128 << e.seq_bits()) - 1
            };
            for _ in 0..50 {
                let bits = rng.random::<u128>() & mask;
                assert_eq!(e.bits_of(&e.state_of(bits)), bits);
            }
        }
    }

    #[test]
    fn features() {
        let e = env(16, 4, BitSeqOrder::Append);
        let mut out = vec![9.0; 32];
        e.featurize(&[EMPTY; 4], &mut out);
        assert!(out.iter().all(|&x| x == 0.0));
        e.featurize(&[0b1010, EMPTY, EMPTY, EMPTY], &mut out);
        assert_eq!(&out[..8], &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
        assert!(out[8..].iter().all(|&x| x == 0.0));
        e.featurize(&[0b1111, 0, 0b0001, 0b1000], &mut out);
        assert!(out.chunks_exact(2).all(|p| p[0] + p[1] == 1.0));
        assert_eq!(&out[8..12], &[0.0, 1.0, 0.0, 1.0]);
        assert_eq!(&out[22..26], &[1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn modes_are_distinct_blocks_and_seeded() {
        let e = env(120, 8, BitSeqOrder::Append);
        assert_eq!(e.modes().len(), 60);
        assert_eq!(e.modes().iter().collect::<HashSet<_>>().len(), 60);
        for &m in e.modes() {
            for j in 0..15 {
                assert!(MODE_BLOCKS.contains(&((m >> (120 - 8 * (j + 1))) as u8)));
            }
            let s = e.state_of(m);
            assert!(e.is_mode(&s));
            assert_eq!(e.log_reward(&s), 0.0);
        }
        assert_eq!(
            env(120, 4, BitSeqOrder::Fill).modes(),
            e.modes(),
            "modes depend on the seed only"
        );
        let other = BitSeqEnv::new(BitSeqConfig {
            seed: 1,
            ..BitSeqConfig::default()
        })
        .unwrap();
        assert_ne!(other.modes(), e.modes());
        // Distinct blocks differ in at least 4 bits.
        for (i, &x) in MODE_BLOCKS.iter().enumerate() {
            for &y in &MODE_BLOCKS[i + 1..] {
                assert!((x ^ y).count_ones() >= 4);
            }
        }
    }

    #[test]
    fn reward_is_min_hamming_distance() {
        let e = env(120, 8, BitSeqOrder::Fill);
        let gfnx = BitSeqEnv::new(BitSeqConfig {
            reward: BitSeqReward::Exponent(DEFAULT_BETA),
            ..BitSeqConfig::default()
        })
        .unwrap();
        let mut rng = rng_from_seed(5);
        for (i, &m) in e.modes().iter().enumerate().take(20) {
            for c in [0, 1, 3, 10, 30, 60, 119] {
                let mut x = m;
                let mut flipped = 0;
                while flipped < c {
                    let p = rng.random_range(0..120);
                    if (x ^ m) >> p & 1 == 0 {
                        x ^= 1 << p;
                        flipped += 1;
                    }
                }
                let s = e.state_of(x);
                let d = brute_distance(&e, &s);
                let others = e.modes().iter().enumerate().filter(|&(j, _)| j != i);
                let d_other = others.map(|(_, &o)| (x ^ o).count_ones()).min().unwrap();
                assert_eq!(d, c.min(d_other));
                assert_eq!(e.nearest_mode(&s).1, d);
                assert_eq!(e.log_reward(&s), -f64::from(d));
                assert!((gfnx.log_reward(&s) + 3.0 * f64::from(d) / 120.0).abs() < 1e-12);
                assert_eq!(e.is_mode(&s), d == 0);
                if c < 2 {
                    assert_eq!(e.nearest_mode(&s).0, i);
                }
            }
        }
    }

    #[test]
    fn test_set_rows() {
        let e = env(120, 8, BitSeqOrder::Append);
        let t = e.test_set(0);
        assert_eq!(t.len(), 7_200 * 15);
        assert_eq!(e.test_set(0), t);
        assert_ne!(e.test_set(1), t);
        for (r, row) in t.chunks_exact(15).enumerate() {
            let (m, c) = (r / 120, r % 120);
            assert!(e.is_terminal(row));
            assert_eq!((e.bits_of(row) ^ e.modes()[m]).count_ones() as usize, c);
        }
        let brute = (0..60)
            .filter(|&m| {
                t.chunks_exact(15)
                    .any(|row| (e.bits_of(row) ^ e.modes()[m]).count_ones() <= 30)
            })
            .count();
        assert_eq!(e.modes_found(&t, DEFAULT_DELTA), brute);
        assert_eq!(brute, 60);
    }

    #[test]
    fn modes_found_hand_made() {
        let e = env(120, 8, BitSeqOrder::Append);
        let m = e.modes();
        let mut samples = Vec::new();
        samples.extend(e.state_of(m[0]));
        samples.extend(e.state_of(m[3] ^ 1 << 7));
        samples.extend(e.state_of(m[5] ^ 1 << 100));
        samples.extend(e.state_of(m[5] ^ 1 << 100)); // a duplicate counts once
        assert_eq!(e.modes_found(&[], 1), 0);
        assert_eq!(e.modes_found(&samples, 0), 1);
        // Modes are ≥ 4 bits apart, so a sample within 1 bit of a mode is near no other.
        assert_eq!(e.modes_found(&samples, 1), 3);
        assert_eq!(e.modes_found(&samples, 120), 60);
        // A sample 16 bits from mode 7 finds it at δ = 16, not at δ = 15.
        let far = e.state_of(m[7] ^ 0xFFFF);
        let within = |d: u32| (0..60).filter(|&j| (e.bits_of(&far) ^ m[j]).count_ones() <= d).count();
        assert_eq!(e.modes_found(&far, 15), within(15));
        assert_eq!(e.modes_found(&far, 16), within(16));
        assert!(within(16) > within(15));
    }

    #[test]
    fn object_distance_is_bitwise() {
        let e = env(16, 4, BitSeqOrder::Fill);
        assert_eq!(e.object_distance(&[0, 0, 0, 0], &[0b1111, 0, 0, 1]), 5.0);
        assert_eq!(e.object_distance(&[3, 2, 1, 0], &[3, 2, 1, 0]), 0.0);
    }

    #[test]
    fn bad_input_names_the_field() {
        let field = |n, k, n_modes, reward| match BitSeqEnv::new(BitSeqConfig {
            n,
            k,
            n_modes,
            reward,
            ..BitSeqConfig::default()
        }) {
            Err(GfnError::InvalidConfig { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        };
        let t = BitSeqReward::default();
        assert_eq!(field(120, 7, 60, t), "k");
        assert_eq!(field(120, 0, 60, t), "k");
        assert_eq!(field(136, 17, 60, t), "k");
        assert_eq!(field(136, 8, 60, t), "n");
        assert_eq!(field(0, 8, 60, t), "n");
        assert_eq!(field(12, 4, 60, t), "n");
        assert_eq!(field(120, 8, 0, t), "n_modes");
        assert_eq!(field(8, 8, 6, t), "n_modes");
        assert_eq!(field(120, 8, 60, BitSeqReward::Temperature(0.0)), "temperature");
        assert_eq!(field(120, 8, 60, BitSeqReward::Exponent(f64::NAN)), "beta");
        assert!(
            BitSeqEnv::new(BitSeqConfig {
                n: 8,
                k: 8,
                n_modes: 5,
                ..BitSeqConfig::default()
            })
            .is_ok()
        );
    }

    /// Small tasks enumerate every state in topological order, and the environment passes the
    /// DAG checks (inverse steps, acyclicity, every state listed once, parents first).
    #[test]
    fn small_tasks_enumerate() {
        for (n, k, order, states) in [
            (16, 4, BitSeqOrder::Append, 69_905),
            (8, 2, BitSeqOrder::Fill, 625),
            (8, 1, BitSeqOrder::Append, 511),
        ] {
            let e = BitSeqEnv::new(BitSeqConfig {
                n,
                k,
                order,
                n_modes: 3,
                ..BitSeqConfig::default()
            })
            .unwrap();
            assert_eq!(e.num_states(), Some(states));
            let all = e.enumerate_states().unwrap();
            assert_eq!(all.len(), states * e.state_dim());
            if order == BitSeqOrder::Append {
                for (i, row) in all.chunks_exact(e.state_dim()).enumerate() {
                    assert_eq!(e.state_index(row), Some(i));
                }
            }
            gfn_core::dag::check_env(&e).unwrap();
        }
        assert_eq!(BitSeqEnv::new(BitSeqConfig::default()).unwrap().num_states(), None);
    }
}
