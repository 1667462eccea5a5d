//! The run-record schema of gfn, shared by the library (which writes the records) and its
//! tools (`cargo xtask`, which reads them), so that nothing is declared twice: the lines of a
//! run's `metrics.jsonl` that both read ([`TopKMetrics`], [`RecentMetrics`], [`EbmRecord`] with
//! its [`Estimate`]s) and its `timing.json` ([`Timing`], [`EbmTiming`], [`EvalTiming`]).
//!
//! Serde only: no numerics beyond [`Estimate::of`]. Readers are lenient where JSON loses
//! information: a non-finite `f64` is written as `null` and read back as NaN ([`f64_or_nan`]),
//! and a count written as `100.0` by an older tool reads as `100`.

use serde::{Deserialize, Serialize};

/// Deserialise an f64 that may have been written as `null` (JSON has no NaN or infinity).
pub fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Deserialise a count written as an integer or as an integral float (`100` or `100.0`).
pub fn count<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    let x = f64::deserialize(d)?;
    if x >= 0.0 && x.fract() == 0.0 && x <= usize::MAX as f64 {
        Ok(x as usize)
    } else {
        Err(serde::de::Error::custom(format!("expected a count, found {x}")))
    }
}

/// Top-k metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TopKMetrics {
    /// `k`.
    #[serde(deserialize_with = "count")]
    pub k: usize,
    /// Distinct objects held (`≤ k`).
    #[serde(deserialize_with = "count")]
    pub found: usize,
    /// Mean reward `R = exp(log R)` of the held objects.
    pub mean_reward: f64,
    /// Mean pairwise distance between the held objects (the task's object distance).
    pub diversity: f64,
}

/// Metrics of the recent samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecentMetrics {
    /// Samples in the window (`≤` its capacity).
    #[serde(deserialize_with = "count")]
    pub samples: usize,
    /// Their mean reward.
    pub mean_reward: f64,
    /// `(mean reward − E_{p*}[R]) / E_{p*}[R]`, where `E_{p*}[R]` is known.
    pub relative_error: Option<f64>,
}

/// A mean with its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Its standard error (0 for exact values).
    pub std_err: f64,
    /// Samples behind it.
    pub n: usize,
}

impl Estimate {
    /// Mean and standard error (sample standard deviation / √n) of `xs`.
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
        let var = if n > 1 {
            xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Self {
            value: mean,
            std_err: (var / n.max(1) as f64).sqrt(),
            n,
        }
    }
}

/// One evaluation, a line of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EbmRecord {
    /// Iterations completed.
    pub iteration: u64,
    /// Mean EBM loss `mean f(x⁻) − mean f(x)` since the previous evaluation.
    #[serde(deserialize_with = "f64_or_nan")]
    pub ebm_loss: f64,
    /// Mean GFlowNet TB loss since the previous evaluation (EB-GFN).
    pub gfn_loss: Option<f64>,
    /// Mean acceptance of the back-and-forth proposals since the previous evaluation.
    pub acceptance: Option<f64>,
    /// `K` of the last iteration.
    pub k: Option<usize>,
    /// `log Z` of the EBM: exact (D ≤ 20) or importance-sampled with the GFlowNet.
    pub log_z: Option<Estimate>,
    /// The EBM's test NLL with that `log Z`.
    pub ebm_nll: Option<Estimate>,
    /// `log Z` by uniform importance sampling (the ALOE protocol of the paper's table).
    pub log_z_uniform: Option<Estimate>,
    /// The EBM's test NLL with the uniform-IS `log Z`.
    pub ebm_nll_uniform: Option<Estimate>,
    /// The GFlowNet's test NLL (backward importance sampling).
    pub gfn_nll: Option<Estimate>,
    /// MMD² (exp-Hamming kernel) between model samples and data, ×10⁻⁴ as in the paper.
    pub mmd_e4: Option<f64>,
    /// Ising: −log RMSE between learned and true couplings.
    pub neg_log_rmse: Option<f64>,
    /// Ising: mean learned value of the true lattice couplings (the truth is σ).
    #[serde(default)]
    pub edge_mean: Option<f64>,
    /// Ising: standard deviation of the learned lattice couplings.
    #[serde(default)]
    pub edge_sd: Option<f64>,
    /// Ising: root mean square of the learned couplings that should be zero (diagonal excluded).
    #[serde(default)]
    pub off_rms: Option<f64>,
    /// Ising: share of the squared error on the lattice couplings.
    #[serde(default)]
    pub edge_share: Option<f64>,
}

/// Training seconds at one evaluation (kept in `timing.json`, beside the bit-reproducible files).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalTiming {
    /// Iterations completed.
    pub iteration: u64,
    /// Training-loop seconds so far.
    pub wall_seconds: f64,
}

/// What `timing.json` keeps of a GFlowNet run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    /// Iterations completed at the last checkpoint.
    pub iteration: u64,
    /// Training-loop seconds (evaluations and I/O excluded).
    pub wall_seconds: f64,
    /// Useful floating-point operations so far.
    pub useful_flops: f64,
    /// Training seconds at every evaluation.
    pub evals: Vec<EvalTiming>,
    /// Seconds of LED's potential updates (inside `wall_seconds`).
    pub led_seconds: f64,
    /// Seconds of the measurement samples (outside `wall_seconds`).
    pub metric_seconds: f64,
}

/// What `timing.json` keeps of an EBM run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EbmTiming {
    /// Iterations completed at the last checkpoint.
    pub iteration: u64,
    /// Training-loop seconds.
    pub wall_seconds: f64,
    /// Training seconds at every evaluation.
    pub evals: Vec<EvalTiming>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_from_integers_and_integral_floats_only() {
        let t: TopKMetrics =
            serde_json::from_str(r#"{"k": 100.0, "found": 34, "mean_reward": 0.5, "diversity": 1.0}"#).unwrap();
        assert_eq!((t.k, t.found), (100, 34));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"k":100,"found":34,"mean_reward":0.5,"diversity":1.0}"#
        );
        assert!(
            serde_json::from_str::<TopKMetrics>(r#"{"k": 1.5, "found": 1, "mean_reward": 0, "diversity": 0}"#).is_err()
        );
        assert!(
            serde_json::from_str::<TopKMetrics>(r#"{"k": -1, "found": 1, "mean_reward": 0, "diversity": 0}"#).is_err()
        );
    }

    #[test]
    fn ebm_records_read_back_with_null_for_non_finite() {
        let line = r#"{"iteration":100,"ebm_loss":null,"gfn_loss":3.0,"acceptance":0.25,"k":1,"log_z":{"value":10.0,"std_err":0.1,"n":1000},"ebm_nll":null,"log_z_uniform":null,"ebm_nll_uniform":null,"gfn_nll":null,"mmd_e4":3.5,"neg_log_rmse":null}"#;
        let r: EbmRecord = serde_json::from_str(line).unwrap();
        assert!(r.ebm_loss.is_nan());
        assert_eq!(
            r.log_z,
            Some(Estimate {
                value: 10.0,
                std_err: 0.1,
                n: 1000
            })
        );
        assert_eq!(r.edge_mean, None);
        // A GFlowNet run's line is not an EBM record.
        assert!(serde_json::from_str::<EbmRecord>(r#"{"iteration":1,"trajectories":16,"loss":0.5}"#).is_err());
    }

    #[test]
    fn estimate_of_is_the_mean_and_its_standard_error() {
        let e = Estimate::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((e.value, e.n), (2.5, 4));
        assert!((e.std_err - (5.0f64 / 12.0).sqrt()).abs() < 1e-15);
    }
}
