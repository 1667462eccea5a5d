"""Python-driven training against the `gfn` command and torchgfn, side by side in one run, and
the cost of a Python reward callback: raw records to docs/results/python-speed/runs.jsonl, a table
rendered from them alone.

    python python/bench/speed.py run       # 3 rounds, interleaved
    python python/bench/speed.py render

Hypergrid 4x8, TB, batch 16, MLP 2x256, one intra-op thread. Speeds are training iterations per
second without evaluations: the `gfn` command's summary (`iterations_per_second`, its training
steps' wall time), the Python loop `for _ in range(n): t.step()` timed around the loop, and
torchgfn's driver of `cargo xtask bench hypergrid` (benches/peers/torchgfn_hypergrid.py).
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "results" / "python-speed"
GFN = os.environ.get("GFN_BIN", str(ROOT / "target" / "release" / "gfn"))
TORCHGFN = ROOT / "target" / "peers" / "torchgfn-venv" / "bin" / "python"
ENV = {**os.environ, "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TASK = dict(env="hypergrid", ndim=4, height=8, loss="tb", batch_size=16)


def commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()


def cli(n):
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / "run"
        args = [GFN, "train", "--out", out, "--iterations", n, "--eval-every", n]
        for k, v in TASK.items():
            args += ["--" + k.replace("_", "-"), v]
        subprocess.run(list(map(str, args)), check=True, capture_output=True, env=ENV)
        s = json.loads((out / "summary.json").read_text())
        return {"iterations": n, "iterations_per_second": s["iterations_per_second"],
                "wall_seconds": s["wall_seconds"]}


def python_loop(n):
    import gfnrs

    t = gfnrs.Trainer(**TASK, iterations=n, eval_every=n)
    t0 = time.perf_counter()
    for _ in range(n):
        t.step()
    wall = time.perf_counter() - t0
    return {"iterations": n, "iterations_per_second": n / wall, "wall_seconds": wall}


def torchgfn(n):
    args = [TORCHGFN, ROOT / "benches" / "peers" / "torchgfn_hypergrid.py", "--ndim", 4, "--height", 8,
            "--loss", "tb", "--batch-size", 16, "--iterations", n, "--eval-every", n]
    out = subprocess.run(list(map(str, args)), check=True, capture_output=True, text=True, env=ENV)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"iterations": n, "iterations_per_second": r["iterations_per_second"],
            "wall_seconds": r["wall_seconds"], "versions": r.get("versions")}


def callback_cost(n_steps, batch):
    """A trivial Python reward on sequences of 8 tokens over 4 symbols: the Rust side's time per
    call (attach, array, call, conversion) minus the time inside the function's body."""
    import gfnrs

    body = {"seconds": 0.0}

    def log_reward(x):
        t0 = time.perf_counter()
        r = np.zeros(len(x))
        body["seconds"] += time.perf_counter() - t0
        return r

    env = gfnrs.Sequence(4, 8, log_reward)
    t = gfnrs.Trainer(env, loss="tb", batch_size=batch, iterations=n_steps)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        t.step()
    wall = time.perf_counter() - t0
    calls = env.reward_calls
    return {"batch_size": batch, "calls": calls, "rust_side_seconds_per_call": env.reward_seconds / calls,
            "body_seconds_per_call": body["seconds"] / calls,
            "overhead_seconds_per_call": (env.reward_seconds - body["seconds"]) / calls,
            "step_seconds": wall / n_steps}


def run(rounds):
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"commit": commit(), "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                            "cpus": os.cpu_count(), "python": platform.python_version()}}
    with open(OUT / "runs.jsonl", "w") as f:
        for r in range(rounds):
            for name, fn, n in [("gfn", cli, 5000), ("gfnrs", python_loop, 5000), ("torchgfn", torchgfn, 500)]:
                rec = {"kind": "hypergrid-4x8-tb-b16", "round": r, "driver": name, **meta, **fn(n)}
                print(json.dumps(rec), flush=True)
                f.write(json.dumps(rec) + "\n")
            for batch in (16, 256):
                rec = {"kind": "reward-callback", "round": r, **meta, **callback_cost(500, batch)}
                print(json.dumps(rec), flush=True)
                f.write(json.dumps(rec) + "\n")
    render()


def render():
    recs = [json.loads(l) for l in (OUT / "runs.jsonl").read_text().splitlines() if l.strip()]
    speed = {}
    for r in recs:
        if r["kind"] == "hypergrid-4x8-tb-b16":
            speed.setdefault(r["driver"], []).append(r["iterations_per_second"])
    med = {k: statistics.median(v) for k, v in speed.items()}
    lines = [
        f"Hypergrid 4×8, TB, batch 16, MLP 2×256, one thread; {len(speed.get('gfn', []))} interleaved rounds, "
        f"medians; commit {recs[0]['commit']}, {recs[0]['machine']['processor'] or recs[0]['machine']['platform']}; "
        "command `python python/bench/speed.py run` (records: `docs/results/python-speed/runs.jsonl`).",
        "",
        "| driver | iterations/s (median) | every round | against the gfn command | against torchgfn |",
        "|---|---|---|---|---|",
    ]
    for k in ("gfn", "gfnrs", "torchgfn"):
        if k in med:
            lines.append(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in speed[k])} | "
                         f"{med[k] / med['gfn']:.3f} | {med[k] / med['torchgfn']:.1f}× |")
    lines += ["", "Cost of one reward callback (a trivial numpy reward on 8-token sequences; seconds per call, medians):", "",
              "| batch | Rust side per call | inside the function | overhead per call | step |", "|---|---|---|---|---|"]
    for batch in (16, 256):
        rs = [r for r in recs if r["kind"] == "reward-callback" and r["batch_size"] == batch]
        if rs:
            m = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
            lines.append(f"| {batch} | {m('rust_side_seconds_per_call') * 1e6:.1f} µs | {m('body_seconds_per_call') * 1e6:.1f} µs | "
                         f"{m('overhead_seconds_per_call') * 1e6:.1f} µs | {m('step_seconds') * 1e3:.2f} ms |")
    body = "\n".join(lines) + "\n"
    sys.path.insert(0, str(ROOT / "python" / "bench"))
    import docs
    from tasks import splice

    docs.write(OUT / "results.md", body)
    results = ROOT / "docs" / "RESULTS.md"
    docs.write(results, splice(results.read_text(), "python-speed", body))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--rounds", type=int, default=3)
    sub.add_parser("render")
    a = p.parse_args()
    run(a.rounds) if a.cmd == "run" else render()


if __name__ == "__main__":
    main()
