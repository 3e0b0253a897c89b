"""Where things live: the one path layer, the one atomic write, and the environment settings.

Paths go through `path()`, which speaks local paths and `gs://` alike (etils' epath, the layer
orbax and T5X use). Every file the project writes goes through `atomic_write_bytes` or
`atomic_directory`: readers (a resumed run, a second process, a crash) see the old content or
the new one, never a partial file. Local writes go to a temporary sibling, are fsync'ed, then
renamed, and the folder is fsync'ed; an object store has no partial objects, so there the
write is direct. In a multi-host job only process 0 writes the shared files (`is_chief`).

Environment variables that change defaults are read here and nowhere else:

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

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from etils import epath

from prompt_transfer.base.errors import UserError

PathLike = str | os.PathLike


_MOUNTED: list[tuple[str, str]] = []  # see `mounted`


def mounts() -> list[tuple[str, str]]:
    """(URI prefix, local folder) pairs: $PROMPT_TRANSFER_MOUNTS, then those of `mounted`."""
    pairs = []
    for item in (_env("PROMPT_TRANSFER_MOUNTS") or "").split(";"):
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


# ---------------------------------------------------------------------------------------------
# What a path given for a folder or a file must not be. Each returns what is wrong worded to
# follow `NAME=value` in a one-line refusal (`settings.Rule.valid` takes `folder_problem` as
# it is), or None; remote paths pass (an object store has no folders to mistake for files).


def _file_above(local: Path) -> Path | None:
    """The nearest of `local`'s parents that is a file (which keeps anything from living below)."""
    return next((p for p in local.absolute().parents if p.is_file()), None)


def folder_problem(value: PathLike | None) -> str | None:
    """What keeps `value` from being a folder: a file there, or a file above it (the OS says
    only "File exists" or "Not a directory", naming neither the setting nor the fix)."""
    if value is None or is_remote(value):
        return None
    local = Path(native(value))
    if local.is_file():
        return "is a file, not a folder; give a folder's path"
    above = _file_above(local)
    return f"lies inside {above}, which is a file; give a folder's path" if above else None


def file_problem(value: PathLike | None, example: str) -> str | None:
    """What keeps a file from being written at `value`: a folder there (e.g. `{value}/example`
    is what was meant), or a file above it."""
    if value is None or is_remote(value):
        return None
    local = Path(native(value))
    if local.is_dir():
        return f"is a folder; give a file's path, e.g. {local / example}"
    above = _file_above(local)
    return (
        f"lies inside {above}, which is a file; give a file's path in a folder" if above else None
    )


# ---------------------------------------------------------------------------------------------
# Writes.


def is_chief() -> bool:
    """Whether this process writes the job's shared files: always, but in a multi-host job only
    process 0 (the others would write the same bytes to the same place)."""
    if "jax" not in sys.modules:  # a file tool that never started JAX
        return True
    import jax

    return jax.process_index() == 0


def atomic_write_bytes(target: PathLike, payload: bytes) -> None:
    """Write `payload` to `target` whole or not at all (on process 0 only, see `is_chief`)."""
    if not is_chief():
        return
    if is_remote(target):  # a bucket has no folders to make: an object's name holds its path
        path(target).write_bytes(payload)
        return
    target = Path(native(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)  # the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(target: PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode())


def append_text(target: PathLike, text: str) -> None:
    """Add `text` at the end of `target`, synced (process 0 only). An object in a bucket cannot
    grow: the client reads it and writes it again whole, so readers see it before or after."""
    if not is_chief():
        return
    if is_remote(target):
        with path(target).open("a") as f:  # epath's gs:// files exist only inside a with-block
            f.write(text)
        return
    with open(native(target), "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return buffer.getvalue()


def save_npy(target: PathLike, array) -> None:
    """A float32 `.npy`, written atomically (prompts are always float32 on disk)."""
    atomic_write_bytes(target, npy_bytes(np.asarray(array, np.float32)))


class DamagedFile(UserError):
    """A file the project wrote and reads back is not whole (issue 38): one line names it,
    what is wrong ("10 of 547 bytes") and the way out."""


def load_npy(
    source: PathLike, mmap: bool = False, fix: str = "restore it from a copy, or write it again"
) -> np.ndarray:
    """A `.npy` array, local or remote; `mmap` maps a local file instead of reading it. A file
    cut short or garbled is refused in one line (DamagedFile) ending with `fix`."""
    try:
        if is_remote(source):
            return np.load(io.BytesIO(path(source).read_bytes()), allow_pickle=False)
        return np.load(native(source), mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise DamagedFile(f"{source} is damaged ({npy_damage(source, e)}); {fix}") from None


def size(p: PathLike) -> int:
    """A file's size in bytes, local or remote (0 when it is not there)."""
    if is_remote(p):
        file = path(p)
        return file.stat().length if file.exists() else 0
    local = native(p)
    return os.path.getsize(local) if os.path.isfile(local) else 0


def npy_size(shape: tuple[int, ...], dtype=np.float32) -> int:
    """The bytes numpy.save writes for an array of `shape` and `dtype`: its header, then data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    )
    return len(header.getvalue()) + int(np.prod(shape)) * np.dtype(dtype).itemsize


def npy_damage(source: PathLike, error: BaseException | None = None) -> str:
    """What is wrong with a `.npy` file that does not load: its size against the size its
    header promises ("10 of 547 bytes"), or a header cut short."""
    data = path(source).read_bytes()
    try:
        stream = io.BytesIO(data)
        version = np.lib.format.read_magic(stream)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(stream)
        expected = stream.tell() + int(np.prod(shape)) * dtype.itemsize
    except Exception:
        return f"{len(data)} bytes, its .npy header cut short or garbled"
    if len(data) != expected:
        return f"{len(data)} of {expected} bytes"
    return f"unreadable: {str(error).splitlines()[0] if error else 'unknown'}"


def read_json(source: PathLike, fix: str = "restore it from a copy, or write it again"):
    """A JSON file the project wrote, parsed; one cut short or garbled is refused in one line
    (DamagedFile) naming it and its size, ending with `fix`."""
    data = path(source).read_bytes()
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0]
        raise DamagedFile(
            f"{source} is damaged ({len(data)} bytes, not JSON: {reason}); {fix}"
        ) from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_directory(final: PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it appears at `final` only when the block ends
    without error. An existing `final` is an error unless `replace`, which swaps it out only once
    the new one is complete. Local paths only (a directory is not one object in a bucket)."""
    if is_remote(final):
        raise ValueError(f"{final}: atomic directories are local; write the files one by one")
    final = Path(native(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if replace and final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)  # fails if `final` appeared meanwhile: nothing is clobbered
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Settings from the environment.


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
