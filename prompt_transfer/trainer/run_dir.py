"""The run directory (MODEL_DIR): what a training run reads and writes there.

MODEL_DIR layout (T5X's, plus prompt exports):
  config.gin                  the operative gin config of the run
  checkpoint_N/               orbax: trainable parameters, optimizer state, step, data position
                              (saving.py writes and reads these, best/ and prompts/)
  prompts/checkpoint_N.npy    the prompt at each save, float32 [P, E]
  numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt
                              the same, where T5X prompt tuning writes it (SPoT's PROMPT_FILE)
  best/                       the best checkpoint by the task's main metric, best.json, prompt.npy
                              (at a step also saved, checkpoint_N's files are hard links to it)
  train/ eval/                TensorBoard summaries
  log.txt                     the console progress, also on disk
  eval_history.jsonl          every evaluation: step, main metric and per-task results
A prompt-then-model run (trainer/phases.py) adds:
  phase1/                     phase 1, the prompt's run (this layout again); final_prompt.npy
  phases.json                 the boundary: phase 1 done, how phase 2 trains (MODEL_DIR's own
                              checkpoints are phase 2's)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from prompt_transfer.base import files, moved, paths
from prompt_transfer.base.errors import UserError

CONFIG_FILE = "config.gin"
DATA_STATE = "data_state"  # the data iterator's saved states, per process and checkpoint
EVAL_HISTORY = "eval_history.jsonl"
# Lines that may change between a run and its continuation (extending a run is common).
_RESUMABLE_MACROS = ("TRAIN_STEPS", "MODEL_STEPS", "EVAL_PERIOD", "SAVE_PERIOD", "LOG_PERIOD")


PHASES_FILE = "phases.json"
PHASE1 = "phase1"
FINAL_PROMPT = "final_prompt.npy"
LOCK_FILE = ".lock"
MODEL_FILE = "model.json"
RECORD_FILE = "run.json"  # what the run is (run_record.py writes it)
_CHECKPOINT = re.compile(r"checkpoint_\d+")  # orbax's finished steps, not its temporaries
# What a run writes in MODEL_DIR (`--overwrite` removes these and nothing else).
_RUN_FILES = re.compile(
    r"checkpoint_\d+.*|config\.gin|log\.txt|eval_history\.jsonl|eval_.*\.json"
    r"|predictions_.*\.jsonl|prompts|numpy_checkpoints|best|train|eval|transfer"
    r"|events\.out\..*|model\.json"
    r"|data_state|phase1|phases\.json|run\.json|checksums|damaged"
)


class RunDirError(UserError):
    pass


class RunDir:
    """One run's MODEL_DIR, resolved through the path layer once, where a command takes the
    folder (`RunSpec.run_dir`, or `RunDir(path)` for a folder a command is given); every question
    about the run's files is asked of it. Local and gs:// alike."""

    def __init__(self, model_dir: paths.PathLike):
        self.given = os.fspath(model_dir)  # as the user wrote it: messages, remote or not
        self.root = paths.path(model_dir)

    def __repr__(self) -> str:
        return f"RunDir({self.given!r})"

    def __str__(self) -> str:
        return str(self.root)

    def file(self, *names: str):
        """MODEL_DIR/name/... (empty names are skipped)."""
        return self.root.joinpath(*[n for n in names if n])

    def below(self, *names: str) -> RunDir:
        """The run folder MODEL_DIR/name/... (a phase's or a race's run)."""
        return RunDir(self.file(*names))

    def read_phases(self) -> dict | None:
        """The boundary of a prompt-then-model run whose phase 1 has finished
        (trainer/phases.py): {"phase1_step", "trainable", "prompt"}; None for any other run, or
        before the boundary."""
        path = self.file(PHASES_FILE)
        if not path.exists():
            return None
        return files.read_json(
            path, "remove it and launch the run again: phase 1 is finished and writes it anew"
        )

    def phase1_prompt(self) -> np.ndarray:
        """Phase 1's final prompt (wide form), which phase 2 starts from."""
        return files.load_npy(self.file(PHASE1, FINAL_PROMPT))

    def check_folder(self) -> None:
        """Refuse a MODEL_DIR that cannot be a folder (a file, or a path inside one) before any
        work; the OS would say only "File exists", naming neither MODEL_DIR nor the fix."""
        wrong = paths.folder_problem(self.given)
        if wrong:
            raise RunDirError(f"MODEL_DIR={self.given!r} {wrong} for the run")

    def saved_steps(self) -> list[int]:
        """The steps of MODEL_DIR's finished checkpoints, in order (a save killed half-way
        leaves orbax's temporary directory, which is not one)."""
        if not self.root.exists():
            return []
        names = (p.name for p in self.root.glob("checkpoint_*"))
        return sorted(int(n.split("_")[1]) for n in names if _CHECKPOINT.fullmatch(n))

    def holds_checkpoint(self) -> bool:
        """Whether MODEL_DIR holds a finished checkpoint."""
        return bool(self.saved_steps())

    def holds_run(self) -> bool:
        """Whether MODEL_DIR holds a run already (its config or a checkpoint)."""
        return self.file(CONFIG_FILE).exists() or self.holds_checkpoint()

    def clear_run(self) -> list[str]:
        """Remove what a run wrote in MODEL_DIR and nothing else; returns what stays (the
        user's own files). Only process 0 of a multi-host job removes."""
        kept = []
        for entry in sorted(self.root.iterdir()):
            if not _RUN_FILES.fullmatch(entry.name):
                kept.append(entry.name)
            elif not files.is_chief():
                continue
            elif entry.is_dir():
                entry.rmtree()
            else:
                entry.unlink()
        return kept

    def check_config(self, config_text: str, overwrite: bool, resume: bool) -> None:
        """Refuse a MODEL_DIR that holds a run with another config (or clear it: `overwrite`).

        The run's config.gin is written later (`write_config`), once set-up has succeeded, so
        a launch that fails on bad input leaves nothing that a corrected launch would trip over.
        """
        existing = self.file(CONFIG_FILE)
        held = self.holds_run()
        if held and overwrite:
            self.clear_run()
        elif held and not resume:
            old = _comparable(existing.read_text()) if existing.exists() else ["<no config.gin>"]
            new = _comparable(config_text)
            if old != new:
                diff = next(
                    (f"{a!r} vs {b!r}" for a, b in zip(old, new, strict=False) if a != b),
                    f"{len(old)} vs {len(new)} lines",
                )
                raise RunDirError(
                    f"MODEL_DIR {self} holds a run with a different config ({diff}); "
                    "pass --overwrite to start over or --resume to continue it"
                )

    def write_config(self, config_text: str) -> None:
        files.atomic_write_text(self.file(CONFIG_FILE), config_text)

    @contextlib.contextmanager
    def lock(self):
        """Hold MODEL_DIR for this run: a second run there (whose checkpoint manager would
        delete this one's checkpoints) is refused in one line; a lock whose process is gone (a
        kill) is taken over. Local directories only: an object store has no atomic create, so
        there the scheduler must keep runs apart. Only the first host of a multi-host job takes
        it."""
        self.check_folder()  # on every host: each refuses alike
        if paths.is_remote(self.given) or jax.process_index() != 0:
            yield
            return
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        target = Path(paths.absolute(self.root)) / LOCK_FILE
        _take(target, self)
        try:
            yield
        finally:
            target.unlink(missing_ok=True)
            if created and not any(target.parent.iterdir()):  # refused before writing anything
                target.parent.rmdir()

    def check_model(self, record: dict, create: bool) -> None:
        """The frozen model a run belongs to (MODEL_DIR/model.json: its fingerprint, checkpoint
        and vocabulary). Resuming, evaluating or inferring with another model is refused; a new
        run records its own (`create`)."""
        path = self.file(MODEL_FILE)
        if not path.exists():
            if create:
                files.atomic_write_text(path, json.dumps(record, indent=1))
            return
        stored = files.read_json(path, "it names the run's frozen model: restore it from a copy")
        if stored.get("fingerprint") != record.get("fingerprint"):
            raise RunDirError(
                f"MODEL_DIR {self} was trained with the frozen model "
                f"{stored.get('checkpoint')} (fingerprint {stored.get('fingerprint')}), not "
                f"{record.get('checkpoint')} (fingerprint {record.get('fingerprint')}); use the "
                "run's own INITIAL_CHECKPOINT_PATH"
            )

    def start_step(self) -> int:
        """The step a run's count began at (its initial checkpoint's, run.json's start_step; 0
        for a run without one or from before T5X's count): its steps trained are step - start."""
        record = self.file(RECORD_FILE)
        if not record.exists():
            return 0
        found = files.read_json(record, "it describes the run: restore it from a copy of the run")
        return int(found.get("start_step", 0)) if isinstance(found, dict) else 0

    def read_eval_history(self, trained: bool = False) -> list[dict]:
        """The evaluations of a run, in order; a resumed run's repeated steps keep the last.
        `trained`: each entry's step is the steps trained (step - start_step), as a flow
        compares runs."""
        history = _read_eval_history(self.file(EVAL_HISTORY))
        start = self.start_step() if trained and history else 0
        return [dict(h, step=h["step"] - start) for h in history] if start else history


def _comparable(config_text: str) -> list[str]:
    """The lines of a launch's config that a continuation must share: not the step counts,
    nor what the code set in Python below them (run_record.operative_config); a module's old
    name (a run folder from before the layer folders) reads as its new one."""
    config_text = config_text.split("\n# Set for this run in Python")[0]
    keep = lambda line: line.strip() and not line.lstrip("# ").startswith(_RESUMABLE_MACROS)
    return moved.canonical_imports(
        [line.rstrip() for line in config_text.splitlines() if keep(line)]
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _take(target: Path, folder: RunDir) -> None:
    """Create the lock file `target`, or refuse: another live process holds the run."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(target.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                target.unlink(missing_ok=True)  # stale: its process was killed
                continue
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("since", 0)))
            raise RunDirError(
                f"MODEL_DIR {folder.root} is in use by process {pid} on {host} since {since}; "
                f"wait for it, stop it, or remove {target} if that run is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        return


def _drop_torn_line(path) -> None:
    """Cut a last line that a kill left without its newline, so that appends stay JSONL (an
    object in a bucket is written whole, never torn)."""
    if paths.is_remote(path) or not path.exists():
        return
    with path.open("rb") as f:  # the last byte tells; the whole file is read only to mend it
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
    data = path.read_bytes()
    files.atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def _read_eval_history(path) -> list[dict]:
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise RunDirError(
            f"{path} is damaged ({len(path.read_bytes())} bytes, not text); restore it from a "
            "copy, or remove it (the run's evaluations are then lost)"
        ) from None
    by_step = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # a kill mid-append: the evaluation is lost, not the run
                break
            raise RunDirError(f"{path} line {number} is not JSON ({e}); remove that line") from e
        by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


@dataclasses.dataclass
class BestTracker:
    """The best evaluation so far (higher is better), persisted as best/best.json."""

    step: int = -1
    metric: str = ""
    value: float = -float("inf")
    evals_since_best: int = 0

    def update(self, step: int, metric: str, value: float) -> bool:
        if value > self.value:
            self.step, self.metric, self.value, self.evals_since_best = step, metric, value, 0
            return True
        self.evals_since_best += 1
        return False

    def save(self, root) -> None:
        """To `root` (MODEL_DIR, a resolved path)/best/best.json."""
        files.atomic_write_text(
            root / "best" / "best.json", json.dumps(dataclasses.asdict(self), indent=1)
        )

    @classmethod
    def load(cls, root) -> BestTracker:
        path = root / "best" / "best.json"
        if not path.exists():
            return cls()
        return cls(**files.read_json(path, "restore it from a copy of the run"))


# ---------------------------------------------------------------------------------------------
# Logging.


class ProgressLog:
    """Console progress (stderr), log.txt, and TensorBoard summaries under train/ and eval/.

    MODEL_DIR is written once the run has begun (its first metrics) or the log closes without a
    refusal: until then log.txt's lines are held, so a launch refused during set-up (a resume
    whose checkpoint does not fit) leaves the run's files as they were.
    """

    def __init__(self, folder: RunDir, total_steps: int, quiet: bool = False):
        chief = files.is_chief()  # the other processes of a multi-host job say nothing
        self.total, self.quiet, self.chief = total_steps, quiet or not chief, chief
        self.model_dir = folder.root
        self.log = self.model_dir / "log.txt"
        self._held: list[str] | None = []  # log.txt's lines until the run has begun
        self._writers = None
        self._last_time, self._last_step = time.time(), None

    def info(self, message: str) -> None:
        line = f"[prompt-transfer] {message}"
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)
        if self._held is not None:
            self._held.append(line)
        else:
            files.append_text(self.log, line + "\n")  # process 0 only

    def _begin(self) -> None:
        """The run has begun: write the held lines, open the summary writers."""
        if self._held is None:
            return
        held, self._held = self._held, None
        self.model_dir.mkdir(parents=True, exist_ok=True)
        if held:
            files.append_text(self.log, "".join(line + "\n" for line in held))

    def _writer(self, name: str):
        from clu import metric_writers

        self._begin()
        if self._writers is None:
            self._writers = {
                split: metric_writers.create_default_writer(
                    str(self.model_dir / split), just_logging=not self.chief, asynchronous=False
                )
                for split in ("train", "eval")
            }
        return self._writers[name]

    def train_metrics(
        self,
        step: int,
        means: Mapping[str, float],
        batch_size: int,
        feature_lengths: Mapping[str, int],
        steps_in_window: int,
    ) -> None:
        now = time.time()
        elapsed = max(now - self._last_time, 1e-9)
        # The first window includes compilation, so its speed is not reported.
        rate = steps_in_window / elapsed if self._last_step is not None else float("nan")
        self._last_time, self._last_step = now, step
        tokens = batch_size * sum(feature_lengths.values())
        scalars = dict(means, steps_per_second=rate, tokens_per_second=rate * tokens)
        finite = {k: v for k, v in scalars.items() if np.isfinite(v)}
        self._writer("train").write_scalars(step, finite)
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        speed = (
            f"{rate:.2f} steps/s  {rate * tokens:,.0f} tokens/s  eta {_duration(eta)}"
            if rate == rate
            else "compiling and first steps"  # the first window: no speed to speak of
        )
        self.info(
            f"step {step}/{self.total}  loss {means['loss']:.4f}  "
            f"token_acc {means.get('token_accuracy', float('nan')):.3f}  "
            f"grad_norm {means['grad_norm']:.3g}  {speed}"
        )

    def eval_metrics(
        self,
        step: int,
        results: Mapping[str, Mapping[str, float]],
        name: str,
        value: float,
        predictions: Mapping[str, Mapping[str, int]] | None = None,
        labels: Mapping[str, Mapping[str, int]] | None = None,
        likelihoods: Mapping[str, float] | None = None,
    ) -> None:
        """One evaluation: TensorBoard, the console, and a line of eval_history.jsonl with the
        per-task results, the predicted-label counts, the split's true-label counts and the
        mean log-probability of the true label (`label_log_likelihood`)."""
        flat = {f"{task}/{k}": v for task, metrics in results.items() for k, v in metrics.items()}
        self._writer("eval").write_scalars(step, dict(flat, **{name: value}))
        shown = "  ".join(f"{k} {v:.2f}" for k, v in flat.items())
        for task, counts in (predictions or {}).items():
            given = ", ".join(f"{label} {n}" for label, n in counts.items() if n)
            shown += f"  ({task} predicted: {given})" if len(predictions) > 1 else f"  ({given})"
        self.info(f"eval at step {step}: {shown}")
        record = {"step": step, "metric": name, "value": value, "results": results}
        if predictions:
            record.update(predictions=predictions, labels=labels or {})
        if likelihoods:
            record.update(label_log_likelihood=dict(likelihoods))
        if not self.chief:
            return
        history = self.model_dir / EVAL_HISTORY
        _drop_torn_line(history)
        files.append_text(history, json.dumps(record) + "\n")  # one JSON line per evaluation

    def close(self) -> None:
        self._begin()
        for writer in (self._writers or {}).values():
            writer.close()

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, UserError) and self._held is not None:
            return  # refused before the run began: its lines were on the console only
        self.close()  # also when the run stops on an error: summaries are flushed


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
