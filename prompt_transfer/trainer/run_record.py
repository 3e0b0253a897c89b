"""A run folder describes itself: MODEL_DIR/run.json, written when the run starts.

It holds the run as it trained (issue 34): its RunSpec as the trainer used it (a flow's runs
set their task, TRAINABLE, prompt length and kind in Python, which no gin file shows), every
array that trains with its shape, the prompt's kind, and the split and batch size its
evaluations used. Every reader of a run (eval, infer, forget, score, export, the library)
rebuilds the run from here; a command's gin may change how it is read (feature lengths, batch,
split, task) but not what it is (model, vocabulary, prompt kind and length, TRAINABLE), and the
checkpoint decides which arrays are restored (weights.restore_trained).

A folder written before this record existed is read from a SPoT flow's `flow_run.json` when it
has one, else from the command's gin files as before (the checkpoint still decides what is
restored, so a half-restored prompt cannot happen).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Mapping

from flax import traverse_util

from prompt_transfer.base import files, paths, settings
from prompt_transfer.base.settings import rule_of
from prompt_transfer.data import file_tasks as file_task_lib
from prompt_transfer.network import checkpoints, t5
from prompt_transfer.prompt import kinds, prompts
from prompt_transfer.trainer import run_dir
from prompt_transfer.trainer.config import RunSpec, TrainConfig, network_paths

RECORD_FILE = run_dir.RECORD_FILE
FORMAT = 1
FLOW_SETTINGS = "flow_run.json"  # stages/runs.py's record of a flow run's settings

# What a reader may change, and says it does: how the run is read, not what it is.
HONOURED = ("task", "feature_lengths")
# What changes a run's output: a command that asks for another value is refused.
MUST_AGREE = ("model_config", "vocabulary", "prompt_length", "deep_prompt", "trainable_regex",
              "frozen_dtype")  # fmt: skip
# Fields of T5Config that change how a network trains, not what it computes at evaluation.
_TRAINING_ONLY = ("dropout_rate", "remat_policy")
# What a SPoT flow or study sets for each of its runs; their gin files bind placeholders or the
# prompt runs' values, so a flow's gin file speaks for none of these (an explicit override does).
PER_RUN = ("task", "trainable_regex", "prompt_length", "deep_prompt")


class RecordError(run_dir.RunDirError):
    pass


def prompt_kind(spec: RunSpec, config: TrainConfig) -> str:
    """'none', 'plain', 'deep', 'attention' or 'multitask': what joins the run's input."""
    kind = kinds.of_config(config)
    if kind is not kinds.SINGLE:
        return kind.name
    if not spec.prompt_length:
        return "none"
    return "deep" if spec.deep_prompt else "plain"


def describe(spec: RunSpec, config: TrainConfig, trainable: dict) -> dict:
    """The record of a run about to train `trainable` (a nested tree of arrays)."""
    flat = traverse_util.flatten_dict(trainable, sep="/")
    shapes = {name: list(value.shape) for name, value in sorted(flat.items())}
    fields = dataclasses.asdict(dataclasses.replace(spec, model_dir=""))
    del fields["model_dir"]  # the folder may move; a reader knows where it read it
    return {
        "format": FORMAT,
        "spec": fields,
        "prompt_kind": prompt_kind(spec, config),
        "trainable": shapes,
        "eval": {"split": config.eval_split, "batch_size": config.eval_batch_size},
        "steps": config.steps,
        # the initial checkpoint's step: the run's steps count on from it (T5X's count)
        "start_step": checkpoints.initial_step(spec.initial_checkpoint),
    }


def check_counted(model_dir: str, start: int) -> None:
    """Refuse, in one line, to resume a run that counted its steps from 0 while its initial
    checkpoint has a step of its own (a run from before T5X's count), rather than count again."""
    record = read(model_dir) if start else None
    if start and (record is None or "start_step" not in record):
        raise RecordError(
            f"MODEL_DIR={model_dir} holds a run that counted its steps from 0; runs now count on "
            f"from INITIAL_CHECKPOINT_PATH's step ({start:,}, as T5X's TRAIN_STEPS does): read it "
            "as it is (eval, infer), or train it again: --overwrite for train, a new WORK_DIR "
            "(demo: --work-dir) for spot, study and demo"
        )


def write(spec: RunSpec, config: TrainConfig, trainable: dict) -> None:
    """MODEL_DIR/run.json, atomically (process 0)."""
    text = json.dumps(describe(spec, config, trainable), indent=1)
    files.atomic_write_text(spec.run_dir.file(RECORD_FILE), text + "\n")


def read(model_dir: paths.PathLike) -> dict | None:
    """The record of the run in `model_dir` (None: none written), or the one a SPoT flow's
    settings give for a folder older than records. A damaged record is refused in one line."""
    folder = run_dir.RunDir(model_dir)
    path = folder.file(RECORD_FILE)
    if path.exists():
        return _parse(path)
    older = folder.file(FLOW_SETTINGS)
    return _from_flow_settings(_parse(older)) if older.exists() else None


def _parse(path) -> dict:
    record = files.read_json(
        path, "it describes the run: restore it from a copy of the run, or train it again"
    )
    if not isinstance(record, dict):
        raise RecordError(f"{path} is damaged (not a JSON object); restore it from a copy")
    return record


def _from_flow_settings(flat: dict) -> dict | None:
    """A record from a flow run's flow_run.json (stages/runs.py: RunSpec and TrainConfig fields,
    flattened with dots), for folders the flow wrote before run.json existed."""
    nested: dict = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[name] = value
    if not {"task", "model_config", "feature_lengths", "trainable_regex"} <= nested.keys():
        return None  # not the flow's layout: the command's gin must say what the run is
    names = {f.name for f in dataclasses.fields(RunSpec)} - {"model_dir", "num_partitions"}
    fields = {k: nested[k] for k in names if k in nested}  # newer fields: their defaults
    return {
        "format": 0,  # derived, not written by the run
        "spec": fields,
        "prompt_kind": None,
        "trainable": None,
        "eval": {"split": nested.get("eval_split", "validation"), "batch_size": None},
    }


def spec_of(record: dict, model_dir: str) -> RunSpec:
    """The RunSpec a record describes, in `model_dir`."""
    fields = dict(record["spec"])
    try:
        fields["model_config"] = t5.T5Config(**fields["model_config"])
        fields["file_tasks"] = tuple(
            file_task_lib.FileTask(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in task.items()}
            )  # fmt: skip
            for task in fields.get("file_tasks") or ()
        )
        fields["feature_lengths"] = dict(fields["feature_lengths"])
        return RunSpec(model_dir=str(model_dir), **fields)
    except (TypeError, KeyError, ValueError) as e:
        raise RecordError(
            f"{run_dir.RunDir(model_dir).file(RECORD_FILE)} does not describe a run this version "
            f"reads ({str(e).splitlines()[0]}); give the run's gin files instead"
        ) from None


# ---------------------------------------------------------------------------------------------
# A command's settings against the run's.


def _shown(value) -> str:
    if dataclasses.is_dataclass(value):
        return type(value).__name__
    return repr(dict(value)) if isinstance(value, Mapping) else repr(value)


def _matched(regex: str, spec: RunSpec) -> frozenset[str]:
    """The parameter paths of the run's model that TRAINABLE `regex` selects: two regexes
    that select the same parameters are the same setting."""
    every = network_paths(spec.model_config)
    if spec.prompt_length:
        every = [*every, prompts.PROMPT_PATH]
    if spec.deep_prompt:
        every = [*every, *prompts.deep_prefix_paths(spec.model_config)]
    matcher = re.compile(regex)
    return frozenset(p for p in every if matcher.fullmatch(p))


def model_difference(run: t5.T5Config, asked: t5.T5Config) -> tuple[str, object, object] | None:
    for field in dataclasses.fields(t5.T5Config):
        if field.name in _TRAINING_ONLY:
            continue
        a, b = getattr(run, field.name), getattr(asked, field.name)
        if a != b:
            return field.name, a, b
    return None


def _macro(name: str) -> str:
    field = {f.name: f for f in dataclasses.fields(RunSpec)}[name]
    return rule_of(field).macro or name


def reconcile(
    run: RunSpec, asked: RunSpec, explicit: set[str], per_run: bool
) -> tuple[RunSpec, list[str]]:
    """(the spec to read the run with, lines that say what the command changed).

    `run` is the run as it trained, `asked` what the command's gin binds, `explicit` the macros
    the command line sets (`--gin.X=`), `per_run` whether the gin files are a flow's (which
    speak for none of PER_RUN). What changes the output must agree (else one line naming the
    setting and both values); the task and feature lengths are the command's, said in a line.
    """

    def spoken(name: str) -> bool:
        if name == "trainable_regex" and run.phase == 2:
            return False  # a two-phase run's gin says phase 1's; MODEL_TRAINABLE is phase 2's
        return not per_run or name not in PER_RUN or _macro(name) in explicit

    for name in MUST_AGREE:
        if not spoken(name):
            continue
        mine, theirs = getattr(run, name), getattr(asked, name)
        if name == "model_config":
            found = model_difference(mine, theirs)
            if found is None:
                continue
            field, mine, theirs = found
            shown = f"the model's {field}"
        elif name == "trainable_regex":
            if _matched(mine, run) == _matched(theirs, run):
                continue
            shown = "TRAINABLE"
        else:
            if mine == theirs:
                continue
            shown = _macro(name)
        raise RecordError(
            f"{shown}: the run in {run.model_dir} trained with {_shown(mine)}, this command's "
            f"gin says {_shown(theirs)}; leave the gin files out (the run is read from its "
            f"{RECORD_FILE}) or give its own"
        )
    notes, spec = [], run
    if spoken("task") and asked.task != run.task:
        notes.append(f"evaluating on task {asked.task}; the run trained on {run.task}")
        spec = dataclasses.replace(spec, task=asked.task)
    if dict(asked.feature_lengths) != dict(run.feature_lengths):
        shown = ", ".join(
            f"{k} length {v}" for k, v in asked.feature_lengths.items()
            if run.feature_lengths.get(k) != v
        )  # fmt: skip
        trained = ", ".join(f"{k} {v}" for k, v in run.feature_lengths.items())
        notes.append(f"reading with {shown}; the run trained with {trained}")
        spec = dataclasses.replace(spec, feature_lengths=dict(asked.feature_lengths))
    # The frozen checkpoint may have moved: the command's path is read, and MODEL_DIR's
    # model.json refuses it unless it holds the run's weights (RunDir.check_model).
    spec = dataclasses.replace(spec, initial_checkpoint=asked.initial_checkpoint)
    # Layout and registration are the command's: its devices, where it reads the tasks from,
    # and its own file tasks beside the run's (a file task it evaluates on).
    known = {t.name: t for t in run.file_tasks}
    known.update({t.name: t for t in asked.file_tasks})
    spec = dataclasses.replace(
        spec,
        num_partitions=asked.num_partitions,
        file_tasks=tuple(known.values()),
        task_module=asked.task_module or run.task_module,
        use_cached=asked.use_cached,
    )
    return spec, notes


def check_checkpoint(record: dict | None, held: Mapping[str, tuple], where: str) -> None:
    """Refuse a checkpoint that lacks an array the run trained, or holds it in another shape
    (the record's list against the checkpoint's; a record derived from flow settings has no
    list)."""
    wanted = (record or {}).get("trainable") or {}
    for name, shape in wanted.items():
        if name not in held:
            raise RecordError(
                f"{where} lacks {name}, which the run trained ({RECORD_FILE}); the checkpoint "
                "is not this run's, or was cut short: use an intact one"
            )
        if tuple(held[name]) != tuple(shape):
            raise RecordError(
                f"{where} holds {name} as {tuple(held[name])}, the run trained it as "
                f"{tuple(shape)} ({RECORD_FILE}); the checkpoint is not this run's"
            )


def say(line: str) -> None:
    """A line on the console (process 0), as the run's progress lines are written."""
    if files.is_chief():
        print(f"[prompt-transfer] {line}", file=sys.stderr, flush=True)


def for_command(asked: RunSpec, explicit: set[str], per_run: bool) -> RunSpec:
    """The spec a reading command uses for the run in asked.model_dir: the run's record, read as
    the command's gin asks where it may (`reconcile`); a folder without a record, the gin's."""
    record = read(asked.model_dir)
    if record is None:
        return asked  # an older run: the checkpoint still decides what is restored
    spec, notes = reconcile(spec_of(record, asked.model_dir), asked, explicit, per_run)
    for line in notes:
        say(line)
    return spec


def for_overrides(model_dir: str, overrides: Mapping[str, object]) -> RunSpec:
    """The spec of the run in `model_dir` from its record alone, with the command line's
    `--gin.MACRO=value` `overrides` of RunSpec macros read as `reconcile` reads them."""
    record = read(model_dir)
    if record is None:
        raise RecordError(
            f"MODEL_DIR={model_dir} holds no {RECORD_FILE} (no run there, or one trained before "
            "runs described themselves); give the run's gin files: --gin_file=..."
        )
    run = spec_of(record, model_dir)
    by_macro = {_macro(f.name): f.name for f in dataclasses.fields(RunSpec)}
    asked = dataclasses.replace(run, **{by_macro[m]: v for m, v in overrides.items()})
    settings.check(asked)
    return for_command(asked, set(overrides), per_run=False)


def macros() -> frozenset[str]:
    """The RunSpec macros a command line may set (MIXTURE_OR_TASK_NAME, PROMPT_LENGTH, ...)."""
    return frozenset(rule_of(f).macro for f in dataclasses.fields(RunSpec) if rule_of(f).macro) - {
        "MODEL_DIR"
    }


def refuse_unless_prompt_only(model_dir: str, record: dict | None) -> None:
    """Refuse, in one line, a run whose trained prompt alone is not the run: an attention run
    (each input mixes its prompt with frozen sources through a trained module), a multi-task
    run (a prompt per task), a run without a prompt."""
    if refusal := kinds.of_run(model_dir).refusal(model_dir):
        raise RecordError(refusal)
    if record and record.get("prompt_kind") == "none":
        raise RecordError(
            f"{model_dir} trained no prompt (model tuning); read it with `prompt-transfer eval` "
            "or `infer`, or write its network with `prompt-transfer export`"
        )


# config.gin's last part: what the code that launched the run set in Python (a SPoT flow's
# task, TRAINABLE and steps; phase 2's TRAINABLE) over what the gin files bound, so that the
# file is the run's operative config and works as a gin file for it.
SET_IN_PYTHON = "# Set for this run in Python (the SPoT flow, a study, phase 2), over the above:"


def operative_config(config_text: str, spec: RunSpec, config: TrainConfig) -> str:
    """`config_text` (the launch's gin config) with the run's own values of the macros it binds
    otherwise appended (gin takes a macro's last binding)."""
    if not config_text.strip() or spec.phase:
        return config_text  # a phase's settings follow from the gin's (trainer/phases.py)
    bound = {}
    for line in config_text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            bound[name] = value.strip()
    lines = []
    for owner in (spec, config):
        for field in dataclasses.fields(owner):
            macro, value = rule_of(field).macro, getattr(owner, field.name)
            if not macro or macro not in bound or not _literal(value):
                continue
            if _parsed(bound[macro]) != (dict(value) if isinstance(value, Mapping) else value):
                shown = repr(dict(value)) if isinstance(value, Mapping) else repr(value)
                lines.append(f"{macro} = {shown}")
    if not lines:
        return config_text
    return config_text.rstrip("\n") + "\n\n" + "\n".join([SET_IN_PYTHON, *lines]) + "\n"


def _literal(value) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(v, int | str) for v in value.values())
    return value is None or isinstance(value, bool | int | float | str)


def _parsed(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
