#!/usr/bin/env bash
# The Python package's tests: build and install gfnrs into a virtual environment
# (target/pyenv), then run pytest against the `gfn` command of the same checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/pyenv/bin/python ]; then
  python3 -m venv target/pyenv
fi
target/pyenv/bin/pip install -q --upgrade pip >/dev/null
target/pyenv/bin/pip install -q "maturin>=1.7,<2" "numpy>=1.21" "pytest>=7"
target/pyenv/bin/pip install -q ./python
# The CLI the tests compare against: the one `cargo test` built, else a release build.
if [ -z "${GFN_BIN:-}" ]; then
  if [ -x target/debug/gfn ]; then
    GFN_BIN="$PWD/target/debug/gfn"
  else
    cargo build --release -p gfn-cli
    GFN_BIN="$PWD/target/release/gfn"
  fi
fi
export GFN_BIN RAYON_NUM_THREADS=1
# From the root: python/gfnrs (the sources) must not shadow the installed package.
target/pyenv/bin/python python/bench/judge.py
# The Python benchmarks' documents are what their committed records render.
for render in python/bench/tasks.py python/bench/speed.py benches/distributed.py; do
  GFN_DOCS_CHECK=1 target/pyenv/bin/python "$render" render
done
target/pyenv/bin/python -m pytest -q -p no:cacheprovider python/tests
