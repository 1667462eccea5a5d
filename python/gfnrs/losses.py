"""The training objectives as objects; each stands for `gfn train`'s loss keys."""


class Loss:
    name = ""

    def __init__(self, **kwargs):
        self.kwargs = {k: v for k, v in kwargs.items() if v is not None}

    def options(self):
        return {"loss": self.name, **self.kwargs}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}({args})"


class TB(Loss):
    """Trajectory balance: (log Z + Σ log P_F − log R − Σ log P_B)²."""
    name = "tb"


class DB(Loss):
    """Detailed balance over every transition, with a learned log F."""
    name = "db"


class SubTB(Loss):
    """Subtrajectory balance, subtrajectories weighted by ``lamda`` to the power of their length."""
    name = "subtb"

    def __init__(self, lamda=None):
        super().__init__(**{"lambda": lamda})


class FM(Loss):
    """Flow matching over the edge flows."""
    name = "fm"


class ModifiedDB(Loss):
    """Modified DB (every state terminal: F(s) = R(s)/P_F(exit|s))."""
    name = "mdb"


class FLDB(Loss):
    """Forward-looking DB (intermediate energies)."""
    name = "fl-db"


class FLSubTB(Loss):
    """Forward-looking SubTB."""
    name = "fl-subtb"

    def __init__(self, lamda=None):
        super().__init__(**{"lambda": lamda})


class LEDDB(Loss):
    """LED-GFN: DB on learned energy decompositions (potentials of ``hidden`` units, learning rate
    ``lr``, dropout ``drop_rate``, ``steps`` updates per iteration, ``buffer`` stored batches)."""
    name = "led-db"

    def __init__(self, hidden=None, lr=None, drop_rate=None, steps=None, buffer=None):
        super().__init__(led_hidden=hidden, led_lr=lr, led_drop_rate=drop_rate, led_steps=steps, led_buffer=buffer)


class LEDSubTB(LEDDB):
    """LED-GFN with SubTB."""
    name = "led-subtb"


class PolicyGradient(Loss):
    """Policy-gradient training (Niu et al. 2024): ``variant`` "u" (uniform P_B), "b" (P_B trained),
    "g" (guided P_B) or "trpo" (trust region), GAE ``gae_lambda``."""

    def __init__(self, variant="u", gae_lambda=None):
        if variant not in ("u", "b", "g", "trpo"):
            raise ValueError(f"invalid variant = {variant!r}: must be u, b, g or trpo")
        self.name = f"pg-{variant}"
        super().__init__(gae_lambda=gae_lambda)


class ReverseKL(Loss):
    """Reverse-KL variational inference by REINFORCE."""
    name = "vi"


class SoftQ(Loss):
    """Soft Q-learning (Munchausen-free) on the P_F logits."""
    name = "soft-q"
