//! Bayesian network structure learning (DAG-GFlowNet, Deleu et al. 2022; the small-graph task of
//! GFN-PG's `train_BN.py`; papers.md §4.2).
//!
//! # The DAG of states
//! A state is a directed acyclic graph on `d` labelled nodes (`2 ≤ d ≤ 6`, default 5), stored as
//! its adjacency matrix: `d²` values in {0, 1}, row `i` column `j` for the edge `i → j`. The
//! initial state is the empty graph. Forward action `i·d + j` adds the edge `i → j`; it is allowed
//! iff `i ≠ j`, the edge is absent and `j` does not already reach `i` (so the graph stays
//! acyclic; reachability is the transitive closure, kept as one bitmask per node). Forward action
//! `d²` is the exit ("stop"), always allowed: every DAG is a complete object. Backward action
//! `i·d + j` removes the present edge `i → j`. A trajectory adds at most `C(d, 2)` edges.
//!
//! The state space is every labelled DAG: 25 for `d = 3`, 543 for `d = 4`, 29,281 for `d = 5`
//! (Robinson's numbers, OEIS A003024). For `d ≤ 5` [`Env::enumerate_states`] lists them sorted by
//! edge count (a topological order, since every action adds one edge) and then by their bit code;
//! [`Env::state_index`] is a binary search in that list. `d = 6` has 3,781,503 DAGs, more than the
//! exact evaluator's per-state tables should hold, so it is not enumerated (the environment still
//! trains and samples).
//!
//! # Data (as DAG-GFlowNet's `sample_erdos_renyi_linear_gaussian`)
//! From `rng_from_seed(data_seed)`: the ground-truth graph is Erdős–Rényi with `expected_edges`
//! edges on average (default `min(d, C(d, 2))`): each strictly lower-triangular entry (`i > j`,
//! edge `i → j`) is Bernoulli(`p`) with `p = expected_edges / C(d, 2)` (so `p = ½` at `d = 5`, and
//! the default truth is a complete DAG for `d ≤ 3`), then the nodes are relabelled by a uniform
//! random permutation `π` (`A'[a][b] = A[π(a)][π(b)]`). Each edge gets a weight `w_ij ~ N(0, 1)`
//! (drawn in row-major order of the relabelled adjacency). `N` samples (default 100) are drawn by
//! ancestral sampling of the linear-Gaussian model `x_j = Σ_{i ∈ pa(j)} w_ij x_i + ε_j`,
//! `ε_j ~ N(0, σ²)`, with observation noise `σ = 0.1` (DAG-GFlowNet's `obs_noise = 0.1`, which
//! pgmpy's `LinearGaussianCPD` and its sampler use as a standard deviation; configurable). The data
//! are not standardised (as in DAG-GFlowNet's synthetic task).
//!
//! **The default posterior is diffuse.** The BGe prior `T = t·I` with `t = ½` expects variables of
//! variance about ½, while at `σ = 0.1` a root node has variance 0.01; an irrelevant parent then
//! costs little, and the exact posterior at `d = 5, N = 100` puts most of its mass on dense graphs
//! (the most probable graph is a complete DAG for 5 of seeds 0–5; expected SHD to the truth
//! 6.0–7.0 for those seeds). That is the target a sampler must match, not a structure-recovery failure; with
//! `σ = 1` the posterior ranks the true edges high (edge AUROC 0.8–0.9, tested).
//!
//! # Reward: the BGe score
//! `log R(G) = log p(D | G) − log p(D | G_∅)`, with a uniform prior over graphs (a constant that
//! cancels) and the BGe marginal likelihood (Geiger & Heckerman 2002, in the form of Kuipers,
//! Moffa & Heckerman 2014, as implemented in DAG-GFlowNet's
//! `dag_gflownet/scores/bge_score.py`). Hyperparameters `α_μ = 1`, `α_w = d + 2`, prior mean
//! `ν = 0`, prior scale `T = t·I` with `t = α_μ(α_w − d − 1)/(α_μ + 1)`. With `x̄` the sample mean
//! and `S_N = Σ_n (x_n − x̄)(x_n − x̄)ᵀ`,
//! `R = T + S_N + (N α_μ/(N + α_μ)) (ν − x̄)(ν − x̄)ᵀ`, and the local score of node `j` with parent
//! set `P` is
//!
//! ```text
//! log p(x_j | x_P) = ½ log(α_μ/(N + α_μ)) + log Γ((N + α_w − d + |P| + 1)/2) − log Γ((α_w − d + |P| + 1)/2)
//!                    − (N/2) log π + ((α_w − d + 2|P| + 1)/2) log t
//!                    − ½ (N + α_w − d + |P| + 1) log|R_{P∪j}| + ½ (N + α_w − d + |P|) log|R_P|
//! ```
//!
//! (`log|R_∅| = 0`). The graph score is `Σ_j log p(x_j | x_{pa(j)})`. The score is equivalent:
//! Markov-equivalent DAGs score the same. The `d · 2^(d−1)` local scores are tabulated once, so
//! `log R` of a state is `d` table lookups. Determinants are by Cholesky, `log Γ` by a Lanczos
//! approximation ([`lgamma`]), all in f64.
//!
//! # Metrics
//! [`shd`], [`expected_shd`], [`edge_marginals`], [`auroc`] and [`edge_auroc`] are the
//! DAG-GFlowNet evaluation measures, as pure functions of adjacency matrices and probabilities;
//! [`BayesNetEnv::exact_posterior`] gives `p*(G) ∝ R(G)` over the enumerated DAGs.

use rand::Rng;

use gfn_core::{Env, GfnError, GfnRng, Result, rng_from_seed};

/// Largest supported number of nodes.
pub const MAX_NODES: usize = 6;
/// Largest number of nodes whose DAGs are enumerated (29,281 DAGs at `d = 5`).
pub const MAX_ENUMERABLE_NODES: usize = 5;

/// Settings of the structure-learning task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BayesNetConfig {
    /// Number of nodes `d`, `2 ≤ d ≤ 6` (default 5).
    pub num_nodes: usize,
    /// Number of observations `N ≥ 1` (default 100).
    pub num_samples: usize,
    /// Expected number of edges of the Erdős–Rényi ground truth, in `[0, C(d, 2)]`; `None` (the
    /// default) means `d` (`C(d, 2) = 1` for `d = 2`).
    pub expected_edges: Option<f64>,
    /// Standard deviation `σ > 0` of the observation noise (default 0.1).
    pub obs_noise: f64,
    /// BGe precision parameter `α_μ > 0` of the prior on the mean (default 1).
    pub alpha_mu: f64,
    /// BGe degrees of freedom `α_w > d + 1` of the Wishart prior; `None` (the default) means
    /// `d + 2`.
    pub alpha_w: Option<f64>,
    /// Seed of the ground-truth graph, its weights and the data.
    pub data_seed: u64,
}

impl Default for BayesNetConfig {
    fn default() -> Self {
        Self {
            num_nodes: 5,
            num_samples: 100,
            expected_edges: None,
            obs_noise: 0.1,
            alpha_mu: 1.0,
            alpha_w: None,
            data_seed: 0,
        }
    }
}

impl BayesNetConfig {
    /// The defaults with `num_nodes` nodes.
    pub fn with_nodes(num_nodes: usize) -> Self {
        Self {
            num_nodes,
            ..Self::default()
        }
    }
}

fn check_nodes(num_nodes: usize) -> Result<()> {
    if !(2..=MAX_NODES).contains(&num_nodes) {
        return Err(GfnError::invalid(
            "num_nodes",
            num_nodes,
            format!("must be between 2 and {MAX_NODES}"),
        ));
    }
    Ok(())
}

/// The BGe score of a continuous data set (see the [module documentation](self) for the formula
/// and its source).
#[derive(Debug, Clone)]
pub struct BgeScore {
    d: usize,
    n: usize,
    t: f64,
    /// The posterior scale matrix `R`, `d × d` row-major.
    r: Vec<f64>,
    /// The terms of the local score that depend on `|P|` only, for `|P| = 0 … d − 1`.
    gamma_term: Vec<f64>,
    /// `N + α_w − d`.
    dof: f64,
}

impl BgeScore {
    /// The score of `data` (`N × num_nodes` values, row-major: one observation per row) with
    /// hyperparameters `α_μ = alpha_mu` and `α_w = alpha_w` (`None`: `d + 2`), prior mean 0.
    pub fn new(data: &[f64], num_nodes: usize, alpha_mu: f64, alpha_w: Option<f64>) -> Result<Self> {
        check_nodes(num_nodes)?;
        let d = num_nodes;
        if data.is_empty() || !data.len().is_multiple_of(d) {
            return Err(GfnError::invalid(
                "data",
                data.len(),
                format!("must hold N ≥ 1 rows of num_nodes = {d} values"),
            ));
        }
        if let Some(x) = data.iter().find(|x| !x.is_finite()) {
            return Err(GfnError::invalid("data", x, "every value must be finite"));
        }
        if !(alpha_mu.is_finite() && alpha_mu > 0.0) {
            return Err(GfnError::invalid("alpha_mu", alpha_mu, "must be finite and > 0"));
        }
        let alpha_w = alpha_w.unwrap_or(d as f64 + 2.0);
        if !(alpha_w.is_finite() && alpha_w > d as f64 + 1.0) {
            return Err(GfnError::invalid(
                "alpha_w",
                alpha_w,
                format!("must be finite and > num_nodes + 1 = {}", d + 1),
            ));
        }
        let n = data.len() / d;
        let nf = n as f64;
        let t = alpha_mu * (alpha_w - d as f64 - 1.0) / (alpha_mu + 1.0);
        let mut mean = vec![0.0; d];
        for row in data.chunks_exact(d) {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += x;
            }
        }
        mean.iter_mut().for_each(|m| *m /= nf);
        // R = t I + S_N + (N α_μ / (N + α_μ)) (ν − x̄)(ν − x̄)ᵀ with ν = 0.
        let shrink = nf * alpha_mu / (nf + alpha_mu);
        let mut r = vec![0.0; d * d];
        for row in data.chunks_exact(d) {
            for i in 0..d {
                let ci = row[i] - mean[i];
                for j in 0..d {
                    r[i * d + j] += ci * (row[j] - mean[j]);
                }
            }
        }
        for i in 0..d {
            for j in 0..d {
                r[i * d + j] += shrink * mean[i] * mean[j];
            }
            r[i * d + i] += t;
        }
        let dof = nf + alpha_w - d as f64;
        let gamma_term = (0..d)
            .map(|k| {
                let k = k as f64;
                0.5 * (alpha_mu.ln() - (nf + alpha_mu).ln()) + lgamma(0.5 * (dof + k + 1.0))
                    - lgamma(0.5 * (alpha_w - d as f64 + k + 1.0))
                    - 0.5 * nf * std::f64::consts::PI.ln()
                    + 0.5 * (alpha_w - d as f64 + 2.0 * k + 1.0) * t.ln()
            })
            .collect();
        Ok(Self {
            d,
            n,
            t,
            r,
            gamma_term,
            dof,
        })
    }

    /// Number of variables `d`.
    pub fn num_nodes(&self) -> usize {
        self.d
    }
    /// Number of observations `N`.
    pub fn num_samples(&self) -> usize {
        self.n
    }
    /// The prior scale `t` of `T = t·I`.
    pub fn t(&self) -> f64 {
        self.t
    }
    /// The posterior scale matrix `R` (`d × d`, row-major).
    pub fn r(&self) -> &[f64] {
        &self.r
    }

    /// `log p(x_j | x_P)` for `node = j` and the parent set `P` given as a bitmask (bit `i` for
    /// node `i`; bit `j` itself and bits `≥ d` are ignored).
    ///
    /// # Panics
    /// If `node ≥ d`.
    pub fn local_score(&self, node: usize, parents: u32) -> f64 {
        let d = self.d;
        assert!(node < d, "node {node} out of range for {d} nodes");
        let parents = parents & ((1u32 << d) - 1) & !(1u32 << node);
        let k = parents.count_ones() as usize;
        let mut idx = [0usize; MAX_NODES];
        let mut m = 0;
        for i in 0..d {
            if parents >> i & 1 == 1 {
                idx[m] = i;
                m += 1;
            }
        }
        let log_det_p = if k == 0 { 0.0 } else { self.log_det_sub(&idx[..k]) };
        idx[k] = node;
        let log_det_pj = self.log_det_sub(&idx[..=k]);
        let kf = k as f64;
        self.gamma_term[k] - 0.5 * (self.dof + kf + 1.0) * log_det_pj + 0.5 * (self.dof + kf) * log_det_p
    }

    /// `Σ_j log p(x_j | x_{pa(j)})` of the graph with adjacency matrix `adjacency` (`d²` values,
    /// row `i` column `j` nonzero for the edge `i → j`; the diagonal is ignored).
    pub fn graph_score(&self, adjacency: &[i32]) -> f64 {
        (0..self.d)
            .map(|j| self.local_score(j, parent_mask(adjacency, self.d, j)))
            .sum()
    }

    /// `log |R_S|` of the principal submatrix on the indices `s`.
    fn log_det_sub(&self, s: &[usize]) -> f64 {
        let m = s.len();
        let mut a = [0.0; MAX_NODES * MAX_NODES];
        for (x, &i) in s.iter().enumerate() {
            for (y, &j) in s.iter().enumerate() {
                a[x * m + y] = self.r[i * self.d + j];
            }
        }
        log_det_spd(&a[..m * m], m)
    }
}

/// `log |A|` of a symmetric positive-definite `m × m` matrix (row-major) by Cholesky
/// factorisation `A = L Lᵀ`, `log |A| = 2 Σ_i log L_ii`; NaN when `A` is not positive definite.
/// `m ≤ 6`.
fn log_det_spd(a: &[f64], m: usize) -> f64 {
    let mut l = [0.0; MAX_NODES * MAX_NODES];
    let mut log_det = 0.0;
    for j in 0..m {
        let mut s = a[j * m + j];
        for k in 0..j {
            s -= l[j * m + k] * l[j * m + k];
        }
        if s.is_nan() || s <= 0.0 {
            return f64::NAN;
        }
        let ljj = s.sqrt();
        l[j * m + j] = ljj;
        log_det += 2.0 * ljj.ln();
        for i in j + 1..m {
            let mut s = a[i * m + j];
            for k in 0..j {
                s -= l[i * m + k] * l[j * m + k];
            }
            l[i * m + j] = s / ljj;
        }
    }
    log_det
}

/// Lanczos coefficients for `g = 7`, `n = 9` (Numerical Recipes / Boost's `lanczos` family;
/// relative error of `Γ` about `1e−15` for real arguments).
const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// `log |Γ(x)|` in f64 by the Lanczos approximation (`g = 7`, 9 terms), with the reflection
/// formula `Γ(x) Γ(1 − x) = π / sin(πx)` below `x = ½`. About `1e−15` absolute error near the
/// zeros at 1 and 2, and within `1e−12` relative elsewhere (tested against `log (n − 1)!` for
/// `n ≤ 170` and `log Γ(n + ½)`); `+∞` at `0, −1, −2, …`.
pub fn lgamma(x: f64) -> f64 {
    if x < 0.5 {
        let s = (std::f64::consts::PI * x).sin().abs();
        return (std::f64::consts::PI / s).ln() - lgamma(1.0 - x);
    }
    let z = x - 1.0;
    let mut a = LANCZOS[0];
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        a += c / (z + i as f64);
    }
    let t = z + LANCZOS_G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (z + 0.5) * t.ln() - t + a.ln()
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut GfnRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The parents of `j` as a bitmask.
fn parent_mask(adjacency: &[i32], d: usize, j: usize) -> u32 {
    (0..d)
        .filter(|&i| i != j && adjacency[i * d + j] != 0)
        .fold(0, |m, i| m | 1 << i)
}

/// `reach[i]`: the nodes reachable from `i` by a non-empty directed path, as a bitmask
/// (Warshall's algorithm on bitsets).
fn closure(adjacency: &[i32], d: usize) -> [u32; MAX_NODES] {
    let mut reach = [0u32; MAX_NODES];
    for i in 0..d {
        for j in 0..d {
            if adjacency[i * d + j] != 0 {
                reach[i] |= 1 << j;
            }
        }
    }
    for k in 0..d {
        for i in 0..d {
            if reach[i] >> k & 1 == 1 {
                reach[i] |= reach[k];
            }
        }
    }
    reach
}

/// Whether the graph with parent masks `pa` is acyclic (repeatedly remove a node with no
/// remaining parent).
fn acyclic_parents(pa: &[u32], d: usize) -> bool {
    let mut left: u32 = (1 << d) - 1;
    while left != 0 {
        match (0..d).find(|&j| left >> j & 1 == 1 && pa[j] & left == 0) {
            Some(j) => left &= !(1 << j),
            None => return false,
        }
    }
    true
}

/// A topological order of the DAG with parent masks `pa`.
fn topological_order(pa: &[u32], d: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(d);
    let mut left: u32 = (1 << d) - 1;
    while let Some(j) = (0..d).find(|&j| left >> j & 1 == 1 && pa[j] & left == 0) {
        left &= !(1 << j);
        order.push(j);
    }
    order
}

/// Sort key of a DAG's bit code (bit `i·d + j` for the edge `i → j`): edge count, then code.
fn sort_key(code: u64) -> u64 {
    (u64::from(code.count_ones()) << 48) | code
}

/// The bit code of a state, `None` unless every value is 0 or 1.
fn state_code(state: &[i32]) -> Option<u64> {
    let mut code = 0u64;
    for (k, &v) in state.iter().enumerate() {
        match v {
            0 => {}
            1 => code |= 1 << k,
            _ => return None,
        }
    }
    Some(code)
}

/// The sort keys of every DAG on `d ≤ 5` labelled nodes, ascending (edge count, then code).
fn enumerate_dag_keys(d: usize) -> Vec<u64> {
    let positions: Vec<(usize, usize)> = (0..d)
        .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
        .collect();
    let mut keys = Vec::new();
    let mut pa = [0u32; MAX_NODES];
    for mask in 0u64..1 << positions.len() {
        pa.fill(0);
        let mut code = 0u64;
        let mut rest = mask;
        while rest != 0 {
            let b = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let (i, j) = positions[b];
            pa[j] |= 1 << i;
            code |= 1 << (i * d + j);
        }
        if acyclic_parents(&pa[..d], d) {
            keys.push(sort_key(code));
        }
    }
    keys.sort_unstable();
    keys
}

/// An Erdős–Rényi DAG: strictly lower-triangular Bernoulli(`p`) entries (`i > j`, edge `i → j`),
/// then the nodes relabelled by a uniform permutation `π`: `A'[a][b] = A[π(a)][π(b)]`.
fn sample_er_dag(d: usize, p: f64, rng: &mut GfnRng) -> Vec<i32> {
    let mut lower = vec![0i32; d * d];
    for i in 0..d {
        for j in 0..i {
            lower[i * d + j] = i32::from(rng.random::<f64>() < p);
        }
    }
    let mut perm: Vec<usize> = (0..d).collect();
    for i in (1..d).rev() {
        let j = rng.random_range(0..=i);
        perm.swap(i, j);
    }
    let mut adj = vec![0i32; d * d];
    for a in 0..d {
        for b in 0..d {
            adj[a * d + b] = lower[perm[a] * d + perm[b]];
        }
    }
    adj
}

/// The Bayesian-network structure-learning environment (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct BayesNetEnv {
    d: usize,
    config: BayesNetConfig,
    truth: Vec<i32>,
    weights: Vec<f64>,
    data: Vec<f64>,
    score: BgeScore,
    /// `local[j · 2^(d−1) + c]`: the local score of node `j` with the parent set whose mask, with
    /// bit `j` squeezed out, is `c`.
    local: Vec<f64>,
    empty_score: f64,
    /// Sort keys of every DAG (empty for `d > 5`).
    keys: Vec<u64>,
}

impl BayesNetEnv {
    /// Draw the ground truth and the data from `config.data_seed`, tabulate the BGe local scores
    /// and (for `d ≤ 5`) enumerate the DAGs.
    pub fn new(config: BayesNetConfig) -> Result<Self> {
        check_nodes(config.num_nodes)?;
        let d = config.num_nodes;
        if config.num_samples == 0 {
            return Err(GfnError::invalid("num_samples", 0, "must be at least 1"));
        }
        let pairs = (d * (d - 1) / 2) as f64;
        let expected_edges = config.expected_edges.unwrap_or((d as f64).min(pairs));
        if !(expected_edges.is_finite() && (0.0..=pairs).contains(&expected_edges)) {
            return Err(GfnError::invalid(
                "expected_edges",
                expected_edges,
                format!("must be finite and in [0, C(d, 2) = {pairs}]"),
            ));
        }
        if !(config.obs_noise.is_finite() && config.obs_noise > 0.0) {
            return Err(GfnError::invalid(
                "obs_noise",
                config.obs_noise,
                "must be finite and > 0",
            ));
        }
        // Validates alpha_mu and alpha_w before any sampling.
        BgeScore::new(&vec![0.0; d], d, config.alpha_mu, config.alpha_w)?;

        let mut rng = rng_from_seed(config.data_seed);
        let truth = sample_er_dag(d, expected_edges / pairs, &mut rng);
        let mut weights = vec![0.0; d * d];
        for (w, &e) in weights.iter_mut().zip(&truth) {
            if e != 0 {
                *w = normal(&mut rng);
            }
        }
        let pa: Vec<u32> = (0..d).map(|j| parent_mask(&truth, d, j)).collect();
        let order = topological_order(&pa, d);
        let n = config.num_samples;
        let mut data = vec![0.0; n * d];
        for row in data.chunks_exact_mut(d) {
            for &j in &order {
                let mut x = config.obs_noise * normal(&mut rng);
                for i in 0..d {
                    if truth[i * d + j] != 0 {
                        x += weights[i * d + j] * row[i];
                    }
                }
                row[j] = x;
            }
        }
        let score = BgeScore::new(&data, d, config.alpha_mu, config.alpha_w)?;
        let half = 1usize << (d - 1);
        let mut local = vec![0.0; d * half];
        for j in 0..d {
            let low = (1u32 << j) - 1;
            for c in 0..half as u32 {
                let parents = (c & low) | ((c >> j) << (j + 1));
                local[j * half + c as usize] = score.local_score(j, parents);
            }
        }
        let empty_score = (0..d).map(|j| local[j * half]).sum();
        let keys = if d <= MAX_ENUMERABLE_NODES {
            enumerate_dag_keys(d)
        } else {
            Vec::new()
        };
        Ok(Self {
            d,
            config,
            truth,
            weights,
            data,
            score,
            local,
            empty_score,
            keys,
        })
    }

    /// Number of nodes `d`.
    pub fn num_nodes(&self) -> usize {
        self.d
    }
    /// Number of observations `N`.
    pub fn num_samples(&self) -> usize {
        self.config.num_samples
    }
    /// The settings.
    pub fn config(&self) -> &BayesNetConfig {
        &self.config
    }
    /// The ground-truth adjacency matrix (`d²` values in {0, 1}).
    pub fn true_graph(&self) -> &[i32] {
        &self.truth
    }
    /// The ground-truth edge weights `w_ij` (`d²` values, 0 where there is no edge).
    pub fn true_weights(&self) -> &[f64] {
        &self.weights
    }
    /// The observations, `N × d` row-major.
    pub fn data(&self) -> &[f64] {
        &self.data
    }
    /// The BGe score of the data.
    pub fn score(&self) -> &BgeScore {
        &self.score
    }

    /// The tabulated local score `log p(x_j | x_P)` (parent mask as in
    /// [`BgeScore::local_score`]).
    ///
    /// # Panics
    /// If `node ≥ d`.
    pub fn local_score(&self, node: usize, parents: u32) -> f64 {
        let low = (1u32 << node) - 1;
        let parents = parents & ((1u32 << self.d) - 1);
        let c = (parents & low) | ((parents >> (node + 1)) << node);
        self.local[(node << (self.d - 1)) + c as usize]
    }

    /// `log p(D | G)` (BGe, unnormalised over graphs) of the graph `adjacency`, from the table.
    pub fn graph_score(&self, adjacency: &[i32]) -> f64 {
        (0..self.d)
            .map(|j| self.local_score(j, parent_mask(adjacency, self.d, j)))
            .sum()
    }

    /// Number of DAGs enumerated (0 for `d > 5`).
    pub fn num_dags(&self) -> usize {
        self.keys.len()
    }

    /// The exact posterior `p*(G) = R(G) / Σ_G' R(G')` over the DAGs in the order of
    /// [`Env::enumerate_states`] (log-sum-exp in f64). Errors for `d > 5`, which is not enumerated.
    pub fn exact_posterior(&self) -> Result<Vec<f64>> {
        if self.keys.is_empty() {
            return Err(GfnError::NotEnumerable(self.name()));
        }
        let d2 = self.d * self.d;
        let mut state = vec![0i32; d2];
        let log_r: Vec<f64> = self
            .keys
            .iter()
            .map(|&key| {
                for (k, s) in state.iter_mut().enumerate() {
                    *s = (key >> k & 1) as i32;
                }
                self.log_reward(&state)
            })
            .collect();
        let log_z = gfn_core::exact::logsumexp(log_r.iter().copied());
        Ok(log_r.iter().map(|lr| (lr - log_z).exp()).collect())
    }
}

impl Env for BayesNetEnv {
    fn name(&self) -> String {
        format!("bayesnet-{}", self.d)
    }
    fn state_dim(&self) -> usize {
        self.d * self.d
    }
    fn n_actions(&self) -> usize {
        self.d * self.d + 1
    }
    fn n_backward_actions(&self) -> usize {
        self.d * self.d
    }
    fn exit_action(&self) -> Option<usize> {
        Some(self.d * self.d)
    }
    /// The adjacency matrix and its transitive closure (`reach[i·d + j] = 1` iff a directed path
    /// leads from `i` to `j`): `2d²` values in {0, 1}.
    fn feature_dim(&self) -> usize {
        2 * self.d * self.d
    }
    /// At most `C(d, 2)` edges, then the exit.
    fn max_actions(&self) -> usize {
        self.d * (self.d - 1) / 2 + 1
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(0);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        let d = self.d;
        let reach = closure(state, d);
        for i in 0..d {
            for j in 0..d {
                mask[i * d + j] = i != j && state[i * d + j] == 0 && reach[j] >> i & 1 == 0;
            }
        }
        mask[d * d] = true;
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for (m, &e) in mask.iter_mut().zip(state) {
            *m = e != 0;
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
    /// `log R(G) = score(G) − score(G_∅)`: `d` table lookups.
    fn log_reward(&self, state: &[i32]) -> f64 {
        self.graph_score(state) - self.empty_score
    }
    /// Every DAG is a complete object, so a partial graph has the same reward.
    fn intermediate_log_reward(&self, state: &[i32]) -> Option<f64> {
        Some(self.log_reward(state))
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        let d = self.d;
        let d2 = d * d;
        for (o, &e) in out[..d2].iter_mut().zip(state) {
            *o = if e != 0 { 1.0 } else { 0.0 };
        }
        let reach = closure(state, d);
        for i in 0..d {
            for j in 0..d {
                out[d2 + i * d + j] = f32::from(u8::from(reach[i] >> j & 1 == 1));
            }
        }
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state.iter().all(|&e| e == 0)
    }
    /// The structural Hamming distance ([`shd`]): a reversed edge counts once.
    fn object_distance(&self, a: &[i32], b: &[i32]) -> f64 {
        shd(a, b) as f64
    }
    /// Every DAG on `d ≤ 5` nodes, by edge count and then bit code; `None` for `d = 6`.
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        if self.keys.is_empty() {
            return None;
        }
        let d2 = self.d * self.d;
        let mut out = Vec::with_capacity(self.keys.len() * d2);
        for &key in &self.keys {
            out.extend((0..d2).map(|k| (key >> k & 1) as i32));
        }
        Some(out)
    }
    fn state_index(&self, state: &[i32]) -> Option<usize> {
        if self.keys.is_empty() || state.len() != self.d * self.d {
            return None;
        }
        let key = sort_key(state_code(state)?);
        self.keys.binary_search(&key).ok()
    }
}

/// The side `d` of a flattened `d × d` matrix.
fn side(len: usize) -> usize {
    let d = (len as f64).sqrt().round() as usize;
    assert_eq!(d * d, len, "{len} values are not a square adjacency matrix");
    d
}

/// Structural Hamming distance between two adjacency matrices (`d²` values each, nonzero for an
/// edge): the number of node pairs `{i, j}` whose edges differ, so a missing, an extra and a
/// reversed edge each count 1 (DAG-GFlowNet's `expected_shd`).
///
/// # Panics
/// If the lengths differ or are not a square.
pub fn shd(a: &[i32], b: &[i32]) -> usize {
    assert_eq!(a.len(), b.len(), "adjacency matrices of different sizes");
    let d = side(a.len());
    let mut count = 0;
    for i in 0..d {
        for j in i + 1..d {
            let same = (a[i * d + j] != 0) == (b[i * d + j] != 0) && (a[j * d + i] != 0) == (b[j * d + i] != 0);
            count += usize::from(!same);
        }
    }
    count
}

/// `Σ_G p(G) · SHD(G, G*)`: the expected structural Hamming distance to `truth` under the
/// distribution `probs` over the graphs `dags` (flattened, `d²` values per graph, as
/// [`Env::enumerate_states`] lists them).
///
/// # Panics
/// If `dags` does not hold `probs.len()` graphs of the size of `truth`.
pub fn expected_shd(probs: &[f64], dags: &[i32], truth: &[i32]) -> f64 {
    let d2 = truth.len();
    assert_eq!(dags.len(), probs.len() * d2, "need one graph per probability");
    probs
        .iter()
        .zip(dags.chunks_exact(d2.max(1)))
        .map(|(p, g)| p * shd(g, truth) as f64)
        .sum()
}

/// Edge marginals `P(i → j) = Σ_G p(G) 1[i → j ∈ G]` (`d²` values, row-major) under the
/// distribution `probs` over the graphs `dags` (flattened, `d²` values per graph).
///
/// # Panics
/// If `probs` is empty or `dags` does not hold `probs.len()` square matrices.
pub fn edge_marginals(probs: &[f64], dags: &[i32]) -> Vec<f64> {
    assert!(!probs.is_empty(), "no graphs");
    assert_eq!(dags.len() % probs.len(), 0, "need one graph per probability");
    let d2 = dags.len() / probs.len();
    side(d2);
    let mut out = vec![0.0; d2];
    for (p, g) in probs.iter().zip(dags.chunks_exact(d2)) {
        for (o, &e) in out.iter_mut().zip(g) {
            if e != 0 {
                *o += p;
            }
        }
    }
    out
}

/// Area under the ROC curve of `scores` for the binary `labels`: the Mann–Whitney statistic
/// `(Σ_{positives} rank − n₊(n₊ + 1)/2) / (n₊ n₋)`, with tied scores given their average rank
/// (so constant scores give ½). NaN when all labels are equal.
///
/// # Panics
/// If the lengths differ.
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        // Ranks start + 1 … end share their average.
        let avg = (start + 1 + end) as f64 / 2.0;
        rank_sum += avg * order[start..end].iter().filter(|&&k| labels[k]).count() as f64;
        start = end;
    }
    let (p, q) = (n_pos as f64, n_neg as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * q)
}

/// AUROC of edge scores (e.g. [`edge_marginals`]) against the edges of `truth`, over the
/// `d(d − 1)` ordered off-diagonal pairs.
///
/// # Panics
/// If the lengths differ or are not a square.
pub fn edge_auroc(scores: &[f64], truth: &[i32]) -> f64 {
    assert_eq!(scores.len(), truth.len(), "one score per adjacency entry");
    let d = side(truth.len());
    let (mut s, mut l) = (Vec::new(), Vec::new());
    for i in 0..d {
        for j in 0..d {
            if i != j {
                s.push(scores[i * d + j]);
                l.push(truth[i * d + j] != 0);
            }
        }
    }
    auroc(&s, &l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(d: usize, seed: u64) -> BayesNetEnv {
        BayesNetEnv::new(BayesNetConfig {
            data_seed: seed,
            ..BayesNetConfig::with_nodes(d)
        })
        .unwrap()
    }

    fn adj(d: usize, edges: &[(usize, usize)]) -> Vec<i32> {
        let mut a = vec![0; d * d];
        for &(i, j) in edges {
            a[i * d + j] = 1;
        }
        a
    }

    /// Cycle check by depth-first search, independent of the bitmask closure.
    fn has_cycle(a: &[i32], d: usize) -> bool {
        fn visit(a: &[i32], d: usize, v: usize, colour: &mut [u8]) -> bool {
            colour[v] = 1;
            for w in 0..d {
                if a[v * d + w] != 0 && (colour[w] == 1 || (colour[w] == 0 && visit(a, d, w, colour))) {
                    return true;
                }
            }
            colour[v] = 2;
            false
        }
        let mut colour = vec![0u8; d];
        (0..d).any(|v| colour[v] == 0 && visit(a, d, v, &mut colour))
    }

    #[test]
    fn dag_counts_and_order() {
        for (d, count) in [(2, 3), (3, 25), (4, 543), (5, 29_281)] {
            let e = env(d, 0);
            let states = e.enumerate_states().unwrap();
            assert_eq!(states.len(), count * d * d, "d = {d}");
            assert_eq!(e.num_dags(), count);
            // Sorted by edge count, each listed once, all acyclic, and state_index finds each.
            let mut prev = 0;
            for (k, s) in states.chunks_exact(d * d).enumerate() {
                let edges = s.iter().filter(|&&v| v != 0).count();
                assert!(edges >= prev);
                prev = edges;
                assert!(!has_cycle(s, d));
                assert_eq!(e.state_index(s), Some(k));
            }
            assert!(e.is_initial(&states[..d * d]));
        }
        let e = env(3, 0);
        assert_eq!(e.state_index(&adj(3, &[(0, 1), (1, 2), (2, 0)])), None);
        assert_eq!(e.state_index(&[2, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(e.state_index(&[0; 4]), None);
        // d = 6 trains but is not enumerated.
        let e6 = env(6, 0);
        assert!(e6.enumerate_states().is_none());
        assert!(e6.state_index(&[0; 36]).is_none());
        assert!(matches!(e6.exact_posterior(), Err(GfnError::NotEnumerable(_))));
        assert!(e6.log_reward(&[0; 36]).abs() < 1e-12);
        assert_eq!(e6.name(), "bayesnet-6");
    }

    #[test]
    fn dag_invariants_and_exact_posterior() {
        for d in [3, 4] {
            let e = env(d, 1);
            gfn_core::dag::check_env(&e).unwrap();
            let ev = gfn_core::exact::ExactEvaluator::new(&e).unwrap();
            assert_eq!(ev.num_terminal(), ev.num_states());
            let post = e.exact_posterior().unwrap();
            assert!((post.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            for (p, q) in post.iter().zip(ev.target()) {
                assert!((p - q).abs() < 1e-12);
            }
        }
        let e = env(5, 0);
        assert_eq!(e.name(), "bayesnet-5");
        assert_eq!((e.state_dim(), e.n_actions(), e.n_backward_actions()), (25, 26, 25));
        assert_eq!((e.exit_action(), e.feature_dim(), e.max_actions()), (Some(25), 50, 11));
    }

    #[test]
    fn acyclicity_mask() {
        let d = 4;
        let e = env(d, 2);
        let states = e.enumerate_states().unwrap();
        let mut fwd = vec![false; d * d + 1];
        let mut bwd = vec![false; d * d];
        for s in states.chunks_exact(d * d) {
            e.forward_mask(s, &mut fwd);
            e.backward_mask(s, &mut bwd);
            assert!(fwd[d * d], "exit is always allowed");
            for i in 0..d {
                for j in 0..d {
                    let a = i * d + j;
                    assert_eq!(bwd[a], s[a] == 1);
                    if i == j || s[a] == 1 {
                        assert!(!fwd[a]);
                        continue;
                    }
                    let mut t = s.to_vec();
                    let back = e.step(&mut t, a);
                    assert_eq!(back, a);
                    assert_eq!(fwd[a], !has_cycle(&t, d), "{s:?} + {i}→{j}");
                }
            }
        }
    }

    #[test]
    fn features_are_adjacency_and_closure() {
        let e = env(3, 0);
        let s = adj(3, &[(0, 1), (1, 2)]);
        let mut f = vec![0.0; 18];
        e.featurize(&s, &mut f);
        let expected_closure = adj(3, &[(0, 1), (1, 2), (0, 2)]);
        for k in 0..9 {
            assert_eq!(f[k], s[k] as f32);
            assert_eq!(f[9 + k], expected_closure[k] as f32);
        }
        // Reward, distance, intermediate reward.
        assert_eq!(e.log_reward(&[0; 9]), 0.0);
        assert_eq!(e.intermediate_log_reward(&s), Some(e.log_reward(&s)));
        assert_eq!(e.object_distance(&s, &adj(3, &[(1, 0), (1, 2)])), 1.0);
    }

    #[test]
    fn bge_is_score_equivalent() {
        for seed in 0..3 {
            let e = env(3, seed);
            let sc = |edges: &[(usize, usize)]| e.score().graph_score(&adj(3, edges));
            let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * (1.0 + a.abs());
            assert!(close(sc(&[(0, 1)]), sc(&[(1, 0)])));
            let chain = sc(&[(0, 1), (1, 2)]);
            assert!(close(chain, sc(&[(2, 1), (1, 0)])));
            assert!(close(chain, sc(&[(1, 0), (1, 2)])));
            let v = sc(&[(0, 1), (2, 1)]);
            assert!((chain - v).abs() > 1e-6, "v-structure {v} vs chain {chain}");
            // Complete DAGs are all equivalent.
            let full = sc(&[(0, 1), (0, 2), (1, 2)]);
            assert!(close(full, sc(&[(2, 1), (2, 0), (1, 0)])));
            assert!(close(full, sc(&[(1, 0), (1, 2), (0, 2)])));
        }
        // Over all DAGs of d = 4: graphs with the same skeleton and v-structures (same
        // equivalence class) have the same reward.
        let d = 4;
        let e = env(d, 3);
        let states = e.enumerate_states().unwrap();
        let class = |s: &[i32]| {
            let mut skel = Vec::new();
            let mut vs = Vec::new();
            for i in 0..d {
                for j in i + 1..d {
                    skel.push(s[i * d + j] + s[j * d + i]);
                }
            }
            for c in 0..d {
                for a in 0..d {
                    for b in a + 1..d {
                        let v = s[a * d + c] == 1 && s[b * d + c] == 1 && s[a * d + b] == 0 && s[b * d + a] == 0;
                        vs.push(v);
                    }
                }
            }
            (skel, vs)
        };
        let mut by_class: std::collections::HashMap<_, f64> = std::collections::HashMap::new();
        for s in states.chunks_exact(d * d) {
            let lr = e.log_reward(s);
            let first = *by_class.entry(class(s)).or_insert(lr);
            assert!((first - lr).abs() < 1e-9, "{s:?}");
        }
        // 543 DAGs on 4 labelled nodes fall into 185 Markov equivalence classes.
        assert_eq!(by_class.len(), 185);
    }

    /// `log |A|` by Gaussian elimination with partial pivoting.
    fn log_det_lu(a: &[f64], m: usize) -> f64 {
        let mut a = a.to_vec();
        let mut ld = 0.0;
        for c in 0..m {
            let p = (c..m)
                .max_by(|&x, &y| a[x * m + c].abs().total_cmp(&a[y * m + c].abs()))
                .unwrap();
            if p != c {
                for k in 0..m {
                    a.swap(c * m + k, p * m + k);
                }
            }
            let piv = a[c * m + c];
            ld += piv.abs().ln();
            for r in c + 1..m {
                let f = a[r * m + c] / piv;
                for k in c..m {
                    a[r * m + k] -= f * a[c * m + k];
                }
            }
        }
        ld
    }

    #[test]
    fn local_score_table_matches_direct_formula() {
        let d = 5;
        let e = env(d, 4);
        let (n, aw, am) = (e.num_samples() as f64, d as f64 + 2.0, 1.0f64);
        let df = d as f64;
        let t = am * (aw - df - 1.0) / (am + 1.0);
        assert!((e.score().t() - t).abs() < 1e-15);
        // R from its definition.
        let x = e.data();
        let mean: Vec<f64> = (0..d)
            .map(|j| x.chunks_exact(d).map(|r| r[j]).sum::<f64>() / n)
            .collect();
        let mut r = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                let s: f64 = x
                    .chunks_exact(d)
                    .map(|row| (row[i] - mean[i]) * (row[j] - mean[j]))
                    .sum();
                r[i * d + j] = s + if i == j { t } else { 0.0 } + n * am / (n + am) * mean[i] * mean[j];
                assert!((r[i * d + j] - e.score().r()[i * d + j]).abs() < 1e-9 * (1.0 + r[i * d + j].abs()));
            }
        }
        let sub_det = |s: &[usize]| {
            let m = s.len();
            let sub: Vec<f64> = s
                .iter()
                .flat_map(|&i| s.iter().map(move |&j| (i, j)))
                .map(|(i, j)| r[i * d + j])
                .collect();
            if m == 0 { 0.0 } else { log_det_lu(&sub, m) }
        };
        for j in 0..d {
            for parents in 0u32..1 << d {
                if parents >> j & 1 == 1 {
                    continue;
                }
                let p: Vec<usize> = (0..d).filter(|&i| parents >> i & 1 == 1).collect();
                let k = p.len() as f64;
                let mut pj = p.clone();
                pj.push(j);
                let direct = 0.5 * (am / (n + am)).ln() + lgamma((n + aw - df + k + 1.0) / 2.0)
                    - lgamma((aw - df + k + 1.0) / 2.0)
                    - n / 2.0 * std::f64::consts::PI.ln()
                    + (aw - df + 2.0 * k + 1.0) / 2.0 * t.ln()
                    - 0.5 * (n + aw - df + k + 1.0) * sub_det(&pj)
                    + 0.5 * (n + aw - df + k) * sub_det(&p);
                let table = e.local_score(j, parents);
                assert!((table - direct).abs() < 1e-9 * (1.0 + direct.abs()), "{j} {parents:b}");
                assert_eq!(table, e.score().local_score(j, parents));
            }
        }
        // log R of every DAG is the table sum minus the empty graph's.
        let states = e.enumerate_states().unwrap();
        let empty = e.score().graph_score(&[0; 25]);
        for s in states.chunks_exact(d * d).step_by(97) {
            let direct = e.score().graph_score(s) - empty;
            assert!((e.log_reward(s) - direct).abs() < 1e-9 * (1.0 + direct.abs()));
        }
    }

    #[test]
    fn cholesky_log_det() {
        // [[4, 2], [2, 3]]: det 8.
        assert!((log_det_spd(&[4.0, 2.0, 2.0, 3.0], 2) - 8f64.ln()).abs() < 1e-14);
        // A Hilbert-like SPD 4×4 against elimination.
        let m = 4;
        let a: Vec<f64> = (0..m * m)
            .map(|k| 1.0 / (1.0 + (k / m + k % m) as f64) + if k / m == k % m { 1.0 } else { 0.0 })
            .collect();
        assert!((log_det_spd(&a, m) - log_det_lu(&a, m)).abs() < 1e-13);
        assert!(log_det_spd(&[1.0, 2.0, 2.0, 1.0], 2).is_nan());
    }

    #[test]
    fn lgamma_accuracy() {
        let half_log_pi = 0.5 * std::f64::consts::PI.ln();
        assert!((lgamma(0.5) - half_log_pi).abs() < 1e-14);
        assert!((lgamma(1.5) - (half_log_pi - 2f64.ln())).abs() < 1e-14);
        assert!(lgamma(1.0).abs() < 1e-14 && lgamma(2.0).abs() < 1e-14);
        let mut log_fact = 0.0f64;
        for n in 1..=170 {
            // lgamma(n) = log (n − 1)!
            let v = lgamma(n as f64);
            if n > 2 {
                assert!((v - log_fact).abs() <= 1e-12 * log_fact.abs(), "{n}: {v} vs {log_fact}");
            }
            log_fact += (n as f64).ln();
        }
        assert!((lgamma(100.0) - 359.134_205_369_575_4).abs() < 1e-10);
        // Half-integers: Γ(n + ½) = (2n)! √π / (4ⁿ n!).
        let mut v = half_log_pi;
        for n in 1..60 {
            v += (n as f64 - 0.5).ln();
            let l = lgamma(n as f64 + 0.5);
            assert!((l - v).abs() <= 1e-12 * v.abs().max(1.0), "{n}");
        }
        // Recurrence and reflection.
        for &x in &[0.1, 0.3, 0.7, 1.3, 2.9, 7.25, 33.3, 51.5] {
            let r = lgamma(x + 1.0) - lgamma(x) - f64::ln(x);
            assert!(r.abs() < 1e-13 * lgamma(x + 1.0).abs().max(1.0), "{x}");
        }
        assert!((lgamma(-0.5) - (2.0 * std::f64::consts::PI.sqrt()).ln()).abs() < 1e-14);
        assert_eq!(lgamma(0.0), f64::INFINITY);
    }

    #[test]
    fn data_is_reproducible_and_follows_the_model() {
        let a = env(5, 7);
        let b = env(5, 7);
        assert_eq!(a.true_graph(), b.true_graph());
        assert_eq!(a.data(), b.data());
        let c = env(5, 8);
        assert_ne!(a.data(), c.data());
        assert_eq!(a.data().len(), 100 * 5);
        for s in [&a, &c] {
            let g = s.true_graph();
            assert!(g.iter().all(|&v| v == 0 || v == 1));
            assert!((0..5).all(|i| g[i * 5 + i] == 0));
            assert!(!has_cycle(g, 5));
            assert!(s.state_index(g).is_some());
            for (w, &e) in s.true_weights().iter().zip(g) {
                assert_eq!(*w != 0.0, e == 1);
            }
        }
        // With N = 2,000 the residuals x_j − Σ w_ij x_i have standard deviation σ = 0.1.
        let d = 5;
        let big = BayesNetEnv::new(BayesNetConfig {
            num_samples: 2000,
            data_seed: 3,
            ..BayesNetConfig::default()
        })
        .unwrap();
        let (g, w) = (big.true_graph(), big.true_weights());
        for j in 0..d {
            let res: Vec<f64> = big
                .data()
                .chunks_exact(d)
                .map(|row| row[j] - (0..d).map(|i| w[i * d + j] * row[i]).sum::<f64>())
                .collect();
            let m = res.iter().sum::<f64>() / res.len() as f64;
            let sd = (res.iter().map(|r| (r - m) * (r - m)).sum::<f64>() / res.len() as f64).sqrt();
            assert!(m.abs() < 0.01 && (sd - 0.1).abs() < 0.01, "node {j}: mean {m}, sd {sd}");
        }
        assert!(!has_cycle(g, d));
        // Erdős–Rényi with d expected edges: mean edge count over many draws, and every draw is
        // a DAG.
        let mut rng = rng_from_seed(11);
        let (draws, p) = (4000, 5.0 / 10.0);
        let mut total = 0;
        for _ in 0..draws {
            let g = sample_er_dag(5, p, &mut rng);
            assert!(!has_cycle(&g, 5));
            total += g.iter().sum::<i32>();
        }
        let mean = f64::from(total) / draws as f64;
        assert!((mean - 5.0).abs() < 0.1, "{mean}");
    }

    #[test]
    fn posterior_concentrates_near_the_truth_at_unit_noise() {
        // With σ = 1 the data are on the prior's scale and the exact posterior ranks true edges
        // high; with the default σ = 0.1 it is diffuse and favours dense graphs (module docs).
        for seed in 0..4 {
            let e = BayesNetEnv::new(BayesNetConfig {
                data_seed: seed,
                obs_noise: 1.0,
                ..BayesNetConfig::default()
            })
            .unwrap();
            let post = e.exact_posterior().unwrap();
            let dags = e.enumerate_states().unwrap();
            let marg = edge_marginals(&post, &dags);
            let roc = edge_auroc(&marg, e.true_graph());
            let eshd = expected_shd(&post, &dags, e.true_graph());
            assert!(roc > 0.75, "seed {seed}: AUROC {roc}, E-SHD {eshd}");
            assert!((0.0..5.0).contains(&eshd), "seed {seed}: E-SHD {eshd}");
        }
    }

    #[test]
    fn bge_prefers_the_edge_only_when_the_data_are_dependent() {
        let mut rng = rng_from_seed(5);
        let n = 200;
        let mut independent = Vec::new();
        let mut dependent = Vec::new();
        for _ in 0..n {
            let (a, b) = (normal(&mut rng), normal(&mut rng));
            independent.extend([a, b]);
            dependent.extend([a, 0.8 * a + 0.6 * b]);
        }
        let edge = adj(2, &[(0, 1)]);
        let gain = |data: &[f64]| {
            let s = BgeScore::new(data, 2, 1.0, None).unwrap();
            s.graph_score(&edge) - s.graph_score(&[0; 4])
        };
        assert!(gain(&independent) < 0.0, "{}", gain(&independent));
        assert!(gain(&dependent) > 20.0, "{}", gain(&dependent));
    }

    #[test]
    fn metrics_on_hand_made_examples() {
        let d = 3;
        let g = adj(d, &[(0, 1), (1, 2)]);
        assert_eq!(shd(&g, &g), 0);
        assert_eq!(shd(&g, &adj(d, &[(1, 0), (1, 2)])), 1); // reversal
        assert_eq!(shd(&g, &adj(d, &[(0, 1)])), 1); // missing
        assert_eq!(shd(&g, &adj(d, &[(0, 1), (1, 2), (0, 2)])), 1); // extra
        assert_eq!(shd(&g, &adj(d, &[(2, 1), (0, 2)])), 3);
        assert_eq!(shd(&g, &[0; 9]), 2);

        let dags: Vec<i32> = [adj(d, &[(0, 1)]), adj(d, &[(1, 0)]), adj(d, &[(0, 1), (1, 2)])].concat();
        let probs = [0.5, 0.25, 0.25];
        let m = edge_marginals(&probs, &dags);
        let mut expected = vec![0.0; 9];
        expected[1] = 0.75;
        expected[3] = 0.25;
        expected[5] = 0.25;
        assert_eq!(m, expected);
        // SHD to 0→1→2: 1, 2, 0.
        assert!((expected_shd(&probs, &dags, &g) - (0.5 + 0.5)).abs() < 1e-15);

        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auroc(&[0.5; 4], &[false, true, false, true]), 0.5);
        // One tie between a positive and a negative: (1 + 1 + 0.5 + 1) / 4.
        assert_eq!(auroc(&[0.1, 0.5, 0.5, 0.9], &[false, false, true, true]), 0.875);
        assert!(auroc(&[0.1, 0.2], &[true, true]).is_nan());
        // Off-diagonal pairs only: the diagonal would otherwise add negatives.
        let truth = adj(d, &[(0, 1)]);
        let mut scores = vec![0.0; 9];
        scores[1] = 1.0;
        for k in [0, 4, 8] {
            scores[k] = 2.0;
        }
        assert_eq!(edge_auroc(&scores, &truth), 1.0);
    }

    #[test]
    fn bad_input_names_the_field() {
        let field = |c: BayesNetConfig| match BayesNetEnv::new(c) {
            Err(GfnError::InvalidConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = BayesNetConfig::default();
        for d in [0, 1, 7] {
            assert_eq!(field(BayesNetConfig { num_nodes: d, ..base }), "num_nodes");
        }
        assert_eq!(field(BayesNetConfig { num_samples: 0, ..base }), "num_samples");
        for v in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
            assert_eq!(field(BayesNetConfig { obs_noise: v, ..base }), "obs_noise");
            assert_eq!(field(BayesNetConfig { alpha_mu: v, ..base }), "alpha_mu");
        }
        for v in [f64::NAN, f64::INFINITY, 6.0, 5.5] {
            assert_eq!(
                field(BayesNetConfig {
                    alpha_w: Some(v),
                    ..base
                }),
                "alpha_w"
            );
        }
        for v in [f64::NAN, -0.5, 10.5] {
            assert_eq!(
                field(BayesNetConfig {
                    expected_edges: Some(v),
                    ..base
                }),
                "expected_edges"
            );
        }
        let bge_field = |r: Result<BgeScore>| match r {
            Err(GfnError::InvalidConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(bge_field(BgeScore::new(&[1.0, 2.0, 3.0], 2, 1.0, None)), "data");
        assert_eq!(bge_field(BgeScore::new(&[], 2, 1.0, None)), "data");
        assert_eq!(bge_field(BgeScore::new(&[1.0, f64::NAN], 2, 1.0, None)), "data");
        assert_eq!(bge_field(BgeScore::new(&[1.0, 2.0], 1, 1.0, None)), "num_nodes");
        // Extreme but valid settings work.
        assert!(
            BayesNetEnv::new(BayesNetConfig {
                num_samples: 1,
                expected_edges: Some(10.0),
                ..base
            })
            .is_ok()
        );
        assert!(
            BayesNetEnv::new(BayesNetConfig {
                expected_edges: Some(0.0),
                ..base
            })
            .is_ok()
        );
    }
}
