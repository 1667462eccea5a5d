"""The built-in environments as objects; each stands for `gfn train`'s environment keys."""


class Env:
    """An environment: its `gfn train` configuration keys (unset arguments keep the defaults)."""

    name = ""
    keys = {}

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self.keys)
        if unknown:
            raise ValueError(f"{type(self).__name__} takes {sorted(self.keys)}, not {sorted(unknown)}")
        self.kwargs = kwargs

    def options(self):
        out = {"env": self.name}
        out.update({self.keys[k]: v for k, v in self.kwargs.items() if v is not None})
        return out

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}({args})"


class Hypergrid(Env):
    """The hypergrid (TB paper): ``ndim``, ``height``, rewards ``r0``, ``r1``, ``r2``."""

    name = "hypergrid"
    keys = {k: k for k in ("ndim", "height", "r0", "r1", "r2")}

    def __init__(self, ndim=None, height=None, r0=None, r1=None, r2=None):
        super().__init__(ndim=ndim, height=height, r0=r0, r1=r1, r2=r2)


class BitSequence(Env):
    """Bit sequences (TB paper): ``length`` bits written ``word`` bits at a time, ``modes`` modes,
    ``order`` "append" or "fill"."""

    name = "bitseq"
    keys = {"length": "bitseq_length", "word": "bitseq_word", "modes": "bitseq_modes", "order": "bitseq_order"}

    def __init__(self, length=None, word=None, modes=None, order=None):
        super().__init__(length=length, word=word, modes=modes, order=order)


class Set(Env):
    """Set generation (LED-GFN): ``size`` "small", "medium" or "large"."""

    name = "set"
    keys = {"size": "size"}

    def __init__(self, size=None):
        super().__init__(size=size)


class Bag(Env):
    """Bag (multiset) generation (LED-GFN); ``task_seed`` draws its modes."""

    name = "bag"
    keys = {"task_seed": "task_seed"}

    def __init__(self, task_seed=None):
        super().__init__(task_seed=task_seed)


class BayesNet(Env):
    """Bayesian-network structure (DAG-GFlowNet's task): ``nodes``, ``samples``, ``noise``."""

    name = "bayesnet"
    keys = {"nodes": "bn_nodes", "samples": "bn_samples", "noise": "bn_noise"}

    def __init__(self, nodes=None, samples=None, noise=None):
        super().__init__(nodes=nodes, samples=samples, noise=noise)


class GraphBuilding(Env):
    """Graph building: ``nodes`` (the largest graph), ``node_types``, ``edge_types``, ``directed``,
    ``acyclic``, ``target_nodes``."""

    name = "graph-building"
    keys = {"nodes": "graph_nodes", "node_types": "graph_node_types", "edge_types": "graph_edge_types",
            "directed": "graph_directed", "acyclic": "graph_acyclic", "target_nodes": "graph_target_nodes"}

    def __init__(self, nodes=None, node_types=None, edge_types=None, directed=None, acyclic=None,
                 target_nodes=None):
        super().__init__(nodes=nodes, node_types=node_types, edge_types=edge_types, directed=directed,
                         acyclic=acyclic, target_nodes=target_nodes)


class MIS(Env):
    """Maximum independent sets of RB graphs (LED-GFN's task; train it with ``policies.GIN``):
    ``graphs`` "reduced" (20–60 nodes) or "small" (200–300), ``train`` and ``test`` graph counts,
    ``samples`` per test graph, the reward exponent annealed from ``beta_start`` to ``beta_end``
    over ``beta_anneal`` trajectories, ``task_seed`` draws the graphs."""

    name = "mis"
    keys = {"graphs": "mis_graphs", "train": "mis_train", "test": "mis_test", "samples": "mis_samples",
            "beta_start": "beta_start", "beta_end": "beta_end", "beta_anneal": "beta_anneal",
            "task_seed": "task_seed"}

    def __init__(self, graphs=None, train=None, test=None, samples=None, beta_start=None, beta_end=None,
                 beta_anneal=None, task_seed=None):
        super().__init__(graphs=graphs, train=train, test=test, samples=samples, beta_start=beta_start,
                         beta_end=beta_end, beta_anneal=beta_anneal, task_seed=task_seed)
