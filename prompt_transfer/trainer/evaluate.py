"""Evaluation and inference of a trained run: the run's own RunSpec rebuilds its model, and its
"latest" or "best" checkpoint gives the trained parameters (never the optimizer state)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from prompt_transfer.base import environment, files, paths
from prompt_transfer.model import inference, seqio_eval
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning
from prompt_transfer.network.decoding import Decoding
from prompt_transfer.prompt import kinds, prompts
from prompt_transfer.trainer import run_dir, run_record, weights
from prompt_transfer.trainer.config import RunSpec, check_numbers
from prompt_transfer.trainer.train import model_record, network_of
from prompt_transfer.trainer.train_state import TrainError
from prompt_transfer.transfer import library

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
    spec.run_dir.check_folder()
    record = run_record.read(spec.model_dir)
    spec.prepare_tasks()
    mesh = partitioning.make_mesh(spec.num_partitions)
    network = network_of(spec, mesh)
    spec.run_dir.check_model(model_record(spec, network), create=False)
    blank = prompts.blank(spec.prompt_length, spec.model_config, spec.deep_prompt)
    if spec.run_dir.read_phases() is not None:  # prompt, then model: phase 1's prompt
        blank = spec.run_dir.phase1_prompt()
    elif spec.run_dir.file(run_dir.PHASE1).exists():
        raise TrainError(
            f"MODEL_DIR={spec.model_dir} is a prompt-then-model run still in phase 1; evaluate "
            f"that phase's prompt with MODEL_DIR={spec.run_dir.file(run_dir.PHASE1)}"
        )
    params, step = weights.restore_trained(spec.model_dir, network, blank, mesh, checkpoint, record)
    return EncoderDecoderModel(network.module, kind=kinds.of_run(spec.model_dir)), params, step


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
    decoding: Decoding | None = None,
) -> dict:
    """{task: {metric: value}} of the run's `checkpoint` on `split` (None: the split its
    evaluations used), also written to MODEL_DIR/eval_<split>_<checkpoint>.json. `decoding`:
    how a generative task decodes (greedy by default, as the run's own evaluations)."""
    split, batch_size = read_settings(spec, split, batch_size)
    model, params, step = trained(spec, checkpoint)
    if _one_task(spec, model):  # a multi-task run asked about one of its tasks: that task's prompt
        [(_, model, params)] = _each_task(spec, model, params, None)
    evaluator = seqio_eval.TaskEvaluator(
        model, spec.task, split, spec.feature_lengths, batch_size, how=decoding
    )
    results = evaluator.evaluate(params, step)
    name, value = seqio_eval.main_metric(results)
    report = {
        "step": step,
        "split": split,
        "checkpoint": checkpoint,
        "results": results,
        "main_metric": {name: value},
    }
    target = spec.run_dir.file(f"eval_{split}_{checkpoint}.json")
    files.atomic_write_text(target, json.dumps(report, indent=1))
    return report


def infer(
    spec: RunSpec,
    *,
    split: str | None = None,
    input_file: str | None = None,
    output_file: str | None = None,
    checkpoint: str = "latest",
    batch_size: int | None = None,
    decoding: Decoding | None = None,
) -> str:
    """Write the run's predictions (JSONL) for a task split (None: the one its evaluations
    used) or a text file (one input per line); returns the output path. `decoding`: how a
    generative task decodes (greedy by default)."""
    check_files(input_file, output_file)
    split, batch_size = read_settings(spec, split, batch_size)
    model, params, step = trained(spec, checkpoint)
    records = []
    for name, own_model, own in _each_task(spec, model, params, input_file):
        if input_file:
            task, rows = inference.rows_from_file(name, input_file, spec.feature_lengths)
        else:
            task, rows = inference.rows_from_task(name, split, spec.feature_lengths)
        found = inference.predict(
            own_model, own, task, rows, spec.feature_lengths, batch_size, decoding, spec.seed
        )
        records += [dict(r, task=name) for r in found] if own_model is not model else found
    source = paths.path(input_file).stem if input_file else split
    out = output_file or spec.run_dir.file(f"predictions_{source}_step{step}.jsonl")
    files.atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    return str(out)


def _each_task(spec: RunSpec, model, params, input_file):
    """[(task, model, its parameters)] to predict with: the run's task, model and parameters;
    for a run whose kind gives each task its own prompt (multi-task), each of its tasks with its
    own (MIXTURE_OR_TASK_NAME set to one of them: that one only)."""
    tasks = model.kind.tasks(spec.model_dir)
    if tasks is None:
        return [(spec.task, model, params)]
    names = [spec.task] if spec.task in tasks else list(tasks)
    if input_file and len(names) > 1:
        raise TrainError(
            f"MODEL_DIR={spec.model_dir} is a multi-task run, whose prompt depends on the task: "
            "to predict for INFER_INPUT_FILE, set MIXTURE_OR_TASK_NAME to one of its tasks: "
            + ", ".join(tasks)
        )
    each = []
    for name in names:
        kind, own = model.kind.for_task(params, tasks.index(name), spec.model_config)
        each.append((name, dataclasses.replace(model, kind=kind), own))
    return each


def _one_task(spec: RunSpec, model) -> bool:
    """Whether a run with a prompt per task is asked about one of its tasks."""
    tasks = model.kind.tasks(spec.model_dir)
    return tasks is not None and spec.task in tasks


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


# ---- a prompt on a frozen checkpoint, as T5X's eval and infer (prompt_eval.gin, eval.gin) ----


def _of_a_run(path: str) -> tuple[str, str] | None:
    """(MODEL_DIR, 'checkpoint_N') when `path` is a checkpoint of one of this project's runs."""
    found = paths.path(path)
    ours = any((found.parent / n).exists() for n in (run_record.RECORD_FILE, run_dir.MODEL_FILE))
    if re.fullmatch(r"checkpoint_\d+", found.name) and ours:  # not just any T5X folder
        return str(found.parent), found.name
    return None


def on_checkpoint(spec: RunSpec, prompt_file: str | None):
    """(model, parameters, step, spec) of the frozen network at INITIAL_CHECKPOINT_PATH (T5X's
    CHECKPOINT_PATH) with PROMPT_FILE's prompt joined (a `.npy`, T5X's numpy checkpoint
    file such as numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt, or a library
    entry: its folder or its id in the default library, on the model it trained with); no prompt
    when PROMPT_LENGTH is 0. The step is the checkpoint's own. A checkpoint of one of this
    project's runs is that run's, read as it trained (its record), on the command's task and
    lengths."""
    from prompt_transfer.network import checkpoints

    check_numbers(spec)
    if not spec.initial_checkpoint:
        raise TrainError("CHECKPOINT_PATH is None; give the T5X checkpoint to evaluate")
    run = _of_a_run(spec.initial_checkpoint)
    if run is not None:
        if prompt_file:
            raise TrainError(
                f"CHECKPOINT_PATH={spec.initial_checkpoint!r} is a checkpoint of the run in "
                f"{run[0]}, which holds its own prompt; leave PROMPT_FILE out "
                "(t5x/configs/runs/eval.gin or infer.gin, not prompt_eval.gin)"
            )
        asked = {"MIXTURE_OR_TASK_NAME": spec.task, "TASK_FEATURE_LENGTHS": spec.feature_lengths}
        own = run_record.for_overrides(run[0], asked)
        return (*trained(own, run[1]), own)
    prompt, entry = None, None
    if spec.prompt_length:
        if not prompt_file:
            raise TrainError(
                f"PROMPT_LENGTH={spec.prompt_length} but no PROMPT_FILE: give the prompt to "
                "evaluate (prompt_tuning/configs/runs/prompt_eval.gin reads it)"
            )
        prompt, entry = _given_prompt(spec, prompt_file)
    spec.prepare_tasks()
    mesh = partitioning.make_mesh(spec.num_partitions)
    network = network_of(spec, mesh)
    if entry is not None and entry.model_fingerprint:
        _check_entry_model(entry, library.model_fingerprint(network.params), spec)
    params = (
        network.params
        if prompt is None
        else prompts.join(network.params, spec.model_config, prompt)
    )
    step = checkpoints.initial_step(spec.initial_checkpoint)  # the checkpoint's own, as T5X logs
    return EncoderDecoderModel(network.module), params, step, spec


def with_longest_lengths(spec: RunSpec, split: str) -> RunSpec:
    """`spec` with TASK_FEATURE_LENGTHS each feature's longest example of the split, EOS
    included: T5X's eval.gin leaves TASK_FEATURE_LENGTHS None for its evaluator to measure."""
    from prompt_transfer.data import batches, registry, seqio_cache

    spec.register_tasks()
    task = batches.get_task(spec.task)
    longest = {"inputs": 1, "targets": 1}
    for sub in registry.subtasks(task):
        batches.check_split(sub, split)
        cached = seqio_cache.use_for(sub, split)
        ds = sub.get_dataset(None, split=split, shuffle=False, num_epochs=1, use_cached=cached)
        for example in ds.as_numpy_iterator():
            for key in longest:
                longest[key] = max(longest[key], len(example[key]))
    run_record.say(
        f"TASK_FEATURE_LENGTHS=None: the longest {split} example of {spec.task}, "
        f"{longest} (as T5X's evaluator measures it)"
    )
    return dataclasses.replace(spec, feature_lengths=longest)


def _given_prompt(spec: RunSpec, prompt_file: str):
    """(prompt [P, E], library entry or None) of PROMPT_FILE: a `.npy` or T5X numpy file, a
    library entry's folder (LIBRARY/ENTRY_ID), or an entry id of the default library
    ($PROMPT_TRANSFER_LIBRARY); an entry's files are checked against its hashes."""
    where = paths.path(prompt_file)
    if where.is_dir() and (where / "meta.json").exists():
        lib, entry_id = library.Library(str(where.parent)), where.name
    elif not where.exists() and library.is_entry_id(prompt_file):
        lib, entry_id = library.Library(environment.library_dir()), prompt_file
    else:
        return prompts.from_file(prompt_file, spec.prompt_length, spec.model_config.emb_dim), None
    entry = lib.get(entry_id)
    wanted = (spec.prompt_length, spec.model_config.emb_dim)
    if (entry.prompt_length, entry.embed_dim) != wanted:
        raise TrainError(
            f"PROMPT_FILE={prompt_file!r}: library entry {entry.id} holds a prompt of shape "
            f"{(entry.prompt_length, entry.embed_dim)}, this model takes {wanted} "
            "(PROMPT_LENGTH x model width)"
        )
    if entry.deep_width:
        raise TrainError(
            f"PROMPT_FILE={prompt_file!r}: library entry {entry.id} is a deep prompt; score "
            "it through its run (--gin.MODEL_DIR=...), which holds every layer's part"
        )
    return np.asarray(lib.prompt(entry), np.float32), entry


def _check_entry_model(entry, fingerprint: str, spec: RunSpec) -> None:
    """A library prompt is scored on the frozen model it trained with, never another."""
    if entry.model_fingerprint != fingerprint:
        raise TrainError(
            f"library entry {entry.id} trained with the frozen model {entry.model} (fingerprint "
            f"{entry.model_fingerprint}); CHECKPOINT_PATH={spec.initial_checkpoint!r} holds "
            f"another ({fingerprint}): give the checkpoint it trained with"
        )


def _with_config(output_dir: str, config_text: str) -> None:
    """The command's operative gin config beside its outputs, as T5X's eval and infer write it."""
    if config_text:
        files.atomic_write_text(paths.path(output_dir) / "config.gin", config_text)


def evaluate_checkpoint(
    spec: RunSpec,
    *,
    split: str = "test",
    batch_size: int = 32,
    prompt_file: str | None = None,
    output_dir: str,
    config_text: str = "",
    decoding: Decoding | None = None,
) -> dict:
    """T5X's `eval`: the prompt (or none) on the frozen checkpoint, scored on `split`; SeqIO's
    loggers write `output_dir/inference_eval/` as T5X's do (`<task>-metrics.jsonl` with the
    checkpoint's step, `<task>-<step>.jsonl` predictions, TensorBoard events)."""
    model, params, step, spec = on_checkpoint(spec, prompt_file)
    log_dir = paths.path(output_dir) / "inference_eval"
    if files.is_chief():
        log_dir.mkdir(parents=True, exist_ok=True)  # SeqIO's loggers write into it, not make it
    log_dir = str(log_dir)
    evaluator = seqio_eval.TaskEvaluator(
        model, spec.task, split, spec.feature_lengths, batch_size, log_dir=log_dir, how=decoding
    )
    results = evaluator.evaluate(params, step)
    _with_config(output_dir, config_text)
    name, value = seqio_eval.main_metric(results)
    return {"step": step, "split": split, "results": results, "main_metric": {name: value}}


def infer_checkpoint(
    spec: RunSpec,
    *,
    split: str = "test",
    batch_size: int = 32,
    prompt_file: str | None = None,
    output_dir: str,
    config_text: str = "",
    decoding: Decoding | None = None,
) -> str:
    """T5X's `infer` (mode 'predict'): the prompt (or none) on the frozen checkpoint predicts
    `split`, written as T5X writes it: `output_dir/<task>-predict.jsonl-00000-of-00001`, one
    `{"inputs": {...pretokenized}, "prediction": ...}` a line, then a `.COMPLETED` marker."""
    model, params, _, spec = on_checkpoint(spec, prompt_file)
    task, rows = inference.rows_from_task(spec.task, split, spec.feature_lengths)
    found = inference.predict(
        model, params, task, rows, spec.feature_lengths, batch_size, decoding, spec.seed
    )
    name = f"{spec.task}-predict.jsonl-00000-of-00001"
    target = paths.path(output_dir) / name
    files.atomic_write_text(target, "".join(json.dumps(_t5x_row(r)) + "\n" for r in found))
    files.atomic_write_text(paths.path(output_dir) / f"{name}.COMPLETED", "")
    _with_config(output_dir, config_text)
    return str(target)


def _t5x_row(record: dict) -> dict:
    """An inference record as T5X's infer writes it: the pretokenized inputs (and target) under
    "inputs", the prediction, and rank classification's scores where there are labels."""
    inputs = {"inputs_pretokenized": record["input"]}
    if "target" in record:
        inputs["targets_pretokenized"] = record["target"]
    scores = {"scores": record["scores"]} if "scores" in record else {}
    return {"inputs": inputs, "prediction": record["prediction"], **scores}
