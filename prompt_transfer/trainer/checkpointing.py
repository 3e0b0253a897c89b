"""A run's checkpoints in MODEL_DIR: orbax checkpoints of what trains (never the frozen
model), the best one under best/, the prompt exported beside each, and the data iterator's own
state for a resume without replay (see run_dir.py for the whole layout).
"""

from __future__ import annotations

import warnings

import jax
from flax import serialization, traverse_util

from prompt_transfer import errors, paths, runtime
from prompt_transfer.trainer.run_dir import DATA_STATE, BestTracker, RunDirError


def _state_dict(state) -> dict:
    return serialization.to_state_dict(state)


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
        self._best = None
        self._warned_data_state = False
        self._closed = False
        runtime.track(self)

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _save(self, manager, step: int, state, position: int):
        ocp = self._ocp
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_state_dict(state)),
                data=ocp.args.JsonSave({"position": int(position), "step": int(step)}),
            ),
            force=True,
        )
        manager.wait_until_finished()

    def save(self, state, position: int, prompt=None, stream=None) -> None:
        """A checkpoint of `state` at data `position`, the prompt's export beside it, and the
        data iterator's own state (`stream`, a data.BatchStream) for a fast resume."""
        step = int(state.step)
        if self.manager.latest_step() != step:
            self._save(self.manager, step, state, position)
        if prompt is not None:
            paths.save_npy(self.model_dir / "prompts" / f"checkpoint_{step}.npy", prompt)
        if stream is not None:
            self._save_data_state(stream, step)

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
                with paths.atomic_directory(target) as tmp:  # whole, or absent: it replays
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

    def restore(self, template, only_trainable: bool = False) -> tuple[object, int]:
        """(state, data position) of the latest checkpoint, placed like `template`.

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
        step = self.manager.latest_step()
        self._check_fits(step, abstract)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=item, data=ocp.args.JsonRestore())
            )
        except ValueError as e:
            raise RunDirError(
                f"checkpoint_{step} in {self.model_dir} does not fit this run's "
                f"config ({str(e).splitlines()[0]}); use the run's own gin files "
                "and overrides"
            ) from e
        state_dict = dict(restored.state)
        if only_trainable:
            state_dict["opt_state"] = _state_dict(template)["opt_state"]
        return serialization.from_state_dict(template, state_dict), restored.data["position"]

    def trainable_arrays(self, step: int) -> dict[str, tuple] | None:
        """{parameter path: shape} of every array checkpoint `step` holds of what trains, read
        from orbax's metadata (None: a checkpoint without metadata)."""
        handler = self._ocp.PyTreeCheckpointHandler()
        try:
            stored = handler.metadata(self.model_dir / f"checkpoint_{step}" / "state").tree
        except Exception:  # no metadata to read (an older layout)
            return None
        finally:
            handler.close()
        flat = traverse_util.flatten_dict(stored.get("trainable") or {}, sep="/")
        return {name: tuple(getattr(leaf, "shape", ()) or ()) for name, leaf in flat.items()}

    def _check_fits(self, step: int, abstract: dict) -> None:
        """Refuse checkpoint `step` when an array of `abstract` is not in it or has another
        shape, before orbax reads anything: orbax's restore reads every array at once, and when
        one read fails it closes its event loop under the others, whose threads then print
        tracebacks after the refusal (issue 23: a resume with another PROMPT_LENGTH)."""
        handler = self._ocp.PyTreeCheckpointHandler()
        try:
            stored = handler.metadata(self.model_dir / f"checkpoint_{step}" / "state").tree
        except Exception:  # no metadata to compare (an older layout): the restore will tell
            return
        finally:
            handler.close()
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
            paths.save_npy(self.model_dir / "best" / "prompt.npy", prompt)
        best.save(self.model_dir)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        runtime.untrack(self)
        self.manager.close()
        if self._best is not None:
            self._best.close()
