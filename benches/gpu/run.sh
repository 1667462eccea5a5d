#!/usr/bin/env bash
# The GPU session of issue 7, run on a machine with an NVIDIA GPU from the repository root:
#   BUNDLE=gpu-bundle OUT=/tmp/gpu bash benches/gpu/run.sh [tests|speed|tv|all]
# BUNDLE holds the `cuda`-feature binaries built by `cargo xtask check-cuda --bundle` (gfn and
# the gfn-cuda kernel tests), xz-compressed. Results go to $OUT: tests.log, speed.jsonl,
# tv.jsonl, and a short table on stdout.
set -u
BUNDLE=${BUNDLE:-gpu-bundle}
OUT=${OUT:-/tmp/gpu-results}
WHAT=${1:-all}
mkdir -p "$OUT" /tmp/gfn-bin
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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
GFN=/tmp/gfn-bin/gfn

if [[ "$WHAT" == all || ",$WHAT," == *",tests,"* ]]; then
  echo "== kernel tests (GPU against CPU references)"
  /tmp/gfn-bin/kernels --test-threads=1 2>&1 | tee "$OUT/tests.log" | grep -E "^test |test result|panicked|skipped" | head -40
fi

if [[ "$WHAT" == all || ",$WHAT," == *",speed,"* ]]; then
  echo "== speed"
  : > "$OUT/speed.jsonl"; : > "$OUT/profile.jsonl"
  HG="--env hypergrid --ndim 4 --height 16 --loss tb --hidden 256 --layers 2 --backward-policy learned"
  IS="--env ising-fixed --lattice 10 --sigma 0.1 --loss tb --hidden 256 --layers 2 --backward-policy learned --lr 0.01 --lr-logz 0.001"
  for task in hypergrid ising; do
    if [ $task = hypergrid ]; then A=$HG; else A=$IS; fi
    for b in ${BATCHES:-64 256 512 1024}; do
      for fused in ${FUSED:-true}; do
        [ "${CPU_ONLY:-0}" = 1 ] || $GFN speed train $A --batch-size $b --device cuda --fused-rollout $fused --rounds ${ROUNDS:-50} --warmup 5 | sed "s/^{/{\"task\":\"$task\",\"fused\":$fused,/" >> "$OUT/speed.jsonl"
      done
      if [ $b -le 512 ] && [ "${NO_CPU:-0}" != 1 ]; then
        r=$([ $task = ising ] && echo 5 || echo 10)
        $GFN speed train $A --batch-size $b --device cpu --threads 1 --rounds $r --warmup 1 | sed "s/^{/{\"task\":\"$task\",/" >> "$OUT/speed.jsonl"
      fi
    done
    $GFN speed train $A --batch-size 512 --device cuda --rounds 20 --warmup 3 --profile | sed "s/^{/{\"task\":\"$task\",\"profile\":true,/" >> "$OUT/profile.jsonl"
    if [ -f benches/peers/gfnx_gpu.py ] && [ "${GFNX:-1}" = 1 ]; then
      if [ -z "${GFNX_READY:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
          && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} GFNX_READY=1
      fi
      (cd /tmp && PYTHONUNBUFFERED=1 timeout 300 python3 "$OLDPWD/benches/peers/gfnx_gpu.py" --task $task --batch-sizes ${BATCHES_GFNX:-64,256,512,1024} --iterations ${ROUNDS:-50} --warmup 5 --matmul-precision highest 2>"$OUT/gfnx-$task.err") | sed "s/^{/{\"task\":\"$task\",/" >> "$OUT/speed.jsonl"
    fi
  done
  python3 - "$OUT/speed.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"{'task':10} {'who':22} {'batch':>6} {'ms/iter median':>15}")
for l in open(sys.argv[1].replace("speed", "profile")):
    if l.startswith("{"):
        r = json.loads(l)
        print("profile", r["task"], "b512", r.get("phases_ms"), "launch us", r.get("relu_launch_us"), "median", r["ms_per_iter_median"])
for r in rows:
    who = r.get("library", "?") + " " + r.get("device", r.get("jax_backend", "?"))[:12] + ("" if "fused" not in r else (" fused" if r["fused"] else " layers"))
    print(f"{r['task']:10} {who:22} {r['batch_size']:>6} {r['ms_per_iter_median']:>15.3f}")
PY
fi

if [[ "$WHAT" == all || ",$WHAT," == *",tv,"* ]]; then
  echo "== trained exact TV, 5 seeds"
  : > "$OUT/tv.jsonl"
  for s in 0 1 2 3 4; do
    $GFN train --env hypergrid --ndim 4 --height 8 --loss tb --batch-size 64 --iterations ${TV_ITERS:-1000} \
      --eval-every ${TV_ITERS:-1000} --seed $s --device cuda --out /tmp/tv-$s >/dev/null 2>"$OUT/tv-$s.err"
    python3 -c "import json,sys; m=json.load(open('/tmp/tv-$s/summary.json')); print(json.dumps({'seed': $s, 'device': 'cuda', 'exact_tv': m['exact']['tv'], 'log_z': m['log_z'], 'wall_seconds': m['wall_seconds']}))" >> "$OUT/tv.jsonl" 2>>"$OUT/tv-$s.err"
  done
  tail -5 "$OUT/tv.jsonl" | cut -c1-300
fi
