"""Exact evaluation of a hypergrid forward policy, shared by the peer drivers.

Pure numpy (float64), no deep-learning framework: torchgfn_hypergrid.py and
gfnx_hypergrid.py both import it (each puts its own directory on sys.path), run
their policy network on `HypergridExact.coords` and hand the raw outputs to
`terminating_distribution`, so both libraries are scored by the same code.

Conventions (the same as both libraries' hypergrid environments):
- a state is x in {0..H-1}^d; state index = sum_i x_i * H^i (coordinate 0 least
  significant), so the forward move "increment coordinate i" adds H^i;
- forward actions 0..d-1 increment a coordinate (valid when x_i < H-1), action
  d exits (always valid); the network outputs d+1 logits in that order;
- reward R(x) = R0 + R1 * prod_i 1[0.25 < a_i] + R2 * prod_i 1[0.3 < a_i < 0.4]
  with a_i = |x_i/(H-1) - 0.5|; target p*(x) = R(x) / Z.

See benches/peers/README.md.
"""

import math

import numpy as np


class HypergridExact:
    """Exact P_T of a forward policy over all H^d states, and its distance to p*.

    The DP runs level by level (level = sum of coordinates, a topological order
    of the DAG) and is vectorised within a level.
    """

    def __init__(self, ndim, height, r0, r1, r2):
        self.H = H = int(height)
        self.d = d = int(ndim)
        self.n = n = H ** d
        idx = np.arange(n, dtype=np.int64)
        self.strides = H ** np.arange(d, dtype=np.int64)  # H^i
        self.coords = (idx[:, None] // self.strides[None, :]) % H  # [n, d] int64
        # Valid forward actions: increment i when x_i < H-1; exit always valid.
        self.valid = np.concatenate(
            [self.coords < H - 1, np.ones((n, 1), dtype=bool)], axis=1
        )
        self.levels = [
            np.nonzero(self.coords.sum(1) == k)[0] for k in range(d * (H - 1) + 1)
        ]
        self.reward = hypergrid_reward(self.coords, H, r0, r1, r2)
        self.Z = float(self.reward.sum())
        self.target = self.reward / self.Z
        self.log_z_true = math.log(self.Z)

    def check_reward(self, other, library, rtol=1e-5, atol=1e-6):
        """Raise if a library's reward over `self.coords` differs from ours."""
        other = np.asarray(other, dtype=np.float64).reshape(-1)
        if other.shape != self.reward.shape or not np.allclose(
            other, self.reward, rtol=rtol, atol=atol
        ):
            raise RuntimeError(f"reward mismatch between driver and {library}")

    def log_policy(self, logits):
        """Masked log-softmax of raw forward outputs [n, d+1] (float64)."""
        x = np.where(self.valid, np.asarray(logits, dtype=np.float64), -np.inf)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    def terminating_distribution(self, logits):
        """logits: [n, d+1] raw network outputs for every state (any float dtype).

        u(s0) = 1, u(child) += u(s) * P_F(child | s); P_T(x) = u(x) * P_F(exit | x).
        """
        p = np.exp(self.log_policy(logits))  # exactly 0 on invalid actions
        u = np.zeros(self.n, dtype=np.float64)
        u[0] = 1.0
        for lvl in self.levels[1:]:
            acc = np.zeros(len(lvl), dtype=np.float64)
            c = self.coords[lvl]
            for i in range(self.d):
                has = c[:, i] > 0
                child = lvl[has]
                parent = child - self.strides[i]
                acc[has] += u[parent] * p[parent, i]
            u[lvl] = acc
        return u * p[:, self.d]

    def metrics(self, pt):
        """l1_sum, tv, l1_mean, jsd (natural log) and kl = KL(p* || P_T)."""
        q = self.target
        l1 = float(np.abs(pt - q).sum())
        m = 0.5 * (pt + q)
        return {
            "l1_sum": l1,
            "tv": l1 / 2.0,
            "l1_mean": l1 / self.n,
            "jsd": 0.5 * _kl(pt, m) + 0.5 * _kl(q, m),
            "kl": _kl(q, pt),
        }

    def evaluate_logits(self, logits):
        """terminating_distribution + metrics in one call."""
        return self.metrics(self.terminating_distribution(logits))


def hypergrid_reward(coords, height, r0, r1, r2):
    """The "original" hypergrid reward of every row of coords [n, d], float64."""
    ax = np.abs(np.asarray(coords) / (height - 1) - 0.5)
    return (
        r0
        + r1 * np.prod(ax > 0.25, axis=1)
        + r2 * np.prod((ax > 0.3) & (ax < 0.4), axis=1)
    ).astype(np.float64)


def log_sum_exp_valid(row, valid):
    """log sum_a exp(row[a]) over the valid entries (FM's log out-flow of a state)."""
    row = np.where(valid, np.asarray(row, dtype=np.float64), -np.inf)
    mx = row.max()
    return float(mx + np.log(np.exp(row - mx).sum()))


def _kl(a, b):
    mask = a > 0
    return float(
        np.sum(a[mask] * (np.log(a[mask]) - np.log(np.maximum(b[mask], 1e-300))))
    )
