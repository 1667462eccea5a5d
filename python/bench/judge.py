"""The one judge of every suite's claims, as in xtask/src/judge.rs: Welch's two-sided t-test on the
per-seed figures at level 0.05. "reproduced" when the claimed method is better with p < 0.05, "not
reproduced" when it is worse with p < 0.05, "undecided" otherwise (and always with fewer than two
seeds a side); Hedges' g is the effect size, positive in the claim's favour.

Pure Python (no SciPy): the t distribution through the regularised incomplete beta function.
"""

import math
import statistics

ALPHA = 0.05


def _beta_fraction(x, a, b):
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 301):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
                   -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _regularized_beta(x, a, b):
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def student_t_two_sided(t, df):
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _regularized_beta(df / (df + t * t), df / 2, 0.5)


def judge(claimed, other, higher_is_better=True):
    """(verdict, p, g) for "claimed is better than other" on per-seed values."""
    if len(claimed) < 2 or len(other) < 2:
        return "undecided", None, None
    na, nb = len(claimed), len(other)
    ma, mb = statistics.mean(claimed), statistics.mean(other)
    sa, sb = statistics.variance(claimed), statistics.variance(other)
    gain = ma - mb if higher_is_better else mb - ma
    va, vb = sa / na, sb / nb
    se2 = va + vb
    if se2 > 0:
        df = se2 * se2 / (va * va / (na - 1) + vb * vb / (nb - 1))
        p = student_t_two_sided(gain / math.sqrt(se2), df)
    else:
        p = 1.0 if gain == 0 else 0.0
    pooled = ((na - 1) * sa + (nb - 1) * sb) / (na + nb - 2)
    g = gain / math.sqrt(pooled) * (1 - 3 / (4 * (na + nb) - 9)) if pooled > 0 else None
    if p >= ALPHA:
        verdict = "undecided"
    else:
        verdict = "reproduced" if gain > 0 else "not reproduced"
    return verdict, p, g


def detail(p, g):
    """`p = 0.012, g = 2.31` as xtask writes it."""
    if p is None:
        return "fewer than two seeds a side"
    ps = "p < 0.001" if p < 1e-3 else f"p = {p:.3f}"
    return ps if g is None else f"{ps}, g = {g:.2f}"


if __name__ == "__main__":
    # The worked example of xtask/src/judge.rs.
    v, p, g = judge([3, 4, 5, 6, 7], [1, 2, 3, 4])
    assert v == "reproduced" and abs(p - 0.03494) < 1e-4 and abs(g - 1.5181) < 1e-3, (v, p, g)
    assert abs(student_t_two_sided(2.2281, 10) - 0.05) < 2e-5
    assert judge([1.0], [5.0])[0] == "undecided"
    print("judge.py: ok")
