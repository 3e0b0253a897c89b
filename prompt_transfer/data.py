"""Batches from SeqIO tasks and mixtures, in a deterministic, resumable order.

The training stream is `task.get_dataset(shuffle, seed, num_epochs=None)` through SeqIO's
encoder-decoder feature converter, batched with `drop_remainder`. Its order depends only on the
seed, so a run resumed at batch position N skips N batches and sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from prompt_transfer.tf_import import import_seqio, import_tensorflow


class TaskError(ValueError):
    pass


def load_registrations() -> None:
    """Import the project's task registrations (`tasks/`) once, before any lookup."""
    import importlib

    importlib.import_module("tasks")


def registered_names() -> list[str]:
    load_registrations()
    seqio = import_seqio()
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get_task(name: str):
    """The registered SeqIO task or mixture; an unknown name lists the closest ones."""
    load_registrations()
    seqio = import_seqio()
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        close = difflib.get_close_matches(name, registered_names(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise TaskError(f"unknown SeqIO task or mixture {name!r}{hint}") from None


def unprepared_tfds(name: str) -> tuple[str, str] | None:
    """(TFDS name, data dir) of the first TFDS source of a task or mixture that is not prepared
    (no dataset_info.json where TFDS looks), else None."""
    import tensorflow_datasets as tfds

    seqio = import_seqio()
    task = get_task(name)
    for sub in task.tasks if isinstance(task, seqio.Mixture) else [task]:
        if isinstance(sub.source, seqio.TfdsDataSource):
            loader = sub.source.tfds_dataset
            builder = tfds.builder(loader.name, data_dir=loader.data_dir)
            if not (Path(builder.data_dir) / "dataset_info.json").exists():
                return loader.name, str(builder.data_dir_root)
    return None


def feature_converter():
    seqio = import_seqio()
    return seqio.EncDecFeatureConverter(pack=False)


def batched_dataset(
    name: str,
    split: str,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
):
    """A tf.data.Dataset of model-feature batches (encoder_input_tokens, decoder_*)."""
    seqio = import_seqio()
    task = get_task(name)
    if split not in task.splits:
        raise TaskError(f"task {name!r} has no split {split!r}; it has {sorted(task.splits)}")
    try:
        ds = task.get_dataset(
            dict(feature_lengths),
            split=split,
            shuffle=shuffle,
            seed=seed,
            num_epochs=num_epochs,
            use_cached=False,
            # Only multi-host runs shard: listing shards needs the TFDS split metadata.
            shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
            try_in_mem_cache=False,  # it asks TFDS for split sizes; the stream is prefetched anyway
        )
    except Exception as e:  # seqio tries to download an unprepared TFDS dataset
        missing = unprepared_tfds(name)
        if missing:
            tfds_name, data_dir = missing
            raise TaskError(
                f"TFDS data {tfds_name} for {name!r} is not prepared in {data_dir}; build it "
                f"where there is network access (`tfds build {tfds_name.split(':')[0]} "
                f"--data_dir=DIR`) and point TFDS_DATA_DIR at DIR"
            ) from e
        raise
    ds = feature_converter()(ds, dict(feature_lengths))
    return ds.batch(batch_size, drop_remainder=num_epochs is None)


@dataclasses.dataclass
class BatchStream:
    """An endless iterator of NumPy batches that knows its position (batches consumed)."""

    name: str
    feature_lengths: Mapping[str, int]
    batch_size: int
    seed: int
    position: int = 0
    split: str = "train"
    shard_index: int = 0
    num_shards: int = 1

    def __post_init__(self):
        tf = import_tensorflow()
        ds = batched_dataset(
            self.name,
            self.split,
            self.feature_lengths,
            self.batch_size,
            self.seed,
            shard_index=self.shard_index,
            num_shards=self.num_shards,
        )
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options).skip(self.position).prefetch(2)
        self._iterator: Iterator = ds.as_numpy_iterator()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.position += 1
        return batch


MIXING_CAP = 2**19  # SPoT's K


def examples_in(task, split: str = "train") -> int:
    """Examples in a task's split: from the source's metadata, else counted once."""
    n = task.source.num_input_examples(split)
    if n is None:
        n = int(task.source.get_dataset(split=split, shuffle=False).reduce(0, lambda c, _: c + 1))
    return int(n)


def register_mixture(name: str, task_names, cap: int = MIXING_CAP) -> str:
    """Register (or replace) an examples-proportional mixture of tasks, rates capped at `cap`."""
    seqio = import_seqio()
    tasks = [get_task(t) for t in task_names]
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(t.name, min(examples_in(t), cap)) for t in tasks])
    return name
