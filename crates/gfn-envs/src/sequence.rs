//! A generic sequence environment: objects are sequences of `length` tokens over an alphabet of
//! `alphabet` symbols, with a reward supplied by the caller (a Rust closure, or a Python callable
//! through the `gfnrs` package), scored one batch at a time.
//!
//! A state is the row of `length` slots, `−1` for an empty slot; `s_0` is all empty and an object
//! is terminal once every slot is filled (no exit action). Three generation orders
//! ([`SequenceOrder`]), the ones the seeds' sequence tasks use:
//! * `Append` (autoregressive; LED-GFN's TF-Bind and RNA tasks): forward action `a < A` writes
//!   token `a` into the first empty slot; one backward action removes the last token. A tree.
//! * `PrependAppend` (the TB paper's and LED-GFN's prepend/append variant): the filled tokens
//!   stay left-aligned; action `a < A` appends `a`, action `A + a` prepends it (shifting the
//!   others right; into the empty sequence only appending is an edge); backward actions remove
//!   the last (0) or the first (1, from two tokens on) token. Not a tree: a sequence of `k`
//!   tokens has `2^{k−1}` generation paths.
//! * `AnySlot`: action `slot·A + a` writes `a` into the empty slot `slot`; backward action `i`
//!   clears the filled slot `i`. Not a tree.
//!
//! Features: one-hot per slot over `A + 1` values (the last for empty). Token encoding (for
//! `policy = transformer`): the slots' tokens, an empty slot as id `A`. Exact evaluation enumerates
//! every state while there are at most [`MAX_ENUMERABLE_STATES`].

use std::sync::Arc;

use gfn_core::{Env, GfnError, Result};

/// Largest state space [`SequenceEnv`] enumerates for exact evaluation.
pub const MAX_ENUMERABLE_STATES: usize = 1 << 20;

/// The empty slot.
const EMPTY: i32 = -1;

gfn_core::choice! {
    /// How a sequence is generated.
    pub enum SequenceOrder("sequence_order") {
        /// Left to right.
        Append = "append",
        /// At either end.
        PrependAppend = "prepend-append",
        /// Any empty slot.
        AnySlot = "any-slot",
    }
}

/// A batch reward: `log R` of terminal sequences (`states` row-major, `length` tokens each) into
/// `out`, one value per sequence. It may fail (a Python exception); it must not return NaN or
/// `+∞` (the environment turns those into an error naming the sequence).
pub type SequenceReward = dyn Fn(&[i32], &mut [f64]) -> Result<()> + Send + Sync;

/// The generic sequence environment.
#[derive(Clone)]
pub struct SequenceEnv {
    alphabet: usize,
    length: usize,
    order: SequenceOrder,
    reward: Arc<SequenceReward>,
    name: String,
}

impl std::fmt::Debug for SequenceEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceEnv")
            .field("alphabet", &self.alphabet)
            .field("length", &self.length)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

impl SequenceEnv {
    /// Sequences of `length` tokens over `alphabet` symbols generated in `order`, scored by
    /// `reward`; `name` names the task in run directories and summaries.
    pub fn new(
        name: impl Into<String>,
        alphabet: usize,
        length: usize,
        order: SequenceOrder,
        reward: Arc<SequenceReward>,
    ) -> Result<Self> {
        if !(2..=1 << 16).contains(&alphabet) {
            return Err(GfnError::invalid("alphabet", alphabet, "must be in 2..=65536"));
        }
        if !(1..=4096).contains(&length) {
            return Err(GfnError::invalid("length", length, "must be in 1..=4096"));
        }
        if order == SequenceOrder::AnySlot && alphabet.checked_mul(length).is_none_or(|n| n > 1 << 24) {
            return Err(GfnError::invalid(
                "length",
                length,
                format!("times alphabet = {alphabet} must be at most 2^24 forward actions with order any-slot"),
            ));
        }
        Ok(Self {
            alphabet,
            length,
            order,
            reward,
            name: name.into(),
        })
    }

    /// The alphabet's size `A`.
    pub fn alphabet(&self) -> usize {
        self.alphabet
    }

    /// Tokens per sequence.
    pub fn length(&self) -> usize {
        self.length
    }

    /// The generation order.
    pub fn order(&self) -> SequenceOrder {
        self.order
    }

    fn filled(s: &[i32]) -> usize {
        s.iter().filter(|&&x| x >= 0).count()
    }

    /// Number of states, where at most [`MAX_ENUMERABLE_STATES`].
    fn num_states(&self) -> Option<usize> {
        let a = self.alphabet;
        let n = match self.order {
            // Left-aligned prefixes of every length: Σ_k A^k.
            SequenceOrder::Append | SequenceOrder::PrependAppend => {
                let mut total = 0usize;
                let mut p = 1usize;
                for _ in 0..=self.length {
                    total = total.checked_add(p)?;
                    p = p.checked_mul(a)?;
                }
                total
            }
            SequenceOrder::AnySlot => (a + 1).checked_pow(u32::try_from(self.length).ok()?)?,
        };
        (n <= MAX_ENUMERABLE_STATES).then_some(n)
    }
}

impl Env for SequenceEnv {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn state_dim(&self) -> usize {
        self.length
    }
    fn n_actions(&self) -> usize {
        match self.order {
            SequenceOrder::Append => self.alphabet,
            SequenceOrder::PrependAppend => 2 * self.alphabet,
            SequenceOrder::AnySlot => self.length * self.alphabet,
        }
    }
    fn n_backward_actions(&self) -> usize {
        match self.order {
            SequenceOrder::Append => 1,
            SequenceOrder::PrependAppend => 2,
            SequenceOrder::AnySlot => self.length,
        }
    }
    fn exit_action(&self) -> Option<usize> {
        None
    }
    fn feature_dim(&self) -> usize {
        self.length * (self.alphabet + 1)
    }
    fn max_actions(&self) -> usize {
        self.length
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(EMPTY);
    }
    fn forward_mask(&self, s: &[i32], mask: &mut [bool]) {
        match self.order {
            SequenceOrder::Append => mask.fill(Self::filled(s) < self.length),
            // Into the empty sequence, prepending is appending: only the appends are edges.
            SequenceOrder::PrependAppend => {
                let k = Self::filled(s);
                let (append, prepend) = mask.split_at_mut(self.alphabet);
                append.fill(k < self.length);
                prepend.fill(k > 0 && k < self.length);
            }
            SequenceOrder::AnySlot => {
                for (slot, m) in mask.chunks_exact_mut(self.alphabet).enumerate() {
                    m.fill(s[slot] < 0);
                }
            }
        }
    }
    fn backward_mask(&self, s: &[i32], mask: &mut [bool]) {
        match self.order {
            SequenceOrder::Append => mask[0] = Self::filled(s) > 0,
            // With one token both removals give s_0: only one of them is an edge.
            SequenceOrder::PrependAppend => {
                let k = Self::filled(s);
                mask[0] = k > 0;
                mask[1] = k > 1;
            }
            SequenceOrder::AnySlot => {
                for (m, &x) in mask.iter_mut().zip(s) {
                    *m = x >= 0;
                }
            }
        }
    }
    fn step(&self, s: &mut [i32], action: usize) -> usize {
        let a = self.alphabet;
        match self.order {
            SequenceOrder::Append => {
                s[Self::filled(s)] = action as i32;
                0
            }
            SequenceOrder::PrependAppend => {
                let k = Self::filled(s);
                if action < a {
                    s[k] = action as i32;
                    0
                } else {
                    s.copy_within(0..k, 1);
                    s[0] = (action - a) as i32;
                    1
                }
            }
            SequenceOrder::AnySlot => {
                let slot = action / a;
                s[slot] = (action % a) as i32;
                slot
            }
        }
    }
    fn backward_step(&self, s: &mut [i32], action: usize) -> usize {
        let a = self.alphabet;
        match self.order {
            SequenceOrder::Append => {
                let k = Self::filled(s) - 1;
                let t = s[k] as usize;
                s[k] = EMPTY;
                t
            }
            SequenceOrder::PrependAppend => {
                let k = Self::filled(s);
                if action == 0 {
                    let t = s[k - 1] as usize;
                    s[k - 1] = EMPTY;
                    t
                } else {
                    let t = s[0] as usize;
                    s.copy_within(1..k, 0);
                    s[k - 1] = EMPTY;
                    a + t
                }
            }
            SequenceOrder::AnySlot => {
                let t = s[action] as usize;
                s[action] = EMPTY;
                action * a + t
            }
        }
    }
    fn is_terminal(&self, s: &[i32]) -> bool {
        s.iter().all(|&x| x >= 0)
    }
    fn is_initial(&self, s: &[i32]) -> bool {
        s.iter().all(|&x| x < 0)
    }
    fn log_reward(&self, s: &[i32]) -> f64 {
        let mut out = [0.0];
        match self.log_rewards(s, &mut out) {
            Ok(()) => out[0],
            Err(_) => f64::NAN,
        }
    }
    /// One call of the reward over the batch; a NaN or `+∞` is an error naming the sequence.
    fn log_rewards(&self, states: &[i32], out: &mut [f64]) -> Result<()> {
        let n = states.len() / self.length;
        if out.len() != n {
            return Err(GfnError::Other(format!(
                "{}: {} reward slots for {n} sequences",
                self.name,
                out.len()
            )));
        }
        (self.reward)(states, out)?;
        if let Some(i) = out.iter().position(|r| r.is_nan() || *r == f64::INFINITY) {
            return Err(GfnError::invalid(
                "log_reward",
                out[i],
                format!(
                    "must be a number below +inf: the reward of sequence {:?} (row {i} of the batch)",
                    &states[i * self.length..(i + 1) * self.length]
                ),
            ));
        }
        Ok(())
    }
    fn featurize(&self, s: &[i32], out: &mut [f32]) {
        out.fill(0.0);
        let w = self.alphabet + 1;
        for (slot, &x) in s.iter().enumerate() {
            let v = if x < 0 { self.alphabet } else { x as usize };
            out[slot * w + v] = 1.0;
        }
    }
    fn object_distance(&self, a: &[i32], b: &[i32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64
    }
    fn token_space(&self) -> Option<gfn_core::obs::TokenSpace> {
        Some(gfn_core::obs::TokenSpace {
            vocab: self.alphabet + 1,
            max_len: self.length,
        })
    }
    fn observe_tokens(
        &self,
        states: &[i32],
        device: &gfn_core::candle_core::Device,
    ) -> Result<gfn_core::obs::TokenBatch> {
        let seqs: Vec<Vec<u32>> = states
            .chunks_exact(self.length)
            .map(|s| {
                s.iter()
                    .map(|&x| if x < 0 { self.alphabet as u32 } else { x as u32 })
                    .collect()
            })
            .collect();
        gfn_core::obs::TokenBatch::from_sequences(&seqs, self.alphabet + 1, self.length, device)
    }
    /// Every state, where there are at most [`MAX_ENUMERABLE_STATES`].
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        let (l, a) = (self.length, self.alphabet);
        let count = self.num_states()?;
        let mut out = Vec::with_capacity(count * l);
        match self.order {
            SequenceOrder::Append | SequenceOrder::PrependAppend => {
                for k in 0..=l {
                    for code in 0..a.pow(k as u32) {
                        let start = out.len();
                        out.resize(start + l, EMPTY);
                        let mut rest = code;
                        for w in (0..k).rev() {
                            out[start + w] = (rest % a) as i32;
                            rest /= a;
                        }
                    }
                }
            }
            SequenceOrder::AnySlot => {
                for code in 0..count {
                    let start = out.len();
                    out.resize(start + l, EMPTY);
                    let mut rest = code;
                    for w in (0..l).rev() {
                        out[start + w] = (rest % (a + 1)) as i32 - 1;
                        rest /= a + 1;
                    }
                }
            }
        }
        Some(out)
    }
    fn state_index(&self, s: &[i32]) -> Option<usize> {
        self.num_states()?;
        let a = self.alphabet;
        Some(match self.order {
            SequenceOrder::Append | SequenceOrder::PrependAppend => {
                let k = Self::filled(s);
                let offset: usize = (0..k).map(|i| a.pow(i as u32)).sum();
                offset + s[..k].iter().fold(0usize, |acc, &t| acc * a + t as usize)
            }
            SequenceOrder::AnySlot => s.iter().fold(0usize, |acc, &t| acc * (a + 1) + (t + 1) as usize),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gfn_core::exact::ExactEvaluator;

    /// `log R(x) = Σ_i x_i / 2` (so the target is not uniform).
    fn env(alphabet: usize, length: usize, order: SequenceOrder) -> SequenceEnv {
        let reward: Arc<SequenceReward> = Arc::new(move |states: &[i32], out: &mut [f64]| {
            for (x, r) in states.chunks_exact(length).zip(out.iter_mut()) {
                *r = f64::from(x.iter().sum::<i32>()) / 2.0;
            }
            Ok(())
        });
        SequenceEnv::new("seq", alphabet, length, order, reward).unwrap()
    }

    /// Every order is a valid DAG: forward and backward steps invert each other on every state,
    /// the masks agree, and exact evaluation gives the reward's distribution over all `A^L`
    /// sequences.
    #[test]
    fn every_order_is_a_consistent_dag() {
        for order in [
            SequenceOrder::Append,
            SequenceOrder::PrependAppend,
            SequenceOrder::AnySlot,
        ] {
            let e = env(3, 3, order);
            gfn_core::dag::check_env(&e).unwrap_or_else(|err| panic!("{order}: {err}"));
            let ev = ExactEvaluator::new(&e).unwrap();
            assert_eq!(ev.num_terminal(), 27, "{order}");
            let z: f64 = (0..27)
                .map(|c| f64::from((c % 3) + (c / 3 % 3) + (c / 9)) / 2.0)
                .map(f64::exp)
                .sum();
            approx::assert_relative_eq!(ev.log_z(), z.ln(), max_relative = 1e-12);
        }
    }

    /// A sequence has one generation path appended, `2^{k−1}` with prepend-append and `k!` in
    /// any slot (counted by the backward masks).
    #[test]
    fn path_counts_follow_the_order() {
        let paths = |e: &SequenceEnv, s: &[i32]| -> usize {
            fn count(e: &SequenceEnv, s: &[i32]) -> usize {
                if e.is_initial(s) {
                    return 1;
                }
                let mut mask = vec![false; e.n_backward_actions()];
                e.backward_mask(s, &mut mask);
                let mut total = 0;
                for (b, &m) in mask.iter().enumerate() {
                    if m {
                        let mut p = s.to_vec();
                        e.backward_step(&mut p, b);
                        total += count(e, &p);
                    }
                }
                total
            }
            count(e, s)
        };
        let x = [2, 0, 1, 1];
        assert_eq!(paths(&env(3, 4, SequenceOrder::Append), &x), 1);
        assert_eq!(paths(&env(3, 4, SequenceOrder::PrependAppend), &x), 8);
        assert_eq!(paths(&env(3, 4, SequenceOrder::AnySlot), &x), 24);
    }

    /// A reward that fails, or gives NaN or +∞, is an error naming the sequence.
    #[test]
    fn bad_rewards_are_errors_naming_the_sequence() {
        let nan: Arc<SequenceReward> = Arc::new(|states: &[i32], out: &mut [f64]| {
            for (x, r) in states.chunks_exact(2).zip(out.iter_mut()) {
                *r = if x == [1, 0] { f64::NAN } else { 0.0 };
            }
            Ok(())
        });
        let e = SequenceEnv::new("seq", 2, 2, SequenceOrder::Append, nan).unwrap();
        let mut out = [0.0; 3];
        let err = e.log_rewards(&[0, 0, 1, 0, 1, 1], &mut out).unwrap_err().to_string();
        assert!(
            err.contains("[1, 0]") && err.contains("row 1") && err.contains("NaN"),
            "{err}"
        );
        let failing: Arc<SequenceReward> = Arc::new(|_: &[i32], _: &mut [f64]| Err(GfnError::Other("boom".into())));
        let e = SequenceEnv::new("seq", 2, 2, SequenceOrder::Append, failing).unwrap();
        assert!(
            e.log_rewards(&[0, 0], &mut [0.0])
                .unwrap_err()
                .to_string()
                .contains("boom")
        );
        let ok: Arc<SequenceReward> = Arc::new(|_: &[i32], _: &mut [f64]| Ok(()));
        let e = SequenceEnv::new("seq", 1, 2, SequenceOrder::Append, ok)
            .unwrap_err()
            .to_string();
        assert!(e.contains("alphabet") && e.contains("1"), "{e}");
    }
}
