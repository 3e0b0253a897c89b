"""Predictions of a trained run as JSONL: `python -m prompt_transfer.infer --gin_file=...`.

Inputs come from a task split (the task's preprocessing applies) or from a plain text file,
one input per line (`INFER_INPUT_FILE`). Classification tasks predict by rank classification
over their labels (with every label's log-likelihood in the record); others decode greedily.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from prompt_transfer import data, gin_files, models, partitioning, registry, t5, train, train_io
from prompt_transfer import file_tasks as file_task_lib
from prompt_transfer.models import EncoderDecoderModel


def _inputs_from_task(name, split, feature_lengths):
    task = data.get_task(name)
    ds = task.get_dataset(
        dict(feature_lengths),
        split=split,
        shuffle=False,
        num_epochs=1,
        use_cached=False,
        try_in_mem_cache=False,
    )
    vocab = task.output_features["inputs"].vocabulary
    rows = [
        (
            vocab.decode(ex["inputs"].tolist()),
            ex["inputs"].tolist(),
            ex["targets_pretokenized"].decode() if "targets_pretokenized" in ex else None,
        )
        for ex in ds.as_numpy_iterator()
    ]
    return task, rows


def _inputs_from_file(name, path, feature_lengths):
    task = data.get_task(name)
    vocab = task.output_features["inputs"].vocabulary
    limit = feature_lengths["inputs"]
    lines = Path(path).read_text().splitlines()
    return task, [(line, (vocab.encode(line)[: limit - 1] + [1]), None) for line in lines]


def infer(
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
    input_file: str | None = None,
    output_file: str | None = None,
    checkpoint: str = "latest",
    batch_size: int = 32,
    file_tasks: Sequence[file_task_lib.FileTask] = (),
) -> str:
    """Write predictions (JSONL) and return the output path."""
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
    if input_file:
        task, rows = _inputs_from_file(mixture_or_task_name, input_file, task_feature_lengths)
    else:
        task, rows = _inputs_from_task(mixture_or_task_name, split, task_feature_lengths)
    vocab = task.output_features["targets"].vocabulary
    model = EncoderDecoderModel(module)
    labels = registry.class_labels(task.name)
    candidates = (
        jnp.asarray(models.pad_token_rows([vocab.encode(label) + [1] for label in labels]))
        if labels
        else None
    )
    length = task_feature_lengths["inputs"]
    records = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        tokens = np.zeros((batch_size, length), np.int32)
        for i, (_, ids, _) in enumerate(chunk):
            tokens[i, : min(len(ids), length)] = ids[:length]
        if candidates is not None:
            scores = np.asarray(model.rank_classify(params, jnp.asarray(tokens), candidates))
            for (text, _, target), row in zip(chunk, scores, strict=False):
                records.append(
                    {
                        "input": text,
                        "prediction": labels[int(np.argmax(row))],
                        "scores": dict(zip(labels, map(float, row), strict=True)),
                        **({"target": target} if target is not None else {}),
                    }
                )
        else:
            decoded = model.predict(
                params,
                jnp.asarray(models.pad_batch(tokens, batch_size)),
                max_length=task_feature_lengths["targets"],
            )
            for (text, _, target), ids in zip(chunk, models.strip_after_eos(decoded), strict=False):
                records.append(
                    {
                        "input": text,
                        "prediction": vocab.decode(ids),
                        **({"target": target} if target is not None else {}),
                    }
                )
    source = Path(input_file).stem if input_file else split
    out = Path(output_file or Path(model_dir) / f"predictions_{source}_step{step}.jsonl")
    train_io.atomic_write_bytes(out, "".join(json.dumps(r) + "\n" for r in records).encode())
    return str(out)


def main(argv: list[str]) -> str:
    launch = gin_files.parse_command_line(argv)
    gin_files.configure(launch.files, launch.bindings)
    return gin_files.configured(infer)()


if __name__ == "__main__":
    from prompt_transfer import cli

    sys.exit(cli.main(["infer", *sys.argv[1:]]))
