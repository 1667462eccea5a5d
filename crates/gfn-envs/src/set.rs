//! Set generation (Pan et al. 2023, FL-GFN; used by LED-GFN as "unstructured set generation";
//! papers.md §1.3).
//!
//! Build a set of exactly `k` elements of a universe `U` by adding one element not yet present
//! per step; there is no stop action, so every trajectory has `k` steps. The state is the
//! membership vector (`|U|` values in {0, 1}), which is also the network input. Backward action
//! `a` removes element `a`. Each element has an energy `e_a`, and the reward is additive:
//! `R(x) = Π_{a∈x} exp(−e_a)`, `log R(x) = −Σ_{a∈x} e_a`, so every partial set has the
//! intermediate energy `Σ_{a∈s} e_a` that the forward-looking objectives use.
//!
//! The three sizes and their energies are those of the official code
//! (`ling-pan/FL-GFN`, `set/gflownet.py`): small `|U| = 30, k = 20`, medium `80, 60`, large
//! `100, 80`; each list has 10 distinct values with equal multiplicity. The space is far too
//! large to enumerate (`C(30, 20) ≈ 3·10⁷` objects for the smallest), but the reward depends only
//! on how many elements of each distinct energy a set holds, so [`SetAnalysis`] computes the exact
//! log Z, the best reward and the mean reward of the best 100 distinct sets (the ceiling of the
//! top-100 metric) by dynamic programming over those counts.

use gfn_core::{Env, GfnError, Result};

/// Element energies of the small task, in the order of the official code.
const SMALL: [f64; 30] = [
    0.6961474461702144,
    0.883494921538938,
    -0.2745059751263419,
    0.883494921538938,
    0.7442282139370466,
    0.7442282139370466,
    -0.40046449111789073,
    0.6261749162235306,
    -0.4381397850674522,
    0.4110535720923896,
    -0.4381397850674522,
    0.8206350287761408,
    0.6961474461702144,
    0.013149744911117978,
    0.6961474461702144,
    0.4110535720923896,
    0.013149744911117978,
    -0.40046449111789073,
    -0.4381397850674522,
    0.883494921538938,
    0.7442282139370466,
    -0.2745059751263419,
    0.6261749162235306,
    0.6261749162235306,
    0.8206350287761408,
    -0.40046449111789073,
    0.8206350287761408,
    -0.2745059751263419,
    0.4110535720923896,
    0.013149744911117978,
];

/// Element energies of the medium task, in the order of the official code.
const MEDIUM: [f64; 80] = [
    -0.5230497555411129,
    0.5731802451199923,
    0.6881812517688572,
    -0.7866830411595669,
    -0.41860806745880197,
    0.7396350970666805,
    0.5731802451199923,
    0.7396350970666805,
    -0.7866830411595669,
    0.6009291618806774,
    0.6881812517688572,
    -0.5230497555411129,
    -0.7837872949891345,
    -0.7837872949891345,
    -0.41860806745880197,
    -0.7866830411595669,
    0.6009291618806774,
    -0.41860806745880197,
    -0.3855205729595568,
    -0.5230497555411129,
    -0.5230497555411129,
    -0.41860806745880197,
    0.2961218224370139,
    0.6881812517688572,
    0.6009291618806774,
    -0.7837872949891345,
    0.2961218224370139,
    -0.7866830411595669,
    0.5731802451199923,
    0.2961218224370139,
    -0.3855205729595568,
    -0.41860806745880197,
    -0.5230497555411129,
    -0.7837872949891345,
    0.7396350970666805,
    -0.41860806745880197,
    0.6009291618806774,
    -0.41860806745880197,
    0.2961218224370139,
    -0.5230497555411129,
    0.2961218224370139,
    0.6881812517688572,
    -0.5230497555411129,
    -0.7837872949891345,
    0.6881812517688572,
    0.2961218224370139,
    0.6881812517688572,
    0.5731802451199923,
    0.5731802451199923,
    0.6881812517688572,
    -0.3855205729595568,
    -0.3855205729595568,
    -0.5230497555411129,
    0.5731802451199923,
    0.2961218224370139,
    -0.7837872949891345,
    -0.41860806745880197,
    0.7396350970666805,
    0.6881812517688572,
    -0.3855205729595568,
    0.7396350970666805,
    0.6009291618806774,
    -0.7837872949891345,
    -0.7866830411595669,
    0.6009291618806774,
    0.5731802451199923,
    0.7396350970666805,
    -0.7866830411595669,
    0.2961218224370139,
    -0.7866830411595669,
    0.6009291618806774,
    0.6009291618806774,
    0.5731802451199923,
    0.7396350970666805,
    -0.3855205729595568,
    0.7396350970666805,
    -0.7866830411595669,
    -0.3855205729595568,
    -0.3855205729595568,
    -0.7837872949891345,
];

/// Element energies of the large task, in the order of the official code.
const LARGE: [f64; 100] = [
    -0.15382957507887518,
    -0.15382957507887518,
    -0.8596854107736154,
    -0.8596854107736154,
    0.13832182722858843,
    -0.4589997720511263,
    0.9244538380742333,
    -0.4589997720511263,
    -0.5938789622812419,
    0.7326989860019331,
    0.3925029176153736,
    0.7231982581431591,
    0.7326989860019331,
    -0.8596854107736154,
    0.9244538380742333,
    -0.5938789622812419,
    -0.5938789622812419,
    0.13832182722858843,
    -0.5596177369051512,
    0.7326989860019331,
    -0.5596177369051512,
    -0.8596854107736154,
    0.13832182722858843,
    0.9244538380742333,
    0.7231982581431591,
    -0.15382957507887518,
    -0.15382957507887518,
    -0.5938789622812419,
    0.9244538380742333,
    0.13832182722858843,
    0.9244538380742333,
    0.3925029176153736,
    -0.15382957507887518,
    0.3925029176153736,
    -0.4589997720511263,
    -0.4589997720511263,
    -0.8596854107736154,
    0.13832182722858843,
    -0.8596854107736154,
    -0.5596177369051512,
    0.13832182722858843,
    -0.8596854107736154,
    0.13832182722858843,
    0.7326989860019331,
    0.9244538380742333,
    0.7231982581431591,
    0.13832182722858843,
    0.7231982581431591,
    -0.4589997720511263,
    -0.15382957507887518,
    0.7326989860019331,
    -0.5938789622812419,
    -0.5938789622812419,
    -0.5596177369051512,
    0.9244538380742333,
    0.7231982581431591,
    0.7231982581431591,
    -0.8596854107736154,
    0.7326989860019331,
    -0.4589997720511263,
    0.3925029176153736,
    -0.5938789622812419,
    0.7326989860019331,
    0.3925029176153736,
    0.9244538380742333,
    -0.4589997720511263,
    -0.5596177369051512,
    -0.15382957507887518,
    0.3925029176153736,
    -0.5938789622812419,
    -0.15382957507887518,
    -0.5938789622812419,
    0.13832182722858843,
    0.7326989860019331,
    -0.5596177369051512,
    -0.8596854107736154,
    -0.15382957507887518,
    -0.5596177369051512,
    0.9244538380742333,
    0.3925029176153736,
    -0.4589997720511263,
    -0.8596854107736154,
    0.7326989860019331,
    0.7231982581431591,
    -0.4589997720511263,
    -0.5596177369051512,
    -0.5596177369051512,
    0.3925029176153736,
    0.3925029176153736,
    0.7231982581431591,
    0.13832182722858843,
    -0.15382957507887518,
    0.7231982581431591,
    0.7231982581431591,
    -0.5596177369051512,
    -0.5938789622812419,
    0.7326989860019331,
    -0.4589997720511263,
    0.3925029176153736,
    0.9244538380742333,
];

gfn_core::choice! {
    /// The three task sizes of the paper.
    pub enum SetSize("size") {
        /// `|U| = 30`, `k = 20`.
        Small = "small",
        /// `|U| = 80`, `k = 60`.
        Medium = "medium",
        /// `|U| = 100`, `k = 80`.
        Large = "large",
    }
}

/// The set-generation environment.
#[derive(Debug, Clone)]
pub struct SetEnv {
    energies: Vec<f64>,
    k: usize,
}

impl SetEnv {
    /// One of the paper's tasks.
    pub fn new(size: SetSize) -> Self {
        let (energies, k): (&[f64], usize) = match size {
            SetSize::Small => (&SMALL, 20),
            SetSize::Medium => (&MEDIUM, 60),
            SetSize::Large => (&LARGE, 80),
        };
        Self {
            energies: energies.to_vec(),
            k,
        }
    }

    /// Any universe: element energies `energies` (finite), sets of `k` elements (`1 ≤ k ≤ |U|`).
    pub fn with_energies(energies: Vec<f64>, k: usize) -> Result<Self> {
        if energies.is_empty() || energies.iter().any(|e| !e.is_finite()) {
            return Err(GfnError::invalid(
                "energies",
                energies.len(),
                "must be a non-empty list of finite values",
            ));
        }
        if k == 0 || k > energies.len() {
            return Err(GfnError::invalid("k", k, format!("must be in 1..={}", energies.len())));
        }
        Ok(Self { energies, k })
    }

    /// `|U|`.
    pub fn universe(&self) -> usize {
        self.energies.len()
    }

    /// Elements per set.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Element energies.
    pub fn energies(&self) -> &[f64] {
        &self.energies
    }

    fn count(state: &[i32]) -> usize {
        state.iter().filter(|&&x| x != 0).count()
    }

    fn energy(&self, state: &[i32]) -> f64 {
        state
            .iter()
            .zip(&self.energies)
            .filter(|(x, _)| **x != 0)
            .map(|(_, e)| e)
            .sum()
    }

    /// Exact facts about the task's reward distribution.
    pub fn analysis(&self, top: usize) -> SetAnalysis {
        SetAnalysis::new(&self.energies, self.k, top)
    }
}

impl Env for SetEnv {
    fn name(&self) -> String {
        format!("set-{}of{}", self.k, self.universe())
    }
    fn state_dim(&self) -> usize {
        self.universe()
    }
    fn n_actions(&self) -> usize {
        self.universe()
    }
    fn n_backward_actions(&self) -> usize {
        self.universe()
    }
    fn exit_action(&self) -> Option<usize> {
        None
    }
    fn feature_dim(&self) -> usize {
        self.universe()
    }
    fn max_actions(&self) -> usize {
        self.k
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(0);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        let open = Self::count(state) < self.k;
        for (m, &x) in mask.iter_mut().zip(state) {
            *m = open && x == 0;
        }
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for (m, &x) in mask.iter_mut().zip(state) {
            *m = x != 0;
        }
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        state[action] = 1;
        action
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        state[action] = 0;
        action
    }
    fn target_summary(&self, top_k: usize) -> Option<gfn_core::env::TargetSummary> {
        let a = self.analysis(top_k.max(1));
        Some(gfn_core::env::TargetSummary {
            mean_reward: a.mean_reward,
            top_k_mean_reward: a.top_mean_reward,
        })
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        -self.energy(state)
    }
    fn intermediate_log_reward(&self, state: &[i32]) -> Option<f64> {
        Some(-self.energy(state))
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(state) {
            *o = f32::from(u8::from(x != 0));
        }
    }
    fn is_terminal(&self, state: &[i32]) -> bool {
        Self::count(state) == self.k
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state.iter().all(|&x| x == 0)
    }
    /// Every set of at most `k` elements, by size, for universes of at most 16 elements.
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        let u = self.universe();
        if u > 16 {
            return None;
        }
        let mut subsets: Vec<u32> = (0u32..(1 << u)).filter(|b| b.count_ones() as usize <= self.k).collect();
        subsets.sort_by_key(|b| b.count_ones());
        Some(
            subsets
                .into_iter()
                .flat_map(|b| (0..u).map(move |i| ((b >> i) & 1) as i32))
                .collect(),
        )
    }
}

/// Exact facts about a set task, from its distinct energies and their multiplicities.
#[derive(Debug, Clone, PartialEq)]
pub struct SetAnalysis {
    /// `log Z = log Σ_{|x| = k} R(x)`.
    pub log_z: f64,
    /// `E_{p*}[R] = Σ R(x)² / Σ R(x)`.
    pub mean_reward: f64,
    /// The largest `log R(x)`.
    pub max_log_reward: f64,
    /// How many sets reach it.
    pub argmax_sets: f64,
    /// Mean `R` of the best `top` distinct sets (the ceiling of the top-`top` metric).
    pub top_mean_reward: f64,
    /// `top`.
    pub top: usize,
}

/// `C(n, k)`, exact while it fits in a u128.
fn binomial(n: usize, k: usize) -> f64 {
    let mut c: u128 = 1;
    for i in 0..k {
        c = c * (n - i) as u128 / (i + 1) as u128;
    }
    c as f64
}

impl SetAnalysis {
    /// Computes the analysis by dynamic programming over how many elements of each distinct
    /// energy a set takes.
    pub fn new(energies: &[f64], k: usize, top: usize) -> Self {
        // Distinct energies and multiplicities.
        let mut groups: Vec<(f64, usize)> = Vec::new();
        for &e in energies {
            match groups.iter_mut().find(|g| g.0 == e) {
                Some(g) => g.1 += 1,
                None => groups.push((e, 1)),
            }
        }
        // log Z: elementary symmetric polynomial of the weights exp(−e), in log space.
        let mut lz = vec![f64::NEG_INFINITY; k + 1];
        lz[0] = 0.0;
        // The same with the weights squared: log Σ R(x)².
        let mut lz_sq = lz.clone();
        // Best configurations: per count c, (total energy, number of sets), ascending energy,
        // truncated once the counts reach `top`.
        let mut best: Vec<Vec<(f64, f64)>> = vec![Vec::new(); k + 1];
        best[0].push((0.0, 1.0));
        for &(e, m) in &groups {
            let mut lz2 = vec![f64::NEG_INFINITY; k + 1];
            let mut lz_sq2 = vec![f64::NEG_INFINITY; k + 1];
            let mut best2: Vec<Vec<(f64, f64)>> = vec![Vec::new(); k + 1];
            for c in 0..=k {
                for take in 0..=m.min(c) {
                    let prev = c - take;
                    let mult = binomial(m, take);
                    let lb = mult.ln();
                    if lz[prev] > f64::NEG_INFINITY {
                        let v = lz[prev] + lb - take as f64 * e;
                        lz2[c] = log_add(lz2[c], v);
                    }
                    if lz_sq[prev] > f64::NEG_INFINITY {
                        let v = lz_sq[prev] + lb - 2.0 * take as f64 * e;
                        lz_sq2[c] = log_add(lz_sq2[c], v);
                    }
                    for &(en, n) in &best[prev] {
                        best2[c].push((en + take as f64 * e, n * mult));
                    }
                }
                best2[c].sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut seen = 0.0;
                let mut keep = 0;
                for &(_, n) in &best2[c] {
                    keep += 1;
                    seen += n;
                    if seen >= top as f64 {
                        break;
                    }
                }
                best2[c].truncate(keep);
            }
            lz = lz2;
            lz_sq = lz_sq2;
            best = best2;
        }
        let list = &best[k];
        let e_min = list[0].0;
        let n_min: f64 = list.iter().filter(|x| x.0 - e_min <= 1e-12).map(|x| x.1).sum();
        let mut left = top as f64;
        let mut total = 0.0;
        for &(en, n) in list {
            let take = n.min(left);
            total += take * (-en).exp();
            left -= take;
            if left <= 0.0 {
                break;
            }
        }
        Self {
            log_z: lz[k],
            mean_reward: (lz_sq[k] - lz[k]).exp(),
            max_log_reward: -e_min,
            argmax_sets: n_min,
            top_mean_reward: total / (top as f64 - left.max(0.0)),
            top,
        }
    }
}

fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// papers.md §1.3's exact anchors.
    #[test]
    fn exact_anchors_of_the_three_tasks() {
        let cases = [
            (SetSize::Small, 11.892389, -1.204099, 0.299962, 3.0, 0.263281),
            (SetSize::Medium, 45.378950, 13.823057, 1.00757e6, 70.0, 9.99302e5),
            (SetSize::Large, 48.391947, 13.719885, 9.08804e5, 1.0, 9.00296e5),
        ];
        for (size, log_z, max_lr, max_r, argmax, top) in cases {
            let env = SetEnv::new(size);
            let a = env.analysis(100);
            assert!((a.log_z - log_z).abs() < 1e-5, "{size:?}: log Z {}", a.log_z);
            assert!(
                (a.max_log_reward - max_lr).abs() < 1e-5,
                "{size:?}: max log R {}",
                a.max_log_reward
            );
            assert!((a.max_log_reward.exp() / max_r - 1.0).abs() < 1e-5, "{size:?}: max R");
            assert_eq!(a.argmax_sets, argmax, "{size:?}: argmax sets");
            assert!(
                (a.top_mean_reward / top - 1.0).abs() < 1e-5,
                "{size:?}: top-100 mean {}",
                a.top_mean_reward
            );
        }
    }

    /// The analysis agrees with brute force on a universe small enough to enumerate.
    #[test]
    fn analysis_matches_brute_force() {
        let energies = vec![0.3, -0.2, 0.3, 0.7, -0.2, 0.1, 0.3];
        let k = 3;
        let env = SetEnv::with_energies(energies.clone(), k).unwrap();
        let mut rewards = Vec::new();
        for bits in 0u32..(1 << energies.len()) {
            if bits.count_ones() as usize == k {
                let s: Vec<i32> = (0..energies.len()).map(|i| ((bits >> i) & 1) as i32).collect();
                rewards.push(env.log_reward(&s));
            }
        }
        rewards.sort_by(|a, b| b.total_cmp(a));
        let log_z = gfn_core::exact::logsumexp(rewards.iter().copied());
        let a = env.analysis(5);
        assert!((a.log_z - log_z).abs() < 1e-12);
        assert!((a.max_log_reward - rewards[0]).abs() < 1e-12);
        assert_eq!(
            a.argmax_sets,
            rewards.iter().filter(|&&r| (r - rewards[0]).abs() < 1e-12).count() as f64
        );
        let top5: f64 = rewards[..5].iter().map(|r| r.exp()).sum::<f64>() / 5.0;
        assert!((a.top_mean_reward - top5).abs() < 1e-12);
        let sum_r: f64 = rewards.iter().map(|r| r.exp()).sum();
        let sum_r2: f64 = rewards.iter().map(|r| (2.0 * r).exp()).sum();
        assert!((a.mean_reward - sum_r2 / sum_r).abs() < 1e-12);
        let t = env.target_summary(5).unwrap();
        assert_eq!((t.mean_reward, t.top_k_mean_reward), (a.mean_reward, a.top_mean_reward));
    }

    #[test]
    fn env_invariants_and_bad_input() {
        let env = SetEnv::with_energies(vec![0.5, -0.25, 1.0, 0.0], 2).unwrap();
        gfn_core::dag::check_env(&env).unwrap_or_else(|e| panic!("{e}"));
        let mut s = vec![0; 4];
        env.step(&mut s, 1);
        assert_eq!(env.intermediate_log_reward(&s), Some(0.25));
        env.step(&mut s, 2);
        assert!(env.is_terminal(&s));
        assert_eq!(env.log_reward(&s), -0.75);
        let mut m = vec![true; 4];
        env.forward_mask(&s, &mut m);
        assert!(m.iter().all(|&x| !x));
        assert!(SetEnv::with_energies(vec![], 1).is_err());
        assert!(SetEnv::with_energies(vec![1.0], 2).is_err());
        assert!(SetEnv::with_energies(vec![f64::NAN], 1).is_err());
        assert!("huge".parse::<SetSize>().is_err());
        assert_eq!("small".parse::<SetSize>().unwrap(), SetSize::Small);
    }
}
