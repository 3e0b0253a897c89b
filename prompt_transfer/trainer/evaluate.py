"""Evaluation and inference of a trained run: the run's own RunSpec rebuilds its model, and its
"latest" or "best" checkpoint gives the trained parameters (never the optimizer state)."""

from __future__ import annotations

import json
import re

from prompt_transfer import evaluation, inference, partitioning, paths, prompts
from prompt_transfer.models import EncoderDecoderModel
from prompt_transfer.trainer import run_dir, run_record, weights
from prompt_transfer.trainer.config import RunSpec, check_numbers
from prompt_transfer.trainer.train import model_record, network_of
from prompt_transfer.trainer.train_state import TrainError
from prompt_transfer.transfer import multitask

CHECKPOINTS = ("latest", "best")


def trained(spec: RunSpec, checkpoint: str):
    """(model, parameters, step) of the run's `checkpoint` ("latest", "best" or one step,
    "checkpoint_N"): every array
    the checkpoint holds, over the run's frozen network (weights.restore_trained)."""
    if checkpoint not in CHECKPOINTS and not re.fullmatch(r"checkpoint_\d+", str(checkpoint)):
        raise TrainError(
            f"CHECKPOINT={checkpoint!r} is unknown; choose 'latest', 'best' or a step the run "
            "saved, e.g. 'checkpoint_1000'"
        )
    check_numbers(spec)
    run_dir.check_folder(spec.model_dir)
    record = run_record.read(spec.model_dir)
    spec.prepare_tasks()
    mesh = partitioning.make_mesh(spec.num_partitions)
    network = network_of(spec, mesh)
    run_dir.check_model(spec.model_dir, model_record(spec, network), create=False)
    blank = prompts.blank(spec.prompt_length, spec.model_config, spec.deep_prompt)
    if run_dir.read_phases(spec.model_dir) is not None:  # prompt, then model: phase 1's prompt
        blank = run_dir.phase1_prompt(spec.model_dir)
    elif run_dir.subdir(spec.model_dir, run_dir.PHASE1).exists():
        raise TrainError(
            f"MODEL_DIR={spec.model_dir} is a prompt-then-model run still in phase 1; evaluate "
            f"that phase's prompt with MODEL_DIR={run_dir.subdir(spec.model_dir, run_dir.PHASE1)}"
        )
    params, step = weights.restore_trained(spec.model_dir, network, blank, mesh, checkpoint, record)
    return EncoderDecoderModel(network.module), params, step


def read_settings(spec: RunSpec, split: str | None, batch_size: int | None) -> tuple[str, int]:
    """(split, batch size) to read the run with: the command's, else those its evaluations
    used (run.json), else 'validation' and 32; a command's that differ are said in a line."""
    used = (run_record.read(spec.model_dir) or {}).get("eval") or {}
    for name, asked, was in (("split", split, used.get("split")),
                             ("batch size", batch_size, used.get("batch_size"))):  # fmt: skip
        if asked is not None and was is not None and asked != was:
            run_record.say(f"reading with {name} {asked}; the run evaluated with {was}")
    return (
        split or used.get("split") or "validation",
        batch_size or used.get("batch_size") or 32,
    )


def evaluate(
    spec: RunSpec,
    *,
    split: str | None = None,
    checkpoint: str = "latest",
    batch_size: int | None = None,
) -> dict:
    """{task: {metric: value}} of the run's `checkpoint` on `split` (None: the split its
    evaluations used), also written to MODEL_DIR/eval_<split>_<checkpoint>.json."""
    split, batch_size = read_settings(spec, split, batch_size)
    model, params, step = trained(spec, checkpoint)
    if _one_task(spec):  # a multi-task run asked about one of its tasks: that task's prompt
        [(_, params)] = _each_task(spec, params, None)
    evaluator = evaluation.TaskEvaluator(model, spec.task, split, spec.feature_lengths, batch_size)
    results = evaluator.evaluate(params, step)
    name, value = evaluation.main_metric(results)
    report = {
        "step": step,
        "split": split,
        "checkpoint": checkpoint,
        "results": results,
        "main_metric": {name: value},
    }
    target = run_dir.subdir(spec.model_dir, f"eval_{split}_{checkpoint}.json")
    paths.atomic_write_text(target, json.dumps(report, indent=1))
    return report


def infer(
    spec: RunSpec,
    *,
    split: str | None = None,
    input_file: str | None = None,
    output_file: str | None = None,
    checkpoint: str = "latest",
    batch_size: int | None = None,
) -> str:
    """Write the run's predictions (JSONL) for a task split (None: the one its evaluations
    used) or a text file (one input per line); returns the output path."""
    check_files(input_file, output_file)
    split, batch_size = read_settings(spec, split, batch_size)
    model, params, step = trained(spec, checkpoint)
    records = []
    for name, own in _each_task(spec, params, input_file):
        if input_file:
            task, rows = inference.rows_from_file(name, input_file, spec.feature_lengths)
        else:
            task, rows = inference.rows_from_task(name, split, spec.feature_lengths)
        found = inference.predict(model, own, task, rows, spec.feature_lengths, batch_size)
        records += [dict(r, task=name) for r in found] if own is not params else found
    source = paths.path(input_file).stem if input_file else split
    out = output_file or run_dir.subdir(spec.model_dir, f"predictions_{source}_step{step}.jsonl")
    paths.atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    return str(out)


def _each_task(spec: RunSpec, params, input_file):
    """[(task, its parameters)] to predict with: the run's task and its parameters; for a
    multi-task run each of its tasks with its own prompt (MIXTURE_OR_TASK_NAME set to one of
    them: that one only)."""
    pieces = multitask.load(spec.model_dir)
    if pieces is None:
        return [(spec.task, params)]
    names = [spec.task] if spec.task in pieces.names else list(pieces.names)
    if input_file and len(names) > 1:
        raise TrainError(
            f"MODEL_DIR={spec.model_dir} is a multi-task run, whose prompt depends on the task: "
            "to predict for INFER_INPUT_FILE, set MIXTURE_OR_TASK_NAME to one of its tasks: "
            + ", ".join(pieces.names)
        )
    config = spec.model_config
    return [(n, multitask.params_for(params, pieces.names.index(n), config)) for n in names]


def _one_task(spec: RunSpec) -> bool:
    """Whether a multi-task run is asked about one of its tasks (MIXTURE_OR_TASK_NAME)."""
    pieces = multitask.load(spec.model_dir)
    return pieces is not None and spec.task in pieces.names


def check_files(input_file: str | None, output_file: str | None) -> None:
    """Refuse, before the model loads, an input that is no file and an output that cannot be one
    (the OS would say only "Is a directory" or "No such file", naming no macro)."""
    source = paths.path(input_file) if input_file else None
    if source and (source.is_dir() or not source.exists()):
        wrong = "is a folder" if source.is_dir() else "does not exist"
        raise TrainError(
            f"INFER_INPUT_FILE={input_file!r} {wrong}; give a text file, one input per line"
        )
    wrong = paths.file_problem(output_file, "predictions.jsonl")
    if wrong:
        raise TrainError(f"INFER_OUTPUT_FILE={output_file!r} {wrong}")
