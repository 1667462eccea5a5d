//! Persistent contrastive divergence with Gibbs-sampling negatives: EB-GFN's point of comparison
//! (Tieleman 2008; the Gibbs / PCD rows of the paper's tables).
//!
//! `n` persistent chains on `{0,1}^D`. Each iteration runs `gibbs_steps` single-site Gibbs updates
//! on every chain, cycling over the sites (`i = step mod D`): with `f = −E_φ`,
//! `p(x_i = 1 | x_{−i}) = σ(f(x_{i←1}) − f(x_{i←0}))` (both evaluated in one batch of `2n` rows).
//! Then the EBM step on `L = −(mean f(x_data) − mean f(chains))` plus the model's penalty, if any.

use candle_core::Device;

use gfn_core::optim::{Adam, AdamParams};
use gfn_core::rng::uniform;
use gfn_core::{GfnError, GfnRng, Result};

use crate::energy::{EnergyModel, binary_tensor, log_density_values, with_penalty};

/// The PCD baseline's state.
pub struct PcdTrainer {
    /// `f_φ = −E_φ`.
    pub ebm: Box<dyn EnergyModel>,
    /// Its optimiser.
    pub optimizer: Adam,
    /// Persistent chains, `[n, D]`.
    pub chains: Vec<i32>,
    /// Gibbs updates per iteration.
    pub gibbs_steps: usize,
    /// Iterations completed.
    pub iteration: u64,
    site: usize,
    device: Device,
    pair: Vec<i32>,
}

impl PcdTrainer {
    /// `n_chains` chains started uniformly at random; `gibbs_steps` updates per iteration.
    pub fn new(
        ebm: Box<dyn EnergyModel>,
        lr: f64,
        n_chains: usize,
        gibbs_steps: usize,
        device: &Device,
        rng: &mut GfnRng,
    ) -> Result<Self> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(GfnError::invalid("ebm_lr", lr, "must be finite and > 0"));
        }
        if n_chains == 0 || gibbs_steps == 0 {
            return Err(GfnError::invalid(
                "pcd",
                format!("{n_chains} chains, {gibbs_steps} Gibbs steps"),
                "both must be at least 1",
            ));
        }
        let d = ebm.dim();
        let chains = (0..n_chains * d).map(|_| i32::from(uniform(rng) < 0.5)).collect();
        let params = ebm.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
        Ok(Self {
            optimizer: Adam::new(params, vec![AdamParams::adam(lr)]),
            ebm,
            chains,
            gibbs_steps,
            iteration: 0,
            site: 0,
            device: device.clone(),
            pair: Vec::new(),
        })
    }

    /// The site the next Gibbs update visits.
    pub fn site(&self) -> usize {
        self.site
    }

    /// Set the next site (restoring a checkpoint).
    pub fn set_site(&mut self, site: usize) -> Result<()> {
        if site >= self.ebm.dim() {
            return Err(GfnError::invalid(
                "site",
                site,
                format!("must be below D = {}", self.ebm.dim()),
            ));
        }
        self.site = site;
        Ok(())
    }

    /// One single-site Gibbs update of every chain at the next site.
    fn gibbs_update(&mut self, rng: &mut GfnRng) -> Result<()> {
        let d = self.ebm.dim();
        let n = self.chains.len() / d;
        let i = self.site;
        self.site = (self.site + 1) % d;
        // Rows 2c: site i set to 0; rows 2c + 1: set to 1.
        self.pair.clear();
        for c in 0..n {
            for v in 0..2 {
                let start = self.pair.len();
                self.pair.extend_from_slice(&self.chains[c * d..(c + 1) * d]);
                self.pair[start + i] = v;
            }
        }
        let f = log_density_values(self.ebm.as_ref(), &self.pair, &self.device)?;
        for c in 0..n {
            let logit = f[2 * c + 1] - f[2 * c];
            let p1 = 1.0 / (1.0 + (-logit).exp());
            self.chains[c * d + i] = i32::from(uniform(rng) < p1);
        }
        Ok(())
    }

    /// One PCD iteration on the data batch `data` (`[m, D]`, 0/1); returns the EBM loss.
    pub fn step(&mut self, data: &[i32], rng: &mut GfnRng) -> Result<f64> {
        let _flush = gfn_core::denormals::FlushDenormals::enable();
        let d = self.ebm.dim();
        if data.is_empty() || !data.len().is_multiple_of(d) || data.iter().any(|&v| v != 0 && v != 1) {
            return Err(GfnError::invalid(
                "data batch",
                format!("{} values", data.len()),
                format!("must be a positive number of rows of D = {d} values, each 0 or 1"),
            ));
        }
        for _ in 0..self.gibbs_steps {
            self.gibbs_update(rng)?;
        }
        let f_data = self.ebm.log_density(&binary_tensor(data, d, &self.device)?)?;
        let f_neg = self.ebm.log_density(&binary_tensor(&self.chains, d, &self.device)?)?;
        let loss = (f_neg.mean_all()? - f_data.mean_all()?)?;
        let value = f64::from(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(GfnError::Other(format!(
                "the PCD loss is {value} at iteration {}",
                self.iteration + 1
            )));
        }
        let grads = with_penalty(self.ebm.as_ref(), loss)?.backward()?;
        self.optimizer.step(&grads)?;
        self.ebm.project()?;
        self.iteration += 1;
        Ok(value)
    }
}
