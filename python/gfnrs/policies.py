"""The policy networks as objects; each stands for `gfn train`'s network keys."""


class Policy:
    name = ""

    def __init__(self, **kwargs):
        self.kwargs = {k: v for k, v in kwargs.items() if v is not None}

    def options(self):
        return {"policy": self.name, **self.kwargs}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}({args})"


class MLP(Policy):
    """The MLP over the environment's dense features (``shared_trunk`` between the heads)."""
    name = "mlp"

    def __init__(self, hidden=None, layers=None, shared_trunk=None):
        super().__init__(hidden=hidden, layers=layers, shared_trunk=shared_trunk)


class Transformer(Policy):
    """A pre-LayerNorm transformer encoder over the environment's tokens (``hidden`` = d_model)."""
    name = "transformer"

    def __init__(self, hidden=None, layers=None, heads=None, d_ff=None, positions=None):
        super().__init__(hidden=hidden, layers=layers, heads=heads, d_ff=d_ff, positions=positions)


class GIN(Policy):
    """A graph isomorphism network over the environment's graphs."""
    name = "gin"

    def __init__(self, hidden=None, layers=None, gin_norm=None):
        super().__init__(hidden=hidden, layers=layers, gin_norm=gin_norm)
