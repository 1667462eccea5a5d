//! The accept step of EB-GFN's back-and-forth proposal.
//!
//! With `f = −E_φ` the model's log-density and the proposal `q` of
//! [`gfn_core::local_search::back_and_forth`], the log acceptance ratio of moving `x → x'` is
//!
//! ```text
//! Δ = f(x') − f(x) + log q(x' → x) − log q(x → x')
//! ```
//!
//! Metropolis–Hastings accepts with probability `min(1, e^Δ)`; the official code uses Barker's
//! rule `σ(Δ)` (papers.md §2.2), which also leaves the target invariant but accepts less often
//! (at most ½ when `Δ = 0`). When the GFlowNet is exact for `f`, `Δ = 0` for every move and
//! Metropolis–Hastings accepts everything (the paper's proposition).

use gfn_core::GfnRng;
use gfn_core::rng::uniform;

gfn_core::choice! {
    /// How a proposal is accepted.
    #[derive(Default)]
    pub enum AcceptRule("accept") {
        /// `min(1, e^Δ)`.
        #[default]
        MetropolisHastings = "mh",
        /// `σ(Δ) = 1 / (1 + e^{−Δ})`, as in the official code.
        Barker = "barker",
    }
}

impl AcceptRule {
    /// Log acceptance probability of a move with log ratio `delta` (`−∞` for a NaN ratio, so a
    /// broken proposal is rejected rather than accepted).
    pub fn log_accept(self, delta: f64) -> f64 {
        if delta.is_nan() {
            return f64::NEG_INFINITY;
        }
        match self {
            Self::MetropolisHastings => delta.min(0.0),
            // log σ(Δ) = −softplus(−Δ), computed stably on both sides.
            Self::Barker => {
                if delta >= 0.0 {
                    -(-delta).exp().ln_1p()
                } else {
                    delta - delta.exp().ln_1p()
                }
            }
        }
    }

    /// Draw accept/reject for each move: `accepted[i]` is true with probability
    /// `exp(log_accept(delta[i]))`.
    pub fn accept(self, delta: &[f64], rng: &mut GfnRng, accepted: &mut Vec<bool>) {
        accepted.clear();
        accepted.extend(delta.iter().map(|&d| uniform(rng).ln() < self.log_accept(d)));
    }
}

/// `Δ` of each move: `f(x') − f(x) + log q(x' → x) − log q(x → x')`.
pub fn log_ratio(f_x: &[f64], f_proposed: &[f64], log_q_forward: &[f64], log_q_reverse: &[f64]) -> Vec<f64> {
    f_x.iter()
        .zip(f_proposed)
        .zip(log_q_forward.iter().zip(log_q_reverse))
        .map(|((fx, fp), (qf, qr))| fp - fx + qr - qf)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_probabilities() {
        let mh = AcceptRule::MetropolisHastings;
        let barker = AcceptRule::Barker;
        assert_eq!(mh.log_accept(0.0), 0.0);
        assert_eq!(mh.log_accept(3.0), 0.0);
        assert_eq!(mh.log_accept(-2.0), -2.0);
        assert!((barker.log_accept(0.0) - 0.5f64.ln()).abs() < 1e-15);
        for d in [-800.0f64, -30.0, -1.0, 0.5, 40.0, 800.0] {
            let want = 1.0 / (1.0 + (-d).exp());
            let got = barker.log_accept(d).exp();
            assert!((got - want).abs() <= 1e-13 * want.max(1e-300), "{d}: {got} vs {want}");
            assert!(barker.log_accept(d) <= mh.log_accept(d));
        }
        assert_eq!(mh.log_accept(f64::NAN), f64::NEG_INFINITY);
        assert_eq!("barker".parse::<AcceptRule>().unwrap(), barker);
        assert!(
            "gibbs"
                .parse::<AcceptRule>()
                .unwrap_err()
                .to_string()
                .contains("mh or barker")
        );
    }

    #[test]
    fn accept_draws_match_their_probability() {
        let mut rng = gfn_core::rng_from_seed(5);
        let delta = vec![-1.0; 20_000];
        let mut acc = Vec::new();
        AcceptRule::MetropolisHastings.accept(&delta, &mut rng, &mut acc);
        let rate = acc.iter().filter(|&&a| a).count() as f64 / delta.len() as f64;
        // e^{-1} = 0.3679; 5 standard errors of 20,000 draws is 0.017.
        assert!((rate - (-1f64).exp()).abs() < 0.017, "{rate}");
        AcceptRule::Barker.accept(&[0.0; 4], &mut rng, &mut acc);
        assert_eq!(acc.len(), 4);
        assert_eq!(
            log_ratio(&[1.0], &[2.5], &[-3.0], &[-1.0]),
            vec![2.5 - 1.0 + (-1.0) - (-3.0)]
        );
    }
}
