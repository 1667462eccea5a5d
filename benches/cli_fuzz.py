"""Bad-input sweep of `gfn train`: every option of `gfn train --help`, on every built-in task,
with the values 0, -1, nan, inf, 2^32 + 1 and 1e8, two iterations each. A clear usage error
(exit 2), a clean run (0) and a training stop on a non-finite loss (1, message naming the
iteration) are expected; anything else (an abort, a panic's 101, a signal, a hang past 60 s) is
written to OUT/results.jsonl. Usage (after `cargo build --release -p gfn`):
    python3 benches/cli_fuzz.py [OUT]      # about an hour on one core
"""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "gfn")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "cli-fuzz")
os.makedirs(OUT, exist_ok=True)
opts = [l.split()[0] for l in subprocess.run([BIN, "train", "--help"], capture_output=True, text=True).stdout.splitlines() if l.strip().startswith("--")]
skip = {"--help", "--config", "--out", "--resume", "--env", "--device"}
opts = [o for o in opts if o not in skip]
envs = {
 "hypergrid": ["--env", "hypergrid", "--ndim", "2", "--height", "4"],
 "bag": ["--env", "bag"],
 "set": ["--env", "set"],
 "bitseq": ["--env", "bitseq", "--bitseq-length", "16", "--bitseq-modes", "4"],
 "bayesnet": ["--env", "bayesnet", "--bn-nodes", "3"],
 "ebm-2d": ["--env", "ebm-2d", "--batch-size", "8", "--eval-log-z-samples", "1000", "--eval-test", "20"],
 "ising": ["--env", "ising", "--lattice", "3", "--ising-samples", "20", "--ising-updates", "100", "--batch-size", "8", "--eval-log-z-samples", "1000"],
 "digits": ["--env", "digits", "--batch-size", "8", "--eval-log-z-samples", "1000", "--eval-test", "20", "--eval-backward", "2"],
}
values = ["0", "-1", "nan", "inf", "4294967297", "100000000"]
base = ["--iterations", "2", "--eval-every", "1"]
out = open(os.path.join(OUT, "results.jsonl"), "w")
n = 0
for env, eargs in envs.items():
    for o in opts:
        for v in values:
            d = os.path.join(OUT, "run")
            shutil.rmtree(d, ignore_errors=True)
            args = [BIN, "train"] + eargs + base + [o, v, "--out", d]
            try:
                p = subprocess.run(["bash", "-c", 'ulimit -v 8000000; exec "$@"', "x"] + args, capture_output=True, text=True, timeout=60)
                rc, err = p.returncode, (p.stderr.strip().splitlines() or [""])[-1][:300]
            except subprocess.TimeoutExpired:
                rc, err = "timeout", ""
            n += 1
            if rc not in (0, 2):
                out.write(json.dumps({"env": env, "opt": o, "val": v, "rc": rc, "err": err}) + "\n"); out.flush()
print("done", n)
