"""The prompt library: a directory store of trained prompts with metadata.

Layout: `<root>/<entry id>/prompt.npy` (float32 [P, E]), `<root>/<entry id>/meta.json` and, for a
deep prompt, `<root>/<entry id>/deep.npy` (float32 [P, W]: each position's keys and values in
every self-attention, the columns `prompts.widen` appends).
Each entry is written into a temporary directory and renamed into place, so concurrent writers
never clobber each other and a reader never sees half an entry; listing scans the directory
(there is no shared index to race on). `meta.json` carries a SHA-256 of the prompt's bytes,
checked on read: a corrupted entry is reported and skipped, never silently used. Prompts load
memory-mapped, so a large library costs little memory until used.

`<root>/.summaries.npz` is a cache, not an index: each prompt's mean token and mean unit-length
token (`similarity.summary`) by prompt hash, which is all the SPoT similarities read. Ranking
10,000 entries reads it instead of 10,000 prompts. An entry missing from it is read, verified
and added; a lost concurrent update only costs that work again.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np

from prompt_transfer.base import files, paths
from prompt_transfer.base.errors import UserError


class LibraryError(UserError):
    pass


# What to do about a library that is not there (`Library.require`).
CREATE_HINT = (
    "give an existing library's folder, or create one with `prompt-transfer library add` or "
    "`library import` (a run with LIBRARY_DIR creates one too)"
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One library prompt's metadata (what `meta.json` holds)."""

    id: str
    task: str
    model: str  # model identity, e.g. "t5_1_1_lm100k_base"
    model_fingerprint: str  # fingerprint of the frozen checkpoint it was trained with
    prompt_length: int
    embed_dim: int
    sha256: str
    steps: int = 0
    seed: int = 0
    score: float | None = None
    metric: str = ""
    config_hash: str = ""
    kind: str = "trained"  # trained | task_embedding | released | projected ...
    created: str = ""
    note: str = ""
    deep_width: int = 0  # W of deep.npy; 0: an input prompt only
    deep_sha256: str = ""


def prompt_sha256(prompt: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(prompt, np.float32).tobytes()).hexdigest()


def model_fingerprint(params) -> str:
    """A short fingerprint of a frozen network: its tree, shapes and a few values.

    Cheap (reads one row of the embedding and the first norm), stable across devices and
    restores, and different for differently trained checkpoints of one architecture.
    """
    from flax import traverse_util

    from prompt_transfer.network.partitioning import host_array

    flat = traverse_util.flatten_dict(params, sep="/")
    h = hashlib.sha256()
    for name in sorted(flat):
        h.update(f"{name}{tuple(flat[name].shape)}".encode())
    for name in ("token_embedder/embedding", "encoder/encoder_norm/scale"):
        if name in flat:
            h.update(np.asarray(host_array(flat[name][:1]), np.float32).tobytes())
    return h.hexdigest()[:16]


_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_entry_id(text: str) -> bool:
    """Whether `text` can name a library entry (no folder, no file suffix of a prompt)."""
    return bool(_ID.fullmatch(text)) and not text.endswith((".npy", ".prompt"))


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "_", text).strip("_.") or "prompt"


class Library:
    """A directory of prompt entries."""

    def __init__(self, root: str | os.PathLike):
        self.root = paths.path(root)  # local or gs://

    # -- where it is ------------------------------------------------------------------------
    def _named(self, given_as: str | None) -> str:
        return f"{given_as}={self.root}" if given_as else f"the library {self.root}"

    def check_folder(self, given_as: str | None = None) -> None:
        """Refuse a root that cannot be a folder (a file, or a path inside one); `given_as` is
        what the user set it with (`--library`), named in the refusal."""
        wrong = paths.folder_problem(self.root)
        if wrong:
            raise LibraryError(f"{self._named(given_as)} {wrong} for the library")

    def require(self, given_as: str | None = None) -> None:
        """Refuse to read a library that is not there: a mistyped path would read as an empty
        library ("0 entries"). Writing (`add`) creates the folder instead."""
        self.check_folder(given_as)
        if self.root.exists():
            return
        if given_as:
            where = f"{given_as}={self.root}: no library there"
        else:
            where = f"no library at {self.root}"
        raise LibraryError(f"{where} (no such folder); {CREATE_HINT}")

    # -- writing ---------------------------------------------------------------------------
    def add(
        self, prompt, *, task: str, model: str, model_fingerprint: str, deep=None, **meta
    ) -> Entry:
        """Add a prompt [P, E], with its deep part [P, W] when it has one (see the module
        docstring); NaN/inf prompts are refused. Returns the new entry."""
        prompt = np.asarray(prompt, np.float32)
        if prompt.ndim != 2:
            raise LibraryError(f"a prompt is [P, E]; got shape {prompt.shape}")
        parts = [prompt]
        if deep is not None:
            deep = np.asarray(deep, np.float32)
            if deep.ndim != 2 or deep.shape[0] != prompt.shape[0]:
                raise LibraryError(
                    f"a deep prompt is [P, W] with the prompt's P={prompt.shape[0]}; "
                    f"got shape {deep.shape}"
                )
            parts.append(deep)
            meta.update(deep_width=deep.shape[1], deep_sha256=prompt_sha256(deep))
        if not all(np.isfinite(part).all() for part in parts):
            raise LibraryError(f"prompt for task {task!r} holds NaN or inf values; not added")
        self.check_folder()
        digest = prompt_sha256(prompt)
        name_digest = prompt_sha256(np.concatenate(parts, 1)) if deep is not None else digest
        entry = Entry(
            id=f"{_slug(task)}-{name_digest[:12]}",
            task=task,
            model=model,
            model_fingerprint=model_fingerprint,
            prompt_length=prompt.shape[0],
            embed_dim=prompt.shape[1],
            sha256=digest,
            created=meta.pop("created", None)
            or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **meta,
        )
        final = self.root / entry.id
        if final.exists():  # same task, same prompt: already stored; new metadata replaces old
            return self._update(self.get(entry.id), entry)
        if not files.is_chief():  # process 0 of a multi-host job stores it
            return entry
        meta = json.dumps(dataclasses.asdict(entry), indent=1)
        if paths.is_remote(final):  # objects are whole each; meta.json, written last, lists it
            files.atomic_write_bytes(final / "prompt.npy", files.npy_bytes(prompt))
            if deep is not None:
                files.atomic_write_bytes(final / "deep.npy", files.npy_bytes(deep))
            files.atomic_write_text(final / "meta.json", meta)
            return entry
        try:
            with files.atomic_directory(final) as tmp:
                np.save(tmp / "prompt.npy", prompt)
                if deep is not None:
                    np.save(tmp / "deep.npy", deep)
                (tmp / "meta.json").write_text(meta)
        except OSError:
            if final.exists():  # another writer stored the same entry first
                return self.get(entry.id)
            raise
        return entry

    def _update(self, old: Entry, new: Entry) -> Entry:
        merged = dataclasses.replace(new, created=old.created)
        if merged != old:
            files.atomic_write_text(
                self.root / old.id / "meta.json", json.dumps(dataclasses.asdict(merged), indent=1)
            )
        return merged

    def _entry_dir(self, entry_id: str):
        """The folder of an entry id; an id that is not one folder name is refused."""
        if not _ID.fullmatch(entry_id):
            raise LibraryError(
                f"{entry_id!r} is not a library entry id (letters, digits, '_', '.', '-'; "
                "see `prompt-transfer library list`)"
            )
        return self.root / entry_id

    def remove(self, entry_id: str) -> None:
        path = self._entry_dir(entry_id)
        if not (path / "meta.json").exists():
            self.require()  # a missing library, not only a missing entry
            raise LibraryError(f"no library entry {entry_id!r} in {self.root}")
        if paths.is_remote(path):  # without its meta.json no reader lists it
            (path / "meta.json").unlink()
            path.rmtree()
            return
        trash = self.root / f".{entry_id}.removed-{os.getpid()}"
        os.rename(path, trash)  # atomic: readers see the entry or nothing
        shutil.rmtree(trash)

    # -- reading ---------------------------------------------------------------------------
    def get(self, entry_id: str) -> Entry:
        path = self._entry_dir(entry_id) / "meta.json"
        if not path.exists():
            self.require()  # a missing library, not only a missing entry
            close = [e.id for e in self.entries() if entry_id in e.id][:3]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise LibraryError(f"no library entry {entry_id!r} in {self.root}{hint}")
        fix = f"`prompt-transfer library remove {entry_id}`, then add the prompt again"
        return Entry(**files.read_json(path, fix))

    def entries(self, **where) -> list[Entry]:
        """Every entry (sorted by id), filtered by exact metadata matches (`task="rte"`)."""
        if not self.root.exists():
            return []
        out = []
        for path in sorted(self.root.glob("*/meta.json")):
            if path.parent.name.startswith("."):
                continue
            try:
                entry = Entry(**json.loads(path.read_text()))
            except (ValueError, TypeError) as e:  # bad JSON, missing or unknown fields
                warnings.warn(f"library entry {path.parent.name} skipped: {path} {e}", stacklevel=2)
                continue
            if all(getattr(entry, k) == v for k, v in where.items()):
                out.append(entry)
        return out

    def prompt(self, entry: Entry | str, verify: bool = True, deep: bool = False) -> np.ndarray:
        """The entry's prompt [P, E], memory-mapped; with `deep`, its wide form [P, E + W]
        (the deep part appended; an entry without one is refused). Hashes are checked unless
        `verify=False`."""
        entry = self.get(entry) if isinstance(entry, str) else entry
        prompt = self._array(entry, "prompt.npy", entry.sha256, verify)
        if not deep:
            return prompt
        if not entry.deep_width:
            raise LibraryError(
                f"library entry {entry.id} holds an input prompt only; a deep-prompt run "
                "transfers from entries trained with DEEP_PROMPT=True"
            )
        deep_part = self._array(entry, "deep.npy", entry.deep_sha256, verify)
        return np.concatenate([prompt, deep_part], 1)

    def _array(self, entry: Entry, name: str, sha256: str, verify: bool) -> np.ndarray:
        """An entry's array, refused in one line naming the entry and the file when it is
        missing, cut short or not what its meta.json's hash says (issue 38)."""
        file = self.root / entry.id / name
        fix = f"`prompt-transfer library remove {entry.id}`, then add the prompt again"
        if not file.exists():
            raise LibraryError(f"library entry {entry.id} is damaged: {file} is missing; {fix}")
        try:
            array = files.load_npy(file, mmap=True, fix=fix)
        except files.DamagedFile as e:
            raise LibraryError(f"library entry {entry.id} is damaged: {e}") from None
        if verify and prompt_sha256(array) != sha256:
            raise LibraryError(
                f"library entry {entry.id} is damaged: {file} does not hold what its "
                f"meta.json's sha256 says; {fix}"
            )
        return array

    def _cut_short(self, entry: Entry, deep: bool) -> str | None:
        """What a file listing tells of an entry without reading it: a file missing or of
        another size than its shape needs (a partial copy); None when the sizes are right."""
        wanted = {"prompt.npy": (entry.prompt_length, entry.embed_dim)}
        if deep and entry.deep_width:
            wanted["deep.npy"] = (entry.prompt_length, entry.deep_width)
        fix = f"`prompt-transfer library remove {entry.id}`, then add the prompt again"
        for name, shape in wanted.items():
            file = self.root / entry.id / name
            size, expected = files.size(file), files.npy_size(shape)
            if size != expected:
                return (
                    f"library entry {entry.id} is damaged: {file} is damaged ({size} of "
                    f"{expected} bytes); {fix}"
                )
        return None

    def problem(self, entry: Entry) -> str | None:
        """What is wrong with an entry's files (None: its arrays load and match their hashes)."""
        try:
            self.prompt(entry, deep=bool(entry.deep_width))
        except LibraryError as e:
            return str(e)
        return None

    def load(
        self, entries: list[Entry] | None = None, deep: bool = False
    ) -> tuple[list[Entry], np.ndarray]:
        """(entries, prompts [N, P, E], or [N, P, E + W] with `deep`) of the healthy entries;
        corrupted ones are reported (a warning naming each) and skipped. Entries must share
        one prompt shape."""
        good, prompts = [], []
        for entry in self.entries() if entries is None else entries:
            try:
                prompts.append(self.prompt(entry, deep=deep))
                good.append(entry)
            except LibraryError as e:
                warnings.warn(str(e), stacklevel=2)
        if not good:
            return [], np.zeros((0, 0, 0), np.float32)
        shapes = {p.shape for p in prompts}
        if len(shapes) > 1:
            raise LibraryError(
                f"library entries have different prompt shapes {sorted(shapes)}; "
                "select entries of one shape (e.g. by model)"
            )
        return good, np.stack(prompts)

    def summaries(self, entries: list[Entry], deep: bool = False) -> tuple[list[Entry], np.ndarray]:
        """(the healthy entries, their summaries [N, 2, D]) of each prompt (its wide form with
        `deep`): read from the library's summary cache, computed and added for the rest."""
        from prompt_transfer.transfer import similarity

        cache = self._read_summaries()
        good, rows, added = [], [], 0
        for entry in entries:
            key = f"{entry.sha256}:{entry.deep_sha256 if deep else ''}"
            row = cache.get(key)
            cut = row is not None and self._cut_short(entry, deep)
            if cut:  # its summary was cached while it was whole: the prompt is not any more
                warnings.warn(cut, stacklevel=2)
                continue
            if row is None:
                try:
                    row = cache[key] = similarity.summary(self.prompt(entry, deep=deep))
                except LibraryError as e:
                    warnings.warn(str(e), stacklevel=2)
                    continue
                added += 1
            good.append(entry)
            rows.append(row)
        if added:
            self._write_summaries(cache)
        widths = {r.shape[1] for r in rows}
        if len(widths) > 1:
            raise LibraryError(
                f"library entries have different prompt widths {sorted(widths)}; "
                "select entries of one model"
            )
        return good, (np.stack(rows) if rows else np.zeros((0, 2, 0), np.float32))

    def _read_summaries(self) -> dict[str, np.ndarray]:
        try:
            source = self.root / SUMMARY_FILE
            if paths.is_remote(source):
                source = io.BytesIO(source.read_bytes())
            with np.load(source) as f:
                return {
                    key: row
                    for width in f.files
                    if width.endswith("_keys")
                    for key, row in zip(
                        f[width].tolist(), f[width.replace("_keys", "_rows")], strict=True
                    )
                }
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # absent or damaged: rebuilt
            return {}

    def _write_summaries(self, cache: dict[str, np.ndarray]) -> None:
        groups: dict[int, list] = {}
        for key, row in cache.items():
            groups.setdefault(row.shape[1], []).append((key, row))
        arrays = {}
        for width, items in groups.items():
            arrays[f"w{width}_keys"] = np.asarray([k for k, _ in items])
            arrays[f"w{width}_rows"] = np.stack([r for _, r in items]).astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            files.atomic_write_bytes(self.root / SUMMARY_FILE, buffer.getvalue())
        except OSError as e:  # a read-only library ranks all the same, only slower
            warnings.warn(f"library summaries not saved in {self.root}: {e}", stacklevel=3)


SUMMARY_FILE = ".summaries.npz"
# T5X prompt tuning's numpy checkpoint name, prompts.T5X_PROMPT_FILE (written out: the library
# reads and writes files without importing JAX)
T5X_PROMPT_FILE = "encoder.prompt.prompt.prompt"


def write_t5x_prompt(prompt, directory: str | os.PathLike):
    """`prompt` as a T5X prompt-tuning numpy checkpoint (a new folder holding one file, named
    without a suffix as T5X names it), which `read_t5x_prompt` reads back."""
    directory = paths.path(directory)
    if directory.exists():
        raise LibraryError(f"{directory} already exists; choose a new --output")
    if paths.is_remote(directory):
        files.atomic_write_bytes(directory / T5X_PROMPT_FILE, files.npy_bytes(prompt))
        return directory / T5X_PROMPT_FILE
    with files.atomic_directory(paths.absolute(directory)) as tmp:
        with open(tmp / T5X_PROMPT_FILE, "wb") as f:
            np.save(f, np.asarray(prompt, np.float32))
    return directory / T5X_PROMPT_FILE


def read_t5x_prompt(path: str | os.PathLike) -> np.ndarray:
    """A prompt from a `.npy` file or a T5X prompt-tuning numpy checkpoint directory (one file
    per parameter, named by its dotted path, e.g. `encoder.prompt.prompt.prompt`)."""
    path = paths.path(path)
    if path.is_dir():
        candidates = sorted(
            folder / name for folder, _, names in path.walk() for name in names if "prompt" in name
        )
        if not candidates:
            raise LibraryError(f"no prompt parameter file in T5X numpy checkpoint {path}")
        path = candidates[0]
    if not path.exists():
        raise LibraryError(f"prompt file not found: {path}")
    with path.open("rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise LibraryError(f"{path} is not a NumPy array file (no .npy header)")
    prompt = files.load_npy(path, fix="give a prompt saved whole with numpy.save")
    if prompt.ndim != 2:
        raise LibraryError(
            f"{path} holds an array of shape {prompt.shape}, not a prompt; give a 2-D array "
            "[P, E] (prompt length x model width)"
        )
    return np.asarray(prompt, np.float32)


def released_prompt_metadata(readme: str | os.PathLike) -> dict[str, dict]:
    """{file name: {task, prompt_length, score, metric, ...}} from the table in the README of
    google-research/prompt-tuning's released prompts."""
    rows = {}
    for line in paths.path(readme).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 9 or not cells[0].endswith(".npy"):
            continue
        path, length, batch, topology, partition, dataset, split, metric, score = cells[:9]
        rows[Path(path).name] = {
            "task": dataset.lower(),
            "prompt_length": int(length),
            "metric": f"{split} {metric}",
            "score_text": score,
            "note": cells[9] if len(cells) > 9 else "",
        }
    return rows
