#!/usr/bin/env python3
"""Write digits8x8.txt: scikit-learn's 8x8 handwritten digits, binarised, with a fixed split.

Usage (from any directory; needs scikit-learn, tested with 1.6.1):

    python3 -m venv /tmp/digits-venv
    /tmp/digits-venv/bin/pip install scikit-learn==1.6.1
    /tmp/digits-venv/bin/python make_digits.py            # writes digits8x8.txt next to this script
    /tmp/digits-venv/bin/python make_digits.py OUT.txt    # or to OUT.txt

The output is byte-for-byte reproducible: no timestamps, no randomness. It prints the sha256 of
the file it wrote, which README.md records.

Data: sklearn.datasets.load_digits() (1797 images, 8x8, integer pixel values 0..16), which reads
sklearn/datasets/data/digits.csv.gz, scikit-learn's copy of the test set of the UCI "Optical
Recognition of Handwritten Digits" data (Alpaydin & Kaynak 1998, CC BY 4.0).

Binarisation: pixel bit = 1 if value >= 8 else 0 (8 is half of the maximum 16).
Split: images in sklearn's order; indices 0..1499 (the first 1500) are train ("t"), indices
1500..1796 (the last 297) are test ("e").

Format: '#' comment lines, then one line per image in sklearn's order:
    <split t|e> <label 0-9> <64 characters 0/1, row-major, top row first>
"""

import hashlib
import os
import sys

import numpy as np
import sklearn
from sklearn.datasets import load_digits

N_TRAIN = 1500
THRESHOLD = 8  # bit = 1 iff value >= THRESHOLD


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "digits8x8.txt")

    src = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "data", "digits.csv.gz")
    with open(src, "rb") as f:
        src_sha = hashlib.sha256(f.read()).hexdigest()

    digits = load_digits()
    data = np.asarray(digits.data)
    target = np.asarray(digits.target)
    n, d = data.shape
    assert (n, d) == (1797, 64), data.shape
    assert data.min() >= 0 and data.max() <= 16
    assert np.all(data == np.round(data)), "pixel values must be integers"
    assert set(target.tolist()) <= set(range(10))
    n_test = n - N_TRAIN

    bits = (data >= THRESHOLD).astype(np.uint8)

    lines = [
        "# 8x8 handwritten digits, binarised. Made by make_digits.py; see README.md.",
        "# source: UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak 1998), CC BY 4.0,",
        f"#   as redistributed by scikit-learn {sklearn.__version__} (BSD-3-Clause),"
        " sklearn/datasets/data/digits.csv.gz",
        f"#   sha256 of digits.csv.gz: {src_sha}",
        f"# images: {n}, pixels 8x8 = 64, original values 0..16",
        f"# binarisation: bit = 1 if value >= {THRESHOLD} else 0",
        f"# split: sklearn order; indices 0..{N_TRAIN - 1} train (t, {N_TRAIN}),"
        f" {N_TRAIN}..{n - 1} test (e, {n_test})",
        "# format: <split t|e> <label 0-9> <64 bits 0/1, row-major, top row first>",
    ]
    for i in range(n):
        split = "t" if i < N_TRAIN else "e"
        row = "".join("1" if b else "0" for b in bits[i])
        lines.append(f"{split} {int(target[i])} {row}")
    text = "\n".join(lines) + "\n"

    with open(out, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    sha = hashlib.sha256(text.encode("ascii")).hexdigest()
    print(f"wrote {out}: {n} images ({N_TRAIN} train, {n_test} test), {len(text)} bytes")
    print(f"sha256 {sha}")


if __name__ == "__main__":
    main()
