"""The training state and the pure, jitted train step.

One code path serves prompt tuning (TRAINABLE = the prompt), model tuning (TRAINABLE = '.*')
and pre-training. `split_trainable` cuts the parameter tree by the TRAINABLE regex into the
`trainable` subtree, which the optimizer sees, and the `fixed` rest, a separate argument that is
never differentiated.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_transfer.base.errors import UserError
from prompt_transfer.base.settings import setting
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning
from prompt_transfer.prompt import prompts


class TrainError(UserError):
    pass


# ---------------------------------------------------------------------------------------------
# Optimisation.


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SPoT's prompt-tuning recipe by default: Adafactor, constant 0.3, decay rate 0.8, weight
    decay 1e-5, no parameter scaling (Vu et al. 2022, Sec. 2.1). `name="adam"` for AdamW."""

    name: str = setting("adafactor", one_of=("adafactor", "adam"))
    learning_rate: float = setting(
        0.3,
        above=0,
        macro="LEARNING_RATE",
        hint="to score a prompt without training it, use `prompt-transfer eval` (a trained run) "
        "or `prompt-transfer score --prompt` (a prompt file)",
    )
    weight_decay: float = setting(1e-5, least=0)
    decay_rate: float = setting(0.8, above=0, most=1)
    clipping_threshold: float = setting(1.0, above=0)
    multiply_by_parameter_scale: bool = False
    warmup_steps: int = setting(0, least=0)
    # "constant", or "rsqrt": T5 pre-training's plateau then 1/sqrt(step)
    schedule: str = setting("constant", one_of=("constant", "rsqrt"))


# One optimizer and one schedule per config, so that runs of equal configs share a compiled step.
@functools.lru_cache(maxsize=32)
def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    if cfg.schedule == "rsqrt":
        # T5: constant for the first `warmup_steps`, then decaying as 1/sqrt(step).
        plateau = max(cfg.warmup_steps, 1)
        return lambda step: (
            cfg.learning_rate
            * jnp.sqrt(plateau / jnp.maximum(jnp.asarray(step, jnp.float32), plateau))
        )
    if cfg.schedule != "constant":
        raise TrainError(
            f"learning-rate schedule {cfg.schedule!r} is unknown; choose constant or rsqrt"
        )
    if cfg.warmup_steps:
        return optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.constant_schedule(cfg.learning_rate)


@functools.lru_cache(maxsize=32)
def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg)
    if cfg.name == "adafactor":
        return optax.adafactor(
            schedule,
            decay_rate=cfg.decay_rate,
            multiply_by_parameter_scale=cfg.multiply_by_parameter_scale,
            clipping_threshold=cfg.clipping_threshold,
            weight_decay_rate=cfg.weight_decay or None,
        )
    if cfg.name == "adam":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)
    raise TrainError(f"optimizer {cfg.name!r} is unknown; choose adafactor or adam")


# ---------------------------------------------------------------------------------------------
# What trains.


def split_trainable(params: dict, regex: str) -> tuple[dict, dict]:
    """(trainable, fixed) subtrees: a parameter trains when `regex` fully matches its path.

    `fixed` is everything else: the frozen model in prompt tuning, nothing in model tuning.
    """
    flat = traverse_util.flatten_dict(params, sep="/")
    matcher = re.compile(regex)
    trainable = {k: v for k, v in flat.items() if matcher.fullmatch(k)}
    if not trainable:
        examples = ", ".join(sorted(flat)[:3])
        raise TrainError(
            f"TRAINABLE={regex!r} matches no parameter (paths look like "
            f"{examples}, ...); use '{prompts.PROMPT_PATH}' or '.*'"
        )
    fixed = {k: v for k, v in flat.items() if k not in trainable}
    return (
        traverse_util.unflatten_dict(trainable, sep="/"),
        traverse_util.unflatten_dict(fixed, sep="/"),
    )


def merge(fixed: dict, trainable: dict) -> dict:
    """The whole parameter tree again: `fixed` with `trainable` laid over it."""
    flat = traverse_util.flatten_dict(fixed, sep="/")
    flat.update(traverse_util.flatten_dict(trainable, sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")


@struct.dataclass
class TrainState:
    step: jax.Array
    trainable: dict
    opt_state: optax.OptState


def init_state(trainable: dict, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable))


def create_state(
    trainable: dict, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """The initial state on `mesh`: optimizer slots follow their parameters' shardings (jit
    propagates them); scalars and anything left on one device are replicated."""
    state = _jitted_init(optimizer)(trainable)
    on_mesh = lambda x: len(x.sharding.device_set) == mesh.size
    return jax.tree.map(
        lambda x: x if on_mesh(x) else jax.device_put(x, partitioning.replicated(mesh)), state
    )


@functools.lru_cache(maxsize=32)
def _jitted_init(optimizer: optax.GradientTransformation):
    """`init_state` jitted once per optimizer (`make_optimizer` gives equal configs one), so
    runs of equal settings trace and compile their initial state once, not once a run."""
    return jax.jit(lambda trainable: init_state(trainable, optimizer))


# ---------------------------------------------------------------------------------------------
# The step.


def train_step(
    model: EncoderDecoderModel,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    num_microbatches: int,
    state: TrainState,
    fixed: dict,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
) -> tuple[TrainState, dict]:
    """One optimizer update; gradients flow only into `state.trainable`.

    With `num_microbatches > 1` the batch [A*B, ...] is split into A microbatches whose
    gradients are averaged (gradient accumulation without extra optimizer steps).
    """
    rng = jax.random.fold_in(rng, state.step)  # resumable: the step, not history, picks dropout

    def loss_fn(trainable, micro, key):
        return model.loss(merge(fixed, trainable), micro, key)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches == 1:
        (loss, aux), grads = grad_fn(state.trainable, batch, rng)
    else:
        micro = jax.tree.map(lambda x: x.reshape(num_microbatches, -1, *x.shape[1:]), batch)

        def accumulate(carry, inputs):
            i, mb = inputs
            (loss, aux), grads = grad_fn(state.trainable, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

        zeros = jax.tree.map(
            jnp.zeros_like,
            jax.eval_shape(
                lambda: grad_fn(state.trainable, jax.tree.map(lambda x: x[0], micro), rng)
            ),
        )
        zeros = (zeros[0][0], zeros[0][1], zeros[1])
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_microbatches), micro))
        loss, aux, grads = jax.tree.map(lambda x: x / num_microbatches, total)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
        "learning_rate": schedule(state.step),
        **aux,
    }
    return TrainState(state.step + 1, trainable, opt_state), metrics


def compile_train_step(
    model,
    optimizer,
    schedule,
    num_microbatches,
    mesh: Mesh,
    state_shardings,
    fixed_shardings,
    batch_example: Mapping,
):
    """`train_step` jitted for `mesh`: explicit in/out shardings, the state donated; returns
    (step(state, fixed, batch, rng), the batch shardings to put batches on).

    Equal arguments give the same jitted function, so the runs of a flow that share a model,
    an optimizer (see `make_optimizer`), a mesh and shapes compile their step once."""
    batch_shardings = {
        k: partitioning.data_sharding(mesh, np.ndim(v)) for k, v in batch_example.items()
    }
    step = _jitted_step(
        False,
        (model, optimizer, schedule, num_microbatches),
        mesh,
        *(_frozen(t) for t in (state_shardings, fixed_shardings, batch_shardings)),
    )
    return step, batch_shardings


# ---------------------------------------------------------------------------------------------
# Many prompts in one step.


def stack_states(states: list[TrainState]) -> TrainState:
    """K states of equal structure as one, every leaf with a leading axis of K."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(stacked: TrainState, k: int) -> TrainState:
    """The k-th of a stacked state's runs."""
    return jax.tree.map(lambda x: x[k], stacked)


def stacked_train_step(
    model, optimizer, schedule, num_microbatches, states: TrainState, fixed, batches, rngs
):
    """K runs' steps at once on one frozen network: `states` and `batches` carry a leading
    axis of K (`stack_states`; each run's own batch), `rngs` is [K, 2]; `fixed` is shared.

    Each run keeps its own optimizer state, learning-rate step, gradient clipping and dropout,
    so the result is K separate runs' (up to the order of floating-point sums): `vmap` over
    `train_step` with the frozen network unmapped, which XLA turns into matrix products over
    all K runs' examples at once."""
    return jax.vmap(
        lambda state, batch, rng: train_step(
            model, optimizer, schedule, num_microbatches, state, fixed, batch, rng
        )
    )(states, batches, rngs)


def compile_stacked_step(
    model, optimizer, schedule, num_microbatches, mesh: Mesh, state_shardings, fixed_shardings
):
    """`stacked_train_step` jitted for `mesh`, the stacked state donated. `state_shardings` are
    one run's; the K axis is never split, and each run's batch splits along `data`. Returns
    step(states, fixed, batches, rngs), shared by every group of equal arguments; it takes
    this process's rows of the batches (see partitioning.global_batch)."""
    stacked = jax.tree.map(
        lambda s: NamedSharding(s.mesh, PartitionSpec(None, *s.spec)), state_shardings
    )
    batches = NamedSharding(mesh, PartitionSpec(None, partitioning.DATA_AXIS))
    step = _jitted_step(
        True,
        (model, optimizer, schedule, num_microbatches),
        mesh,
        *(_frozen(t) for t in (stacked, fixed_shardings, batches)),
    )
    return lambda states, fixed, local, rngs: step(
        states, fixed, partitioning.global_batch(local, batches), rngs
    )


def _frozen(tree) -> tuple:
    """A hashable stand-in for a tree of shardings: its structure and its leaves."""
    leaves, structure = jax.tree.flatten(tree)
    return structure, tuple(leaves)


@functools.lru_cache(maxsize=8)
def _jitted_step(stacked: bool, recipe: tuple, mesh: Mesh, state, fixed, batch):
    """The jitted step (`stacked_train_step` or `train_step`) for a (model, optimizer,
    schedule, microbatches) recipe and the `_frozen` state, fixed and batch shardings."""
    state, fixed, batch = (jax.tree.unflatten(s, leaves) for s, leaves in (state, fixed, batch))
    fn = stacked_train_step if stacked else train_step

    def step(states, fixed_params, batches, rngs):
        with partitioning.activation_rules(mesh):  # the model's activation layout applies
            return fn(*recipe, states, fixed_params, batches, rngs)

    return jax.jit(
        step,
        in_shardings=(state, fixed, batch, partitioning.replicated(mesh)),
        out_shardings=(state, partitioning.replicated(mesh)),
        donate_argnums=(0,),
    )


def trainable_regex(trainable: dict) -> str:
    """A regex matching exactly the paths of `trainable` (to split other trees the same way)."""
    return "|".join(re.escape(p) for p in traverse_util.flatten_dict(trainable, sep="/"))


class LazyStep:
    """The compiled step, built from the first batch's shapes; puts each batch on the mesh."""

    def __init__(self, model, optimizer, schedule, num_microbatches, mesh, state, fixed_shardings):
        self._args = (model, optimizer, schedule, num_microbatches, mesh)
        self._state_shardings = jax.tree.map(lambda x: x.sharding, state)
        self._fixed_shardings = fixed_shardings
        self._step = self._batch_shardings = None

    def __call__(self, state: TrainState, fixed: dict, batch: Mapping, rng: jax.Array):
        if self._step is None:
            self._step, self._batch_shardings = compile_train_step(
                *self._args, self._state_shardings, self._fixed_shardings, batch
            )
        batch = partitioning.global_batch(batch, self._batch_shardings)
        return self._step(state, fixed, batch, rng)
