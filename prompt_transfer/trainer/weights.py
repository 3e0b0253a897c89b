"""The parameters of a run: the frozen network, the prompt joined to it, and what trains.

Parameters are created already sharded: a checkpoint is restored straight into the shards the
logical axis rules give, and a fresh initialisation is jitted with those shardings as outputs.
"""

from __future__ import annotations

import collections
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from prompt_transfer import checkpoints, partitioning, paths, prompts, t5
from prompt_transfer.trainer import checkpointing, run_dir
from prompt_transfer.trainer.train_state import (
    TrainError,
    TrainState,
    init_state,
    merge,
    split_trainable,
    trainable_regex,
)
from prompt_transfer.transfer import attention, multitask


class Network(NamedTuple):
    """The T5 module, its boxed abstract tree (shapes and logical axes), and its parameters."""

    module: t5.T5
    abstract: dict
    params: dict


# The networks this process built last: the runs of a SPoT flow or a demo share one frozen
# network, restored and placed once. Two, so that a flow's two models (a projector's source and
# target, say) do not evict each other.
_NETWORKS: collections.OrderedDict = collections.OrderedDict()
_KEEP_NETWORKS = 2


def _stamp(checkpoint: str) -> tuple:
    """What changes when a local checkpoint is rewritten: its files' sizes and times."""
    if paths.is_remote(checkpoint):
        return (checkpoint,)
    root = os.path.abspath(paths.native(checkpoint))
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name) if os.path.isdir(root) else []
        files = tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
        return (root, os.stat(root).st_mtime_ns, files)
    except OSError:  # the restore itself reports a missing or unreadable checkpoint
        return (root,)


def frozen_network(
    config: t5.T5Config, checkpoint: str | None, mesh: Mesh, seed: int, dtype=jnp.float32
) -> Network:
    """The network placed on `mesh`: from `checkpoint` when given (sharded restore), else a
    fresh initialisation created already sharded (eval_shape, logical shardings, jitted init).

    The same arguments give the same network for as long as the process keeps it: read-only,
    shared by the runs of a flow (`place` copies what trains, since the train step donates
    it). A rewritten local checkpoint is read again, and so is a network whose arrays a caller
    donated."""
    key = (
        config,
        _stamp(checkpoint) if checkpoint else None,
        mesh,
        None if checkpoint else seed,
        jnp.dtype(dtype).name,
    )
    kept = _NETWORKS.get(key)
    # A caller that trained the network's own arrays in a donating step deleted them.
    if kept is not None and not any(x.is_deleted() for x in jax.tree.leaves(kept.params)):
        _NETWORKS.move_to_end(key)
        return kept
    network = _build_network(config, checkpoint, mesh, seed, dtype)
    _NETWORKS[key] = network
    while len(_NETWORKS) > _KEEP_NETWORKS:
        _NETWORKS.popitem(last=False)
    return network


def _build_network(config, checkpoint, mesh, seed, dtype) -> Network:
    module = t5.T5(config)
    abstract = t5.abstract_params(module)
    if checkpoint:
        restored = checkpoints.restore_params(checkpoint, abstract, mesh, dtype=dtype)
        return Network(module, abstract, restored)
    shardings = partitioning.param_shardings(abstract, mesh)
    tokens = jnp.ones((1, 8), jnp.int32)
    init = jax.jit(
        lambda rng: jax.tree.map(
            lambda x: x.astype(dtype), nn.unbox(module.init(rng, tokens, tokens)["params"])
        ),
        out_shardings=shardings,
    )
    return Network(module, abstract, init(jax.random.PRNGKey(seed)))


def place(
    network: Network,
    prompt: np.ndarray | None,
    regex: str,
    mesh: Mesh,
    pieces: attention.Pieces | multitask.Pieces | None = None,
):
    """(trainable, fixed, the fixed part's shardings) of the network with `prompt` joined to it
    (its wide form [P, E + deep width], see prompts.widen; None: no prompt), and an attention
    or multi-task run's `pieces` beside it, sharded on `mesh` and split by the TRAINABLE `regex`."""
    abstract, params = network.abstract, network.params
    if prompt is not None:
        config = network.module.config
        abstract = prompts.join_abstract(abstract, config, prompt)
        params = prompts.join(params, config, prompt, np.asarray)  # placed below, as the rest
    if pieces is not None:
        abstract = prompts.with_deep_prompt(abstract, pieces.abstract())  # any {path: leaf}
        params = prompts.with_deep_prompt(params, pieces.flat())
    shardings = partitioning.param_shardings(abstract, mesh)
    trainable, fixed = split_trainable(jax.device_put(params, shardings), regex)
    # The train step donates what trains: a copy, so the shared network outlives the run. What
    # trains is float32 whatever the frozen network's dtype.
    trainable = jax.tree.map(
        lambda x: (
            jax.device_put(x, x.sharding, may_alias=False)
            if x.dtype == jnp.float32
            else x.astype(jnp.float32)
        ),
        trainable,
    )
    _, fixed_shardings = split_trainable(shardings, trainable_regex(trainable))
    return trainable, fixed, fixed_shardings


def run_pieces(model_dir):
    """What a run in `model_dir` keeps beside its prompt: an attention run's sources and module
    (transfer/attention.py), a multi-task run's task parts (transfer/multitask.py), or None."""
    return attention.load(model_dir) or multitask.load(model_dir)


def input_prompt(state: TrainState, fixed: dict):
    """The current input prompt [P, E] (trainable or fixed), or None when the run has none:
    what a run exports beside each checkpoint (prompts/checkpoint_N.npy)."""
    _, prompt = prompts.split_prompt(merge(fixed, state.trainable))
    return prompt


def restore_trained(
    model_dir: str,
    network: Network,
    regex: str,
    blank_prompt: np.ndarray | None,
    mesh: Mesh,
    which: str = "latest",
) -> tuple[dict, int]:
    """(parameters, step) of a finished run: `network` with the trained subtree restored from
    MODEL_DIR (`which` is "latest" or "best"; `blank_prompt` the run's prompt template in its
    wide form, see prompts.blank); the optimizer state is not read."""
    trainable, fixed, _ = place(network, blank_prompt, regex, mesh, run_pieces(model_dir))
    directory = run_dir.subdir(model_dir, "best" if which == "best" else "")
    with checkpointing.CheckpointStore(directory, keep=1_000_000, create=False) as store:
        if store.latest_step() is None:
            raise TrainError(
                f"no {which} checkpoint in {directory}; train first or check MODEL_DIR"
            )
        state, _ = store.restore(init_state(trainable, optax.identity()), only_trainable=True)
    return merge(fixed, state.trainable), int(state.step)
