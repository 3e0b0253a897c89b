"""T5X checkpoints: read legacy (msgpack index + tensorstore zarr) and orbax; write legacy.

A legacy T5X checkpoint directory `checkpoint_N/` holds a msgpack `checkpoint` file with
`{"version", "optimizer": {"target": params, "state": {"step", "param_states"}}}`. Small arrays
are inline; large ones are replaced by a tensorstore spec whose kvstore path (`target.a.b.c`) is
relative to the directory. We read the `target` subtree only.

Restoring goes straight into sharded `jax.Array`s: each device's slice is read from storage on
its own (`jax.make_array_from_callback`), so a model is never gathered on one host.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import msgpack
import numpy as np
import tensorstore as ts
from flax import serialization, traverse_util
from jax.sharding import Mesh, SingleDeviceSharding

from prompt_transfer.base import assets, files, paths
from prompt_transfer.base.errors import UserError
from prompt_transfer.network import partitioning

INDEX_FILE = "checkpoint"
LEGACY_VERSION = 3
_TS_LEAVES = ("kernel", "embedding")  # written as zarr; everything else inline (as T5X does)
_MAX_CHUNK_BYTES = 64 * 2**20


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, or does not fit the configured model."""


@dataclasses.dataclass(frozen=True)
class ParamSource:
    """One parameter of a checkpoint, read lazily by slice."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[tuple[slice, ...]], np.ndarray]


def _exists(path: str) -> bool:
    return paths.path(path).exists()


def _read_bytes(path: str) -> bytes:
    return paths.path(path).read_bytes()


def _listdir(path: str) -> list[str]:
    return [p.name for p in paths.path(path).iterdir()]


def _is_orbax_dir(path: str) -> bool:
    names = set(_listdir(path))
    return bool(names & {"_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "_sharding"})


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, str]:
    """(directory, format) for a checkpoint path; format is "legacy" or "orbax".

    Accepts a `checkpoint_N` directory, its `checkpoint` index file, a model directory
    (the latest `checkpoint_N` inside is taken), or `shipped:NAME` (a model shipped in
    prompt_transfer/assets, checked against its hashes first).
    """
    path = str(path).rstrip("/")
    if path.startswith(assets.SHIPPED_PREFIX):  # the project's own model, hash-checked
        path = assets.shipped_checkpoint(path)
    if not _exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    path = paths.absolute(path)  # tensorstore and orbax want absolute local paths
    if os.path.basename(path) == INDEX_FILE and not os.path.isdir(path):
        path = os.path.dirname(path) or "."
    elif not paths.is_remote(path) and os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint {path} is a file; give a checkpoint_N folder, its `checkpoint` index "
            "file, or the model directory that holds them"
        )
    names = _listdir(path)
    if INDEX_FILE in names:
        return path, "legacy"
    if "state" in names and _is_orbax_dir(f"{path}/state"):
        return f"{path}/state", "orbax"  # T5X's orbax layout: checkpoint_N/state/
    if _is_orbax_dir(path):
        return path, "orbax"
    steps = sorted(
        (int(m.group(1)), n) for n in names if (m := re.fullmatch(r"checkpoint_(\d+)", n))
    )
    if steps:
        return resolve_checkpoint(f"{path}/{steps[-1][1]}")
    raise CheckpointError(
        f"{path} holds no T5X checkpoint (no '{INDEX_FILE}' index, no orbax metadata, "
        "no checkpoint_N directories)"
    )


# ---------------------------------------------------------------------------------------------
# Legacy format: reading.


def _absolute_kvstore(kvstore: dict, ckpt_dir: str) -> dict:
    """T5X stores kvstore paths relative to the checkpoint directory (driver "gfile")."""
    rel = kvstore["path"]
    if paths.is_remote(ckpt_dir):
        bucket, _, prefix = ckpt_dir[len("gs://") :].partition("/")
        return {"driver": "gcs", "bucket": bucket, "path": f"{prefix}/{rel}".lstrip("/")}
    if kvstore.get("driver") in ("file", "gfile") and not os.path.isabs(rel):
        # tensorstore's file driver takes absolute paths only.
        return {"driver": "file", "path": os.path.abspath(os.path.join(ckpt_dir, rel))}
    return dict(kvstore)


def _ts_source(name: str, spec: dict, ckpt_dir: str) -> ParamSource:
    spec = dict(spec, kvstore=_absolute_kvstore(spec["kvstore"], ckpt_dir))
    where = spec["kvstore"].get("path", name)
    try:
        store = ts.open(spec, open=True, read=True).result()
    except Exception as e:
        raise CheckpointError(f"cannot open parameter {name} at {where}: {e}") from e

    def read(index):
        try:
            return np.asarray(store[index].read().result())
        except Exception as e:
            raise CheckpointError(
                f"cannot read parameter {name} from {where} (missing or truncated chunk?): {e}"
            ) from e

    return ParamSource(tuple(store.shape), np.dtype(store.dtype.numpy_dtype), read)


def _inline_source(value) -> ParamSource:
    array = np.asarray(value)
    return ParamSource(array.shape, array.dtype, lambda index: array[index])


def read_legacy_index(ckpt_dir: str) -> dict:
    """The decoded msgpack index of a legacy checkpoint directory."""
    index = f"{ckpt_dir}/{INDEX_FILE}"
    if not _exists(index):
        raise CheckpointError(f"checkpoint index not found: {index}")
    try:
        state = serialization.msgpack_restore(_read_bytes(index))
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException, ValueError) as e:
        raise CheckpointError(f"checkpoint index {index} is truncated or corrupt: {e}") from e
    if not isinstance(state, dict) or "target" not in state.get("optimizer", {}):
        raise CheckpointError(f"checkpoint index {index} has no optimizer/target parameter tree")
    return state


def _legacy_sources(ckpt_dir: str) -> tuple[dict[str, ParamSource], int | None]:
    state = read_legacy_index(ckpt_dir)
    target = state["optimizer"]["target"]
    is_spec = lambda x: isinstance(x, dict) and "kvstore" in x and "driver" in x
    flat = traverse_util.flatten_dict(target, sep="/", is_leaf=lambda _, x: is_spec(x))
    sources = {
        name: _ts_source(name, leaf, ckpt_dir) if is_spec(leaf) else _inline_source(leaf)
        for name, leaf in flat.items()
    }
    step = state["optimizer"].get("state", {}).get("step")
    return sources, None if step is None else int(step)


# ---------------------------------------------------------------------------------------------
# Orbax format.


def _orbax_metadata(ckpt_dir: str) -> tuple[dict, str]:
    """(flat name -> metadata, prefix) of the parameter subtree of an orbax checkpoint."""
    import orbax.checkpoint as ocp

    try:
        tree = ocp.PyTreeCheckpointer().metadata(ckpt_dir).item_metadata.tree
    except Exception as e:
        raise CheckpointError(f"cannot read orbax metadata of {ckpt_dir}: {e}") from e
    # T5X writes "target"; this project's trainer writes "trainable" (model tuning, pretraining).
    for prefix in ("target", "params", "trainable"):
        if isinstance(tree, dict) and prefix in tree:
            flat = traverse_util.flatten_dict(tree[prefix], sep="/")
            return flat, prefix
    return traverse_util.flatten_dict(tree, sep="/"), ""


def _restore_orbax(ckpt_dir, names, shardings, dtype) -> dict:
    import orbax.checkpoint as ocp

    meta, prefix = _orbax_metadata(ckpt_dir)
    restore_args = {
        n: ocp.ArrayRestoreArgs(
            sharding=shardings[n], dtype=dtype, global_shape=tuple(meta[n].shape)
        )
        for n in names
    }
    item = traverse_util.unflatten_dict({n: np.zeros(()) for n in names}, sep="/")
    args = traverse_util.unflatten_dict(restore_args, sep="/")
    if prefix:
        item, args = {prefix: item}, {prefix: args}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            ckpt_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True),
        )
    except Exception as e:
        raise CheckpointError(f"cannot restore orbax checkpoint {ckpt_dir}: {e}") from e
    return restored[prefix] if prefix else restored


# ---------------------------------------------------------------------------------------------
# Public API.


def initial_step(checkpoint: str | os.PathLike | None) -> int:
    """The step of a run's initial checkpoint, where its own steps count on from (T5X's: a run
    from the step-1,100,000 checkpoint saves checkpoint_1100100 after 100 steps); 0 without
    one, or for a checkpoint that records none. Read once per checkpoint (and again when a
    local one is rewritten)."""
    if not checkpoint:
        return 0
    key = str(checkpoint)
    if not paths.is_remote(key):
        index = Path(paths.native(key))
        index = index / "checkpoint" if index.is_dir() else index
        key = (key, index.stat().st_mtime_ns if index.exists() else None)
    if key not in _STEPS:
        _STEPS[key] = describe(checkpoint)[1] or 0
    return _STEPS[key]


_STEPS: dict = {}  # a checkpoint's step, by path (and its index file's time)


def describe(path: str | os.PathLike) -> tuple[list[tuple[str, tuple[int, ...], str]], int | None]:
    """([(parameter path, shape, dtype)], step) of a checkpoint, without reading arrays."""
    ckpt_dir, fmt = resolve_checkpoint(path)
    if fmt == "legacy":
        sources, step = _legacy_sources(ckpt_dir)
        rows = [(n, s.shape, str(s.dtype)) for n, s in sources.items()]
    else:
        meta, _ = _orbax_metadata(ckpt_dir)
        rows = [(n, tuple(m.shape), str(np.dtype(m.dtype))) for n, m in meta.items()]
        found = re.search(r"checkpoint_(\d+)", ckpt_dir)  # orbax keeps the step in the name
        step = int(found.group(1)) if found else None
    return sorted(rows), step


def _check_fits(found: dict[str, tuple], expected: dict[str, tuple], where: str, strict: bool):
    """Shapes first (the most telling mismatch), then missing, then unexpected names."""
    for name in sorted(set(expected) & set(found)):
        if tuple(found[name]) != tuple(expected[name]):
            raise CheckpointError(
                f"parameter {name} in {where} has shape {tuple(found[name])} but the configured "
                f"model expects {tuple(expected[name])}; check the model size gin file"
            )
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(
            f"checkpoint {where} lacks parameter {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = sorted(set(found) - set(expected))
    if strict and extra:
        raise CheckpointError(
            f"checkpoint {where} has parameter {extra[0]} that the configured "
            "model lacks; check the model size gin file"
        )


def _sliced_array(source: ParamSource, sharding, dtype) -> jax.Array:
    reads: dict = {}  # replicated shards ask for the same slice: read it once

    def fetch(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in reads:
            reads[key] = np.asarray(source.read(index), dtype=dtype)
        return reads[key]

    return jax.make_array_from_callback(source.shape, sharding, fetch)


def restore_params(
    path: str | os.PathLike,
    abstract_params,
    mesh: Mesh | None = None,
    rules=None,
    dtype=np.float32,
    strict: bool = True,
) -> dict:
    """Restore a checkpoint's parameters into arrays sharded per the logical axis rules.

    Args:
      path: a checkpoint (see `resolve_checkpoint`), local or gs://.
      abstract_params: the expected tree, boxed with logical axes (`t5.abstract_params`); only
        these names are read (extra checkpoint entries are an error unless `strict=False`).
      mesh: where to place the arrays; one device when None.
      rules: logical axis rules (default `partitioning.standard_logical_axis_rules()`).
      dtype: the dtype arrays are cast to while reading.

    Returns:
      The parameter tree of `jax.Array`s.
    """
    ckpt_dir, fmt = resolve_checkpoint(path)
    expected = traverse_util.flatten_dict(nn.unbox(abstract_params), sep="/")
    if mesh is None:
        one = SingleDeviceSharding(jax.devices()[0])
        shardings = {n: one for n in expected}
    else:
        shardings = traverse_util.flatten_dict(
            partitioning.param_shardings(abstract_params, mesh, rules), sep="/"
        )
    expected_shapes = {n: x.shape for n, x in expected.items()}
    if fmt == "legacy":
        sources, _ = _legacy_sources(ckpt_dir)
        _check_fits({n: s.shape for n, s in sources.items()}, expected_shapes, ckpt_dir, strict)
        flat = {n: _sliced_array(sources[n], shardings[n], dtype) for n in expected}
        return traverse_util.unflatten_dict(flat, sep="/")
    meta, _ = _orbax_metadata(ckpt_dir)
    _check_fits({n: tuple(m.shape) for n, m in meta.items()}, expected_shapes, ckpt_dir, strict)
    return _restore_orbax(ckpt_dir, list(expected), shardings, dtype)


def _chunks(shape: tuple[int, ...], itemsize: int) -> list[int]:
    chunks = list(shape)
    while math.prod(chunks) * itemsize > _MAX_CHUNK_BYTES:
        i = int(np.argmax(chunks))
        chunks[i] = math.ceil(chunks[i] / 2)
    return chunks


def _zarr_dtype(dtype: np.dtype) -> str:
    """zarr's name for a dtype; bfloat16 has no NumPy type string, zarr (and T5X) say so."""
    return "bfloat16" if dtype.name == "bfloat16" else dtype.str


def export_run(
    model_dir: str | os.PathLike, abstract_params, output: str | os.PathLike, dtype=np.float32
) -> Path:
    """Write a model-tuning / pre-training run's latest network as a T5X legacy checkpoint
    (cast to `dtype`: bfloat16 halves the size; the loader casts back on restore)."""
    params = restore_params(model_dir, abstract_params, dtype=dtype)
    _, step = describe(model_dir)
    return save_legacy_checkpoint(jax.tree.map(np.asarray, params), output, step=step or 0)


def save_legacy_checkpoint(params: dict, directory: str | os.PathLike, step: int = 0) -> Path:
    """Write `params` as a T5X legacy checkpoint directory (no optimizer state), atomically.

    Everything is written into a temporary sibling directory that is renamed into place at the
    end, so a failure leaves nothing that looks like a checkpoint.
    """
    if paths.is_remote(directory):
        raise CheckpointError(
            f"{directory}: checkpoints are written to a local folder; copy it to the bucket "
            "afterwards (gsutil -m cp -r)"
        )
    final = Path(paths.native(directory))
    if final.exists():
        raise CheckpointError(f"{final} already exists; choose a new output path or remove it")
    with files.atomic_directory(final.absolute()) as tmp:
        target = {}
        for name, value in traverse_util.flatten_dict(params, sep="/").items():
            array = np.asarray(value)
            if name.split("/")[-1] not in _TS_LEAVES:
                target[name] = array
                continue
            rel = "target." + name.replace("/", ".")
            metadata = {
                "chunks": _chunks(array.shape, array.dtype.itemsize),
                "compressor": {"id": "gzip", "level": 1},
                "dtype": _zarr_dtype(array.dtype),
                "shape": list(array.shape),
            }
            spec = {
                "driver": "zarr",
                "kvstore": {"driver": "gfile", "path": rel},
                "metadata": metadata,
            }
            store = ts.open(
                {**spec, "kvstore": {"driver": "file", "path": str(tmp / rel)}},
                create=True,
                open=False,
            ).result()
            store.write(array).result()
            target[name] = spec
        state = {
            "version": LEGACY_VERSION,
            "optimizer": {
                "target": traverse_util.unflatten_dict(target, sep="/"),
                "state": {"step": np.asarray(step, np.int32), "param_states": {}},
            },
        }
        (tmp / INDEX_FILE).write_bytes(serialization.msgpack_serialize(state))
    return final
