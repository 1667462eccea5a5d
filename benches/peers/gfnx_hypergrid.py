#!/usr/bin/env python3
"""Train a hypergrid GFlowNet with gfnx 0.0.1 (JAX, CPU) and print one JSON line.

Peer driver, the gfnx counterpart of torchgfn_hypergrid.py: the same flags, the
same recipe (K-hot input, an MLP whose trunk is shared by P_F, P_B and, for
DB/SubTB, log F; Adam with one learning rate for the network and another for
log Z; on-policy batches) and the same exact evaluation (hypergrid_exact.py).

It mirrors gfnx's own single-file baselines (baselines/tb_hypergrid.py,
db_hypergrid.py, subtb_hypergrid.py of d-tiapkin/gfnx, which the PyPI wheel
does not ship): gfnx's `HypergridEnvironment` and `GeneralHypergridRewardModule`,
an Equinox `MLPPolicy`, `gfnx.utils.forward_rollout` for sampling, the
baselines' loss functions, optax, and the whole training step jit-compiled and
run inside `jax.lax.fori_loop`. The baselines' per-step logging callback and
metric modules are left out (they are not part of the algorithm); evaluation
happens between jitted chunks of `--eval-every` iterations and is not timed.

gfnx has no flow-matching baseline: `--loss fm` exits with status 2.

stdout carries exactly one line of JSON; everything else goes to stderr.
See benches/peers/README.md.
"""

import os
import platform
import sys
import time

# Keep stdout for the single JSON line: anything a library prints goes to stderr.
_REAL_STDOUT = sys.stdout
sys.stdout = sys.stderr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

from hypergrid_exact import HypergridExact  # noqa: E402
import peer_common  # noqa: E402
from peer_common import dist_version, peak_rss_mb  # noqa: E402

SUPPORTED_LOSSES = ("tb", "db", "subtb")


def parse_args(argv=None):
    return peer_common.parse_args(__doc__.splitlines()[0], argv)


config_dict = peer_common.config_dict


def limit_threads(threads):
    """Thread settings; must run before jax is imported.

    The XLA flags alone do not make jaxlib 0.5.3 single-threaded: its CPU client
    still runs large dots and loops on an intra-op pool of one thread per CPU.
    PJRT_NPROC sets the size of that pool (xla/pjrt DefaultThreadPoolSize).
    """
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = flags.strip()
    os.environ["PJRT_NPROC"] = str(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv=None):
    args = parse_args(argv)
    if args.loss not in SUPPORTED_LOSSES:
        print(
            f"gfnx_hypergrid.py: --loss {args.loss} is not supported: gfnx 0.0.1 has no "
            f"{args.loss.upper()} baseline for the hypergrid (supported: "
            f"{', '.join(SUPPORTED_LOSSES)})",
            file=sys.stderr,
        )
        sys.exit(2)
    limit_threads(args.threads)
    # Imported here, after the thread settings are in the environment.
    global jax, jnp, eqx, optax, gfnx
    import jax
    import jax.numpy as jnp
    import equinox as eqx
    import optax
    import gfnx

    if args.sample_only:
        return run_sample_only(args)
    return run_training(args)


# --------------------------------------------------------------------------
# Model (as in gfnx's baselines: one Equinox MLP, the heads are output columns)
# --------------------------------------------------------------------------

def make_policy_class():
    class MLPPolicy(eqx.Module):
        """One MLP emitting P_F logits, P_B logits and (DB/SubTB) log F.

        As gfnx's baselines: every head is a slice of the last layer, so P_B and
        log F share the whole trunk with P_F. `depth` = hidden layers.
        """

        network: eqx.nn.MLP
        n_fwd_actions: int
        n_bwd_actions: int
        with_flow: bool

        def __init__(self, input_size, n_fwd_actions, n_bwd_actions, hidden_size,
                     depth, with_flow, rng_key):
            self.n_fwd_actions = n_fwd_actions
            self.n_bwd_actions = n_bwd_actions
            self.with_flow = with_flow
            out = n_fwd_actions + n_bwd_actions + (1 if with_flow else 0)
            self.network = eqx.nn.MLP(
                in_size=input_size,
                out_size=out,
                width_size=hidden_size,
                depth=depth,
                key=rng_key,
            )

        def __call__(self, x):
            x = self.network(x)
            nf, nb = self.n_fwd_actions, self.n_bwd_actions
            out = {
                "forward_logits": x[:nf],
                "backward_logits": x[nf:nf + nb],
            }
            if self.with_flow:
                out["log_flow"] = x[nf + nb]
            return out

    return MLPPolicy


class Setup:
    """Environment, model, optimizer and the static parts of the train state."""

    def __init__(self, args):
        self.args = args
        rng_key = jax.random.PRNGKey(args.seed)
        env_init_key = jax.random.PRNGKey(args.seed)
        reward_module = gfnx.GeneralHypergridRewardModule(R0=args.r0, R1=args.r1, R2=args.r2)
        self.env = gfnx.environment.HypergridEnvironment(
            reward_module, dim=args.ndim, side=args.height
        )
        self.env_params = self.env.init(env_init_key)

        rng_key, net_init_key = jax.random.split(rng_key)
        MLPPolicy = make_policy_class()
        model = MLPPolicy(
            input_size=self.env.observation_space.shape[0],
            n_fwd_actions=self.env.action_space.n,
            n_bwd_actions=self.env.backward_action_space.n,
            hidden_size=args.hidden,
            depth=args.layers,
            with_flow=args.loss in ("db", "subtb"),
            rng_key=net_init_key,
        )
        model_params, self.model_static = eqx.partition(model, eqx.is_array)
        if args.loss == "tb":
            # As tb_hypergrid.py: log Z a separate scalar with its own Adam.
            params = {"model_params": model_params, "logZ": jnp.array(0.0)}
            labels = {
                "model_params": jax.tree.map(lambda _: "network_lr", model_params),
                "logZ": "logZ_lr",
            }
            self.optimizer = optax.multi_transform(
                {
                    "network_lr": optax.adam(learning_rate=args.lr),
                    "logZ_lr": optax.adam(learning_rate=args.lr_logz),
                },
                labels,
            )
        else:
            params = {"model_params": model_params}
            self.optimizer = optax.adam(learning_rate=args.lr)
        opt_state = self.optimizer.init(params)
        # The dynamic train state: arrays only (rng, parameters, optimizer state).
        self.state = {"rng_key": rng_key, "params": params, "opt_state": opt_state}

    def model(self, model_params):
        return eqx.combine(model_params, self.model_static)

    def fwd_policy_fn(self, rng_key, env_obs, policy_params):
        """The policy function gfnx.utils.forward_rollout wants."""
        model = self.model(policy_params)
        policy_outputs = jax.vmap(model)(env_obs)
        logits = policy_outputs["forward_logits"]
        if self.args.temperature != 1.0:
            logits = logits / self.args.temperature
        if self.args.epsilon > 0.0:
            # gfnx's epsilon-greedy: per environment, uniform logits with prob. epsilon
            # (forward_rollout masks invalid actions afterwards).
            logits = gfnx.utils.apply_epsilon_greedy_vmap(
                rng_key, logits, jnp.asarray(self.args.epsilon)
            )
        return logits, policy_outputs

    def rollout(self, rng_key, model_params, num_envs):
        return gfnx.utils.forward_rollout(
            rng_key=rng_key,
            num_envs=num_envs,
            policy_fn=self.fwd_policy_fn,
            policy_params=model_params,
            env=self.env,
            env_params=self.env_params,
        )


# --------------------------------------------------------------------------
# Losses (gfnx baselines: tb_hypergrid.py, db_hypergrid.py, subtb_hypergrid.py)
# --------------------------------------------------------------------------

def _fwd_bwd_logprobs(setup, model, traj_data):
    """Per-step log P_F(a_t|s_t), log P_B(s_t|s_{t+1}) and log F over a padded batch.

    Returns log_pf [B, T], log_pb [B, T] (pad steps set to 0), policy outputs over
    all T+1 states and the pad mask [B, T].
    """
    env, env_params = setup.env, setup.env_params
    outputs = jax.vmap(jax.vmap(model))(traj_data.obs)
    fwd_invalid = jax.vmap(env.get_invalid_mask, in_axes=(1, None), out_axes=1)(
        traj_data.state, env_params
    )
    fwd_logits = gfnx.utils.mask_logits(outputs["forward_logits"], fwd_invalid)
    log_pf_all = jax.nn.log_softmax(fwd_logits, axis=-1)
    log_pf = jnp.take_along_axis(
        log_pf_all, traj_data.action[..., None], axis=-1
    ).squeeze(-1)[:, :-1]

    prev_states = jax.tree.map(lambda x: x[:, :-1], traj_data.state)
    curr_states = jax.tree.map(lambda x: x[:, 1:], traj_data.state)
    fwd_actions = traj_data.action[:, :-1]
    bwd_actions = jax.vmap(env.get_backward_action, in_axes=(1, 1, 1, None), out_axes=1)(
        prev_states, fwd_actions, curr_states, env_params
    )
    bwd_invalid = jax.vmap(env.get_invalid_backward_mask, in_axes=(1, None), out_axes=1)(
        curr_states, env_params
    )
    bwd_logits = gfnx.utils.mask_logits(outputs["backward_logits"][:, 1:], bwd_invalid)
    log_pb_all = jax.nn.log_softmax(bwd_logits, axis=-1)
    log_pb = jnp.take_along_axis(log_pb_all, bwd_actions[..., None], axis=-1).squeeze(-1)

    pad = traj_data.pad[:, :-1]
    log_pf = jnp.where(pad, 0.0, log_pf)
    log_pb = jnp.where(pad, 0.0, log_pb)
    return log_pf, log_pb, outputs, pad


def tb_loss(setup, params, traj_data):
    model = setup.model(params["model_params"])
    log_pf, log_pb, _, pad = _fwd_bwd_logprobs(setup, model, traj_data)
    log_r = jnp.where(pad, 0.0, traj_data.log_gfn_reward[:, :-1])
    lhs = params["logZ"] + log_pf.sum(axis=1)
    rhs = (log_pb + log_r).sum(axis=1)
    return optax.losses.squared_error(lhs, rhs).mean()


def db_loss(setup, params, traj_data):
    # As gfnx's db_hypergrid.py: on transitions [B*T] (split_traj_to_transitions),
    # one network call on the states and one on the next states.
    env, env_params = setup.env, setup.env_params
    model = setup.model(params["model_params"])
    transitions = gfnx.utils.split_traj_to_transitions(traj_data)
    bwd_actions = env.get_backward_action(
        transitions.state, transitions.action, transitions.next_state, env_params
    )
    outputs = jax.vmap(model)(transitions.obs)
    invalid = env.get_invalid_mask(transitions.state, env_params)
    fwd_log_probs = jax.nn.log_softmax(
        gfnx.utils.mask_logits(outputs["forward_logits"], invalid), axis=-1
    )
    fwd_logprobs = jnp.take_along_axis(
        fwd_log_probs, transitions.action[..., None], axis=-1
    ).squeeze(-1)
    log_flow = outputs["log_flow"]

    next_outputs = jax.vmap(model)(transitions.next_obs)
    next_invalid = env.get_invalid_backward_mask(transitions.next_state, env_params)
    bwd_log_probs = jax.nn.log_softmax(
        gfnx.utils.mask_logits(next_outputs["backward_logits"], next_invalid), axis=-1
    )
    bwd_logprobs = jnp.take_along_axis(
        bwd_log_probs, bwd_actions[..., None], axis=-1
    ).squeeze(-1)
    next_log_flow = next_outputs["log_flow"]
    # At the exit transition the target is the log reward.
    target = jnp.where(
        transitions.done,
        bwd_logprobs + transitions.log_gfn_reward,
        bwd_logprobs + next_log_flow,
    )
    num_transitions = jnp.logical_not(transitions.pad).sum()
    loss = optax.l2_loss(
        jnp.where(transitions.pad, 0.0, fwd_logprobs + log_flow),
        jnp.where(transitions.pad, 0.0, target),
    ).sum()
    return loss / num_transitions


def subtb_loss(setup, params, traj_data):
    model = setup.model(params["model_params"])
    log_pf, log_pb, outputs, pad = _fwd_bwd_logprobs(setup, model, traj_data)
    log_pb = log_pb + jnp.where(pad, 0.0, traj_data.log_gfn_reward[:, :-1])
    log_flow = jnp.where(traj_data.pad, 0.0, outputs["log_flow"])
    done = traj_data.done[:, :-1]
    traj_len = log_pf.shape[1]
    lamda = setup.args.lamda

    def process_one_traj(log_pf, log_pb, log_flow, done, pad):
        def process_pair_idx(i, j):
            def fn():
                steps = jnp.arange(traj_len)
                mask = jnp.logical_and(i <= steps, steps < j)
                weight = jnp.power(lamda, j - i)
                lhs = log_flow[i] + (log_pf * mask).sum()
                rhs = jnp.where(done[j - 1], 0.0, log_flow[j]) + (log_pb * mask).sum()
                return weight * optax.losses.squared_error(lhs, rhs), weight

            return jax.lax.cond(pad[j - 1], lambda: (0.0, 0.0), fn)

        i, j = jnp.triu_indices(traj_len + 1, k=1)
        weighted_loss, weights = jax.vmap(process_pair_idx)(i, j)
        return weighted_loss.sum() / weights.sum()

    return jax.vmap(process_one_traj)(log_pf, log_pb, log_flow, done, pad).mean()


LOSSES = {"tb": tb_loss, "db": db_loss, "subtb": subtb_loss}


def make_train_chunk(setup):
    """jit-able (state, count) -> state running `count` training steps in a fori_loop."""
    loss_fn = LOSSES[setup.args.loss]
    num_envs = setup.args.batch_size

    def train_step(state):
        rng_key, sample_key = jax.random.split(state["rng_key"])
        params = state["params"]
        # Step 1: a batch of on-policy trajectories (no gradient through sampling).
        traj_data, _ = setup.rollout(sample_key, params["model_params"], num_envs)
        # Step 2: loss and gradients (log-probs recomputed from the network).
        loss, grads = jax.value_and_grad(lambda p: loss_fn(setup, p, traj_data))(params)
        # Step 3: Adam update.
        updates, opt_state = setup.optimizer.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        return {"rng_key": rng_key, "params": params, "opt_state": opt_state}

    def train_chunk(state, count):
        return jax.lax.fori_loop(0, count, lambda _, s: train_step(s), state)

    return train_chunk


# --------------------------------------------------------------------------
# Exact evaluation
# --------------------------------------------------------------------------

class ExactEvaluator(HypergridExact):
    """HypergridExact plus gfnx observations of every grid point.

    Checks the driver's reward against gfnx's own reward module on all states.
    """

    def __init__(self, setup):
        a = setup.args
        super().__init__(a.ndim, a.height, a.r0, a.r1, a.r2)
        env, env_params = setup.env, setup.env_params
        n = self.n
        states = env.get_init_state(n).replace(
            state=jnp.asarray(self.coords, dtype=jnp.int32),
            is_initial=jnp.asarray(self.coords.sum(1) == 0),
        )
        self.obs = env.get_obs(states, env_params)
        reward = env.reward_module.reward(states.replace(is_terminal=jnp.ones(n, bool)),
                                          env_params)
        self.check_reward(np.asarray(reward, dtype=np.float64), "gfnx GeneralHypergridRewardModule")
        self._outputs = jax.jit(lambda mp, obs: jax.vmap(setup.model(mp))(obs))

    def evaluate(self, params):
        outputs = self._outputs(params["model_params"], self.obs)
        logits = np.asarray(outputs["forward_logits"], dtype=np.float64)
        out = self.metrics(self.terminating_distribution(logits))
        if "logZ" in params:
            log_z = float(params["logZ"])
        else:  # DB / SubTB: log F(s0); state index 0 is the origin
            log_z = float(outputs["log_flow"][0])
        out["log_z_learned"] = log_z
        return out


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

def run_training(args):
    setup = Setup(args)
    evaluator = ExactEvaluator(setup)
    state = setup.state

    chunk = make_train_chunk(setup)
    count0 = jnp.asarray(1, dtype=jnp.int32)
    t0 = time.perf_counter()
    # Ahead-of-time compile of the training chunk (the whole step inside a
    # fori_loop with a dynamic trip count, so one executable serves every chunk).
    compiled = jax.jit(chunk, donate_argnums=(0,)).lower(state, count0).compile()
    compile_seconds = time.perf_counter() - t0
    # One untimed step on a copy, so that the timed loop starts warm.
    jax.block_until_ready(compiled(jax.tree.map(jnp.copy, state), count0))

    evals = []
    wall = 0.0
    cpu = 0.0
    it = 0
    while it < args.iterations:
        n = min(args.eval_every - it % args.eval_every, args.iterations - it)
        count = jnp.asarray(n, dtype=jnp.int32)
        t0, c0 = time.perf_counter(), time.process_time()
        state = compiled(state, count)
        jax.block_until_ready(state)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        it += n
        e = {"iteration": it, "wall_seconds": wall}
        e.update(evaluator.evaluate(state["params"]))
        evals.append(e)
        print(
            f"iter {it} l1 {e['l1_sum']:.4f} logZ {e['log_z_learned']:.4f} "
            f"(true {evaluator.log_z_true:.4f}) train {wall:.2f}s",
            file=sys.stderr,
        )

    emit(peer_common.training_result(
        "gfnx", versions(), args, evals, wall, compile_seconds, cpu, evaluator.log_z_true
    ))


# --------------------------------------------------------------------------
# Sampling only
# --------------------------------------------------------------------------

def run_sample_only(args):
    """Time --rounds rounds of forward_rollout of --batch-size trajectories."""
    setup = Setup(args)
    model_params = setup.state["params"]["model_params"]

    def sample(model_params, rng_key):
        # The library's whole output (padded TrajectoryData and its info dict).
        return setup.rollout(rng_key, model_params, args.batch_size)

    keys = jax.random.split(setup.state["rng_key"], args.rounds + 2)
    t0 = time.perf_counter()
    compiled = jax.jit(sample).lower(model_params, keys[0]).compile()
    compile_seconds = time.perf_counter() - t0
    for r in range(2):  # warm-up, not timed
        jax.block_until_ready(compiled(model_params, keys[r]))
    wall = 0.0
    cpu = 0.0
    steps = 0
    for r in range(2, args.rounds + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        out = compiled(model_params, keys[r])
        jax.block_until_ready(out)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        # Actions per trajectory (non-pad steps), the exit action included.
        steps += int(np.asarray(out[1]["trajectory_length"]).sum())
    n = args.rounds * args.batch_size
    emit({
        "library": "gfnx",
        "versions": versions(),
        "config": config_dict(args),
        "mode": "sample",
        "rounds": args.rounds,
        "trajectories": n,
        "wall_seconds": wall,
        "compile_seconds": compile_seconds,
        "cpu_seconds": cpu,
        "trajectories_per_second": n / wall if wall > 0 else None,
        "mean_length": steps / n,
        "padded_length": setup.env.max_steps_in_episode + 1,
        "peak_rss_mb": peak_rss_mb(),
    })


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def versions():
    return {
        "gfnx": dist_version("gfnx"),
        "jax": jax.__version__,
        "jaxlib": dist_version("jaxlib"),
        "equinox": dist_version("equinox"),
        "optax": dist_version("optax"),
        "python": platform.python_version(),
    }


def emit(result):
    peer_common.emit(result, _REAL_STDOUT)


if __name__ == "__main__":
    main()
