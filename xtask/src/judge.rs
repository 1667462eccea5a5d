//! The one statistical judge of every suite's claims.
//!
//! **Rule.** A claim "A is better than B on figure F" is judged on the per-seed values of F of the
//! two methods with Welch's two-sided t-test at level [`ALPHA`] (no equal-variance assumption):
//! *reproduced* when A is better and p < α, *not reproduced* when A is worse and p < α, and
//! *undecided* otherwise — also whenever a side has fewer than two seeds (no spread to test
//! against). The effect size reported beside it is Hedges' g: the difference of the means over
//! the pooled sample standard deviation with the small-sample correction, signed so that a
//! positive g favours the claim.
//!
//! A claim made over several settings (tasks, grid sizes) is summarised by [`overall`].

use crate::report::Stats;

/// The test's level: two-sided p below this decides a comparison.
pub const ALPHA: f64 = 0.05;

/// The rule in one sentence, for the documents that quote verdicts.
pub const RULE: &str = "Each comparison is judged by one rule, the same in every suite: Welch's two-sided t-test on \
     the per-seed figures at level 0.05 — **reproduced** when the claimed method is better with p < 0.05, \
     **not reproduced** when it is worse with p < 0.05, **undecided** otherwise (and always with fewer than two \
     seeds a side); g is Hedges' effect size, positive in the claim's favour.";

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Larger values are better (rewards, modes found, cosines).
    Higher,
    /// Smaller values are better (L1, TV, NLL).
    Lower,
}

impl Better {
    /// "higher" or "lower".
    pub fn word(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// The outcome of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The claimed method is better, p < α.
    Reproduced,
    /// The claimed method is worse, p < α.
    NotReproduced,
    /// p ≥ α, or fewer than two seeds on a side.
    Undecided,
}

impl Verdict {
    /// The word in the claims tables.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced => "not reproduced",
            Verdict::Undecided => "undecided",
        }
    }
}

/// One judged comparison.
#[derive(Debug, Clone, Copy)]
pub struct Judgement {
    /// The verdict by the rule.
    pub verdict: Verdict,
    /// Two-sided p-value of Welch's test; `None` with fewer than two seeds a side.
    pub p: Option<f64>,
    /// Hedges' g, positive when the claimed method is better; `None` when it is undefined (fewer
    /// than two seeds a side, or no spread at all).
    pub g: Option<f64>,
}

impl Judgement {
    /// `p = 0.012, g = 2.31` (or `one seed a side`).
    pub fn detail(&self) -> String {
        match (self.p, self.g) {
            (None, _) => "fewer than two seeds a side".into(),
            (Some(p), Some(g)) => format!("{}, g = {g:.2}", fmt_p(p)),
            (Some(p), None) => fmt_p(p),
        }
    }
}

/// `p = 0.012`, or `p < 0.001`.
fn fmt_p(p: f64) -> String {
    if p < 1e-3 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

/// Judges "`claimed` is better than `other`" (each the statistics of one method's per-seed
/// values) by the rule of this module.
pub fn judge(claimed: &Stats, other: &Stats, better: Better) -> Judgement {
    let undecided = Judgement {
        verdict: Verdict::Undecided,
        p: None,
        g: None,
    };
    if claimed.n < 2 || other.n < 2 {
        return undecided;
    }
    let gain = match better {
        Better::Higher => claimed.mean - other.mean,
        Better::Lower => other.mean - claimed.mean,
    };
    let (na, nb) = (claimed.n as f64, other.n as f64);
    let (va, vb) = (claimed.std.powi(2) / na, other.std.powi(2) / nb);
    let se2 = va + vb;
    let p = if se2 > 0.0 {
        let t = gain / se2.sqrt();
        // Welch–Satterthwaite degrees of freedom.
        let df = se2 * se2 / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
        student_t_two_sided(t, df)
    } else if gain == 0.0 {
        1.0
    } else {
        // Every seed of each side gave the same value, and the two values differ.
        0.0
    };
    let pooled = ((na - 1.0) * claimed.std.powi(2) + (nb - 1.0) * other.std.powi(2)) / (na + nb - 2.0);
    let g = (pooled > 0.0).then(|| {
        let correction = 1.0 - 3.0 / (4.0 * (na + nb) - 9.0);
        gain / pooled.sqrt() * correction
    });
    let verdict = if p >= ALPHA {
        Verdict::Undecided
    } else if gain > 0.0 {
        Verdict::Reproduced
    } else {
        Verdict::NotReproduced
    };
    Judgement { verdict, p: Some(p), g }
}

/// One headline word for a claim judged over several settings: "reproduced" (every comparison
/// reproduced), "not reproduced" (none reproduced, some not reproduced), "undecided" (all
/// undecided), "partly reproduced" (some reproduced, none not reproduced), "mixed" (some of
/// each); "no data" without a comparison.
pub fn overall(verdicts: &[Verdict]) -> &'static str {
    let count = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count();
    let n = verdicts.len();
    let (yes, no) = (count(Verdict::Reproduced), count(Verdict::NotReproduced));
    if n == 0 {
        "no data"
    } else if yes == n {
        "reproduced"
    } else if yes == 0 && no > 0 {
        "not reproduced"
    } else if yes == 0 {
        "undecided"
    } else if no == 0 {
        "partly reproduced"
    } else {
        "mixed"
    }
}

/// `reproduced in 2 of 4, not reproduced in 1, undecided in 1`.
pub fn tally(verdicts: &[Verdict]) -> String {
    let count = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count();
    format!(
        "reproduced in {} of {}, not reproduced in {}, undecided in {}",
        count(Verdict::Reproduced),
        verdicts.len(),
        count(Verdict::NotReproduced),
        count(Verdict::Undecided)
    )
}

/// Two-sided p-value of Student's t distribution with `df` degrees of freedom:
/// P(|T| ≥ |t|) = I_{df/(df+t²)}(df/2, 1/2).
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    regularized_beta(df / (df + t * t), 0.5 * df, 0.5)
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz's method)
/// on the side where it converges fast.
fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for aa in [
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ] {
            d = 1.0 + aa * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + aa / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0: shifted up to z ≥ 15 by Γ(x) = Γ(x + n) / (x (x + 1) … (x + n − 1)), then
/// Stirling's series to the z⁻⁹ term (error below 1e−15 there).
fn ln_gamma(x: f64) -> f64 {
    let mut z = x;
    let mut shift = 0.0;
    while z < 15.0 {
        shift += z.ln();
        z += 1.0;
    }
    let r = 1.0 / (z * z);
    let series = (1.0 / 12.0 - r * (1.0 / 360.0 - r * (1.0 / 1260.0 - r * (1.0 / 1680.0 - r / 1188.0)))) / z;
    (z - 0.5) * z.ln() - z + 0.5 * (2.0 * std::f64::consts::PI).ln() + series - shift
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(v: &[f64]) -> Stats {
        Stats::of(v).unwrap()
    }

    #[test]
    fn student_t_matches_tables() {
        // Two-sided 5% critical values: df 1 → 12.706, 2 → 4.303, 10 → 2.228, 30 → 2.042.
        for (t, df) in [(12.7062, 1.0), (4.3027, 2.0), (2.2281, 10.0), (2.0423, 30.0)] {
            let p = student_t_two_sided(t, df);
            assert!((p - 0.05).abs() < 2e-5, "t {t}, df {df}: p {p}");
        }
        // 1% critical value at df 5: 4.0321; p(t = 0) = 1; symmetric in t.
        assert!((student_t_two_sided(4.0321, 5.0) - 0.01).abs() < 2e-6);
        assert_eq!(student_t_two_sided(0.0, 7.0), 1.0);
        assert_eq!(student_t_two_sided(-2.5, 3.3), student_t_two_sided(2.5, 3.3));
        // df = 1 is the Cauchy distribution: P(|T| ≥ 1) = 1/2.
        assert!((student_t_two_sided(1.0, 1.0) - 0.5).abs() < 1e-12);
        // Non-integer df (Welch): df 2.5, t 3 → 0.07258 (the density integrated numerically).
        assert!((student_t_two_sided(3.0, 2.5) - 0.07258).abs() < 1e-4);
    }

    #[test]
    fn welch_matches_a_worked_example() {
        // a = [1, 2, 3, 4], b = [3, 4, 5, 6, 7]: t = 2.6112, Welch df 6.9808, p = 0.03494 (the
        // t density integrated numerically).
        let j = judge(
            &stats(&[3.0, 4.0, 5.0, 6.0, 7.0]),
            &stats(&[1.0, 2.0, 3.0, 4.0]),
            Better::Higher,
        );
        assert_eq!(j.verdict, Verdict::Reproduced);
        assert!((j.p.unwrap() - 0.03494).abs() < 1e-4, "{j:?}");
        // Hedges' g: diff 2.5 / pooled sd 1.4639 × (1 − 3/27) = 1.5181.
        assert!((j.g.unwrap() - 1.5181).abs() < 1e-3, "{j:?}");
        // The same values with "lower is better" contradict the claim.
        let j = judge(
            &stats(&[3.0, 4.0, 5.0, 6.0, 7.0]),
            &stats(&[1.0, 2.0, 3.0, 4.0]),
            Better::Lower,
        );
        assert_eq!(j.verdict, Verdict::NotReproduced);
        assert!(j.g.unwrap() < 0.0);
    }

    #[test]
    fn undecided_without_evidence() {
        let a = stats(&[1.0, 1.2, 0.9]);
        // Overlapping seeds: p far above 0.05.
        assert_eq!(
            judge(&a, &stats(&[1.05, 1.15, 0.95]), Better::Higher).verdict,
            Verdict::Undecided
        );
        // One seed a side: no test.
        let one = judge(&stats(&[100.0]), &stats(&[1.0]), Better::Higher);
        assert_eq!(one.verdict, Verdict::Undecided);
        assert!(one.p.is_none());
        // A clear gap with three seeds a side is decided.
        assert_eq!(
            judge(&stats(&[5.0, 5.1, 4.9]), &a, Better::Higher).verdict,
            Verdict::Reproduced
        );
        // Constant seeds on both sides: decided by the direction alone.
        assert_eq!(
            judge(&stats(&[2.0, 2.0]), &stats(&[3.0, 3.0]), Better::Lower).verdict,
            Verdict::Reproduced
        );
        assert_eq!(
            judge(&stats(&[2.0, 2.0]), &stats(&[2.0, 2.0]), Better::Lower).verdict,
            Verdict::Undecided
        );
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        // Γ(1) = Γ(2) = 1, Γ(1/2) = √π, Γ(5) = 24, Γ(3.5) = 15√π/8.
        let pi = std::f64::consts::PI;
        for (x, want) in [
            (1.0, 0.0),
            (2.0, 0.0),
            (0.5, 0.5 * pi.ln()),
            (5.0, 24f64.ln()),
            (3.5, (15.0 * pi.sqrt() / 8.0).ln()),
        ] {
            assert!((ln_gamma(x) - want).abs() < 1e-13, "x {x}: {} vs {want}", ln_gamma(x));
        }
    }

    #[test]
    fn overall_words() {
        use Verdict::*;
        assert_eq!(overall(&[Reproduced, Reproduced]), "reproduced");
        assert_eq!(overall(&[Reproduced, Undecided]), "partly reproduced");
        assert_eq!(overall(&[Reproduced, NotReproduced]), "mixed");
        assert_eq!(overall(&[Undecided, NotReproduced]), "not reproduced");
        assert_eq!(overall(&[Undecided, Undecided]), "undecided");
        assert_eq!(overall(&[]), "no data");
        assert_eq!(
            tally(&[Reproduced, Undecided, NotReproduced]),
            "reproduced in 1 of 3, not reproduced in 1, undecided in 1"
        );
    }
}
