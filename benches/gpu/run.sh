#!/usr/bin/env bash
# The GPU session (issues 7 and 22), run on a machine with an NVIDIA GPU from the repository root:
#   BUNDLE=gpu-bundle OUT=/tmp/gpu bash benches/gpu/run.sh [tests,speed,suites,tv|all]
# BUNDLE holds the `cuda`-feature binaries of `cargo xtask check-cuda --bundle` (gfn, the
# gfn-cuda `gpu` tests, xtask), xz-compressed. Results go to $OUT:
#   gpu.txt        the GPU, driver and CUDA version
#   tests.log      the GPU tests (GFN_REQUIRE_GPU=1: a missing GPU fails; each test names its device)
#   speed.jsonl    ms per iteration of gfn (hand-written pass; autograd; rows per block) and gfnx,
#                  side by side in this one call; profile.jsonl: gfn's phases at batch 512
#   tv.jsonl       trained exact TV on the GPU, 5 seeds (the parity check against the CPU)
#   suites.tar.gz  `xtask bench <suite> --device cuda` result directories
#   logs.tar.gz    every stderr
# and a short table on stdout. Each section has its own time limit (SECONDS_* below).
set -u
BUNDLE=${BUNDLE:-gpu-bundle}
OUT=${OUT:-/tmp/gpu-results}
WHAT=${1:-all}
LOGS=/tmp/gpu-logs
mkdir -p "$OUT" /tmp/gfn-bin "$LOGS"
want() { [[ "$WHAT" == all || ",$WHAT," == *",$1,"* ]]; }
for f in "$BUNDLE"/*.xz; do
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$f" "/tmp/gfn-bin/$(basename "$f" .xz)"
done
chmod +x /tmp/gfn-bin/* 2>/dev/null
# Runtime libraries the binaries load (cudarc dynamic loading): libcuda (driver), libcublas,
# libcublasLt, libcurand, libnvrtc; from the CUDA toolkit or from PyTorch's pip wheels.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c 'import nvidia, os; p = nvidia.__path__[0]; print(" ".join(os.path.join(p, d, "lib") for d in os.listdir(p)))' 2>/dev/null); do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvidia-smi | grep -o "CUDA Version: [0-9.]*"
  (command -v nvcc >/dev/null && nvcc --version | tail -2) || true; } | tee "$OUT/gpu.txt"
GFN=/tmp/gfn-bin/gfn

if want tests; then
  echo "== GPU tests (GFN_REQUIRE_GPU=1)"
  GFN_REQUIRE_GPU=1 timeout ${SECONDS_TESTS:-240} /tmp/gfn-bin/gpu --test-threads=1 > "$OUT/tests.log" 2>&1
  echo "exit $?" >> "$OUT/tests.log"
  grep -E "^test |test result|panicked|ran on|GPU tests on|^exit|error" "$OUT/tests.log" | head -40
fi

HG="--env hypergrid --ndim 4 --height 16 --loss tb --hidden 256 --layers 2 --backward-policy learned"
IS="--env ising-fixed --lattice 10 --sigma 0.1 --loss tb --hidden 256 --layers 2 --backward-policy learned --lr 0.01 --lr-logz 0.001"
speed() { # task batch label extra-args...
  local task=$1 b=$2 label=$3; shift 3
  local A=$HG; [ $task = ising ] && A=$IS
  timeout 120 $GFN speed train $A --batch-size $b --device cuda --rounds ${ROUNDS:-50} --warmup 5 "$@" 2>>"$LOGS/gfn-speed.err" \
    | sed "s/^{/{\"task\":\"$task\",\"variant\":\"$label\",/" >> "$OUT/speed.jsonl"
}
if want speed; then
  echo "== speed"
  : > "$OUT/speed.jsonl"; : > "$OUT/profile.jsonl"
  SECONDS=0
  for task in hypergrid ising; do
    for b in ${BATCHES:-64 512 2048}; do
      speed $task $b manual
    done
    speed $task 512 autograd --manual-backward false
    for r in 1 2 4 8 16; do speed $task 512 rows$r --rollout-rows $r; done
    A=$HG; [ $task = ising ] && A=$IS
    timeout 120 $GFN speed train $A --batch-size 512 --device cuda --rounds 20 --warmup 3 --profile 2>>"$LOGS/gfn-speed.err" \
      | sed "s/^{/{\"task\":\"$task\",\"profile\":true,/" >> "$OUT/profile.jsonl"
  done
  echo "gfn speed: ${SECONDS}s"
  if [ -f benches/peers/gfnx_gpu.py ] && [ "${GFNX:-1}" = 1 ]; then
    if [ -z "${GFNX_READY:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} GFNX_READY=1
    fi
    for task in hypergrid ising; do
      (cd /tmp && PYTHONUNBUFFERED=1 timeout ${SECONDS_GFNX:-200} python3 "$OLDPWD/benches/peers/gfnx_gpu.py" --task $task \
        --batch-sizes ${BATCHES_GFNX:-64,512,2048} --iterations ${ROUNDS:-50} --warmup 5 --matmul-precision highest \
        2>"$LOGS/gfnx-$task.err") | sed "s/^{/{\"task\":\"$task\",/" >> "$OUT/speed.jsonl"
    done
    echo "gfn + gfnx speed: ${SECONDS}s"
  fi
  python3 - "$OUT/speed.jsonl" "$OUT/profile.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for l in open(sys.argv[2]):
    if l.startswith("{"):
        r = json.loads(l)
        print("profile", r["task"], "b512", {k: round(v, 3) for k, v in (r.get("phases_ms") or {}).items()}, "median", round(r["ms_per_iter_median"], 3))
gfnx = {(r["task"], r["batch_size"]): r["ms_per_iter_median"] for r in rows if r.get("library") == "gfnx"}
print(f"{'task':10} {'who':16} {'batch':>6} {'ms/iter':>9} {'gfnx/gfn':>9}")
for r in rows:
    who = r.get("library", "?") + " " + r.get("variant", "")
    ref = gfnx.get((r["task"], r["batch_size"]))
    ratio = f"{ref / r['ms_per_iter_median']:.2f}" if ref and r.get("library") == "gfn" else ""
    print(f"{r['task']:10} {who:16} {r['batch_size']:>6} {r['ms_per_iter_median']:>9.3f} {ratio:>9}")
PY
fi

if want tv; then
  echo "== trained exact TV on the GPU, 5 seeds"
  : > "$OUT/tv.jsonl"
  for s in 0 1 2 3 4; do
    timeout 120 $GFN train --env hypergrid --ndim 4 --height 8 --loss tb --batch-size 64 --iterations ${TV_ITERS:-1000} \
      --eval-every ${TV_ITERS:-1000} --seed $s --device cuda --out /tmp/tv-$s >/dev/null 2>"$LOGS/tv-$s.err"
    python3 -c "import json,sys; m=json.load(open('/tmp/tv-$s/summary.json')); print(json.dumps({'seed': $s, 'device': 'cuda', 'exact_tv': m['exact']['tv'], 'log_z': m['log_z'], 'wall_seconds': m['wall_seconds']}))" >> "$OUT/tv.jsonl" 2>>"$LOGS/tv-$s.err"
  done
  cut -c1-200 "$OUT/tv.jsonl"
fi

if want suites; then
  echo "== suites on the device (xtask bench --device cuda)"
  SECONDS=0
  for suite in ${SUITES:-throughput hypergrid}; do
    extra=""; [ $suite = hypergrid ] && extra="--quick"
    CARGO_TARGET_DIR=/tmp/xt timeout ${SECONDS_SUITE:-150} /tmp/gfn-bin/xtask bench $suite $extra --device cuda --gfn-binary $GFN \
      > "$LOGS/suite-$suite.out" 2> "$LOGS/suite-$suite.err"
    echo "$suite: exit $? after ${SECONDS}s"; tail -3 "$LOGS/suite-$suite.err"
  done
  (cd /tmp/xt/bench 2>/dev/null && tar czf "$OUT/suites.tar.gz" --exclude=gfn */20*) || true
fi
tar czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
ls -la "$OUT"
