#!/usr/bin/env bash
# 2×8 TB over many seeds, gfn and torchgfn, same recipe (4,000 iterations, batch 16, exact
# evaluation every 100 iterations, one thread): the distribution behind issue 2's 2×8 TB target.
# Writes one JSON line per run to $OUT/runs.jsonl ({"lib", "seed", "l1_last5", "l1_final"}), then
# summarises with tb_2x8_seeds.py.
# Usage: bash benches/peers/tb_2x8_seeds.sh [FIRST_SEED] [LAST_SEED] [OUT]
#   (torchgfn's virtual environment must exist in target/peers/torchgfn-venv:
#    `cargo xtask bench hypergrid --quick --vs torchgfn` creates it)
set -euo pipefail
cd "$(dirname "$0")/../.."
first=${1:-0}
last=${2:-26}
out=${3:-target/tb-2x8-seeds}
mkdir -p "$out"
cargo build --release -p gfn-cli >/dev/null 2>&1
export RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=target/peers/torchgfn-venv/bin/python
runs="$out/runs.jsonl"
for seed in $(seq "$first" "$last"); do
  dir="$out/gfn-seed$seed"
  rm -rf "$dir"
  ./target/release/gfn train --ndim 2 --height 8 --loss tb --iterations 4000 --eval-every 100 \
    --seed "$seed" --out "$dir" >/dev/null 2>&1
  python3 - "$dir" "$seed" >>"$runs" <<'EOF'
import json, sys
d, seed = sys.argv[1], int(sys.argv[2])
lines = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
l1 = [l["exact"]["l1_sum"] for l in lines]
print(json.dumps({"lib": "gfn", "seed": seed, "l1_last5": sum(l1[-5:]) / 5, "l1_final": l1[-1]}))
EOF
  "$PY" benches/peers/torchgfn_hypergrid.py --ndim 2 --height 8 --loss tb --iterations 4000 \
    --eval-every 100 --seed "$seed" --threads 1 2>/dev/null | python3 -c "
import json, sys
r = json.loads(sys.stdin.read())
print(json.dumps({'lib': 'torchgfn', 'seed': $seed, 'l1_last5': r['quality_l1_sum_last5'], 'l1_final': r['final']['l1_sum']}))" >>"$runs"
  tail -n 2 "$runs"
done
python3 benches/peers/tb_2x8_seeds.py "$runs"
