"""gfnrs from Python: the same bits as the `gfn` command, run directories shared both ways,
Python rewards scored once per batch, and their errors raised as the caller's exceptions."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

import gfnrs

# The `gfn` command built from the same checkout (.ci/run sets it; else the release build).
GFN = os.environ.get("GFN_BIN", str(pathlib.Path(__file__).resolve().parents[2] / "target/release/gfn"))

SMALL = dict(env="hypergrid", ndim=2, height=6, loss="tb", batch_size=16, eval_every=50, seed=3)


def gfn(*args):
    out = subprocess.run([GFN, *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "RAYON_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return out


def cli_flags(options):
    flags = []
    for k, v in options.items():
        flags += ["--" + k.replace("_", "-"), v]
    return flags


def same_run(a, b):
    for f in ["metrics.jsonl", "checkpoint.safetensors", "config.toml"]:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_a_python_run_has_the_bits_of_the_cli_run(tmp_path):
    options = dict(SMALL, iterations=200)
    summary = gfnrs.Trainer(**options).run(tmp_path / "py")
    gfn("train", "--out", tmp_path / "cli", *cli_flags(options))
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["exact"]["tv"] == cli["exact"]["tv"]
    assert summary["log_z"]["learned"] == cli["log_z"]["learned"]
    same_run(tmp_path / "py", tmp_path / "cli")


def test_runs_resume_across_python_and_the_cli(tmp_path):
    whole = tmp_path / "whole"
    gfnrs.Trainer(**dict(SMALL, iterations=200)).run(whole)
    # Started in Python, finished by the CLI.
    a = tmp_path / "a"
    gfnrs.Trainer(**dict(SMALL, iterations=100)).run(a)
    gfn("train", "--resume", a, "--iterations", 200)
    same_run(a, whole)
    # Started by the CLI, finished in Python.
    b = tmp_path / "b"
    gfn("train", "--out", b, *cli_flags(dict(SMALL, iterations=100)))
    t = gfnrs.Trainer.resume(b, iterations=200)
    assert t.iteration == 100
    t.run(b)
    same_run(b, whole)


def test_step_train_sample_and_evaluate():
    t = gfnrs.Trainer(**dict(SMALL, iterations=300))
    untrained = t.evaluate()["exact"]["tv"]
    seen = []
    t.train(100, callback=lambda i, loss: seen.append((i, loss)))
    assert [i for i, _ in seen] == list(range(1, 101))
    assert np.isfinite(t.step()) and t.iteration == 101
    t.train()
    assert t.iteration == 300
    trained = t.evaluate()["exact"]["tv"]
    assert trained < untrained / 2, (untrained, trained)
    x, log_r = t.sample(64, seed=7)
    assert x.shape == (64, 2) and x.dtype == np.int32 and log_r.shape == (64,)
    y, _ = t.sample(64, seed=7)
    assert (x == y).all(), "the same seed gives the same samples"
    assert ((x >= 0) & (x < 6)).all()


def sum_reward(x):
    return x.sum(axis=1) / 2.0


@pytest.mark.parametrize("order", ["append", "prepend-append", "any-slot"])
def test_a_python_reward_trains_to_the_exact_target(order):
    calls = []

    def log_reward(x):
        calls.append(x.shape)
        return sum_reward(x)

    env = gfnrs.Sequence(alphabet=3, length=3, log_reward=log_reward, order=order)
    t = gfnrs.Trainer(env, loss="tb", iterations=400, batch_size=16, eval_every=100)
    t.train()
    assert t.evaluate()["exact"]["tv"] < 0.05
    # Once per batch: 400 training batches of 16, and the exact evaluations' enumerations.
    assert sum(1 for s in calls if s == (16, 3)) == 400
    assert all(s[1] == 3 for s in calls)


def test_a_reward_exception_reaches_the_caller_and_keeps_what_was_written(tmp_path):
    state = {"calls": 0}

    def flaky(x):
        state["calls"] += 1
        if state["calls"] > 120:
            raise KeyError("reward service down")
        return sum_reward(x)

    t = gfnrs.Trainer(gfnrs.Sequence(3, 3, flaky), loss="tb", iterations=300, eval_every=50)
    with pytest.raises(KeyError, match="reward service down") as info:
        t.run(tmp_path / "run")
    assert info.traceback[-1].name == "flaky", "the traceback reaches into the callback"
    run = tmp_path / "run"
    assert (run / "checkpoint.safetensors").exists() and (run / "failed.json").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["iteration"] >= 50


def test_bad_rewards_name_the_sequence_or_the_shape():
    nan = gfnrs.Trainer(gfnrs.Sequence(3, 3, lambda x: np.where(x[:, 0] == 1, np.nan, 0.0)), loss="tb")
    with pytest.raises(ValueError, match=r"NaN.*reward of sequence \[1, "):
        for _ in range(20):
            nan.step()
    short = gfnrs.Trainer(gfnrs.Sequence(3, 3, lambda x: np.zeros(2)), loss="tb", batch_size=8)
    with pytest.raises(ValueError, match=r"returned 2 values for a batch of 8"):
        short.step()
    inf = gfnrs.Trainer(gfnrs.Sequence(3, 3, lambda x: np.full(len(x), np.inf)), loss="tb")
    with pytest.raises(ValueError, match="inf"):
        inf.step()


def test_bad_configuration_is_a_value_error_naming_the_key():
    with pytest.raises(ValueError, match="lossy"):
        gfnrs.Trainer(env="hypergrid", lossy="tb")
    with pytest.raises(ValueError, match="lambda"):
        gfnrs.Trainer(env="hypergrid", loss="tb", lambda_=0.9)
    with pytest.raises(ValueError, match="batch_size"):
        gfnrs.Trainer(env="hypergrid", batch_size=0)
    with pytest.raises(ValueError, match="order"):
        gfnrs.Sequence(3, 3, sum_reward, order="sideways")
    with pytest.raises(ValueError, match="alphabet"):
        gfnrs.Sequence(1, 3, sum_reward)
    t = gfnrs.Trainer(gfnrs.Sequence(3, 3, sum_reward), loss="subtb", lambda_=0.9)
    assert 'loss = "subtb"' in t.config


def test_environment_loss_and_policy_objects_are_their_configuration_keys(tmp_path):
    from gfnrs import envs, losses, policies

    a = gfnrs.Trainer(envs.Hypergrid(ndim=2, height=6), losses.SubTB(lamda=0.9),
                      policies.MLP(hidden=64), seed=3, iterations=50, eval_every=50)
    b = gfnrs.Trainer(env="hypergrid", ndim=2, height=6, loss="subtb", lambda_=0.9, hidden=64,
                      seed=3, iterations=50, eval_every=50)
    assert a.config == b.config
    a.run(tmp_path / "a")
    b.run(tmp_path / "b")
    same_run(tmp_path / "a", tmp_path / "b")
    assert isinstance(a, gfnrs.Trainer)
    with pytest.raises(ValueError, match="ndim"):
        gfnrs.Trainer(envs.Hypergrid(ndim=2), losses.TB(), ndim=3)
    with pytest.raises(ValueError, match="variant"):
        losses.PolicyGradient("x")
    t = gfnrs.Trainer(envs.BitSequence(length=8, word=2, modes=3), losses.PolicyGradient("u"),
                      policies.Transformer(hidden=32, heads=4), iterations=5)
    assert t.env_name.startswith("bitseq") and np.isfinite(t.step())
    m = gfnrs.Trainer(envs.MIS(train=8, test=2, samples=2), losses.DB(), policies.GIN(hidden=16, layers=2),
                      batch_size=4, iterations=2, eval_every=2)
    assert "mis_train = 8" in m.config and 'policy = "gin"' in m.config and m.env_name.startswith("mis")
    m.train(2)
    assert m.iteration == 2


def test_the_reward_cost_is_counted_once_per_batch():
    env = gfnrs.Sequence(4, 5, lambda x: np.zeros(len(x)))
    t = gfnrs.Trainer(env, loss="tb", batch_size=8)
    # Building the trainer scored the 4^5 sequences of exact evaluation in one call.
    assert env.reward_calls == 1
    for _ in range(10):
        t.step()
    assert env.reward_calls == 11
    assert 0 < env.reward_seconds < 10
