"""Evaluate a trained run on a task split: `python -m prompt_transfer.eval --gin_file=...`.

Reads the same gin files as the run (so the model, prompt length and TRAINABLE match), restores
the latest or best checkpoint from MODEL_DIR, and writes `eval_<split>_<which>.json` there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from prompt_transfer import evaluation, gin_files, partitioning, t5, train, train_io
from prompt_transfer import file_tasks as file_task_lib
from prompt_transfer.models import EncoderDecoderModel


def evaluate(
    *,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    model_config: t5.T5Config,
    initial_checkpoint_path: str | None = None,
    trainable: str = "encoder/prompt/prompt",
    prompt_length: int = 100,
    random_seed: int = 0,
    num_partitions: int = 1,
    split: str = "validation",
    checkpoint: str = "latest",
    batch_size: int = 32,
    file_tasks: Sequence[file_task_lib.FileTask] = (),
) -> dict:
    """{task: {metric: value}} of the run's `checkpoint` ("latest" or "best") on `split`."""
    module, params, step = train.load_trained_params(
        model_dir,
        model_config,
        initial_checkpoint_path,
        trainable,
        prompt_length,
        random_seed,
        partitioning.make_mesh(num_partitions),
        checkpoint,
        file_tasks,
    )
    evaluator = evaluation.TaskEvaluator(
        EncoderDecoderModel(module), mixture_or_task_name, split, task_feature_lengths, batch_size
    )
    results = evaluator.evaluate(params, step)
    name, value = evaluation.main_metric(results)
    report = {
        "step": step,
        "split": split,
        "checkpoint": checkpoint,
        "results": results,
        "main_metric": {name: value},
    }
    train_io.atomic_write_bytes(
        Path(model_dir) / f"eval_{split}_{checkpoint}.json", json.dumps(report, indent=1).encode()
    )
    return report


def main(argv: list[str]) -> dict:
    launch = gin_files.parse_command_line(argv)
    gin_files.configure(launch.files, launch.bindings)
    return gin_files.configured(evaluate)()


if __name__ == "__main__":
    from prompt_transfer import cli

    sys.exit(cli.main(["eval", *sys.argv[1:]]))
