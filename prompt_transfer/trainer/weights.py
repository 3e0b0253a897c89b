"""The parameters of a run: the frozen network, the prompt joined to it, and what trains.

Parameters are created already sharded: a checkpoint is restored straight into the shards the
logical axis rules give, and a fresh initialisation is jitted with those shardings as outputs.
"""

from __future__ import annotations

import collections
import os
import re
import types
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh

from prompt_transfer.base import paths
from prompt_transfer.network import checkpoints, partitioning, t5
from prompt_transfer.prompt import kinds, prompts
from prompt_transfer.trainer import run_dir, saving
from prompt_transfer.trainer.train_state import (
    TrainError,
    TrainState,
    init_state,
    merge,
    split_trainable,
    trainable_regex,
)


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
    pieces=None,
):
    """(trainable, fixed, the fixed part's shardings) of the network with `prompt` joined to it
    (its wide form [P, E + deep width], see prompts.widen; None: no prompt), and what the run's
    kind of prompt keeps beside it (`pieces`, prompt/kinds.py), sharded on `mesh` and split by
    the TRAINABLE `regex`."""
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


def input_prompt(state: TrainState, fixed: dict):
    """The current input prompt [P, E] (trainable or fixed), or None when the run has none:
    what a run exports beside each checkpoint (prompts/checkpoint_N.npy)."""
    _, prompt = prompts.split_prompt(merge(fixed, state.trainable))
    return prompt


def restore_trained(
    model_dir: str,
    network: Network,
    blank_prompt: np.ndarray | None,
    mesh: Mesh,
    which: str = "latest",
    record: dict | None = None,
) -> tuple[dict, int]:
    """(parameters, step) of a finished run: `network` with every array the checkpoint holds
    restored over it from MODEL_DIR (`which` is "latest", "best" or "checkpoint_N";
    `blank_prompt` the run's prompt template in its wide form, see prompts.blank); the
    optimizer state is not read.

    The checkpoint decides what is restored, never a TRAINABLE regex: an array it holds that
    the model lacks, or one the run's record (run_record.py) says trained that it lacks, is
    refused in one line naming it (issue 34: a deep prompt's layers were left at their
    initial values when a command's TRAINABLE named the input prompt only)."""
    from prompt_transfer.trainer import run_record

    directory = run_dir.RunDir(model_dir).file("best" if which == "best" else "")
    with saving.CheckpointStore(directory, keep=1_000_000, create=False) as store:
        if which.startswith("checkpoint_"):  # the step asked for, whole, or refused
            step = _saved_step(store, int(which.split("_")[1]), directory)
        else:
            step = store.newest_intact(run_record.say)
            if step is not None and step != store.latest_step():
                run_record.say(f"reading checkpoint_{step}, the newest whole one")
        if step is None:
            raise TrainError(
                f"no {which} checkpoint in {directory}; train first or check MODEL_DIR"
            )
        where = f"checkpoint_{step} in {directory}"
        held = store.trainable_arrays(step)
        if held is None:
            raise TrainError(
                f"{where} has no metadata to say which arrays it holds (written by another "
                "tool or cut short); use a checkpoint this project wrote"
            )
        run_record.check_checkpoint(record, held, where)
        pieces = kinds.of_run(model_dir).load(model_dir)
        every = _paths_with(network, blank_prompt, pieces)
        unknown = sorted(set(held) - every)
        if unknown:
            way = "leave the gin files out, or give its own" if record else "give its own gin"
            raise TrainError(
                f"{where} holds {unknown[0]}, which this command's model has not (a deep "
                f"prompt, another PROMPT_LENGTH or model?); read the run as it trained: {way}"
            )
        regex = "|".join(re.escape(name) for name in sorted(held))
        trainable, fixed, _ = place(network, blank_prompt, regex, mesh, pieces)
        state, _ = store.restore(
            init_state(trainable, optax.identity()), only_trainable=True, step=step
        )
    return merge(fixed, state.trainable), int(state.step)


def _saved_step(store, step: int, directory) -> int:
    """`step`, when the run saved it and it is whole; else one line naming what it keeps."""
    kept = sorted(store.manager.all_steps())
    if step not in kept:
        shown = ", ".join(f"checkpoint_{s}" for s in kept) or "none"
        raise TrainError(f"CHECKPOINT='checkpoint_{step}': {directory} keeps {shown}")
    wrong = saving.damage(directory, step)
    if wrong:
        raise TrainError(f"checkpoint_{step} in {directory} is damaged ({wrong}); choose another")
    return step


def _paths_with(network: Network, prompt, pieces) -> set[str]:
    """Every parameter path of `network` with `prompt` (wide form) and `pieces` joined."""
    abstract = network.abstract
    if prompt is not None:
        abstract = prompts.join_abstract(abstract, network.module.config, prompt)
    if pieces is not None:
        abstract = prompts.with_deep_prompt(abstract, pieces.abstract())
    return set(traverse_util.flatten_dict(abstract, sep="/"))


def run_prompt(model_dir: str, which: str = "latest") -> tuple[np.ndarray, np.ndarray | None, int]:
    """(input prompt [P, E], a deep prompt's columns [P, deep width] or None, step) of a
    prompt-tuning run's `which` checkpoint ("latest" or "best"), read from the checkpoint's own
    arrays: what score, the library and the exports take from a run. A run whose prompt alone
    is not the run (attention, multi-task, one that trained the network) is refused."""
    from prompt_transfer.trainer import run_record

    run_record.refuse_unless_prompt_only(model_dir, run_record.read(model_dir))
    folder = run_dir.RunDir(model_dir).below("best" if which == "best" else "")
    root = folder.root
    step = saving.newest_intact(root, folder.saved_steps(), run_record.say)
    if step is None:
        never = "it never evaluated; use --checkpoint latest" if which == "best" else "train it"
        raise TrainError(f"no {which} prompt in {model_dir} (no checkpoint in {root}): {never}")
    where = str(root / f"checkpoint_{step}")
    rows, _ = checkpoints.describe(where)
    network = [name for name, _, _ in rows if not _is_prompt(name)]
    if network:
        raise TrainError(
            f"{where} holds network weights ({network[0]}, ...): the run trained the network "
            "(model tuning, or prompt then model), so its prompt alone is not the run; read it "
            "with `prompt-transfer eval` or `infer`"
        )
    if prompts.PROMPT_PATH not in {name for name, _, _ in rows}:
        raise TrainError(f"{where} holds no prompt ({prompts.PROMPT_PATH}); it is not a prompt run")
    abstract = {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape, _ in rows}
    arrays = checkpoints.restore_params(
        where, traverse_util.unflatten_dict(abstract, sep="/"), strict=False
    )
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(arrays, sep="/").items()}
    prompt = flat.pop(prompts.PROMPT_PATH)
    if not flat:
        return prompt, None, step
    layers = lambda stack: sum(p.startswith(f"{stack}/") for p in flat)  # noqa: E731
    shape = types.SimpleNamespace(
        num_encoder_layers=layers("encoder"), num_decoder_layers=layers("decoder")
    )
    wide = prompts.widen(prompt, flat, shape)  # its layers in deep_prefix_paths' order
    return wide[:, : prompt.shape[1]], wide[:, prompt.shape[1] :], step


def _is_prompt(name: str) -> bool:
    return name == prompts.PROMPT_PATH or name.endswith(f"/{prompts.DEEP_PREFIX}")
