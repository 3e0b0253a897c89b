"""A run's checkpoints in MODEL_DIR: orbax checkpoints of what trains (never the frozen
model), the best one under best/, the prompt exported beside each, and the data iterator's own
state for a resume without replay (see run_dir.py for the whole layout).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import jax
from flax import serialization, traverse_util

from prompt_transfer.base import errors, files, paths, runtime
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer.run_dir import DATA_STATE, BestTracker, RunDirError


def _state_dict(state) -> dict:
    return serialization.to_state_dict(state)


# What each checkpoint held when it was written (issue 38): MODEL_DIR/checksums/checkpoint_N.json,
# {file: [size, sha256]} (sha256 of files up to _HASHED_BELOW bytes; larger ones by size), so a
# copy cut short, a full disk or a bad sector is named before orbax reads it. Local folders only.
CHECKSUMS = "checksums"
DAMAGED = "damaged"  # where a resume sets a damaged checkpoint aside (kept, not deleted)
_HASHED_BELOW = 64 * 2**20


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(data: bytes) -> list:
    """A file's entry in a checksum record: [size, sha256]."""
    return [len(data), _digest(data)]


def _files(folder: Path) -> dict[str, list]:
    out = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = file.stat().st_size
        entry = _entry(file.read_bytes()) if size < _HASHED_BELOW else [size, None]
        out[file.relative_to(folder).as_posix()] = entry
    return out


def write_checksums(
    root: paths.PathLike, step: int, kept: list[int], record: dict | None = None
) -> None:
    """Record checkpoint `step` under `root` as written (`record`: what it holds, when known
    without reading it); drop the records of removed steps."""
    if paths.is_remote(root) or not files.is_chief():
        return
    root = Path(paths.native(root))
    record = _files(root / f"checkpoint_{step}") if record is None else record
    files.atomic_write_text(root / CHECKSUMS / f"checkpoint_{step}.json", json.dumps(record))
    for old in (root / CHECKSUMS).glob("checkpoint_*.json"):
        if old.stem.split("_")[1].isdigit() and int(old.stem.split("_")[1]) not in kept:
            old.unlink(missing_ok=True)


def damage(root: paths.PathLike, step: int) -> str | None:
    """What is wrong with checkpoint `step` under `root` against its checksums ("state/d/x: 10
    of 547 bytes"), or None when it is whole or has no record to check against."""
    if paths.is_remote(root):
        return None
    root = Path(paths.native(root))
    record_file = root / CHECKSUMS / f"checkpoint_{step}.json"
    if not record_file.exists():
        return None
    wanted = files.read_json(
        record_file, f"remove it ({record_file}): the checkpoint is then read unchecked"
    )
    folder = root / f"checkpoint_{step}"
    for name, (size, digest) in wanted.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        found = file.stat().st_size
        if found != size:
            return f"{name}: {found} of {size} bytes"
        if digest and _digest(file.read_bytes()) != digest:
            return f"{name}: its bytes changed since it was written (sha256)"
    return None


def newest_intact(root: paths.PathLike, steps: list[int], say) -> int | None:
    """The newest of `steps` whose checkpoint under `root` is whole; each damaged one newer than
    it is said (`say`, one line each). All of them damaged is refused in one line."""
    step, damaged = _scan(root, steps)
    for newer, wrong in damaged.items():
        say(f"checkpoint_{newer} in {root} is damaged ({wrong})")
    return step


def _scan(root: paths.PathLike, steps: list[int]) -> tuple[int | None, dict[int, str]]:
    """(the newest whole step, {each damaged step newer than it: what is wrong}), each
    checkpoint checked once, newest first; all of them damaged is refused in one line."""
    damaged = {}
    for step in sorted(steps, reverse=True):
        wrong = damage(root, step)
        if wrong is None:
            return step, damaged
        damaged[step] = wrong
    if not steps:
        return None, damaged
    newest = max(steps)
    raise RunDirError(
        f"every checkpoint in {root} is damaged (checkpoint_{newest}: {damaged[newest]}); "
        "restore them from a copy, or start the run over with --overwrite"
    )


def _data_item(step: int, position: int) -> dict:
    """A checkpoint's `data` item: the data position it was saved at, and its step."""
    return {"position": int(position), "step": int(step)}


class CheckpointStore:
    """Orbax checkpoints of the trainable state (never the frozen model), plus prompt exports.

    Close it (`with CheckpointStore(...) as store:`, or `close()`): orbax's managers own threads
    that otherwise die at interpreter exit, mid-print. A store left open when a command stops
    on an error is closed by the entry point before it prints the refusal (runtime.run_entry).
    """

    def __init__(self, model_dir: paths.PathLike, keep: int, create: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.model_dir = paths.path(paths.absolute(model_dir))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            step_prefix="checkpoint",
            create=create,
            enable_async_checkpointing=False,
            read_only=not create,
        )
        self.manager = ocp.CheckpointManager(self.model_dir, options=options)
        self._keep = keep
        self._best = None
        self._warned_data_state = False
        self._metadata: dict[int, dict] = {}  # step: orbax's metadata tree of its state
        self._closed = False
        runtime.track(self)

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def newest_intact(self, say) -> int | None:
        """The newest whole checkpoint (damaged newer ones said, `say`), None when none."""
        return newest_intact(self.model_dir, list(self.manager.all_steps()), say)

    def set_aside_damaged(self, say) -> None:
        """Before a resume: damaged checkpoints newer than the newest whole one are moved to
        MODEL_DIR/damaged/ (with their data iterator states), so that the run goes on from the
        whole one and writes those steps again; each is said in a line."""
        intact, damaged = _scan(self.model_dir, list(self.manager.all_steps()))
        if not damaged or paths.is_remote(self.model_dir):
            return
        if files.is_chief():
            self._move_aside(damaged, intact, say)
        runtime.barrier("damaged checkpoints set aside")  # every process sees them gone
        self.manager.reload()
        self._metadata.clear()

    def _move_aside(self, damaged: dict[int, str], intact: int | None, say) -> None:
        aside = Path(paths.native(self.model_dir)) / DAMAGED
        aside.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for step, wrong in damaged.items():
            name = f"checkpoint_{step}"
            os.replace(self.model_dir / name, aside / f"{name}.{stamp}")
            (self.model_dir / CHECKSUMS / f"{name}.json").unlink(missing_ok=True)
            for state in (self.model_dir / DATA_STATE).glob(f"p*/{name}"):
                shutil.rmtree(state)
            say(
                f"{name} in {self.model_dir} is damaged ({wrong}); moved to "
                f"{aside}/{name}.{stamp}, and the run goes on from checkpoint_{intact}, the "
                "newest whole one"
            )

    def _save(self, manager, step: int, state, position: int):
        ocp = self._ocp
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_state_dict(state)),
                data=ocp.args.JsonSave(_data_item(step, position)),
            ),
            force=True,
        )
        manager.wait_until_finished()
        if manager is self.manager:
            self._metadata.pop(step, None)
        write_checksums(manager.directory, step, list(manager.all_steps()))

    def save(self, state, position: int, prompt=None, stream=None) -> None:
        """A checkpoint of `state` at data `position`, the prompt's export beside it, and the
        data iterator's own state (`stream`, a data.BatchStream) for a fast resume."""
        step = int(state.step)
        if self.manager.latest_step() != step and not self._linked_to_best(step, position):
            self._save(self.manager, step, state, position)
        if prompt is not None:
            files.save_npy(self.model_dir / "prompts" / f"checkpoint_{step}.npy", prompt)
            # T5X prompt tuning's numpy checkpoint, where SPoT's README points PROMPT_FILE.
            numpy_dir = self.model_dir / "numpy_checkpoints" / f"checkpoint_{step}"
            files.save_npy(numpy_dir / prompts.T5X_PROMPT_FILE, prompt)
        if stream is not None:
            self._save_data_state(stream, step)

    def _linked_to_best(self, step: int, position: int) -> bool:
        """checkpoint_`step` as hard links to best/checkpoint_`step`, when this step's evaluation
        has just saved the same state there (the loop evaluates before it saves), with its own
        data position: the state is written once, not twice (a model-tuning run's whole
        network). Local folders of one process only; False leaves the save to orbax."""
        if (
            self._best is None
            or self._best.latest_step() != step
            or paths.is_remote(self.model_dir)
            or jax.process_count() > 1
        ):
            return False
        root = Path(paths.native(self.model_dir))
        # best/'s record of its files (taken when orbax wrote them) becomes this checkpoint's:
        # a best/ file damaged since is then named here too, and nothing is read to link.
        recorded = root / "best" / CHECKSUMS / f"checkpoint_{step}.json"
        try:
            record = json.loads(recorded.read_text())
        except (OSError, ValueError):  # none, or garbled: orbax writes this one
            return False
        data = json.dumps(_data_item(step, position)).encode()
        record["data/metadata"] = _entry(data)
        final, best = root / f"checkpoint_{step}", root / "best" / f"checkpoint_{step}"
        files.remove_killed_temporaries(final)  # a link to this step cut short (a locked run)
        try:
            with files.atomic_directory(final) as tmp:
                for file in (f for f in best.rglob("*") if f.is_file()):
                    name = file.relative_to(best)
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    if name.as_posix() == "data/metadata":  # what ocp.args.JsonSave writes
                        (tmp / name).write_bytes(data)
                    else:
                        os.link(file, tmp / name)
        except OSError:  # a filesystem without hard links: orbax writes it
            return False
        self.manager.reload()
        self._metadata.pop(step, None)
        steps = sorted(self.manager.all_steps())
        for old in steps[: -self._keep] if self._keep else []:  # what max_to_keep removes
            self.manager.delete(old)
        write_checksums(self.model_dir, step, list(self.manager.all_steps()), record)
        return True

    def data_state(self, step: int) -> str:
        """Where this process keeps the data iterator's state saved with checkpoint `step`."""
        folder = self.model_dir / DATA_STATE / f"p{jax.process_index()}" / f"checkpoint_{step}"
        return str(folder / "iterator")

    def _save_data_state(self, stream, step: int) -> None:
        target = paths.path(self.data_state(step)).parent
        try:
            if paths.is_remote(target):
                stream.save_state(self.data_state(step))
            elif not target.exists():
                with files.atomic_directory(target) as tmp:  # whole, or absent: it replays
                    stream.save_state(str(tmp / "iterator"))
        except Exception as e:  # a pipeline op tf.data cannot checkpoint (a py_function, say)
            if not self._warned_data_state:
                warnings.warn(
                    f"the data iterator's state is not saved ({errors.one_line(e)}); a resume "
                    "will replay the input pipeline to its position instead",
                    stacklevel=2,
                )
                self._warned_data_state = True
            return
        kept = {f"checkpoint_{s}" for s in self.manager.all_steps()}
        for old in target.parent.iterdir():  # older states, and a killed save's temporary
            if "checkpoint_" in old.name and old.name not in kept:
                old.rmtree()

    def restore(
        self, template, only_trainable: bool = False, step: int | None = None
    ) -> tuple[object, int]:
        """(state, data position) of checkpoint `step` (None: the latest), placed like
        `template`.

        `only_trainable` reads the parameters and step but not the optimizer state (eval, infer).
        """
        ocp = self._ocp
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            _state_dict(template),
        )
        if only_trainable:
            abstract = {k: v for k, v in abstract.items() if k != "opt_state"}
            item = ocp.args.PyTreeRestore(
                item=abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True,
            )
        else:
            item = ocp.args.StandardRestore(abstract)
        step = self.manager.latest_step() if step is None else step
        self._check_fits(step, abstract)
        try:
            with runtime.quiet_threads_on_failure():
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=item, data=ocp.args.JsonRestore())
                )
        except Exception as e:  # the shapes fit (_check_fits): what is left is a damaged file
            raise RunDirError(
                f"checkpoint_{step} in {self.model_dir} could not be read ({type(e).__name__}): "
                "it is damaged, or was written by another tool; use an intact checkpoint "
                "(remove this one to resume from the one before it)"
            ) from None
        state_dict = dict(restored.state)
        if only_trainable:
            state_dict["opt_state"] = _state_dict(template)["opt_state"]
        return serialization.from_state_dict(template, state_dict), restored.data["position"]

    def _stored(self, step: int) -> dict:
        """orbax's metadata tree of checkpoint `step`'s state, read once per step: reading it
        opens every array's store (0.2 s for the tiny model's 100 arrays), and a restore asks
        twice (which arrays it holds, then whether they fit)."""
        if step not in self._metadata:
            handler = self._ocp.PyTreeCheckpointHandler()
            try:
                with runtime.quiet_threads_on_failure():
                    folder = self.model_dir / f"checkpoint_{step}" / "state"
                    self._metadata[step] = handler.metadata(folder).tree
            finally:
                handler.close()
        return self._metadata[step]

    def trainable_arrays(self, step: int) -> dict[str, tuple] | None:
        """{parameter path: shape} of every array checkpoint `step` holds of what trains, read
        from orbax's metadata (None: a checkpoint without metadata)."""
        folder = self.model_dir / f"checkpoint_{step}" / "state"
        try:
            stored = self._stored(step)
        except Exception as e:
            if not (folder / "_METADATA").exists():
                return None  # no metadata to read (an older layout)
            raise RunDirError(
                f"checkpoint_{step} in {self.model_dir} could not be read (its metadata: "
                f"{type(e).__name__}): it is damaged, or was written by another tool; use an "
                "intact checkpoint (remove this one to go on from the one before it)"
            ) from None
        flat = traverse_util.flatten_dict(stored.get("trainable") or {}, sep="/")
        return {name: tuple(getattr(leaf, "shape", ()) or ()) for name, leaf in flat.items()}

    def _check_fits(self, step: int, abstract: dict) -> None:
        """Refuse checkpoint `step` when an array of `abstract` is not in it or has another
        shape, before orbax reads anything: orbax's restore reads every array at once, and when
        one read fails it closes its event loop under the others, whose threads then print
        tracebacks after the refusal (issue 23: a resume with another PROMPT_LENGTH)."""
        try:
            stored = self._stored(step)
        except Exception:  # no metadata to compare (an older layout): the restore will tell
            return
        stored = traverse_util.flatten_dict(stored, sep="/")
        wanted_by_name = traverse_util.flatten_dict(abstract, sep="/")
        # The parameters first: their shapes are what a changed setting changed.
        for name in sorted(wanted_by_name, key=lambda n: n.startswith("opt_state")):
            wanted = wanted_by_name[name]
            shape = getattr(stored.get(name), "shape", None)
            if name not in stored:
                found = "is not in it"
            elif shape is not None and tuple(shape) != tuple(wanted.shape):
                found = f"is {tuple(shape)} there, {tuple(wanted.shape)} here"
            else:
                continue
            raise RunDirError(
                f"checkpoint_{step} in {self.model_dir} does not fit this run's config "
                f"({name} {found}); use the run's own gin files and overrides"
            )

    def save_best(self, state, prompt, best: BestTracker) -> None:
        ocp = self._ocp
        if self._best is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=1,
                step_prefix="checkpoint",
                create=True,
                enable_async_checkpointing=False,
            )
            self._best = ocp.CheckpointManager(self.model_dir / "best", options=options)
        if self._best.latest_step() != int(state.step):  # else a killed attempt saved it
            self._save(self._best, int(state.step), state, 0)
        if prompt is not None:
            files.save_npy(self.model_dir / "best" / "prompt.npy", prompt)
        best.save(self.model_dir)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        runtime.untrack(self)
        self.manager.close()
        if self._best is not None:
            self._best.close()
