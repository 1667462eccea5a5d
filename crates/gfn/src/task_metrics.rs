//! Metrics particular to a task, reported in each evaluation's `task` object (`metrics.jsonl`,
//! `summary.json`):
//!
//! * `bayesnet` (exact, from the learned terminating distribution P_T over all DAGs):
//!   `expected_shd = Σ_G P_T(G)·SHD(G, G*)` and `edge_auroc`, the area under the ROC curve of
//!   P_T's edge marginals against the true graph's edges; beside them the same two figures of the
//!   exact posterior, the best any sampler can do (`posterior_expected_shd`,
//!   `posterior_edge_auroc`).
//! * `bitseq` (the TB paper's): `modes_found`, the modes with a training sample within Hamming
//!   distance δ = 30, over the whole run; `test_spearman`, the Spearman correlation between
//!   `log R(x)` and the model's `log P̂_T(x)` on the 7,200-sequence test set (each mode with
//!   c = 0 … 119 bits flipped), `log P̂_T` by importance sampling over backward trajectories (one
//!   where the DAG is a tree and P_B is deterministic, 10 otherwise).
//! * `mis` (LED-GFN's): `mis_size`, the size of the sampled independent sets averaged over
//!   `mis_samples` on-policy samples per held-out test graph, then over the test graphs (the
//!   official metric); `mis_size_best`, the best of each graph's samples, averaged; beside them
//!   the references of the same graphs: `greedy_size` (minimum-degree greedy), `optimum_size`
//!   (exact branch and bound; `optimum_proven` of the graphs proven within the budget, the
//!   others counted at the best set found), and `gap_percent = 100·(optimum − mis_size)/optimum`.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use gfn_core::exact::ExactEvaluator;
use gfn_core::{Env, GfnRng, Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed};
use gfn_envs::bayesnet::{self, BayesNetConfig, BayesNetEnv};
use gfn_envs::bitseq::{BitSeqEnv, BitSeqOrder, DEFAULT_DELTA};
use gfn_envs::mis::MisEnv;
use gfn_envs::mis_graphs::{Graph, greedy_min_degree, maximum_independent_set};

use crate::config::TrainConfig;
use crate::options::EnvName;

/// Seed of the bit-sequence test set (fixed: every run is scored on the same sequences).
pub const BITSEQ_TEST_SEED: u64 = 0x7e57;

/// A task's own metrics, with what they accumulate over training.
pub enum TaskMetrics {
    /// No task-specific metrics.
    None,
    /// Bayesian network structure.
    BayesNet {
        /// The task.
        env: Box<BayesNetEnv>,
        /// The exact posterior's expected SHD and edge AUROC.
        posterior: (f64, f64),
    },
    /// Bit sequences.
    BitSeq {
        /// The task.
        env: Box<BitSeqEnv>,
        /// Whether each mode has had a training sample within δ.
        found: Vec<bool>,
        /// The test sequences and their log rewards.
        test: Vec<i32>,
        /// `log R` of the test sequences.
        test_log_reward: Vec<f64>,
        /// Backward trajectories per test sequence.
        backward: usize,
    },
    /// Maximum independent sets.
    Mis {
        /// The task (the same graphs as the trainer's).
        env: Box<MisEnv>,
        /// Samples per test graph.
        samples: usize,
        /// The references over the test graphs: (greedy, optimum, proven optimal).
        references: MisReferences,
    },
}

/// The references of the MIS test graphs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MisReferences {
    /// Mean size of the greedy minimum-degree sets.
    pub greedy: f64,
    /// Mean size of the maximum independent sets (best found where unproven).
    pub optimum: f64,
    /// Test graphs whose optimum was proven within [`MIS_SOLVER_BUDGET`].
    pub proven: usize,
}

/// Time the exact solver may spend on one test graph.
pub const MIS_SOLVER_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// Most directed edges (over every sampled copy) in one batch of the MIS evaluation: the GIN
/// holds a message per edge and hidden unit, so this bounds its memory (256 MiB at width 64).
const MIS_EDGES_PER_BATCH: usize = 1 << 20;

impl MisReferences {
    /// Greedy and exact sets of `graphs`.
    pub fn of(graphs: &[Graph]) -> Self {
        let n = graphs.len().max(1) as f64;
        let (mut greedy, mut optimum, mut proven) = (0.0, 0.0, 0);
        for g in graphs {
            greedy += greedy_min_degree(g).len() as f64;
            let sol = maximum_independent_set(g, Some(MIS_SOLVER_BUDGET));
            optimum += sol.set.len() as f64;
            proven += usize::from(sol.optimal);
        }
        Self {
            greedy: greedy / n,
            optimum: optimum / n,
            proven,
        }
    }
}

impl TaskMetrics {
    /// The metrics of `config`'s task (the environment built again from the configuration).
    pub fn new(config: &TrainConfig, env: &dyn Env) -> Result<Self> {
        Ok(match config.env {
            EnvName::Bayesnet if env.name().starts_with("bayesnet") => {
                let bn = BayesNetEnv::new(BayesNetConfig {
                    num_nodes: config.bn_nodes,
                    num_samples: config.bn_samples,
                    obs_noise: config.bn_noise,
                    data_seed: config.task_seed,
                    ..BayesNetConfig::default()
                })?;
                let posterior = match bn.exact_posterior() {
                    Ok(p) => graph_figures(&bn, &p)?,
                    Err(_) => (f64::NAN, f64::NAN),
                };
                Self::BayesNet {
                    env: Box::new(bn),
                    posterior,
                }
            }
            EnvName::Bitseq if env.name().starts_with("bitseq") => {
                let bs = crate::envs::bitseq_env(config)?;
                let test = bs.test_set(BITSEQ_TEST_SEED);
                let sd = bs.state_dim();
                let test_log_reward = test.chunks_exact(sd).map(|x| bs.log_reward(x)).collect();
                let backward = match bs.config().order {
                    BitSeqOrder::Append => 1,
                    BitSeqOrder::Fill => 10,
                };
                Self::BitSeq {
                    found: vec![false; bs.modes().len()],
                    env: Box::new(bs),
                    test,
                    test_log_reward,
                    backward,
                }
            }
            EnvName::Mis if env.name().starts_with("mis") => {
                let mis = crate::envs::mis_env(config)?;
                let references = MisReferences::of(mis.test_graphs());
                Self::Mis {
                    env: Box::new(mis),
                    samples: config.mis_samples,
                    references,
                }
            }
            _ => Self::None,
        })
    }

    /// Record a training batch's objects (bit sequences: the modes they reach).
    pub fn record(&mut self, batch: &TrajectoryBatch) {
        for b in 0..batch.batch_size {
            self.record_object(batch.terminal_state(b));
        }
    }

    /// Record one sampled terminal object.
    pub fn record_object(&mut self, x: &[i32]) {
        if let Self::BitSeq { env, found, .. } = self {
            let bits = env.bits_of(x);
            for (m, &mode) in env.modes().iter().enumerate() {
                if (bits ^ mode).count_ones() <= DEFAULT_DELTA {
                    found[m] = true;
                }
            }
        }
    }

    /// The figures now; `None` for a task without any. `evaluator` and `log_pf` (the exact
    /// policy's log-probabilities) serve the exact ones; `rng` draws backward trajectories.
    pub fn evaluate(
        &self,
        evaluator: Option<&ExactEvaluator>,
        log_pf: Option<&[f64]>,
        net: &crate::seam::Net,
        rng: &mut GfnRng,
    ) -> Result<Option<BTreeMap<String, f64>>> {
        let mut out = BTreeMap::new();
        match self {
            Self::None => return Ok(None),
            Self::BayesNet { env, posterior } => {
                let (Some(ev), Some(log_pf)) = (evaluator, log_pf) else {
                    return Ok(None);
                };
                // P_T over the terminal objects, in the order of enumerate_states (every DAG).
                let p_terminal = ev.terminating_distribution(log_pf);
                let mut p = vec![0.0; ev.num_states()];
                for (t, &q) in p_terminal.iter().enumerate() {
                    p[ev.terminal_state_index(t)] = q;
                }
                let (shd, auroc) = graph_figures(env, &p)?;
                out.insert("expected_shd".into(), shd);
                out.insert("edge_auroc".into(), auroc);
                out.insert("posterior_expected_shd".into(), posterior.0);
                out.insert("posterior_edge_auroc".into(), posterior.1);
            }
            Self::BitSeq {
                env,
                found,
                test,
                test_log_reward,
                backward,
            } => {
                out.insert("modes_found".into(), found.iter().filter(|&&f| f).count() as f64);
                out.insert("modes".into(), found.len() as f64);
                let log_p = net.log_terminal_probs(env.as_ref(), test, *backward, rng)?;
                out.insert("test_spearman".into(), spearman(test_log_reward, &log_p));
            }
            Self::Mis {
                env,
                samples,
                references,
            } => {
                let (mean, best) = mis_sizes(env, net, *samples, rng)?;
                out.insert("mis_size".into(), mean);
                out.insert("mis_size_best".into(), best);
                out.insert("greedy_size".into(), references.greedy);
                out.insert("optimum_size".into(), references.optimum);
                out.insert("optimum_proven".into(), references.proven as f64);
                out.insert("test_graphs".into(), env.test_graphs().len() as f64);
                out.insert(
                    "gap_percent".into(),
                    100.0 * (references.optimum - mean) / references.optimum,
                );
            }
        }
        Ok(Some(out))
    }

    /// Accumulated state to checkpoint (bit sequences: the modes found, 0/1).
    pub fn state(&self) -> Option<Vec<u32>> {
        match self {
            Self::BitSeq { found, .. } => Some(found.iter().map(|&f| u32::from(f)).collect()),
            _ => None,
        }
    }

    /// Restore what [`TaskMetrics::state`] saved.
    pub fn restore(&mut self, state: &[u32]) -> Result<()> {
        if let Self::BitSeq { found, .. } = self {
            if state.len() != found.len() {
                bail!(
                    "checkpoint has {} modes found flags, the task has {} modes",
                    state.len(),
                    found.len()
                );
            }
            for (f, &s) in found.iter_mut().zip(state) {
                *f = s != 0;
            }
        }
        Ok(())
    }
}

/// The size of `samples` on-policy independent sets of each test graph (ε 0, temperature 1):
/// `(mean over graphs of the mean over samples, mean over graphs of the best sample)`.
pub fn mis_sizes(env: &MisEnv, net: &crate::seam::Net, samples: usize, rng: &mut GfnRng) -> Result<(f64, f64)> {
    let sd = env.state_dim();
    let tests: Vec<usize> = (0..env.test_graphs().len()).map(|k| env.num_train() + k).collect();
    let (mut sampler, mut batch) = (Sampler::new(), TrajectoryBatch::default());
    let (mut mean, mut best) = (0.0, 0.0);
    let edges = |k: usize| 2 * env.test_graphs()[k - env.num_train()].num_edges() * samples;
    let mut chunks: Vec<&[usize]> = Vec::new();
    let mut start = 0;
    while start < tests.len() {
        let (mut end, mut total) = (start + 1, edges(tests[start]));
        while end < tests.len() && total + edges(tests[end]) <= MIS_EDGES_PER_BATCH {
            total += edges(tests[end]);
            end += 1;
        }
        chunks.push(&tests[start..end]);
        start = end;
    }
    for chunk in chunks {
        let mut starts = vec![0; chunk.len() * samples * sd];
        for (i, s) in starts.chunks_exact_mut(sd).enumerate() {
            env.conditioned_initial_state(&[chunk[i / samples] as f64], s)?;
        }
        net.sample_from(env, &mut sampler, &starts, SamplingOptions::default(), rng, &mut batch)?;
        for g in 0..chunk.len() {
            let sizes = (g * samples..(g + 1) * samples).map(|b| env.set_size(batch.terminal_state(b)) as f64);
            let (sum, max) = sizes.fold((0.0, 0.0f64), |(s, m), x| (s + x, m.max(x)));
            mean += sum / samples as f64;
            best += max;
        }
    }
    let n = tests.len().max(1) as f64;
    Ok((mean / n, best / n))
}

/// `(expected SHD, edge AUROC)` of a distribution `p` over the enumerated DAGs of `env`.
fn graph_figures(env: &BayesNetEnv, p: &[f64]) -> Result<(f64, f64)> {
    let Some(dags) = env.enumerate_states() else {
        bail!("{} cannot enumerate its DAGs", env.name());
    };
    let truth = env.true_graph();
    let marginals = bayesnet::edge_marginals(p, &dags);
    Ok((
        bayesnet::expected_shd(p, &dags, truth),
        bayesnet::edge_auroc(&marginals, truth),
    ))
}

/// Ranks (1-based, ties averaged).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson's on the tie-averaged ranks); NaN when either side is
/// constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// A fresh RNG stream for the task metrics' sampling, apart from training's.
pub fn rng(seed: u64) -> GfnRng {
    rng_from_seed(seed ^ 0x7a5c_0000_0000_0001)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_on_hand_made_ranks() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Monotone but not linear: still 1.
        assert!((spearman(&[1.0, 2.0, 3.0], &[1.0, 100.0, 1000.0]) - 1.0).abs() < 1e-12);
        // Ties averaged: ranks [1.5, 1.5, 3] against [1, 2, 3] → r = √3/2.
        let r = spearman(&[5.0, 5.0, 7.0], &[1.0, 2.0, 3.0]);
        assert!((r - 3f64.sqrt() / 2.0).abs() < 1e-12, "{r}");
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }
}
