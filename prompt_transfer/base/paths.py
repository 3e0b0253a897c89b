"""Where things live: the one path layer, and what a path given for a folder or a file must
not be.

Paths go through `path()`, which speaks local paths and `gs://` alike (etils' epath, the layer
orbax and T5X use); PROMPT_TRANSFER_MOUNTS reads and writes bucket prefixes through a local
folder (`mounts`). What the project writes goes through files.py; the environment variables
that change defaults are environment.py's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from etils import epath

from prompt_transfer.base import environment

PathLike = str | os.PathLike


_MOUNTED: list[tuple[str, str]] = []  # see `mounted`


def mounts() -> list[tuple[str, str]]:
    """(URI prefix, local folder) pairs: $PROMPT_TRANSFER_MOUNTS, then those of `mounted`."""
    pairs = []
    for item in environment.mounts().split(";"):
        prefix, sep, local = item.strip().partition("=")
        if sep and "://" in prefix and local:
            pairs.append((prefix.rstrip("/"), local))
    return pairs + _MOUNTED


@contextlib.contextmanager
def mounted(prefix: str, local: PathLike) -> Iterator[None]:
    """Within the block, paths under `prefix` (`gs://bucket`) live in the folder `local`: what
    a gcsfuse mount gives, and how tests stand a local folder in for a bucket."""
    item = (prefix.rstrip("/"), os.fspath(local))
    _MOUNTED.append(item)
    try:
        yield
    finally:
        _MOUNTED.remove(item)


def native(p: PathLike) -> str:
    """`p` as the string to hand to code that opens files itself (orbax, tensorstore,
    TensorFlow, NumPy): a mounted prefix becomes its local folder; anything else as given."""
    text = os.fspath(p)
    for prefix, local in mounts():
        if text == prefix or text.startswith(prefix + "/"):
            return local + text[len(prefix) :]
    return text


def path(p: PathLike) -> epath.Path:
    """A path object for `p`, local or remote (`gs://bucket/dir`), through any mount. Every
    path a user gives (MODEL_DIR, WORK_DIR, libraries, task and prompt files) goes through
    here: `pathlib.Path('gs://b/x')` would be the local folder `./gs:/b/x`."""
    return epath.Path(native(p))


def is_remote(p: PathLike) -> bool:
    return "://" in native(p)


def absolute(p: PathLike) -> str:
    """`p` as an absolute string (tensorstore and orbax need one); remote paths as given."""
    text = native(p)
    return text if is_remote(text) else str(Path(text).absolute())


def _file_above(local: Path) -> Path | None:
    """The nearest of `local`'s parents that is a file (which keeps anything from living below)."""
    return next((p for p in local.absolute().parents if p.is_file()), None)


def _quoted(value: PathLike) -> str | None:
    """A path that starts with a quote mark: quoted for gin and again around that, both kept
    (a shell variable expanded unquoted does it), it would name a folder that starts with one."""
    if str(value)[:1] in ("'", '"'):
        return "starts with a quote mark (quoted twice?); quote the path once, for gin: '/a/b'"
    return None


def _local(value: PathLike | None) -> tuple[str | None, Path | None]:
    """(what is wrong with `value` before it is looked at, the local path to look at): no path,
    a remote one (an object store has no folders to mistake) and a quoted one are not."""
    if value is None or is_remote(value):
        return None, None
    quoted = _quoted(value)
    return quoted, None if quoted else Path(native(value))


def folder_problem(value: PathLike | None) -> str | None:
    """What keeps `value` from being a folder: a file there, or a file above it (the OS says
    only "File exists" or "Not a directory", naming neither the setting nor the fix), or a
    quote mark it starts with."""
    problem, local = _local(value)
    if local is None:
        return problem
    if local.is_file():
        return "is a file, not a folder; give a folder's path"
    above = _file_above(local)
    return f"lies inside {above}, which is a file; give a folder's path" if above else None


def file_problem(value: PathLike | None, example: str) -> str | None:
    """What keeps a file from being written at `value`: a folder there (e.g. `{value}/example`
    is what was meant), or a file above it, or a quote mark it starts with."""
    problem, local = _local(value)
    if local is None:
        return problem
    if local.is_dir():
        return f"is a folder; give a file's path, e.g. {local / example}"
    above = _file_above(local)
    return (
        f"lies inside {above}, which is a file; give a file's path in a folder" if above else None
    )
