#!/usr/bin/env python3
"""Bad-input sweep of `gfn train`: every option of `gfn train --help`, on built-in tasks, with
values that should be refused (nan, inf, -1) and sizes that stress the checks (0, 2^32 + 1, 1e8).

Each case is classified:
  clean error     exit 2 with one `error:` line (a usage error naming the problem)
  accepted        exit 0 on a value that may be valid (0, a large size, a negative where the
                  option allows one)
  stopped         exit 1 naming the iteration (training stopped on a non-finite loss)
  silent accept   exit 0 on nan, inf or a negative value the option does not allow: the value was
                  stored or ignored instead of refused
  panic           exit 101 or `panicked` in stderr
  memory          killed, or an allocation failure, under the memory ceiling (ulimit -v)
  timeout         still running after --timeout seconds
  other           any other exit

Usage (after `cargo build --release -p gfn-cli`):
    python3 benches/cli_fuzz.py                       # every task, about an hour on one core
    python3 benches/cli_fuzz.py --quick               # one small task (CI: a minute or two)
    python3 benches/cli_fuzz.py --binary PATH --out DIR --jobs 2 --memory-ceiling-mb 4000

Writes OUT/results.jsonl (every case) and OUT/summary.json (the counts); prints the counts and
every silent accept, panic, memory and timeout case; exits 1 if there is any.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENVS = {
    "hypergrid": ["--env", "hypergrid", "--ndim", "2", "--height", "4", "--hidden", "16"],
    "bag": ["--env", "bag", "--hidden", "16"],
    "set": ["--env", "set", "--hidden", "16"],
    "bitseq": ["--env", "bitseq", "--bitseq-length", "16", "--bitseq-modes", "4", "--hidden", "16"],
    "bayesnet": ["--env", "bayesnet", "--bn-nodes", "3", "--hidden", "16"],
    "graph-building": ["--env", "graph-building", "--graph-nodes", "3", "--hidden", "16"],
    "mis": ["--env", "mis", "--policy", "gin", "--hidden", "8", "--layers", "2", "--mis-train", "8",
            "--mis-test", "2", "--mis-samples", "2"],
    "ebm-2d": ["--env", "ebm-2d", "--batch-size", "8", "--eval-log-z-samples", "1000", "--eval-test", "20"],
    "ising": ["--env", "ising", "--lattice", "3", "--ising-samples", "20", "--ising-updates", "100",
              "--batch-size", "8", "--eval-log-z-samples", "1000"],
    "digits": ["--env", "digits", "--batch-size", "8", "--eval-log-z-samples", "1000", "--eval-test", "20",
               "--eval-backward", "2"],
}
VALUES = ["0", "-1", "nan", "inf", "4294967297", "100000000"]
QUICK_VALUES = ["0", "-1", "nan", "inf", "4294967297"]
# Options whose negative values mean something (a rule, a sign), so -1 may be accepted.
NEGATIVE_OK = {"--led-drop-rate", "--guide-floor", "--sigma", "--epsilon-final", "--temperature-final",
               "--graph-per-edge", "--graph-size-penalty"}
# Options the sweep sets itself, or whose values are not numbers to stress.
SKIP = {"--help", "--config", "--out", "--resume", "--env", "--device", "--iterations", "--eval-every"}


def options(binary):
    text = subprocess.run([binary, "train", "--help"], capture_output=True, text=True, check=True).stdout
    opts = [l.split()[0].rstrip(",") for l in text.splitlines() if l.strip().startswith("--")]
    return [o for o in opts if o not in SKIP]


def classify(opt, value, rc, stderr):
    if rc == "timeout":
        return "timeout"
    if rc == 101 or "panicked" in stderr:
        return "panic"
    if (isinstance(rc, int) and rc < 0) or "memory allocation" in stderr or "out of memory" in stderr:
        return "memory"
    if rc == 2 and any(l.startswith("error") for l in stderr.splitlines()):
        return "clean error"
    if rc == 1 and "iteration" in stderr:
        return "stopped"
    if rc == 0:
        must_refuse = value in ("nan", "inf") or (value == "-1" and opt not in NEGATIVE_OK)
        return "silent accept" if must_refuse else "accepted"
    return "other"


def run_case(binary, out, env, eargs, opt, value, timeout, ceiling_mb, index):
    d = os.path.join(out, "runs", str(index))
    shutil.rmtree(d, ignore_errors=True)
    args = [binary, "train"] + eargs + ["--iterations", "2", "--eval-every", "1", f"{opt}={value}", "--out", d]
    limit = f"ulimit -v {ceiling_mb * 1024}; " if ceiling_mb else ""
    try:
        p = subprocess.run(["bash", "-c", limit + 'exec "$@"', "x"] + args, capture_output=True, text=True,
                           timeout=timeout, env=dict(os.environ, RAYON_NUM_THREADS="1"))
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        rc, err = "timeout", ""
    shutil.rmtree(d, ignore_errors=True)
    last = (err.strip().splitlines() or [""])[-1][:300]
    return {"env": env, "opt": opt, "value": value, "rc": rc, "class": classify(opt, value, rc, err), "stderr": last}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "gfn"), help="the gfn binary")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "cli-fuzz"), help="output folder")
    ap.add_argument("--quick", action="store_true", help="one small task (hypergrid 2x4) and five values")
    ap.add_argument("--envs", default=None, help="comma-separated tasks (default: all, or hypergrid with --quick)")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    ap.add_argument("--memory-ceiling-mb", type=int, default=8000, help="ulimit -v of each case (0: none)")
    a = ap.parse_args()
    if not os.path.isfile(a.binary):
        sys.exit(f"error: no gfn binary at {a.binary} (build it, or pass --binary)")
    envs = a.envs.split(",") if a.envs else (["hypergrid"] if a.quick else list(ENVS))
    unknown = [e for e in envs if e not in ENVS]
    if unknown:
        sys.exit(f"error: unknown task(s) {unknown}: choose from {', '.join(ENVS)}")
    values = QUICK_VALUES if a.quick else VALUES
    os.makedirs(os.path.join(a.out, "runs"), exist_ok=True)
    opts = options(a.binary)
    cases = [(e, ENVS[e], o, v) for e in envs for o in opts for v in values]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        results = list(pool.map(lambda ic: run_case(a.binary, a.out, *ic[1], a.timeout, a.memory_ceiling_mb, ic[0]),
                                enumerate(cases)))
    with open(os.path.join(a.out, "results.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    counts = {"tried": len(results)}
    for r in results:
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    summary = {"binary": a.binary, "envs": envs, "values": values, "options": len(opts), "counts": counts}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(counts))
    bad = [r for r in results if r["class"] in ("silent accept", "panic", "memory", "timeout", "other")]
    for r in bad:
        print(f"{r['class']}: {r['env']} {r['opt']}={r['value']} (exit {r['rc']}) {r['stderr']}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
