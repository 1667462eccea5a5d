#!/usr/bin/env bash
# Side by side, interleaved: ours then torchgfn, same configuration, one thread each.
# Usage: bash benches/peers/side_by_side.sh   (after `cargo xtask bench hypergrid --quick --vs torchgfn`
# has created the torchgfn virtual environment in target/peers/torchgfn-venv)
set -e
cd "$(dirname "$0")/../.."
cargo build --release -p gfn-cli >/dev/null 2>&1
out=$(mktemp -d)
export RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=target/peers/torchgfn-venv/bin/python
for rep in 1 2; do
  for loss in tb fm; do
    rm -rf $out/$loss
    ./target/release/gfn train --ndim 4 --height 8 --loss $loss --iterations 3000 --eval-every 1000 --seed $rep --out $out/$loss >/dev/null 2>&1
    ours=$(python3 -c "import json; s=json.load(open('$out/$loss/summary.json')); print(1000*s['wall_seconds']/s['iterations'])")
    theirs=$($PY benches/peers/torchgfn_hypergrid.py --ndim 4 --height 8 --loss $loss --iterations 3000 --eval-every 1000 --seed $rep --threads 1 2>/dev/null | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['ms_per_iteration'])")
    python3 -c "print('4x8 $loss seed $rep: gfn %.3f ms/it, torchgfn %.2f ms/it, ratio %.1fx' % ($ours, $theirs, $theirs/$ours))"
  done
done
