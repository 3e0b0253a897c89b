"""Environment variables that change defaults, read here and nowhere else:

PROMPT_TRANSFER_CACHE        root of the caches below (default ~/.cache/prompt_transfer)
PROMPT_TRANSFER_JAX_CACHE    compiled programs (JAX's own JAX_COMPILATION_CACHE_DIR wins)
PROMPT_TRANSFER_DATA         the prepared offline task suite
PROMPT_TRANSFER_LIBRARY      the default prompt library of `prompt-transfer library`
PROMPT_TRANSFER_TASKS        tasks recorded by `add-task` (default ~/.config/prompt_transfer)
PROMPT_TRANSFER_VOCAB        a local SentencePiece model for tasks/ instead of T5's gs:// one
PROMPT_TRANSFER_DISTRIBUTED  1 on every host of a multi-host job: jax.distributed joins them
                             (unset: joined on a Cloud TPU VM; 0: never)
PROMPT_TRANSFER_MOUNTS       bucket prefixes read and written through a local folder, e.g.
                             'gs://bucket=/gcs/bucket' (a gcsfuse mount); ';' between several
TFDS_DATA_DIR                TFDS's own: where TFDS data sets are prepared (--tfds_data_dir)
"""

from __future__ import annotations

import os
from pathlib import Path


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def cache_root() -> Path:
    return Path(_env("PROMPT_TRANSFER_CACHE") or Path.home() / ".cache" / "prompt_transfer")


def jax_cache_dir() -> str:
    return _env("PROMPT_TRANSFER_JAX_CACHE") or str(cache_root() / "jax")


def offline_data_dir() -> Path:
    return Path(_env("PROMPT_TRANSFER_DATA") or cache_root() / "offline")


def library_dir() -> str:
    return _env("PROMPT_TRANSFER_LIBRARY") or str(cache_root() / "library")


def library_dir_set_by() -> str | None:
    """What chose `library_dir()`, as a refusal names it: "$PROMPT_TRANSFER_LIBRARY", or None
    for the default."""
    return "$PROMPT_TRANSFER_LIBRARY" if _env("PROMPT_TRANSFER_LIBRARY") else None


def user_tasks_dir() -> Path:
    default = Path.home() / ".config" / "prompt_transfer" / "tasks"
    return Path(_env("PROMPT_TRANSFER_TASKS") or default)


def vocab_override() -> str | None:
    return _env("PROMPT_TRANSFER_VOCAB")


def drop_vocab_override() -> bool:
    """Forget $PROMPT_TRANSFER_VOCAB for this process; True when it was set."""
    return os.environ.pop("PROMPT_TRANSFER_VOCAB", None) is not None


def tfds_data_dir() -> str | None:
    """$TFDS_DATA_DIR, TFDS's own setting (the run commands' --tfds_data_dir wins over it)."""
    return _env("TFDS_DATA_DIR")


def distributed() -> bool | None:
    """$PROMPT_TRANSFER_DISTRIBUTED: True (join), False ('0': never), None (unset: decide)."""
    value = _env("PROMPT_TRANSFER_DISTRIBUTED")
    return None if value is None else value not in ("0", "false", "False")


def mounts() -> str:
    """$PROMPT_TRANSFER_MOUNTS as given (paths.mounts reads its pairs)."""
    return _env("PROMPT_TRANSFER_MOUNTS") or ""
