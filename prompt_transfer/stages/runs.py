"""The runs of a flow or a study: each one is the base RunSpec and TrainConfig with its own
folder, task and steps (`Runs.make`), and is trained only if its folder does not already hold it
(`Runs.train`).

Every run lives in its own directory under WORK_DIR and resumes or is reused when the flow runs
again with the same settings, so a re-run only does what is missing. Its settings are recorded
beside it (flow_run.json), and a rerun that asks the folder for other settings is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from etils import epath

from prompt_transfer.base import errors, files
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer.config import RunSpec, TrainConfig, resolved
from prompt_transfer.trainer.train import train_together

Run = tuple[RunSpec, TrainConfig]

# What a run of the flow is, recorded in its directory so that a rerun reuses it only for the
# same settings: everything but where it lives, how long it trains and how it is laid out.
SETTINGS_FILE = "flow_run.json"
_NOT_SETTINGS = frozenset(
    {"model_dir", "steps", "relative_steps", "eval_period", "save_period", "log_period",
     "keep_checkpoints", "eval_batch_size", "num_partitions", "library_dir"}
)  # fmt: skip


class FlowError(errors.UserError):
    pass


def base_run(spec: RunSpec, config: TrainConfig) -> Run:
    """The flow's base run from the gin-bound one: the flow decides what trains (the prompt,
    deep with DEEP_PROMPT), and logs twice per EVAL_PERIOD; each run then sets its own folder,
    task, steps, prompt initialisation and library."""
    trainable = prompts.PROMPT_PATH
    if spec.deep_prompt:
        trainable = f"{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}"
    spec = dataclasses.replace(spec, model_dir="", task="", trainable_regex=trainable)
    config = dataclasses.replace(
        config,
        steps=None,
        relative_steps=None,
        log_period=max(config.eval_period // 2, 1),
        library_dir=None,
        library_kind="trained",
    )
    return spec, config


@dataclasses.dataclass(frozen=True)
class Runs:
    """Makes the flow's runs from its base run, and trains those not done."""

    spec: RunSpec  # the base run (base_run); model_dir and task are each run's
    config: TrainConfig
    work: epath.Path  # WORK_DIR; "WORK_DIR" in the settings records (a moved WORK_DIR)
    stack_runs: int = 3  # up to this many prompt runs in one stacked step (1: one at a time)
    config_text: str = ""  # the launch's gin config, written to each run's folder

    def make(self, model_dir, task: str, steps: int, eval_period: int, **changes) -> Run:
        """One run: `changes` name RunSpec or TrainConfig fields (seed, prompt_init, ...)."""
        spec_fields = {f.name for f in dataclasses.fields(RunSpec)}
        spec = dataclasses.replace(
            self.spec,
            model_dir=str(model_dir),
            task=task,
            **{k: v for k, v in changes.items() if k in spec_fields},
        )
        config = dataclasses.replace(
            self.config,
            steps=None,
            relative_steps=steps,  # each run trains `steps` after its checkpoint's step
            eval_period=eval_period,
            save_period=steps,
            **{k: v for k, v in changes.items() if k not in spec_fields},
        )
        return spec, config

    def train(self, planned: Sequence[Run]) -> None:
        """Train the planned runs that are not finished, up to `stack_runs` of them at a time
        in one stacked step (train.train_together; 1: one at a time)."""
        check_settings(planned, str(self.work))
        todo = [run for run in planned if not _finished(*run)]
        train_together(todo, config_text=self.config_text, most=max(self.stack_runs, 1))


def _finished(spec: RunSpec, config: TrainConfig) -> bool:
    """Whether MODEL_DIR already holds this run, trained this long (a rerun reuses it; a
    prompt-then-model run's both phases)."""
    history = spec.run_dir.read_eval_history()
    done = spec.run_dir.file("prompts").exists()
    stop = resolved(spec, config).total_steps
    return bool((done or spec.run_dir.holds_checkpoint()) and history) and (
        history[-1]["step"] >= stop
    )


def settings(spec: RunSpec, config: TrainConfig, work: str) -> dict:
    """The run's settings as flat JSON values ("optimizer.learning_rate": 0.3)."""
    both = {**dataclasses.asdict(spec), **dataclasses.asdict(config)}
    text = json.dumps(
        {k: v for k, v in both.items() if k not in _NOT_SETTINGS}, default=str, sort_keys=True
    )
    nested = json.loads(text.replace(json.dumps(work)[1:-1], "WORK_DIR"))  # a moved WORK_DIR
    return _flat(nested)


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def check_settings(planned: Sequence[Run], work: str) -> None:
    """Refuse, before any training, a run directory of WORK_DIR that was trained with other
    settings (a rerun would reuse or resume it as if it were this run); record new ones."""
    for spec, config in planned:
        record = spec.run_dir.file(SETTINGS_FILE)
        wanted = settings(spec, config, work)
        held = (
            files.read_json(record, "remove that run's folder to train it again")
            if record.exists()
            else None
        )
        trained = spec.run_dir.holds_run()
        if held is None and trained:
            continue  # a run of a flow older than the records
        # A setting added to the code since the record was written, asked at its default, is
        # what the run had: a new field cannot have changed a run trained without it.
        asked = {
            k: v
            for k, v in wanted.items()
            if held is None or k in held or not _default(spec, config, k)
        }
        if held is not None and held != asked and trained:
            name = next(
                k for k in sorted(held.keys() | asked.keys()) if held.get(k) != asked.get(k)
            )
            raise FlowError(
                f"{spec.model_dir} holds a run with {name} = {_short(held.get(name))}, this "
                f"flow asks for {_short(wanted.get(name))}; use another WORK_DIR, or remove "
                "that folder to train it again"
            )
        if held != wanted:  # new here (process 0 writes it)
            files.atomic_write_text(record, json.dumps(wanted, indent=1, sort_keys=True))


def _default(spec: RunSpec, config: TrainConfig, key: str) -> bool:
    """Whether the setting `key` ("prompt_init.transfer.top_k") is at its field's default."""
    *parents, name = key.split(".")
    for owner in (spec, config):
        for parent in parents:
            owner = getattr(owner, parent, None)
        fields = (
            {f.name: f for f in dataclasses.fields(owner)}
            if dataclasses.is_dataclass(owner)
            else {}
        )
        if name in fields:
            field = fields[name]
            if field.default is not dataclasses.MISSING:
                return getattr(owner, name) == field.default
            if field.default_factory is not dataclasses.MISSING:
                return getattr(owner, name) == field.default_factory()
            return False
    return False


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
