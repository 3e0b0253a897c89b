"""The one file format of what a run keeps beside its prompt: arrays in an .npz under
MODEL_DIR/transfer/, written once (atomically) when the run starts, read by every later process
and command (an attention run's sources and module, a multi-task run's task parts)."""

from __future__ import annotations

import io

import numpy as np

from prompt_transfer.base import files, paths

FOLDER = "transfer"


def write(model_dir, file: str, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.atomic_write_bytes(paths.path(model_dir) / FOLDER / file, buffer.getvalue())


def read(model_dir, file: str) -> dict[str, np.ndarray] | None:
    """{name: array} of the file in `model_dir` (None: the run has no such file)."""
    if not model_dir:
        return None
    where = paths.path(model_dir) / FOLDER / file
    if not where.exists():
        return None
    with np.load(io.BytesIO(where.read_bytes())) as saved:
        return {name: saved[name] for name in saved.files}


def exists(model_dir, file: str) -> bool:
    return bool(model_dir) and (paths.path(model_dir) / FOLDER / file).exists()


def prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays named `prefix/NAME`, as {NAME: array}."""
    return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
