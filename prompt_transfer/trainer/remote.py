"""Remote paths a run needs, probed before any work: one line instead of a client's traceback.

A run's gs:// inputs (the vocabulary its tasks read, INITIAL_CHECKPOINT_PATH, its file task's
files, the TFDS data folder) must exist; its output folders (MODEL_DIR, WORK_DIR, LIBRARY_DIR)
need only their bucket to answer. Each path is asked once per process, all of them at once,
and the answer comes within PROBE_SECONDS: TensorFlow's gs:// client tries a refused
connection 10 times with backoff (195 s measured) before it says so, and a silent one longer.
What fails is refused with the setting, the path, the reason (`no network`, `no credentials`,
`not found`) and the local setting to use instead. Local and mounted paths (paths.mounts) are
not probed.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from prompt_transfer.base import environment, errors, paths
from prompt_transfer.base.errors import UserError
from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.data import batches, registry, vocab

if TYPE_CHECKING:
    from prompt_transfer.trainer.config import RunSpec

PROBE_SECONDS = 5.0  # a reachable bucket answers in well under a second
NO_NETWORK, NO_CREDENTIALS, NOT_FOUND = "no network", "no credentials", "not found"

# How TensorFlow's client (curl underneath) and Python's say each reason.
_NETWORK = re.compile(
    r"libcurl code|Could not resolve|Failed to connect|Connection refused|timed out|"
    r"Network is unreachable|name resolution|Name or service not known",
    re.IGNORECASE,
)
_CREDENTIALS = re.compile(r"credentials|Unauthori[sz]ed|Forbidden|Anonymous caller", re.I)
_MISSING = re.compile(r"No such object|not found", re.IGNORECASE)
_DENIED = ("PermissionDeniedError", "UnauthenticatedError", "RefreshError")

_answers: dict[tuple[str, bool], tuple[str, str] | None] = {}  # (path, output) -> answer


class RemoteError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class Need:
    """A path a run reads (a file or a folder, which must exist) or writes (`output`: a folder
    that may be absent, but whose bucket must answer)."""

    setting: str  # how the user named it: `VOCABULARY='gs://...'`, `--tfds_data_dir=gs://...`
    path: str
    instead: str  # the local setting to use instead
    output: bool = False


def classify(error: BaseException) -> tuple[str, str]:
    """(reason, the client's own words, shortened) for an exception of a remote read."""
    line = errors.one_line(error)
    status = re.search(r"HTTP response code (\d+)", line)
    code = status.group(1) if status else None
    detail = status.group(0) if status else line.rpartition("error details: ")[2][:120]
    kind = type(error).__name__
    if code in ("401", "403") or kind in _DENIED or isinstance(error, PermissionError):
        return NO_CREDENTIALS, detail
    if code == "404" or kind == "NotFoundError" or isinstance(error, FileNotFoundError):
        return NOT_FOUND, detail
    if isinstance(error, ConnectionError | TimeoutError) or _NETWORK.search(line):
        return NO_NETWORK, detail
    if _CREDENTIALS.search(line):
        return NO_CREDENTIALS, detail
    if _MISSING.search(line):
        return NOT_FOUND, detail
    return kind, detail


def _ask(path: str, output: bool) -> tuple[str, str] | None:
    """None when `path` can be used, else (reason, detail). An output folder may be absent."""
    try:
        found = paths.path(path).exists()
    except Exception as e:  # what each client raises differs: classify reads its words
        return classify(e)
    return None if found or output else (NOT_FOUND, "no such object or folder")


def _client() -> None:
    """Load the gs:// client (TensorFlow's filesystem, which epath takes when it is installed)
    before the clock starts: its import alone took 4.3 s here, and longer on a busy machine,
    which is no answer about the network."""
    try:
        import_tensorflow()
    except ImportError:  # epath then goes through fsspec, imported when asked
        pass


def probe(items: Iterable[tuple[str, bool]]) -> dict[tuple[str, bool], tuple[str, str] | None]:
    """`_ask` each (path, output) not asked before, in threads, all within PROBE_SECONDS; one
    that has not answered by then is taken for no network (its thread is left to finish)."""
    items = list(dict.fromkeys(items))
    if any(item not in _answers for item in items):
        _client()
    asked: dict[tuple[str, bool], tuple[threading.Thread, list]] = {}
    for item in items:
        if item not in _answers:
            box: list = []
            target = lambda item=item, box=box: box.append(_ask(*item))  # noqa: E731
            asked[item] = threading.Thread(target=target, daemon=True), box
            asked[item][0].start()
    deadline = time.monotonic() + PROBE_SECONDS
    for item, (thread, box) in asked.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        _answers[item] = box[0] if box else (NO_NETWORK, f"no answer in {PROBE_SECONDS:g} s")
    return {item: _answers[item] for item in items}


def check(needs: Sequence[Need]) -> None:
    """Refuse, in one line, the first need whose remote path cannot be used."""
    remote = [n for n in needs if n.path and paths.is_remote(n.path)]
    answers = probe((n.path, n.output) for n in remote)
    for need in remote:
        if answer := answers[(need.path, need.output)]:
            reason, detail = answer
            verb = "written" if need.output else "read"
            raise RemoteError(
                f"{need.setting} cannot be {verb}: {reason} ({detail}); use {need.instead}"
            )


def check_run(
    spec: RunSpec,
    outputs: Mapping[str, str | None] | None = None,
    tasks: Sequence[str] | None = None,
) -> None:
    """Probe what one run (or a flow of runs like it) needs: what it reads (`inputs`) and its
    `outputs` ({macro: folder}; default MODEL_DIR). `tasks` are those it trains on (default:
    its own, MIXTURE_OR_TASK_NAME)."""
    outputs = {"MODEL_DIR": spec.model_dir} if outputs is None else outputs
    needs = inputs(spec, [spec.task] if tasks is None else tasks)
    for macro, folder in outputs.items():
        if folder:
            instead = f"{macro}='/path/folder' (a local folder)"
            needs.append(Need(f"{macro}={folder!r}", folder, instead, output=True))
    check(needs)


def inputs(spec: RunSpec, tasks: Sequence[str]) -> list[Need]:
    """What a run reads: VOCABULARY and the vocabulary its `tasks` take, INITIAL_CHECKPOINT_PATH,
    its FILE_TASKS' files, and the TFDS data folder when a task reads TFDS."""
    files, reads_tfds = _task_inputs(spec, tasks)
    if spec.vocabulary:  # the model's own, whichever tasks it reads
        files.add(spec.vocabulary)
    needs = [_vocabulary_need(spec, file) for file in sorted(files)]
    if spec.initial_checkpoint:
        setting = f"INITIAL_CHECKPOINT_PATH={spec.initial_checkpoint!r}"
        local = "INITIAL_CHECKPOINT_PATH='/path/checkpoint_N' (a local copy)"
        needs.append(Need(setting, spec.initial_checkpoint, local))
    for file_task in spec.file_tasks:  # file_task.gin's macros
        for split, file in file_task.files().items():
            macro = f"FILE_TASK_{split.upper()}"
            local = f"{macro}='/path/{split}.tsv' (a local copy)"
            needs.append(Need(f"{macro}={file!r}", file, local))
    if reads_tfds and (tfds := batches.tfds_data_dir()):
        name, folder = tfds
        local = "--tfds_data_dir=/path/tensorflow_datasets (a local copy)"
        needs.append(Need(f"{name}={folder}", folder, local))
    return needs


def _task_inputs(spec: RunSpec, tasks: Sequence[str]) -> tuple[set[str], bool]:
    """(vocabulary files, whether any reads TFDS) of `tasks` as the run registers them: with
    the model's vocabulary, the run's own FILE_TASKS with the tasks' one (their files are read
    only when they register). A task unknown here is left to the run's own check."""
    vocab.follow_model(spec.vocabulary)
    if spec.task_module:  # the user's tasks, as the run registers them
        from prompt_transfer.trainer.config import import_task_module

        import_task_module(spec.task_module)
    own = {file_task.name for file_task in spec.file_tasks}
    files, reads_tfds = set(), False
    for name in tasks:
        if name in own:
            files.add(vocab.task_vocabulary_path())
            continue
        try:
            task = batches.get_task(name)
        except batches.TaskError:
            continue
        for sub in registry.subtasks(task):
            for feature in sub.output_features.values():
                files.add(getattr(feature.vocabulary, "sentencepiece_model_file", None))
            reads_tfds |= isinstance(sub.source, import_seqio().TfdsDataSource)
    return {f for f in files if f}, reads_tfds


def _vocabulary_need(spec: RunSpec, file: str) -> Need:
    """Whose vocabulary `file` is: the model's (VOCABULARY), $PROMPT_TRANSFER_VOCAB's, or the
    one tasks/ take when neither is set (T5's, in gs://t5-data)."""
    local = "'/path/sentencepiece.model'"
    if spec.vocabulary == file:
        return Need(f"VOCABULARY={file!r}", file, f"VOCABULARY={local} (a local copy)")
    instead = f"PROMPT_TRANSFER_VOCAB={local[1:-1]} (a local copy) or VOCABULARY={local}"
    if environment.vocab_override() == file:
        return Need(f"$PROMPT_TRANSFER_VOCAB={file}", file, instead)
    return Need(f"the tasks' vocabulary {file!r} ($PROMPT_TRANSFER_VOCAB unset)", file, instead)
