"""gfnrs: GFlowNets in Rust (the `gfn` library) for Python.

Environments, losses and policies are objects, in the words torchgfn users know; each one stands
for `gfn train` configuration keys, so a run made here is the run the `gfn` command would make
with those keys (the same bits, the same run directory)::

    import gfnrs
    from gfnrs import envs, losses, policies

    t = gfnrs.Trainer(envs.Hypergrid(ndim=4, height=8), losses.SubTB(lamda=0.9),
                      policies.MLP(hidden=256, layers=2), seed=0, iterations=2000)
    t.train()
    print(t.evaluate()["exact"]["tv"])

Plain configuration keys work too: ``gfnrs.Trainer(env="hypergrid", loss="tb", ndim=4)``.
"""

from . import envs, losses, policies
from ._native import Sequence, __version__
from ._native import Trainer as _NativeTrainer

__all__ = ["Trainer", "Sequence", "envs", "losses", "policies", "__version__"]


def _options(env, loss, policy, options):
    """The configuration keys of the objects and the keyword options (a key given twice is an
    error naming it)."""
    merged = {}
    for part in (env, loss, policy):
        if hasattr(part, "options"):
            for k, v in part.options().items():
                merged[k] = v
    for k, v in options.items():
        key = k[:-1] if k.endswith("_") else k
        if key in merged and merged[key] != v:
            raise ValueError(f"invalid {key} = {v!r}: already set to {merged[key]!r} by an environment, loss or policy object")
        merged[k] = v
    if isinstance(env, str):
        merged["env"] = env
    if isinstance(loss, str):
        merged["loss"] = loss
    if isinstance(policy, str):
        merged["policy"] = policy
    return merged


class Trainer(_NativeTrainer):
    """A GFlowNet trainer: the `gfn train` loop as an object.

    ``Trainer(env, loss=None, policy=None, **options)``: ``env`` is an object of :mod:`gfnrs.envs`,
    a :class:`Sequence` (a reward written in Python) or a built-in environment's name; ``loss`` an
    object of :mod:`gfnrs.losses` or a name; ``policy`` an object of :mod:`gfnrs.policies` or a
    name; ``options`` any other `gfn train` configuration key (``seed``, ``iterations``,
    ``batch_size``, ``lr``, ``eval_every``, ...; ``lambda_`` stands for ``lambda``).

    Methods: ``step()``, ``train(n=None, callback=None)``, ``run(out, callback=None)``,
    ``evaluate()``, ``sample(n, seed=0)``, ``Trainer.resume(dir, iterations=None)``.
    """

    def __new__(cls, env=None, loss=None, policy=None, **options):
        merged = _options(env, loss, policy, options)
        native_env = env if isinstance(env, Sequence) else merged.pop("env", None)
        return super().__new__(cls, native_env, **merged)

    def __init__(self, *args, **kwargs):
        pass
