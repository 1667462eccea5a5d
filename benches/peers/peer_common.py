"""Output helpers shared by the peer drivers: the single strict-JSON line, peak memory,
package versions."""

import argparse
import json
import math
import resource


def peak_rss_mb():
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result, stdout):
    """The single JSON line on the real stdout (strict JSON: non-finite -> null)."""
    stdout.write(json.dumps(finite_or_null(result), allow_nan=False) + "\n")
    stdout.flush()


def finite_or_null(x):
    """Strict JSON: a diverged run's NaN / inf metrics become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_or_null(v) for v in x]
    return x


def dist_version(name):
    """Installed version of a distribution, or None."""
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def parse_args(description, argv=None):
    """The flags both drivers share (the same as `gfn train`'s), validated."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ndim", type=int, default=4)
    p.add_argument("--height", type=int, default=8)
    p.add_argument("--r0", type=float, default=0.1)
    p.add_argument("--r1", type=float, default=0.5)
    p.add_argument("--r2", type=float, default=2.0)
    p.add_argument("--loss", choices=["tb", "db", "subtb", "fm"], default="tb")
    p.add_argument("--lambda", dest="lamda", type=float, default=0.9,
                   help="SubTB lambda (geometric weighting within each trajectory)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--iterations", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-logz", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--epsilon", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of the library")
    p.add_argument("--sample-only", action="store_true",
                   help="no training: time --rounds rounds of forward sampling of "
                        "--batch-size trajectories with the untrained policy")
    p.add_argument("--rounds", type=int, default=20,
                   help="timed sampling rounds of --sample-only (after 2 warm-up rounds)")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.batch_size < 1 or args.eval_every < 1:
        p.error("--iterations, --batch-size and --eval-every must be >= 1")
    if args.height < 2 or args.ndim < 1:
        p.error("--height must be >= 2 and --ndim >= 1")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.temperature <= 0:
        p.error("--temperature must be > 0")
    return args


def config_dict(args):
    return {
        "ndim": args.ndim,
        "height": args.height,
        "r0": args.r0,
        "r1": args.r1,
        "r2": args.r2,
        "loss": args.loss,
        "lambda": args.lamda,
        "batch_size": args.batch_size,
        "iterations": args.iterations,
        "seed": args.seed,
        "lr": args.lr,
        "lr_logz": args.lr_logz,
        "hidden": args.hidden,
        "layers": args.layers,
        "eval_every": args.eval_every,
        "epsilon": args.epsilon,
        "temperature": args.temperature,
        "threads": args.threads,
    }


def training_result(library, versions, args, evals, wall, compile_seconds, cpu, log_z_true):
    """The JSON record of a training run: speeds (steady state, compile apart), every
    evaluation, the final one, and the mean exact L1 of the last five."""
    iterations = args.iterations
    trajectories_n = iterations * args.batch_size
    final = dict(evals[-1])
    final["log_z_true"] = log_z_true
    last5 = evals[-5:]
    return {
        "library": library,
        "versions": versions,
        "config": config_dict(args),
        "iterations": iterations,
        "trajectories": trajectories_n,
        "wall_seconds": wall,
        "compile_seconds": compile_seconds,
        "cpu_seconds": cpu,
        "iterations_per_second": iterations / wall if wall > 0 else None,
        "trajectories_per_second": trajectories_n / wall if wall > 0 else None,
        "ms_per_iteration": 1000.0 * wall / iterations,
        "evals": evals,
        "final": final,
        "quality_l1_sum_last5": sum(e["l1_sum"] for e in last5) / len(last5),
        "peak_rss_mb": peak_rss_mb(),
    }
