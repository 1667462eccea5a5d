"""Molecule generation with a reward from RDKit: SELFIES strings of 20 tokens over a 14-token
alphabet (every string decodes to a valid molecule; `[nop]` tokens are skipped, so molecules have
up to 20 heavy-atom and bond/branch tokens), R(x) = max(QED(x), 1e-3)^beta.

This stands in for the seeds' molecule task: LED-GFN's sEH reward is a pretrained proxy model that
is not available offline, so drug-likeness (RDKit's QED) replaces it.

    pip install ./python rdkit selfies
    python python/examples/molecules.py --loss tb --seed 0

Prints the top-100 mean QED, their diversity (mean pairwise Tanimoto distance of Morgan
fingerprints, radius 2) and the number of distinct molecules with QED >= --mode-threshold found in
training.
"""

import argparse

import numpy as np
import selfies
from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import QED, rdFingerprintGenerator

import gfnrs

RDLogger.DisableLog("rdApp.*")

ALPHABET = ["[C]", "[=C]", "[#C]", "[N]", "[=N]", "[O]", "[=O]", "[F]", "[S]", "[Cl]",
            "[Branch1]", "[=Branch1]", "[Ring1]", "[nop]"]
LENGTH = 20


class Task:
    """The reward callback, keeping every scored molecule (canonical SMILES → QED)."""

    def __init__(self, beta):
        self.beta = beta
        self.qed = {}
        self.smiles_of = {}

    def score(self, tokens):
        key = "".join(ALPHABET[t] for t in tokens)
        if key not in self.smiles_of:
            smiles = selfies.decoder(key)
            mol = Chem.MolFromSmiles(smiles) if smiles else None
            canonical = Chem.MolToSmiles(mol) if mol is not None and mol.GetNumAtoms() > 0 else ""
            self.smiles_of[key] = canonical
            if canonical and canonical not in self.qed:
                self.qed[canonical] = QED.qed(mol)
        canonical = self.smiles_of[key]
        return self.qed.get(canonical, 0.0)

    def log_reward(self, x):
        q = np.array([self.score(row) for row in x])
        return self.beta * np.log(np.maximum(q, 1e-3))

    def metrics(self, k=100, mode_threshold=0.7):
        best = sorted(self.qed.items(), key=lambda kv: -kv[1])[:k]
        gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
        fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s, _ in best]
        dist = [1.0 - DataStructs.TanimotoSimilarity(a, b) for i, a in enumerate(fps) for b in fps[i + 1:]]
        return {
            "top_k_mean_qed": float(np.mean([q for _, q in best])),
            "top_k_diversity": float(np.mean(dist)) if dist else 0.0,
            "modes": sum(1 for q in self.qed.values() if q >= mode_threshold),
            "max_qed": max(self.qed.values()),
            "distinct_molecules": len(self.qed),
        }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loss", default="tb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--beta", type=float, default=10.0)
    p.add_argument("--mode-threshold", type=float, default=0.7)
    a = p.parse_args()
    task = Task(a.beta)
    env = gfnrs.Sequence(len(ALPHABET), LENGTH, task.log_reward, order="append", name="selfies-qed-20")
    t = gfnrs.Trainer(env, loss=a.loss, seed=a.seed, iterations=a.iterations, batch_size=16,
                      eval_every=a.iterations)
    t.train()
    print(task.metrics(mode_threshold=a.mode_threshold))


if __name__ == "__main__":
    main()
