#!/usr/bin/env python3
"""Train a hypergrid GFlowNet with torchgfn 2.4.1 and print one JSON line.

Peer driver for `cargo xtask bench hypergrid --vs torchgfn`. It follows the
recipe of torchgfn's own `tutorials/examples/train_hypergrid.py` (the
trajectory-balance paper's hypergrid set-up): K-hot input, an MLP policy whose
trunk is shared by P_B (and by log F for DB/SubTB), Adam with one learning rate
for the networks and another for log Z, on-policy sampling.

Quality is measured exactly, not by sampling: every `--eval-every` iterations
(and at the end) the terminating distribution P_T of the current forward
policy is computed over all H^d states by dynamic programming in float64 and
compared with p*(x) = R(x)/Z (hypergrid_exact.py, shared with
gfnx_hypergrid.py). Evaluations are not timed.

`--sample-only --rounds N` trains nothing: it times N rounds of forward sampling
of --batch-size trajectories with the untrained policy, without gradients.

stdout carries exactly one line of JSON; everything else goes to stderr.
See benches/peers/README.md.
"""

import os
import platform
import random
import sys
import time

# Keep stdout for the single JSON line: anything a library prints goes to stderr.
_REAL_STDOUT = sys.stdout
sys.stdout = sys.stderr

import numpy as np  # noqa: E402
import torch  # noqa: E402

import gfn  # noqa: E402
from gfn.estimators import DiscretePolicyEstimator, ScalarEstimator  # noqa: E402
from gfn.gflownet import (  # noqa: E402
    DBGFlowNet,
    FMGFlowNet,
    SubTBGFlowNet,
    TBGFlowNet,
)
from gfn.gym import HyperGrid  # noqa: E402
from gfn.preprocessors import KHotPreprocessor  # noqa: E402
from gfn.utils.modules import MLP  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hypergrid_exact import HypergridExact, log_sum_exp_valid  # noqa: E402
import peer_common  # noqa: E402
from peer_common import dist_version, peak_rss_mb  # noqa: E402


def parse_args(argv=None):
    return peer_common.parse_args(__doc__.splitlines()[0], argv)


config_dict = peer_common.config_dict


# --------------------------------------------------------------------------
# Model construction (torchgfn API, as in tutorials/examples/train_hypergrid.py)
# --------------------------------------------------------------------------

def build_gflownet(args, env, preprocessor):
    """Returns (gflownet, policy_estimator) where policy_estimator gives P_F logits."""
    if args.loss == "fm":
        # FM: a DiscretePolicyEstimator whose outputs are log edge flows; the
        # sampling policy is their masked softmax.
        module = MLP(
            input_dim=preprocessor.output_dim,
            output_dim=env.n_actions,
            hidden_dim=args.hidden,
            n_hidden_layers=args.layers,
        )
        logF = DiscretePolicyEstimator(
            module=module, n_actions=env.n_actions, preprocessor=preprocessor
        )
        return FMGFlowNet(logF), logF

    pf_module = MLP(
        input_dim=preprocessor.output_dim,
        output_dim=env.n_actions,
        hidden_dim=args.hidden,
        n_hidden_layers=args.layers,
    )
    # P_B learned, sharing P_F's trunk ("tied"); only its last layer is its own.
    pb_module = MLP(
        input_dim=preprocessor.output_dim,
        output_dim=env.n_actions - 1,
        hidden_dim=args.hidden,
        n_hidden_layers=args.layers,
        trunk=pf_module.trunk,
    )
    pf = DiscretePolicyEstimator(
        module=pf_module, n_actions=env.n_actions, preprocessor=preprocessor
    )
    pb = DiscretePolicyEstimator(
        module=pb_module,
        n_actions=env.n_actions,
        is_backward=True,
        preprocessor=preprocessor,
    )
    if args.loss == "tb":
        return TBGFlowNet(pf=pf, pb=pb, init_logZ=0.0), pf

    # log F(s) as a ScalarEstimator, sharing the same trunk.
    logF_module = MLP(
        input_dim=preprocessor.output_dim,
        output_dim=1,
        hidden_dim=args.hidden,
        n_hidden_layers=args.layers,
        trunk=pf_module.trunk,
    )
    logF = ScalarEstimator(module=logF_module, preprocessor=preprocessor)
    if args.loss == "db":
        return DBGFlowNet(pf=pf, pb=pb, logF=logF), pf
    return (
        SubTBGFlowNet(
            pf=pf, pb=pb, logF=logF, weighting="geometric_within", lamda=args.lamda
        ),
        pf,
    )


def build_optimizer(args, gflownet):
    # named_parameters() deduplicates the shared trunk. Only TB has a logZ.
    named = dict(gflownet.named_parameters())
    logz = [v for k, v in named.items() if k == "logZ"]
    others = [v for k, v in named.items() if k != "logZ"]
    groups = [{"params": others, "lr": args.lr}]
    if logz:
        groups.append({"params": logz, "lr": args.lr_logz})
    return torch.optim.Adam(groups)


# --------------------------------------------------------------------------
# Exact evaluation (numpy part shared with gfnx_hypergrid.py: hypergrid_exact.py)
# --------------------------------------------------------------------------

class ExactEvaluator(HypergridExact):
    """HypergridExact plus the torchgfn States of every grid point.

    Checks the driver's reward against torchgfn's own `HyperGrid.reward` (float32,
    with a small eps) on all states.
    """

    def __init__(self, args, env):
        super().__init__(args.ndim, args.height, args.r0, args.r1, args.r2)
        self.states = env.States(torch.as_tensor(self.coords, dtype=torch.long))
        self.check_reward(env.reward(self.states).detach().double().numpy(), "torchgfn HyperGrid")


@torch.no_grad()
def evaluate(args, env, gflownet, policy, evaluator):
    logits = policy(evaluator.states).double().numpy()  # raw module outputs
    pt = evaluator.terminating_distribution(logits)
    out = evaluator.metrics(pt)
    if args.loss == "tb":
        log_z = float(gflownet.logZ.detach().double().item())
    elif args.loss in ("db", "subtb"):
        s0 = env.reset(batch_shape=(1,))
        log_z = float(gflownet.logF(s0).double().reshape(-1)[0].item())
    else:  # fm: log of the total out-flow of s0 (all edges, exit included)
        log_z = log_sum_exp_valid(logits[0], evaluator.valid[0])
    out["log_z_learned"] = log_z
    return out


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    env = HyperGrid(
        ndim=args.ndim,
        height=args.height,
        reward_fn_str="original",
        reward_fn_kwargs={"R0": args.r0, "R1": args.r1, "R2": args.r2},
        device="cpu",
        calculate_partition=False,
        store_all_states=False,
        debug=False,
    )
    preprocessor = KHotPreprocessor(height=args.height, ndim=args.ndim)
    gflownet, policy = build_gflownet(args, env, preprocessor)
    if args.sample_only:
        return sample_only(args, env, gflownet)
    optimizer = build_optimizer(args, gflownet)
    evaluator = ExactEvaluator(args, env)

    on_policy = args.epsilon == 0.0 and args.temperature == 1.0
    # SubTB with geometric weighting needs a sum (torchgfn coerces mean to sum;
    # the example passes "sum" explicitly).
    reduction = "sum" if args.loss == "subtb" else "mean"

    evals = []
    wall = 0.0
    cpu = 0.0
    for it in range(1, args.iterations + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        trajectories = gflownet.sample_trajectories(
            env,
            n=args.batch_size,
            save_logprobs=on_policy,
            save_estimator_outputs=not on_policy,
            epsilon=args.epsilon,
            temperature=args.temperature,
        )
        training_samples = gflownet.to_training_samples(trajectories)
        optimizer.zero_grad()
        loss = gflownet.loss(
            env,
            training_samples,
            recalculate_all_logprobs=not on_policy,
            reduction=reduction,
        )
        loss.backward()
        optimizer.step()
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0

        if it % args.eval_every == 0 or it == args.iterations:
            e = {"iteration": it, "wall_seconds": wall}
            e.update(evaluate(args, env, gflownet, policy, evaluator))
            evals.append(e)
            print(
                f"iter {it} loss {loss.item():.4f} l1 {e['l1_sum']:.4f} "
                f"logZ {e['log_z_learned']:.4f} (true {evaluator.log_z_true:.4f}) "
                f"train {wall:.1f}s",
                file=sys.stderr,
            )

    # Eager PyTorch: nothing is compiled.
    emit(peer_common.training_result(
        "torchgfn", versions(), args, evals, wall, 0.0, cpu, evaluator.log_z_true
    ))


def sample_only(args, env, gflownet):
    """Time --rounds rounds of forward sampling (no gradients) of the untrained policy.

    The gflownet.sample_trajectories path with save_logprobs=False, as
    `sample_terminating_states` does; two untimed warm-up rounds first.
    """
    def one_round():
        with torch.no_grad():
            return gflownet.sample_trajectories(
                env,
                n=args.batch_size,
                save_logprobs=False,
                save_estimator_outputs=False,
                epsilon=args.epsilon,
                temperature=args.temperature,
            )

    for _ in range(2):  # warm-up, not timed
        one_round()
    wall = 0.0
    cpu = 0.0
    steps = 0
    for _ in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        trajectories = one_round()
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        # Actions per trajectory, the exit action included.
        steps += int(trajectories.terminating_idx.sum().item())
    n = args.rounds * args.batch_size
    emit({
        "library": "torchgfn",
        "versions": versions(),
        "config": config_dict(args),
        "mode": "sample",
        "rounds": args.rounds,
        "trajectories": n,
        "wall_seconds": wall,
        "compile_seconds": 0.0,
        "cpu_seconds": cpu,
        "trajectories_per_second": n / wall if wall > 0 else None,
        "mean_length": steps / n,
        "peak_rss_mb": peak_rss_mb(),
    })


def versions():
    return {
        "torchgfn": getattr(gfn, "__version__", None) or dist_version("torchgfn"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def emit(result):
    peer_common.emit(result, _REAL_STDOUT)


if __name__ == "__main__":
    main()
