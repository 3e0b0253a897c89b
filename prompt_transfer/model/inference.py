"""Predictions of a trained model: the rows to predict and one JSON-ready record per row.

`prompt-transfer infer` (trainer/evaluate.py) writes them as JSONL.

Inputs come from a task split (the task's preprocessing applies) or from a plain text file,
one input per line (`INFER_INPUT_FILE`). Classification tasks predict by rank classification
over their labels (with every label's log-likelihood in the record); others decode greedily.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from prompt_transfer.base import errors, paths
from prompt_transfer.data import batches, registry, seqio_cache
from prompt_transfer.model import encoder_decoder, seqio_eval
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network.partitioning import host_array


def rows_from_task(name: str, split: str, feature_lengths: Mapping[str, int]):
    """(task, [(input text, input ids, target text or None)]) of a task split, preprocessed."""
    task = batches.get_task(name)
    ds = task.get_dataset(
        dict(feature_lengths),
        split=split,
        shuffle=False,
        num_epochs=1,
        use_cached=seqio_cache.use_for(task, split),
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


def rows_from_file(name: str, path: str, feature_lengths: Mapping[str, int]):
    """(task, rows) for a text file, one input per line, encoded with the task's vocabulary."""
    task = batches.get_task(name)
    vocab = task.output_features["inputs"].vocabulary
    limit = feature_lengths["inputs"]
    try:
        lines = paths.path(path).read_text().splitlines()
    except UnicodeDecodeError as e:
        raise errors.not_utf8(path, e) from None
    return task, [(line, (vocab.encode(line)[: limit - 1] + [1]), None) for line in lines]


def predict(
    model: EncoderDecoderModel,
    params: dict,
    task,
    rows: list,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    how=None,
    seed: int = 0,
) -> list[dict]:
    """One record per row: the prediction (rank classification over the task's labels, with
    every label's log-likelihood, or decoding as `how`, a decoding.Decoding, says: greedy by
    default; a sample is seeded by `seed`), the input, and the target if known."""
    vocab = task.output_features["targets"].vocabulary
    labels = registry.class_labels(task.name)
    place, replicate, rules = seqio_eval.input_placers(params, batch_size)
    candidates = (
        replicate(batches.pad_token_rows([vocab.encode(label) + [1] for label in labels]))
        if labels
        else None
    )
    length, length_out = feature_lengths["inputs"], feature_lengths["targets"]
    rank = jax.jit(model.rank_classify)  # one program for every batch, as in evaluation
    records = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        tokens = np.zeros((batch_size, length), np.int32)
        for i, (_, ids, _) in enumerate(chunk):
            tokens[i, : min(len(ids), length)] = ids[:length]
        if candidates is not None:
            with rules():
                scores = host_array(rank(params, place(tokens), candidates))
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
            with rules():
                if how is None or how.method == "greedy":
                    decoded = model.predict(params, place(tokens), max_length=length_out)
                else:
                    rng = jax.random.fold_in(jax.random.PRNGKey(seed), start)
                    decoded = model.decode(params, place(tokens), length_out, how, rng)
            decoded = host_array(decoded)
            stripped = encoder_decoder.strip_after_eos(decoded)
            for (text, _, target), ids in zip(chunk, stripped, strict=False):
                records.append(
                    {
                        "input": text,
                        "prediction": vocab.decode(ids),
                        **({"target": target} if target is not None else {}),
                    }
                )
    return records
