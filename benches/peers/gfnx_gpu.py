#!/usr/bin/env python3
"""Time gfnx 0.0.1 trajectory-balance training per iteration (JAX, meant for a GPU).

Standalone peer driver (no other file of this repository is imported). For each
batch size of --batch-sizes it builds gfnx's environment, the baselines' Equinox
MLPPolicy and their TB training step, jit-compiles the step ahead of time, runs
--warmup untimed iterations and then --iterations timed ones, and prints ONE JSON
line per batch size on stdout. Everything else goes to stderr.

Tasks (see benches/peers/GFNX_GPU.md for the exact environment specifications):
  hypergrid  gfnx HypergridEnvironment, dim 4, side 16, GeneralHypergridRewardModule
             (R0 0.1, R1 0.5, R2 2.0), one-hot-per-coordinate input; the step of
             baselines/tb_hypergrid.py (Adam 1e-3 network, Adam 0.1 log Z).
  ising      gfnx IsingEnvironment, 10x10 = 100 spins, IsingRewardModule with the
             FIXED coupling J = gfnx.utils.get_true_ising_J(10, sigma=0.1) (torus,
             nearest neighbours); the GFlowNet half of baselines/tb_ising.py (its EBM
             update of J is left out: J stays fixed); Adam 1e-2 network, 1e-3 log Z.

Both: MLP of --layers hidden layers x --hidden ReLU units (default 2 x 256), one
network whose output columns are [P_F logits | P_B logits] (learned P_B sharing the
whole trunk, as the baselines' train_backward=True), log Z a separate scalar
initialised to 0, on-policy sampling with gfnx.utils.forward_rollout.

Timing (--chunk 1, the default): the train step (sampling + loss + grad + Adam) is one
jitted executable (state donated); every timed iteration is one call followed by
jax.block_until_ready on the new state, timed with time.perf_counter. With --chunk K > 1
the executable runs K steps inside jax.lax.fori_loop and each call's time is divided by K
(per-iteration statistics are then over chunks).

gfnx 0.0.1 predates jax 0.6: removed jax aliases are shimmed before gfnx is imported,
and gfnx's optional import-time dependencies that are not installed (flashbax, jax_tqdm,
matplotlib, networkx, omegaconf, orbax) are replaced by inert stub modules: gfnx imports
them at package import time but none is used by the code paths timed here (a stub raises
if it is ever called).
"""

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import types

# Keep stdout for the JSON lines: anything a library prints goes to stderr.
_REAL_STDOUT = sys.stdout
sys.stdout = sys.stderr


def log(*a):
    print("[gfnx_gpu]", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Compatibility: stubs for gfnx's unused optional imports, removed jax aliases
# --------------------------------------------------------------------------

OPTIONAL_MODULES = ("flashbax", "jax_tqdm", "matplotlib", "networkx", "omegaconf", "orbax")


class _StubMeta(type):
    """A stub 'class': any attribute is another stub, subscripting works, calling raises."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{cls.__qualname__}.{name}")

    def __getitem__(cls, item):
        return cls

    def __call__(cls, *a, **k):
        raise RuntimeError(
            f"{cls.__qualname__}: optional dependency of gfnx is not installed "
            f"(stubbed by gfnx_gpu.py; not needed for TB training)"
        )


def _stub_class(qualname):
    c = _StubMeta(qualname.rsplit(".", 1)[-1], (), {})
    c.__qualname__ = qualname
    return c


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{self.__name__}.{name}")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, tops):
        self.tops = set(tops)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.tops:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _StubModule(spec.name)
        m.__path__ = []
        m.__gfnx_gpu_stub__ = True
        return m

    def exec_module(self, module):
        pass


def install_stubs():
    missing = [m for m in OPTIONAL_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        sys.meta_path.append(_StubFinder(missing))
    return missing


def shim_jax(jax):
    """Re-create jax aliases removed after 0.4.x that gfnx 0.0.1 may call."""
    shims = []
    aliases = {
        "tree_map": jax.tree_util.tree_map,
        "tree_leaves": jax.tree_util.tree_leaves,
        "tree_flatten": jax.tree_util.tree_flatten,
        "tree_unflatten": jax.tree_util.tree_unflatten,
        "tree_structure": jax.tree_util.tree_structure,
        "tree_transpose": jax.tree_util.tree_transpose,
        "tree_reduce": jax.tree_util.tree_reduce,
    }
    for name, fn in aliases.items():
        try:
            getattr(jax, name)
        except AttributeError:
            setattr(jax, name, fn)
            shims.append(f"jax.{name}")
    try:
        jax.random.KeyArray  # noqa: B018
    except AttributeError:
        jax.random.KeyArray = jax.Array
        shims.append("jax.random.KeyArray")
    return shims


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------

TASK_DEFAULT_LR = {  # the gfnx baselines' configs: (network lr, log Z lr)
    "hypergrid": (1e-3, 0.1),  # baselines/configs/tb_hypergrid.yaml
    "ising": (1e-2, 1e-3),  # baselines/configs/tb_ising.yaml
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["hypergrid", "ising"], required=True)
    p.add_argument("--batch-sizes", default="256,512",
                   help="comma-separated trajectories per iteration, one JSON line each")
    p.add_argument("--iterations", type=int, default=200, help="timed iterations")
    p.add_argument("--warmup", type=int, default=20, help="untimed iterations after compile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=1,
                   help="steps per jitted call (fori_loop); 1 = time every iteration")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2,
                   help="hidden layers (eqx.nn.MLP depth); gfnx's ising example uses 4")
    p.add_argument("--lr", type=float, default=None, help="network Adam lr (task default)")
    p.add_argument("--lr-logz", type=float, default=None, help="log Z Adam lr (task default)")
    p.add_argument("--epsilon", type=float, default=0.0,
                   help="per-trajectory uniform-exploration prob. as the baselines' fwd_policy_fn")
    p.add_argument("--matmul-precision", choices=["default", "high", "highest"],
                   default="default",
                   help="jax_default_matmul_precision; 'default' leaves JAX's (TF32 allowed "
                        "for float32 dots on recent NVIDIA GPUs), 'highest' = full float32")
    p.add_argument("--uniform-pb", action="store_true",
                   help="uniform backward policy (train_backward=False) instead of learned P_B")
    # hypergrid
    p.add_argument("--ndim", type=int, default=4)
    p.add_argument("--height", type=int, default=16)
    p.add_argument("--r0", type=float, default=0.1)
    p.add_argument("--r1", type=float, default=0.5)
    p.add_argument("--r2", type=float, default=2.0)
    # ising
    p.add_argument("--ising-n", type=int, default=10, help="lattice side N (N*N spins)")
    p.add_argument("--sigma", type=float, default=0.1, help="J = sigma * torus adjacency")
    a = p.parse_args(argv)
    a.batch_sizes = [int(x) for x in a.batch_sizes.split(",") if x.strip()]
    dlr, dlrz = TASK_DEFAULT_LR[a.task]
    a.lr = dlr if a.lr is None else a.lr
    a.lr_logz = dlrz if a.lr_logz is None else a.lr_logz
    if a.iterations < 1 or a.chunk < 1 or a.warmup < 0 or not a.batch_sizes:
        p.error("need --iterations >= 1, --chunk >= 1, --warmup >= 0, a batch size")
    return a


# --------------------------------------------------------------------------
# Model: the gfnx baselines' MLPPolicy (tb_hypergrid.py / tb_ising.py)
# --------------------------------------------------------------------------

def make_policy_class(eqx, jnp):
    class MLPPolicy(eqx.Module):
        network: eqx.nn.MLP
        train_backward_policy: bool
        n_fwd_actions: int
        n_bwd_actions: int

        def __init__(self, input_size, n_fwd_actions, n_bwd_actions, hidden_size,
                     train_backward_policy, depth, rng_key):
            self.train_backward_policy = train_backward_policy
            self.n_fwd_actions = n_fwd_actions
            self.n_bwd_actions = n_bwd_actions
            output_size = n_fwd_actions + (n_bwd_actions if train_backward_policy else 0)
            self.network = eqx.nn.MLP(
                in_size=input_size,
                out_size=output_size,
                width_size=hidden_size,
                depth=depth,
                key=rng_key,
            )

        def __call__(self, x):
            x = self.network(x)
            if self.train_backward_policy:
                forward_logits, backward_logits = jnp.split(x, [self.n_fwd_actions], axis=-1)
            else:
                forward_logits = x
                backward_logits = jnp.zeros(shape=(self.n_bwd_actions,), dtype=jnp.float32)
            return {"forward_logits": forward_logits, "backward_logits": backward_logits}

    return MLPPolicy


# --------------------------------------------------------------------------
# Losses, as in the baselines
# --------------------------------------------------------------------------

def tb_loss_hypergrid(model, logZ, traj_data, env, env_params):
    """baselines/tb_hypergrid.py loss_fn: mask_logits + log_softmax, squared error, mean."""
    policy_outputs_traj = jax.vmap(jax.vmap(model))(traj_data.obs)
    fwd_logits_traj = policy_outputs_traj["forward_logits"]
    invalid_fwd_mask = jax.vmap(env.get_invalid_mask, in_axes=(1, None), out_axes=1)(
        traj_data.state, env_params
    )
    masked_fwd_logits = gfnx.utils.mask_logits(fwd_logits_traj, invalid_fwd_mask)
    fwd_all_log_probs = jax.nn.log_softmax(masked_fwd_logits, axis=-1)
    fwd_logprobs = jnp.take_along_axis(
        fwd_all_log_probs, jnp.expand_dims(traj_data.action, axis=-1), axis=-1
    ).squeeze(-1)
    fwd_logprobs = jnp.where(traj_data.pad, 0.0, fwd_logprobs)
    log_pf_traj = logZ + fwd_logprobs.sum(axis=1)

    prev_states = jax.tree.map(lambda x: x[:, :-1], traj_data.state)
    fwd_actions = traj_data.action[:, :-1]
    curr_states = jax.tree.map(lambda x: x[:, 1:], traj_data.state)
    bwd_actions = jax.vmap(env.get_backward_action, in_axes=(1, 1, 1, None), out_axes=1)(
        prev_states, fwd_actions, curr_states, env_params
    )
    bwd_logits = policy_outputs_traj["backward_logits"][:, 1:]
    invalid_bwd_mask = jax.vmap(env.get_invalid_backward_mask, in_axes=(1, None), out_axes=1)(
        curr_states, env_params
    )
    masked_bwd_logits = gfnx.utils.mask_logits(bwd_logits, invalid_bwd_mask)
    bwd_all_log_probs = jax.nn.log_softmax(masked_bwd_logits, axis=-1)
    log_pb = jnp.take_along_axis(
        bwd_all_log_probs, jnp.expand_dims(bwd_actions, axis=-1), axis=-1
    ).squeeze(-1)
    pad_b = traj_data.pad[:, :-1]
    log_pb = jnp.where(pad_b, 0.0, log_pb)
    log_r = jnp.where(pad_b, 0.0, traj_data.log_gfn_reward[:, :-1])
    target = jnp.sum(log_pb + log_r, axis=1)
    return optax.losses.squared_error(log_pf_traj, target).mean()


def tb_loss_ising(model, logZ, traj_data, env, env_params):
    """baselines/tb_ising.py gflownet_loss_fn: log_softmax(where=), l2_loss (0.5 x sq.), mean."""
    # get_traj_probs (forward)
    outputs = jax.vmap(jax.vmap(model))(traj_data.obs)
    logits = outputs["forward_logits"]
    invalid = jax.vmap(env.get_invalid_mask, in_axes=(1, None), out_axes=1)(
        traj_data.state, env_params
    )
    all_lp = jax.nn.log_softmax(logits, where=jnp.logical_not(invalid), axis=-1)
    lp = jnp.take_along_axis(all_lp, jnp.expand_dims(traj_data.action, -1), axis=-1).squeeze(-1)
    log_pf_traj = jnp.where(traj_data.pad, 0.0, lp).sum(axis=1)
    # get_reverse_traj_probs (backward), as the baseline: a second network call on obs[:, 1:]
    state = jax.tree.map(lambda x: x[:, :-1], traj_data.state)
    action = traj_data.action[:, :-1]
    next_state = jax.tree.map(lambda x: x[:, 1:], traj_data.state)
    rev_action = jax.vmap(env.get_backward_action, in_axes=(1, 1, 1, None), out_axes=1)(
        state, action, next_state, env_params
    )
    rev_logits = jax.vmap(jax.vmap(model))(traj_data.obs[:, 1:])["backward_logits"]
    rev_invalid = jax.vmap(env.get_invalid_backward_mask, in_axes=(1, None), out_axes=1)(
        next_state, env_params
    )
    rev_all_lp = jax.nn.log_softmax(rev_logits, where=jnp.logical_not(rev_invalid), axis=-1)
    rev_lp = jnp.take_along_axis(rev_all_lp, jnp.expand_dims(rev_action, -1), axis=-1).squeeze(-1)
    log_pb_traj = jnp.where(traj_data.pad[:, :-1], 0.0, rev_lp).sum(axis=1)
    log_rewards_traj = jnp.where(traj_data.pad, 0.0, traj_data.log_gfn_reward).sum(axis=1)
    return optax.l2_loss(log_pb_traj + log_rewards_traj, log_pf_traj + logZ).mean()


# --------------------------------------------------------------------------
# Setup and the train step
# --------------------------------------------------------------------------

def build(args, batch_size):
    """Environment, model, optimizer, initial state, and the (jit-able) train step."""
    rng_key = jax.random.PRNGKey(args.seed)
    env_init_key = jax.random.PRNGKey(args.seed + 1)
    MLPPolicy = make_policy_class(eqx, jnp)

    if args.task == "hypergrid":
        reward_module = gfnx.GeneralHypergridRewardModule(R0=args.r0, R1=args.r1, R2=args.r2)
        env = gfnx.environment.HypergridEnvironment(reward_module, dim=args.ndim, side=args.height)
        env_params = env.init(env_init_key)
        loss_impl = tb_loss_hypergrid
        # Per-coordinate reward bands as this backend computes them (float32, XLA): the
        # reward of the diagonal state (x, ..., x) is R0 + R1*[x in band1] + R2*[x in band2].
        xs = jnp.arange(args.height, dtype=jnp.int32)
        diag = env.get_init_state(args.height).replace(
            state=jnp.repeat(xs[:, None], args.ndim, axis=1),
            is_terminal=jnp.ones(args.height, dtype=jnp.bool_),
        )
        r_diag = [float(v) for v in jax.jit(lambda s: reward_module.reward(s, env_params))(diag)]
        band1 = [x for x, v in enumerate(r_diag) if v > args.r0 + 0.5 * args.r1]
        band2 = [x for x, v in enumerate(r_diag) if v > args.r0 + args.r1 + 0.5 * args.r2]
        env_config = {
            "env": "HypergridEnvironment", "ndim": args.ndim, "height": args.height,
            "reward": "GeneralHypergridRewardModule",
            "R0": args.r0, "R1": args.r1, "R2": args.r2, "min_reward_clip": 1e-6,
            "input": "one-hot per coordinate (ndim*height floats)",
            "band1_coords": band1, "band2_coords": band2,
        }
    else:
        reward_module = gfnx.IsingRewardModule()
        dim = args.ising_n ** 2
        env = gfnx.environment.IsingEnvironment(reward_module, dim=dim)
        env_params = env.init(env_init_key)  # J = zeros(dim, dim) from IsingRewardModule.init
        J = jnp.asarray(gfnx.utils.get_true_ising_J(args.ising_n, args.sigma), dtype=jnp.float32)
        env_params = env_params.replace(reward_params=env_params.reward_params.replace(J=J))
        loss_impl = tb_loss_ising
        env_config = {
            "env": "IsingEnvironment", "N": args.ising_n, "spins": dim,
            "reward": "IsingRewardModule, log R(x) = x^T J x, x = 2s-1 in {-1,+1}",
            "J": f"get_true_ising_J(N={args.ising_n}, sigma={args.sigma}) = sigma * A_torus "
                 "(symmetric, 4 neighbours, periodic)",
            "sigma": args.sigma, "fixed_J": True,
            "J_sum": float(J.sum()),
            "input": "raw state int8 in {-1 unset, 0, 1} (dim floats)",
        }

    rng_key, net_init_key = jax.random.split(rng_key)
    train_backward = not args.uniform_pb
    model = MLPPolicy(
        input_size=env.observation_space.shape[0],
        n_fwd_actions=env.action_space.n,
        n_bwd_actions=env.backward_action_space.n,
        hidden_size=args.hidden,
        train_backward_policy=train_backward,
        depth=args.layers,
        rng_key=net_init_key,
    )
    model_params, model_static = eqx.partition(model, eqx.is_array)
    logZ = jnp.array(0.0)
    params = {"model_params": model_params, "logZ": logZ}
    labels = {
        "model_params": jax.tree.map(lambda _: "network_lr", model_params),
        "logZ": "logZ_lr",
    }
    optimizer = optax.multi_transform(
        {
            "network_lr": optax.adam(learning_rate=args.lr),
            "logZ_lr": optax.adam(learning_rate=args.lr_logz),
        },
        labels,
    )
    opt_state = optimizer.init(params)
    state = {"rng_key": rng_key, "params": params, "opt_state": opt_state,
             "loss": jnp.array(0.0)}
    eps = float(args.epsilon)

    def fwd_policy_fn(rng, env_obs, policy_params):
        current_model = eqx.combine(policy_params, model_static)
        policy_outputs = jax.vmap(current_model)(env_obs)
        fwd_logits = policy_outputs["forward_logits"]
        if eps > 0.0:  # the hypergrid baseline's exploration: uniform logits per trajectory
            _, exploration_key = jax.random.split(rng)
            mask = jax.random.bernoulli(exploration_key, eps, (fwd_logits.shape[0],))
            fwd_logits = jnp.where(mask[..., None], 0, fwd_logits)
        return fwd_logits, policy_outputs

    def train_step(st):
        rng, sample_key = jax.random.split(st["rng_key"])
        prm = st["params"]
        # Step 1: a batch of on-policy trajectories (gfnx.utils.forward_rollout).
        traj_data, _ = gfnx.utils.forward_rollout(
            rng_key=sample_key,
            num_envs=batch_size,
            policy_fn=fwd_policy_fn,
            policy_params=prm["model_params"],
            env=env,
            env_params=env_params,
        )

        # Step 2: TB loss (log-probs recomputed from the network) and its gradient.
        def loss_fn(p):
            m = eqx.combine(p["model_params"], model_static)
            return loss_impl(m, p["logZ"], traj_data, env, env_params)

        loss, grads = jax.value_and_grad(loss_fn)(prm)
        # Step 3: Adam.
        updates, opt_state = optimizer.update(grads, st["opt_state"], prm)
        prm = optax.apply_updates(prm, updates)
        return {"rng_key": rng, "params": prm, "opt_state": opt_state, "loss": loss}

    config = {
        **env_config,
        "loss": "tb",
        "network": {
            "kind": "eqx.nn.MLP (gfnx baselines' MLPPolicy)", "hidden": args.hidden,
            "layers": args.layers, "activation": "relu",
            "heads": "one network, outputs [P_F logits | P_B logits]" if train_backward
                     else "one network, P_F logits only",
            "init": "equinox default (uniform +-1/sqrt(fan_in))",
            "n_fwd_actions": int(env.action_space.n),
            "n_bwd_actions": int(env.backward_action_space.n),
            "input_size": int(env.observation_space.shape[0]),
        },
        "backward_policy": "learned (shared trunk)" if train_backward else "uniform",
        "optimizer": "optax.multi_transform(adam network, adam logZ)",
        "lr": args.lr, "lr_logz": args.lr_logz, "logZ_init": 0.0,
        "epsilon": eps,
        "rollout_steps": int(env.max_steps_in_episode + 1),
        "seed": args.seed,
        "matmul_precision": args.matmul_precision,
    }
    return state, train_step, config


def run_one(args, batch_size):
    state, train_step, config = build(args, batch_size)
    chunk = args.chunk
    if chunk == 1:
        fn = train_step
    else:
        def fn(st):
            return jax.lax.fori_loop(0, chunk, lambda _, s: train_step(s), st)

    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=(0,)).lower(state).compile()
    compile_s = time.perf_counter() - t0
    log(f"task={args.task} batch={batch_size}: compiled in {compile_s:.2f}s")

    calls_warm = math.ceil(args.warmup / chunk)
    calls_timed = math.ceil(args.iterations / chunk)
    for _ in range(calls_warm):
        state = compiled(state)
    jax.block_until_ready(state)

    times = []
    for _ in range(calls_timed):
        t0 = time.perf_counter()
        state = compiled(state)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - t0) * 1e3 / chunk)
    loss = float(state["loss"])
    log_z = float(state["params"]["logZ"])
    med = statistics.median(times)
    mean = statistics.fmean(times)
    log(f"task={args.task} batch={batch_size}: median {med:.3f} ms/iter, mean {mean:.3f}, "
        f"last loss {loss:.4g}, logZ {log_z:.4g}")
    return {
        "library": "gfnx",
        "version": dist_version("gfnx"),
        "task": args.task,
        "batch_size": batch_size,
        "iterations": calls_timed * chunk,
        "warmup": calls_warm * chunk,
        "ms_per_iter_median": med,
        "ms_per_iter_mean": mean,
        "ms_per_iter_min": min(times),
        "compile_s": compile_s,
        "timing": ("per iteration: one jitted step call + block_until_ready" if chunk == 1 else
                   f"jitted fori_loop of {chunk} steps + block_until_ready, divided by {chunk}"),
        "jax_backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "last_loss": loss if math.isfinite(loss) else None,
        "last_logZ": log_z if math.isfinite(log_z) else None,
        "config": config,
    }


def dist_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def main(argv=None):
    args = parse_args(argv)
    stubbed = install_stubs()
    global jax, jnp, eqx, optax, gfnx
    import jax
    import jax.numpy as jnp
    shims = shim_jax(jax)
    if args.matmul_precision != "default":
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    import equinox as eqx
    import optax
    import gfnx
    import gfnx.environment  # noqa: F401
    log(f"jax {jax.__version__} backend {jax.default_backend()} device {jax.devices()[0]}; "
        f"gfnx {dist_version('gfnx')} from {os.path.dirname(gfnx.__file__)}")
    log(f"shims: {shims or 'none'}; stubbed optional modules: {stubbed or 'none'}")
    for bs in args.batch_sizes:
        result = run_one(args, bs)
        result["shims"] = shims
        result["stubbed_modules"] = stubbed
        _REAL_STDOUT.write(json.dumps(result) + "\n")
        _REAL_STDOUT.flush()


if __name__ == "__main__":
    main()
