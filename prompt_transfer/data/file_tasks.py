"""Bring your own task: a classification, sentence-pair or generation task from TSV or JSONL.

A TSV file has a header row naming its columns; a JSONL file holds one object per line. The
input is `"<prefix> col1: value col2: value"` (T5's format), the target the `target` column.
With `labels` the task is a classification task (rank-classified, accuracy); without, it is a
generation task (decoded, SQuAD exact match and F1).

Register one from gin (`FILE_TASKS = [@file_tasks.FileTask()]`, see gin/tasks/file_task.gin) or
once from the command line (`prompt-transfer add-task ...`), which records it under
$PROMPT_TRANSFER_TASKS (default ~/.config/prompt_transfer/tasks) for every later launch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from prompt_transfer.base import environment, errors, files, paths
from prompt_transfer.base.errors import UserError
from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.data import metrics, registry, text_formats, vocab

SPLITS = ("train", "validation", "test")


class FileTaskError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class FileTask:
    """A task read from local files. `inputs` are the columns joined into the model input."""

    name: str
    train: str
    validation: str
    test: str = ""
    inputs: tuple[str, ...] = ("text",)
    target: str = "label"
    labels: tuple[str, ...] = ()
    prefix: str = ""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:]*", self.name):
            raise FileTaskError(
                f"task name {self.name!r} may hold letters, digits, '_', '.' and ':' only "
                "(SeqIO's rule; it also names the record file)"
            )

    def files(self) -> dict[str, str]:
        return {s: getattr(self, s) for s in SPLITS if getattr(self, s)}


def read_rows(path: str | os.PathLike, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a TSV (with header) or JSONL file (local or gs://), as strings; errors name
    file and line."""
    path = paths.path(path)
    if not path.is_file():
        raise FileTaskError(f"task file not found: {path}")
    try:
        return _read_rows(path, columns)
    except UnicodeDecodeError as e:
        raise errors.not_utf8(path, e) from None


def _read_rows(path, columns: Sequence[str]) -> list[dict[str, str]]:
    rows = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FileTaskError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            missing = [c for c in columns if c not in row]
            if missing:
                raise FileTaskError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
            rows.append({c: str(row[c]) for c in columns})
        return rows
    with io.StringIO(path.read_text(), newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or any(c not in header for c in columns):
            raise FileTaskError(
                f"{path}:1: header {header} lacks column(s) "
                f"{[c for c in columns if c not in (header or [])]}"
            )
        for number, values in enumerate(reader, start=2):
            if len(values) != len(header):
                raise FileTaskError(
                    f"{path}:{number}: {len(values)} fields but the header has {len(header)}"
                )
            row = dict(zip(header, values, strict=True))
            rows.append({c: row[c] for c in columns})
    return rows


def _examples(task: FileTask, split: str) -> list[dict[str, str]]:
    path = task.files()[split]
    rows = read_rows(path, [*task.inputs, task.target])
    if not rows:
        raise FileTaskError(f"{path}: the {split} split has no examples; add some or leave it out")
    prefix = task.prefix or task.name
    examples = []
    for number, row in enumerate(rows, start=1):
        if task.labels and row[task.target] not in task.labels:
            raise FileTaskError(
                f"{path}: example {number} has label {row[task.target]!r}, "
                f"not one of {list(task.labels)}"
            )
        fields = " ".join(f"{c}: {text_formats.clean_text(row[c])}" for c in task.inputs)
        examples.append({"inputs": f"{prefix} {fields}", "targets": row[task.target]})
    return examples


def register_file_task(task: FileTask) -> str:
    """Validate every file now (bad rows fail here, not mid-run) and register the task."""
    seqio = import_seqio()
    splits = {split: _examples(task, split) for split in task.files()}

    def dataset_fn(split, shuffle_files, seed=None):
        tf = import_tensorflow()
        rows = splits[split]
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": [r["inputs"] for r in rows], "targets": [r["targets"] for r in rows]}
        )

    if task.labels:
        kwargs = {
            "metric_fns": [metrics.accuracy],
            "postprocess_fn": text_formats.string_label_to_class_id(task.labels),
        }
    else:
        kwargs = {"metric_fns": [lambda t, p: metrics.squad([[x] for x in t], p)]}
    registry.register_text_task(
        task.name,
        seqio.FunctionDataSource(dataset_fn, tuple(splits)),
        vocab.task_vocabulary(),
        labels=task.labels or None,
        **kwargs,
    )
    return task.name


def user_tasks_dir() -> Path:
    return environment.user_tasks_dir()


def save_file_task(task: FileTask) -> Path:
    """Validate, register, and record `task` so that later launches register it too."""
    register_file_task(task)
    spec = dataclasses.asdict(task)
    spec.update({s: paths.absolute(p) for s, p in task.files().items()})
    path = user_tasks_dir() / f"{task.name}.json"
    files.atomic_write_text(path, json.dumps(spec, indent=1))
    return path


def load_user_tasks() -> list[str]:
    """Register every task recorded by `add-task`."""
    names = []
    for path in sorted(user_tasks_dir().glob("*.json")):
        try:  # one broken record (its files moved, say) must not stop every other command
            spec = json.loads(path.read_text())
            spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
            names.append(register_file_task(FileTask(**spec)))
        except (UserError, ValueError, TypeError, OSError) as e:
            warnings.warn(
                f"task record {path} skipped ({errors.one_line(e)}); add the task again "
                "or remove the record",
                stacklevel=2,
            )
    return names
