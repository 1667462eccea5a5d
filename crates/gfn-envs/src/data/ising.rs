//! Lattice Ising models (EB-GFN §"Ising", after Grathwohl et al.'s `LatticeIsingModel`):
//! training data by Gibbs sampling, exact enumeration of small lattices, and the `−log RMSE`
//! metric on the coupling matrix.
//!
//! **Model.** `D = L×L` sites on the periodic 4-neighbour square lattice (a torus; igraph
//! `Lattice([L, L], circular=True)`), site `i = r·L + c` for row `r`, column `c`. A state is
//! `x ∈ {0,1}^D`, its spins `s = 2x − 1 ∈ {−1,1}^D`, and
//!
//! `log p̃(x) = sᵀ J s` (+ `bᵀ s` with `b = 0`),  `J = σ·A`,
//!
//! `A` the symmetric 0/1 adjacency matrix. Each lattice edge `{a, b}` enters the quadratic form
//! twice (`J_ab` and `J_ba`), so `log p̃ = 2σ Σ_{edges} s_a s_b`: the effective pair coupling is
//! `2σ` (`σ > 0` ferromagnetic, `σ < 0` antiferromagnetic).
//!
//! **Gibbs conditional.** With `J` symmetric and zero on the diagonal, the terms of `sᵀJs` that
//! contain `s_i` are `Σ_{j≠i} J_ij s_i s_j + Σ_{j≠i} J_ji s_j s_i = 2 s_i h_i`, `h_i = Σ_j J_ij s_j`.
//! Hence `log p̃(s_i = +1, rest) − log p̃(s_i = −1, rest) = 2·2·h_i` and
//!
//! `p(s_i = +1 | rest) = sigmoid(4 h_i) = sigmoid(4σ·Σ_{j ∈ N(i)} s_j)`.
//!
//! **Side.** The lattice needs `L ≥ 3`: for `L = 2` the "up" and "down" neighbours of a site
//! coincide (and for `L = 1` they are the site itself), so the 4-neighbour torus degenerates into
//! multi-edges or self-loops whose treatment depends on the graph library. `L < 3` is rejected.

use std::fmt;

use gfn_core::{GfnError, GfnRng, Result, rng::uniform};

/// Number of Gibbs chains (= training samples) of the paper's data, 2000.
pub const PAPER_N_CHAINS: usize = 2000;
/// Number of single-site Gibbs updates of the paper's data (systematic scan), 1,000,000.
pub const PAPER_N_UPDATES: u64 = 1_000_000;
/// Largest dimension [`LatticeIsing::exact_log_z`] enumerates (`2^20` states).
pub const MAX_EXACT_DIM: usize = 20;

/// `1/(1 + e^{−z})`.
fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// A 0/1 entry as a spin `±1`, or an error naming the bad value.
fn to_spin<T: Copy + PartialEq + From<u8> + fmt::Debug>(v: T) -> Result<i32> {
    if v == T::from(0) {
        Ok(-1)
    } else if v == T::from(1) {
        Ok(1)
    } else {
        Err(GfnError::invalid("state entry", format!("{v:?}"), "must be 0 or 1"))
    }
}

/// `log(Σ exp(v))`, stable (`−∞` for an empty slice).
fn logsumexp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Exact moments of the spins under a [`LatticeIsing`] model.
#[derive(Debug, Clone, PartialEq)]
pub struct IsingMoments {
    /// `log Z = log Σ_x exp(sᵀJs)`.
    pub log_z: f64,
    /// `E[s_i]`, length `D` (zero by the `s → −s` symmetry, up to rounding).
    pub mean_spin: Vec<f64>,
    /// `E[s_i s_j]`, `D×D` row-major (ones on the diagonal).
    pub spin_correlation: Vec<f64>,
}

/// The lattice Ising model `log p̃(x) = sᵀJs`, `J = σ·A` on the `L×L` torus (see the
/// [module documentation](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct LatticeIsing {
    side: usize,
    sigma: f64,
    /// Neighbours of each site: up, down, left, right.
    neighbours: Vec<[usize; 4]>,
    /// Each lattice edge once, `(a, b)` with `a < b`: `2D` edges.
    edges: Vec<(usize, usize)>,
    /// `p(s_i = +1 | rest)` indexed by `h + 4`, `h = Σ_{N(i)} s_j ∈ {−4, −2, 0, 2, 4}`.
    p_plus: [f64; 9],
}

impl LatticeIsing {
    /// The model on the `side × side` periodic lattice (`side ≥ 3`, `D = side²` at most `2^31`)
    /// with coupling `sigma` (finite).
    pub fn new(side: usize, sigma: f64) -> Result<Self> {
        if side < 3 {
            return Err(GfnError::invalid(
                "side",
                side,
                "must be at least 3 (for side < 3 the periodic 4-neighbour lattice has repeated neighbours)",
            ));
        }
        if side > 1 << 15 {
            return Err(GfnError::invalid("side", side, "must be at most 32768"));
        }
        if !sigma.is_finite() {
            return Err(GfnError::invalid("sigma", sigma, "must be finite"));
        }
        let at = |r: usize, c: usize| (r % side) * side + c % side;
        let mut neighbours = Vec::with_capacity(side * side);
        let mut edges = Vec::with_capacity(2 * side * side);
        for r in 0..side {
            for c in 0..side {
                let i = at(r, c);
                neighbours.push([at(r + side - 1, c), at(r + 1, c), at(r, c + side - 1), at(r, c + 1)]);
                // Each site owns the edges to its lower and right neighbours.
                for j in [at(r + 1, c), at(r, c + 1)] {
                    edges.push((i.min(j), i.max(j)));
                }
            }
        }
        let mut p_plus = [0.5; 9];
        for h in [-4i32, -2, 0, 2, 4] {
            p_plus[(h + 4) as usize] = sigmoid(4.0 * sigma * h as f64);
        }
        Ok(Self {
            side,
            sigma,
            neighbours,
            edges,
            p_plus,
        })
    }

    /// Lattice side `L`.
    pub fn side(&self) -> usize {
        self.side
    }

    /// Coupling scale `σ`.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Number of sites `D = L²`.
    pub fn dim(&self) -> usize {
        self.side * self.side
    }

    /// The four neighbours of site `i` (up, down, left, right), or `None` if `i ≥ D`.
    pub fn neighbours(&self, i: usize) -> Option<[usize; 4]> {
        self.neighbours.get(i).copied()
    }

    /// The `2D` lattice edges, each once as `(a, b)` with `a < b`.
    pub fn edges(&self) -> &[(usize, usize)] {
        &self.edges
    }

    /// `J = σ·A`, `D×D` row-major: `σ` for the 4 neighbours of each site, 0 elsewhere (diagonal
    /// included). Built on demand (`8·D²` bytes).
    pub fn coupling_matrix(&self) -> Vec<f64> {
        let d = self.dim();
        let mut j = vec![0.0; d * d];
        for &(a, b) in &self.edges {
            j[a * d + b] = self.sigma;
            j[b * d + a] = self.sigma;
        }
        j
    }

    /// Spins `s = 2x − 1` of a state of `D` entries, each 0 or 1.
    fn spins<T: Copy + PartialEq + From<u8> + fmt::Debug>(&self, x: &[T]) -> Result<Vec<i32>> {
        if x.len() != self.dim() {
            return Err(GfnError::invalid(
                "state length",
                x.len(),
                format!("must be D = {}", self.dim()),
            ));
        }
        x.iter().map(|&v| to_spin(v)).collect()
    }

    /// `log p̃(x) = sᵀJs = σ Σ_i s_i Σ_{j∈N(i)} s_j` for a state `x` of `D` entries, each 0 or 1
    /// (`u8`, `i32`, `f32`, …).
    pub fn log_unnormalised<T: Copy + PartialEq + From<u8> + fmt::Debug>(&self, x: &[T]) -> Result<f64> {
        let s = self.spins(x)?;
        let sum: i64 = (0..self.dim())
            .map(|i| i64::from(s[i]) * self.neighbours[i].iter().map(|&j| i64::from(s[j])).sum::<i64>())
            .sum();
        Ok(self.sigma * sum as f64)
    }

    /// The Gibbs conditional `p(s_i = +1 | rest) = sigmoid(4σ·Σ_{j∈N(i)} s_j)` at state `x`
    /// (the value of `x_i` itself is ignored).
    pub fn conditional_plus<T: Copy + PartialEq + From<u8> + fmt::Debug>(&self, x: &[T], i: usize) -> Result<f64> {
        let s = self.spins(x)?;
        let nb = self
            .neighbours(i)
            .ok_or_else(|| GfnError::invalid("site", i, format!("must be below D = {}", self.dim())))?;
        let h: i32 = nb.iter().map(|&j| s[j]).sum();
        Ok(self.p_plus[(h + 4) as usize])
    }

    /// Training data as in the paper: `n_chains` chains (≥ 1) started from `Bernoulli(½)`
    /// (drawn chain by chain, site by site), then `n_updates` single-site Gibbs updates with a
    /// systematic scan: update `t = 0, 1, …` resamples site `i = t mod D` of every chain (chain 0
    /// first) from [`LatticeIsing::conditional_plus`]. Returns the final states, `n_chains × D`
    /// row-major, entries 0/1.
    ///
    /// The paper uses `n_chains = 2000`, `n_updates = 10⁶` ([`PAPER_N_CHAINS`],
    /// [`PAPER_N_UPDATES`]); its seed (123456) seeded PyTorch, whose draws this generator does not
    /// reproduce. Cost: one uniform draw and four neighbour reads per chain and update.
    pub fn gibbs_data(&self, n_chains: usize, n_updates: u64, rng: &mut GfnRng) -> Result<Vec<u8>> {
        if n_chains == 0 {
            return Err(GfnError::invalid("n_chains", n_chains, "must be at least 1"));
        }
        let d = self.dim();
        if n_chains.checked_mul(d).is_none_or(|len| len > isize::MAX as usize) {
            return Err(GfnError::invalid("n_chains", n_chains, "n_chains × D is too large"));
        }
        // Site-major spins, `spins[i·n + c]`: an update reads four contiguous neighbour rows.
        let n = n_chains;
        let mut spins = vec![0i8; d * n];
        for c in 0..n {
            for i in 0..d {
                spins[i * n + c] = if uniform(rng) < 0.5 { 1 } else { -1 };
            }
        }
        let mut field = vec![0i8; n];
        let mut i = 0;
        for _ in 0..n_updates {
            let [up, down, left, right] = self.neighbours[i];
            let row = |k: usize| &spins[k * n..(k + 1) * n];
            for ((((h, &a), &b), &l), &r) in field
                .iter_mut()
                .zip(row(up))
                .zip(row(down))
                .zip(row(left))
                .zip(row(right))
            {
                *h = a + b + l + r + 4;
            }
            for (s, &h) in spins[i * n..(i + 1) * n].iter_mut().zip(&field) {
                *s = if uniform(rng) < self.p_plus[h as usize] { 1 } else { -1 };
            }
            i += 1;
            if i == d {
                i = 0;
            }
        }
        let mut x = vec![0u8; n * d];
        for c in 0..n {
            for i in 0..d {
                x[c * d + i] = u8::from(spins[i * n + c] > 0);
            }
        }
        Ok(x)
    }

    /// `log p̃` of every state `k ∈ 0..2^D`, with `x_i` = bit `i` of `k`:
    /// `2σ Σ_{edges} s_a s_b`, `s_a s_b = 1 − 2·(x_a ⊕ x_b)`.
    fn enumerate_log_p(&self) -> Result<Vec<f64>> {
        let d = self.dim();
        if d > MAX_EXACT_DIM {
            return Err(GfnError::invalid(
                "dim",
                d,
                format!("exact enumeration needs D ≤ {MAX_EXACT_DIM} (side ≤ 4)"),
            ));
        }
        let n_edges = self.edges.len() as i64;
        Ok((0u64..1 << d)
            .map(|k| {
                let disagree = self
                    .edges
                    .iter()
                    .map(|&(a, b)| ((k >> a ^ k >> b) & 1) as i64)
                    .sum::<i64>();
                2.0 * self.sigma * (n_edges - 2 * disagree) as f64
            })
            .collect())
    }

    /// `log Z = log Σ_{x ∈ {0,1}^D} exp(sᵀJs)` by enumerating all `2^D` states (`D ≤ 20`, i.e.
    /// side 3 or 4; larger lattices are an error).
    pub fn exact_log_z(&self) -> Result<f64> {
        Ok(logsumexp(&self.enumerate_log_p()?))
    }

    /// `log Z`, `E[s_i]` and `E[s_i s_j]` by enumeration (`D ≤ 20`; `O(2^D·D²)` time).
    pub fn exact_moments(&self) -> Result<IsingMoments> {
        let log_p = self.enumerate_log_p()?;
        let log_z = logsumexp(&log_p);
        let d = self.dim();
        let mut mean_spin = vec![0.0; d];
        let mut spin_correlation = vec![0.0; d * d];
        let mut s = vec![0.0; d];
        for (k, lp) in log_p.iter().enumerate() {
            let w = (lp - log_z).exp();
            for (i, si) in s.iter_mut().enumerate() {
                *si = if k >> i & 1 == 1 { 1.0 } else { -1.0 };
            }
            for i in 0..d {
                mean_spin[i] += w * s[i];
                for j in i + 1..d {
                    spin_correlation[i * d + j] += w * s[i] * s[j];
                }
            }
        }
        for i in 0..d {
            spin_correlation[i * d + i] = 1.0;
            for j in i + 1..d {
                spin_correlation[j * d + i] = spin_correlation[i * d + j];
            }
        }
        Ok(IsingMoments {
            log_z,
            mean_spin,
            spin_correlation,
        })
    }
}

/// Empirical `E[s_i s_j]` (`D×D` row-major) of `samples`, a flat row-major `n × dim` buffer of
/// 0/1 (`n ≥ 1`), e.g. the output of [`LatticeIsing::gibbs_data`].
pub fn spin_correlation(samples: &[u8], dim: usize) -> Result<Vec<f64>> {
    if dim == 0 || samples.is_empty() || !samples.len().is_multiple_of(dim) {
        return Err(GfnError::invalid(
            "samples length",
            samples.len(),
            format!("must be a positive multiple of dim = {dim} (≥ 1)"),
        ));
    }
    let n = samples.len() / dim;
    let mut counts = vec![0i64; dim * dim];
    let mut s = vec![0i64; dim];
    for row in samples.chunks_exact(dim) {
        for (si, &x) in s.iter_mut().zip(row) {
            *si = i64::from(to_spin(x)?);
        }
        for i in 0..dim {
            for j in 0..dim {
                counts[i * dim + j] += s[i] * s[j];
            }
        }
    }
    Ok(counts.iter().map(|&c| c as f64 / n as f64).collect())
}

/// The paper's metric `−log RMSE(J_model, J_true)`, `RMSE = √(mean over all D² entries of
/// (J_model − J_true)²)` (natural log; higher is better). Identical matrices give `+∞`. The two
/// matrices must have the same non-zero length and finite entries.
pub fn neg_log_rmse(j_model: &[f64], j_true: &[f64]) -> Result<f64> {
    if j_model.len() != j_true.len() || j_model.is_empty() {
        return Err(GfnError::invalid(
            "j_model length",
            j_model.len(),
            format!("must equal j_true's length {} and be non-zero", j_true.len()),
        ));
    }
    if let Some(v) = j_model.iter().chain(j_true).find(|v| !v.is_finite()) {
        return Err(GfnError::invalid("coupling entry", v, "must be finite"));
    }
    let mse = j_model.iter().zip(j_true).map(|(m, t)| (m - t) * (m - t)).sum::<f64>() / j_model.len() as f64;
    Ok(-mse.sqrt().ln())
}

/// Where the error of learned couplings sits: the paper's metric split between the entries
/// that are couplings of the true model (non-zero in `J_true`) and those that should be zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CouplingError {
    /// `−log RMSE` over all `D²` entries ([`neg_log_rmse`]).
    pub neg_log_rmse: f64,
    /// Mean learned value of the true model's non-zero entries.
    pub edge_mean: f64,
    /// Their mean true value.
    pub edge_true_mean: f64,
    /// Standard deviation of the learned values there (population).
    pub edge_sd: f64,
    /// Root mean square of the learned entries where `J_true` is zero, diagonal excluded.
    pub off_rms: f64,
    /// Share of the squared error that sits on the non-zero entries, in `[0, 1]`.
    pub edge_share: f64,
}

/// [`neg_log_rmse`] and where its error sits ([`CouplingError`]). `J_true` needs at least one
/// non-zero entry; the lengths must match and be a square number.
pub fn coupling_error(j_model: &[f64], j_true: &[f64]) -> Result<CouplingError> {
    let neg_log_rmse = neg_log_rmse(j_model, j_true)?;
    let dim = (j_model.len() as f64).sqrt().round() as usize;
    if dim * dim != j_model.len() {
        return Err(GfnError::invalid(
            "j_model length",
            j_model.len(),
            "must be D² for some D",
        ));
    }
    let (mut edge_n, mut edge_sum, mut edge_sq, mut true_sum) = (0usize, 0.0, 0.0, 0.0);
    let (mut off_n, mut off_sq, mut edge_err, mut total_err) = (0usize, 0.0, 0.0, 0.0);
    for (idx, (&m, &t)) in j_model.iter().zip(j_true).enumerate() {
        let err = (m - t) * (m - t);
        total_err += err;
        if t != 0.0 {
            edge_n += 1;
            edge_sum += m;
            edge_sq += m * m;
            true_sum += t;
            edge_err += err;
        } else if idx / dim != idx % dim {
            off_n += 1;
            off_sq += m * m;
        }
    }
    if edge_n == 0 {
        return Err(GfnError::invalid(
            "j_true",
            "all zero",
            "needs at least one non-zero coupling",
        ));
    }
    let edge_mean = edge_sum / edge_n as f64;
    Ok(CouplingError {
        neg_log_rmse,
        edge_mean,
        edge_true_mean: true_sum / edge_n as f64,
        edge_sd: (edge_sq / edge_n as f64 - edge_mean * edge_mean).max(0.0).sqrt(),
        off_rms: if off_n > 0 { (off_sq / off_n as f64).sqrt() } else { 0.0 },
        edge_share: if total_err > 0.0 { edge_err / total_err } else { 0.0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gfn_core::rng_from_seed;
    use rand::Rng;

    /// `sᵀJs` from the dense matrix: an implementation independent of the neighbour lists.
    fn dense_log_p(j: &[f64], x: &[u8]) -> f64 {
        let d = x.len();
        let s: Vec<f64> = x.iter().map(|&v| 2.0 * f64::from(v) - 1.0).collect();
        (0..d)
            .map(|a| (0..d).map(|b| s[a] * j[a * d + b] * s[b]).sum::<f64>())
            .sum()
    }

    fn random_state(d: usize, rng: &mut GfnRng) -> Vec<u8> {
        (0..d).map(|_| u8::from(rng.random_bool(0.5))).collect()
    }

    #[test]
    fn coupling_matrix_is_sigma_times_the_periodic_lattice_adjacency() {
        for side in [3, 4, 5, 10] {
            let model = LatticeIsing::new(side, 0.3).unwrap();
            let d = model.dim();
            let j = model.coupling_matrix();
            assert_eq!(model.edges().len(), 2 * d);
            for a in 0..d {
                assert_eq!(j[a * d + a], 0.0);
                let row: Vec<usize> = (0..d).filter(|&b| j[a * d + b] != 0.0).collect();
                assert_eq!(row.len(), 4, "side {side} site {a}");
                for b in 0..d {
                    assert_eq!(j[a * d + b], j[b * d + a]);
                }
                let mut nb = model.neighbours(a).unwrap().to_vec();
                nb.sort();
                assert_eq!(nb, row);
                assert!(row.iter().all(|&b| j[a * d + b] == 0.3));
            }
        }
        // Site 0 of the 4×4 torus: right 1, wrap-around left 3, down 4, wrap-around up 12.
        assert_eq!(LatticeIsing::new(4, 1.0).unwrap().neighbours(0), Some([12, 4, 3, 1]));
        assert_eq!(LatticeIsing::new(4, 1.0).unwrap().neighbours(16), None);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(LatticeIsing::new(2, 0.1).is_err());
        assert!(LatticeIsing::new(0, 0.1).is_err());
        assert!(LatticeIsing::new(3, f64::NAN).is_err());
        let model = LatticeIsing::new(3, 0.1).unwrap();
        assert!(model.log_unnormalised(&[0u8; 8]).is_err());
        assert!(model.log_unnormalised(&[2u8; 9]).is_err());
        assert!(model.conditional_plus(&[0u8; 9], 9).is_err());
        assert!(model.gibbs_data(0, 10, &mut rng_from_seed(0)).is_err());
        assert!(LatticeIsing::new(5, 0.1).unwrap().exact_log_z().is_err());
        assert!(spin_correlation(&[0, 1, 1], 2).is_err());
        assert!(spin_correlation(&[0, 3], 2).is_err());
    }

    #[test]
    fn log_unnormalised_is_the_quadratic_form() {
        let mut rng = rng_from_seed(1);
        for (side, sigma) in [(3, 0.25), (4, -0.4), (10, 0.1)] {
            let model = LatticeIsing::new(side, sigma).unwrap();
            let j = model.coupling_matrix();
            for _ in 0..20 {
                let x = random_state(model.dim(), &mut rng);
                let lp = model.log_unnormalised(&x).unwrap();
                assert!((lp - dense_log_p(&j, &x)).abs() < 1e-12);
                let x_f32: Vec<f32> = x.iter().map(|&v| f32::from(v)).collect();
                assert_eq!(model.log_unnormalised(&x_f32).unwrap(), lp);
            }
            // All spins up: every one of the 2D edges counts twice, 4Dσ.
            let d = model.dim();
            assert!((model.log_unnormalised(&vec![1u8; d]).unwrap() - 4.0 * d as f64 * sigma).abs() < 1e-12);
        }
        // The chequerboard state of an even lattice disagrees on every edge.
        let model = LatticeIsing::new(4, 0.5).unwrap();
        let x: Vec<u8> = (0..16).map(|i| ((i / 4 + i % 4) % 2) as u8).collect();
        assert_eq!(model.log_unnormalised(&x).unwrap(), -4.0 * 16.0 * 0.5);
    }

    #[test]
    fn gibbs_conditional_matches_brute_force() {
        let mut rng = rng_from_seed(2);
        for sigma in [0.3, -0.7] {
            let model = LatticeIsing::new(3, sigma).unwrap();
            let j = model.coupling_matrix();
            for _ in 0..50 {
                let mut x = random_state(9, &mut rng);
                for i in 0..9 {
                    let p = model.conditional_plus(&x, i).unwrap();
                    x[i] = 1;
                    let lp_plus = dense_log_p(&j, &x);
                    x[i] = 0;
                    let lp_minus = dense_log_p(&j, &x);
                    let brute = lp_plus.exp() / (lp_plus.exp() + lp_minus.exp());
                    assert!((p - brute).abs() < 1e-12, "σ {sigma} site {i}: {p} vs {brute}");
                    assert_eq!(model.conditional_plus(&x, i).unwrap(), p, "ignores x_i");
                }
            }
        }
    }

    #[test]
    fn exact_log_z_matches_known_values_and_brute_force() {
        for side in [3, 4] {
            let d = (side * side) as f64;
            let z0 = LatticeIsing::new(side, 0.0).unwrap().exact_log_z().unwrap();
            assert!((z0 - d * std::f64::consts::LN_2).abs() < 1e-12, "σ = 0: {z0}");
        }
        // Brute force through the dense quadratic form, 3×3.
        let model = LatticeIsing::new(3, 0.3).unwrap();
        let j = model.coupling_matrix();
        let brute: f64 = (0u32..512)
            .map(|k| {
                let x: Vec<u8> = (0..9).map(|i| (k >> i & 1) as u8).collect();
                dense_log_p(&j, &x).exp()
            })
            .sum::<f64>()
            .ln();
        assert!((model.exact_log_z().unwrap() - brute).abs() < 1e-12);
        // Even sides are bipartite: flipping one sublattice maps σ to −σ, so log Z is even in σ;
        // the odd 3×3 torus is frustrated for σ < 0, so its log Z is smaller there.
        let z = |side, sigma| LatticeIsing::new(side, sigma).unwrap().exact_log_z().unwrap();
        assert!((z(4, 0.35) - z(4, -0.35)).abs() < 1e-10);
        assert!(z(3, -0.35) < z(3, 0.35) - 0.1);
    }

    #[test]
    fn exact_moments_are_the_derivative_of_log_z() {
        let model = LatticeIsing::new(3, 0.2).unwrap();
        let m = model.exact_moments().unwrap();
        assert!((m.log_z - model.exact_log_z().unwrap()).abs() < 1e-12);
        assert!(m.mean_spin.iter().all(|v| v.abs() < 1e-12));
        // d log Z/dσ = E[sᵀAs] = Σ_ab A_ab E[s_a s_b].
        let h = 1e-5;
        let z = |sigma| LatticeIsing::new(3, sigma).unwrap().exact_log_z().unwrap();
        let derivative = (z(0.2 + h) - z(0.2 - h)) / (2.0 * h);
        let a = LatticeIsing::new(3, 1.0).unwrap().coupling_matrix();
        let expected: f64 = a.iter().zip(&m.spin_correlation).map(|(a, c)| a * c).sum();
        assert!((derivative - expected).abs() < 1e-6, "{derivative} vs {expected}");
        assert!((0..9).all(|i| m.spin_correlation[i * 9 + i] == 1.0));
    }

    /// Independent chains after a burn-in are (very nearly) exact samples: every `E[s_i s_j]`
    /// must match enumeration within 5 standard errors `√((1 − c²)/n)`.
    #[test]
    fn gibbs_chains_reproduce_exact_correlations_on_3x3() {
        let n = 20_000;
        for (sigma, seed) in [(0.15, 3), (-0.2, 4)] {
            let model = LatticeIsing::new(3, sigma).unwrap();
            let exact = model.exact_moments().unwrap().spin_correlation;
            let x = model.gibbs_data(n, 9 * 100, &mut rng_from_seed(seed)).unwrap();
            let empirical = spin_correlation(&x, 9).unwrap();
            for (k, (e, c)) in empirical.iter().zip(&exact).enumerate() {
                let se = ((1.0 - c * c) / n as f64).sqrt();
                assert!(
                    (e - c).abs() <= 5.0 * se + 1e-12,
                    "σ {sigma} pair {k}: {e} vs exact {c}"
                );
            }
            // Nearest-neighbour correlation, the statistic J is learnt from: sign of σ.
            let (a, b) = model.edges()[0];
            assert!(exact[a * 9 + b] * sigma > 0.0);
            let mean_nn: f64 = model.edges().iter().map(|&(a, b)| empirical[a * 9 + b]).sum::<f64>() / 18.0;
            let exact_nn: f64 = model.edges().iter().map(|&(a, b)| exact[a * 9 + b]).sum::<f64>() / 18.0;
            assert!(
                (mean_nn - exact_nn).abs() < 5.0 / (n as f64).sqrt(),
                "{mean_nn} vs {exact_nn}"
            );
        }
    }

    #[test]
    fn gibbs_data_is_reproducible_and_starts_from_fair_coins() {
        let model = LatticeIsing::new(4, 0.2).unwrap();
        let a = model.gibbs_data(50, 333, &mut rng_from_seed(5)).unwrap();
        assert_eq!(a.len(), 50 * 16);
        assert!(a.iter().all(|&v| v <= 1));
        assert_eq!(a, model.gibbs_data(50, 333, &mut rng_from_seed(5)).unwrap());
        assert_ne!(a, model.gibbs_data(50, 333, &mut rng_from_seed(6)).unwrap());
        // No updates: Bernoulli(½) entries, 64,000 of them.
        let init = model.gibbs_data(4000, 0, &mut rng_from_seed(7)).unwrap();
        let ones = init.iter().map(|&v| f64::from(v)).sum::<f64>() / init.len() as f64;
        assert!((ones - 0.5).abs() < 5.0 * 0.5 / (init.len() as f64).sqrt(), "{ones}");
        // One update touches only site 0 of each chain.
        let one = model.gibbs_data(4000, 1, &mut rng_from_seed(7)).unwrap();
        let changed: Vec<usize> = (0..init.len()).filter(|&k| init[k] != one[k]).map(|k| k % 16).collect();
        assert!(!changed.is_empty() && changed.iter().all(|&i| i == 0));
    }

    #[test]
    fn coupling_error_splits_edges_from_the_rest() {
        // D = 2: J_true has the pair (0,1) at 0.1; the model halves it and puts 0.02 on the
        // diagonal (excluded from off_rms, counted in the RMSE).
        let j_true = [0.0, 0.1, 0.1, 0.0];
        let j_model = [0.02, 0.05, 0.07, 0.0];
        let e = coupling_error(&j_model, &j_true).unwrap();
        assert!((e.edge_mean - 0.06).abs() < 1e-12 && (e.edge_true_mean - 0.1).abs() < 1e-12);
        assert!((e.edge_sd - 0.01).abs() < 1e-12);
        assert_eq!(e.off_rms, 0.0);
        let edge_err = 0.05f64.powi(2) + 0.03f64.powi(2);
        assert!((e.edge_share - edge_err / (edge_err + 0.02f64.powi(2))).abs() < 1e-12);
        assert_eq!(e.neg_log_rmse, neg_log_rmse(&j_model, &j_true).unwrap());
        assert!(coupling_error(&[0.0; 4], &[0.0; 4]).is_err());
        assert!(coupling_error(&[0.0; 3], &[0.0, 0.1, 0.1]).is_err());
    }

    #[test]
    fn neg_log_rmse_of_known_offsets() {
        let j_true = LatticeIsing::new(10, 0.1).unwrap().coupling_matrix();
        assert_eq!(neg_log_rmse(&j_true, &j_true).unwrap(), f64::INFINITY);
        let shifted: Vec<f64> = j_true.iter().map(|v| v - 0.01).collect();
        assert!((neg_log_rmse(&shifted, &j_true).unwrap() - 0.01f64.ln().abs()).abs() < 1e-9);
        // One entry off by δ among D² = 10⁴: RMSE = δ/100.
        let mut one = j_true.clone();
        one[17] += 0.5;
        assert!((neg_log_rmse(&one, &j_true).unwrap() + (0.5f64 / 100.0).ln()).abs() < 1e-12);
        // The untrained paper model (J ≈ 0) against σ = 0.1: RMSE = 0.1·√(4/D) = 0.02.
        let zero = vec![0.0; j_true.len()];
        assert!((neg_log_rmse(&zero, &j_true).unwrap() - 0.02f64.ln().abs()).abs() < 1e-12);
        assert!(neg_log_rmse(&zero[1..], &j_true).is_err());
        assert!(neg_log_rmse(&[], &[]).is_err());
        assert!(neg_log_rmse(&[f64::NAN], &[0.0]).is_err());
    }
}
