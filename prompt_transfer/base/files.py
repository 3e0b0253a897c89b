"""The one atomic write, and the files every layer reads back (.npy arrays, JSON).

Every file the project writes goes through `atomic_write_bytes` or `atomic_directory`: readers
(a resumed run, a second process, a crash) see the old content or the new one, never a partial
file. Local writes go to a temporary sibling, are fsync'ed, then renamed, and the folder is
fsync'ed; an object store has no partial objects, so there the write is direct. In a
multi-host job only process 0 writes the shared files (`is_chief`). A damaged file read back is
named in one line with its fix (`DamagedFile`).
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

from prompt_transfer.base.errors import UserError
from prompt_transfer.base.paths import PathLike, is_remote, native, path


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


def _temporary_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def remove_killed_temporaries(final: PathLike) -> None:
    """Remove what an `atomic_directory(final)` killed before its rename left beside `final`
    (a kill skips its cleanup). Only where no other process may be writing `final` now (a
    locked run directory): a live writer's temporary looks the same."""
    final = Path(native(final))
    for killed in final.parent.glob(f"{_temporary_prefix(final)}*"):
        shutil.rmtree(killed, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it appears at `final` only when the block ends
    without error. An existing `final` is an error unless `replace`, which swaps it out only once
    the new one is complete. Local paths only (a directory is not one object in a bucket)."""
    if is_remote(final):
        raise ValueError(f"{final}: atomic directories are local; write the files one by one")
    final = Path(native(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final), dir=final.parent))
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
