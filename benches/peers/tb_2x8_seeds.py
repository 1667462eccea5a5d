"""Summarise benches/peers/tb_2x8_seeds.sh: per library, the distribution of the per-run quality
(mean of the last 5 exact L1 evaluations) and how often issue 2's target holds for it.

The target is "mean over seeds 0, 1, 2 of the per-run quality <= 0.02". Besides seeds 0-2 this
reports the share of runs <= 0.02 and the share of all 3-seed subsets whose mean is <= 0.02: the
chance that the target passes for a triple of seeds drawn at random.
Usage: python3 benches/peers/tb_2x8_seeds.py RUNS.jsonl
"""
import itertools
import json
import statistics
import sys

TARGET = 0.02


def main(path):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    print("| library | runs | seeds 0-2 mean | mean | median | share of runs <= 0.02 "
          "| share of 3-seed subsets with mean <= 0.02 |")
    print("|---|---|---|---|---|---|---|")
    for lib in sorted({r["lib"] for r in runs}):
        by_seed = {r["seed"]: r["l1_last5"] for r in runs if r["lib"] == lib}
        q = [by_seed[s] for s in sorted(by_seed)]
        first3 = [by_seed[s] for s in (0, 1, 2) if s in by_seed]
        triples = list(itertools.combinations(q, 3))
        passing = sum(1 for t in triples if sum(t) / 3 <= TARGET)
        print(f"| {lib} | {len(q)} | "
              f"{sum(first3) / len(first3):.4f} | {statistics.mean(q):.4f} | "
              f"{statistics.median(q):.4f} | {sum(v <= TARGET for v in q) / len(q):.0%} | "
              f"{passing / len(triples):.0%} ({passing} of {len(triples)}) |")


if __name__ == "__main__":
    main(sys.argv[1])
