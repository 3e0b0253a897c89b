"""Batches from SeqIO tasks and mixtures, in a deterministic, resumable order.

The training stream is `task.get_dataset(shuffle, seed, num_epochs=None)` through SeqIO's
encoder-decoder feature converter, batched with `drop_remainder`. Its order depends only on the
seed, so a run resumed at batch position N skips N batches and sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from prompt_transfer.base import environment, files, paths
from prompt_transfer.base.errors import UserError
from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.data import registry, seqio_cache


class TaskError(UserError):
    pass


def load_registrations() -> None:
    """Import the project's task registrations (the `tasks/` folder, installed as the package
    `prompt_transfer_tasks`) once, before any lookup."""
    import importlib

    importlib.import_module("prompt_transfer_tasks")


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


_tfds_data_dir: str | None = None  # as --tfds_data_dir gave it


def set_tfds_data_dir(directory: str) -> None:
    """Read TFDS data sets from `directory` (local or gs://): T5X's --tfds_data_dir."""
    global _tfds_data_dir
    wrong = paths.folder_problem(directory)
    if wrong:
        raise TaskError(f"--tfds_data_dir={directory} {wrong} (where TFDS data sets are prepared)")
    _tfds_data_dir = directory
    import_seqio().set_tfds_data_dir_override(paths.native(directory))


def tfds_data_dir() -> tuple[str, str] | None:
    """(the flag or variable that names it, the folder) TFDS data sets are read from:
    --tfds_data_dir, else $TFDS_DATA_DIR; None: TFDS's own default (~/tensorflow_datasets)."""
    if _tfds_data_dir:
        return "--tfds_data_dir", _tfds_data_dir
    if directory := environment.tfds_data_dir():
        return "$TFDS_DATA_DIR", directory
    return None


def unprepared_tfds(name: str) -> tuple[str, str] | None:
    """(TFDS name, data dir) of the first TFDS source of a task or mixture that is not prepared
    (no dataset_info.json where TFDS looks), else None."""
    import tensorflow_datasets as tfds

    seqio = import_seqio()
    task = get_task(name)
    for sub in registry.subtasks(task):
        if isinstance(sub.source, seqio.TfdsDataSource):
            loader = sub.source.tfds_dataset
            builder = tfds.builder(loader.name, data_dir=loader.data_dir)
            if not (paths.path(builder.data_dir) / "dataset_info.json").exists():
                return loader.name, str(builder.data_dir_root)
    return None


def check_split(task, split: str) -> None:
    """Refuse a split the task (or mixture) does not have, naming those it has."""
    if split not in task.splits:
        raise TaskError(f"task {task.name!r} has no split {split!r}; it has {sorted(task.splits)}")


def check_prepared(name: str) -> None:
    """Refuse a task or mixture whose TFDS data is not prepared where TFDS looks (SeqIO would
    try to download it), in one line that says how to prepare it."""
    missing = unprepared_tfds(name)
    if missing:
        tfds_name, data_dir = missing
        raise TaskError(
            f"TFDS data {tfds_name} for {name!r} is not prepared in {data_dir}; build it "
            f"where there is network access (`tfds build {tfds_name.split(':')[0]} "
            f"--data_dir=DIR`) and point TFDS_DATA_DIR at DIR"
        )


def feature_converter():
    """SeqIO's encoder-decoder converter, padding (T5X's for prompt tuning), without its length
    assertions: every dataset it converts here (a training stream, SeqIO's Evaluator) comes
    from `Task.get_dataset` with the lengths, which trims each feature to them, and the converter
    pads to them, so the two checks could never fail; their traced map functions made building
    a stream and reading its first batch take ~1.2 s instead of ~0.5 (the tiny keyword task)."""
    seqio = import_seqio()
    return seqio.EncDecFeatureConverter(pack=False, apply_length_check=False)


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
    task_index: bool = False,
):
    """A tf.data.Dataset of model-feature batches (encoder_input_tokens, decoder_*).

    With `task_index` (a multi-task run's stream) `name` is a mixture and every example also
    carries `task_index`, the position of its task among the mixture's tasks: the tasks' streams
    are converted apart, marked, and sampled at the mixture's rates with the seed, as SeqIO's
    Mixture.get_dataset samples them (whose feature converter would drop the mark)."""
    seqio = import_seqio()
    task = get_task(name)
    check_split(task, split)
    read = lambda t: _converted(  # noqa: E731
        t, name, split, feature_lengths, seed, shuffle, num_epochs, shard_index, num_shards
    )
    if not task_index:
        return read(task).batch(batch_size, drop_remainder=num_epochs is None)
    tf = import_tensorflow()
    if not isinstance(task, seqio.Mixture):
        raise TaskError(f"a multi-task run trains on a mixture of tasks; {name!r} is one task")
    marked = [
        read(sub).map(lambda x, k=k: {**x, "task_index": tf.constant(k, tf.int32)})
        for k, sub in enumerate(task.tasks)
    ]
    rates = [float(task.get_rate(sub)) for sub in task.tasks]
    ds = tf.data.Dataset.sample_from_datasets(
        marked, weights=rates, seed=seed if shuffle else 42, stop_on_empty_dataset=True
    )
    return ds.batch(batch_size, drop_remainder=num_epochs is None)


def _converted(task, name, split, feature_lengths, seed, shuffle, num_epochs, shard, shards):
    """A task's (or mixture's) examples through the feature converter, unbatched."""
    seqio = import_seqio()
    use_cached = seqio_cache.use_for(task, split)
    try:
        ds = task.get_dataset(
            dict(feature_lengths),
            split=split,
            shuffle=shuffle,
            seed=seed,
            num_epochs=num_epochs,
            use_cached=use_cached,
            # Only multi-host runs shard: listing shards needs the TFDS split metadata.
            shard_info=seqio.ShardInfo(shard, shards) if shards > 1 else None,
            try_in_mem_cache=False,  # it asks TFDS for split sizes; the stream is prefetched anyway
        )
    except Exception:  # seqio tries to download an unprepared TFDS dataset
        check_prepared(name)
        raise
    return feature_converter()(ds, dict(feature_lengths))


@dataclasses.dataclass
class BatchStream:
    """An endless iterator of NumPy batches that knows its position (batches consumed).

    A resumed run picks up where the saved one stopped: from the iterator's own saved state
    (`save_state`; tf.data checkpoints, shuffle buffer included) when `state_file` exists,
    which costs the same at step 10 as at step 10,000; else by replaying `position` batches.

    The data is split into `num_shards` SeqIO shards; this stream reads `shards` of them and
    each of its batches is their rows side by side, `batch_size / len(shards)` rows each. So a
    global batch depends on the number of shards, not on how many processes read them: one
    process reading shards (0, 1) yields what two processes reading (0,) and (1,) yield together.
    """

    name: str
    feature_lengths: Mapping[str, int]
    batch_size: int  # rows of this stream's batches (this process's share of the global batch)
    seed: int
    position: int = 0
    split: str = "train"
    num_shards: int = 1
    shards: tuple[int, ...] = (0,)
    state_file: str | None = None  # an iterator state saved at `position` (save_state)
    task_index: bool = False  # a multi-task run's: each example's task (batched_dataset)

    def _dataset(self):
        tf = import_tensorflow()
        rows, left = divmod(self.batch_size, len(self.shards))
        if left:
            raise TaskError(
                f"a batch of {self.batch_size} rows does not split over {len(self.shards)} "
                "data shards; use a multiple of the shard count"
            )
        parts = [
            batched_dataset(
                self.name,
                self.split,
                self.feature_lengths,
                rows,
                self.seed,
                shard_index=shard,
                num_shards=self.num_shards,
                task_index=self.task_index,
            )
            for shard in self.shards
        ]
        ds = parts[0]
        if len(parts) > 1:
            ds = tf.data.Dataset.zip(tuple(parts)).map(
                lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}
            )
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options)

    def __post_init__(self):
        # A new dataset for each iterator: a second iterator over one shuffled dataset would
        # start its second epoch, in another order.
        tf = import_tensorflow()
        self.restored = False
        if self.state_file and tf.io.gfile.exists(self.state_file + ".index"):
            try:
                self._iterator = iter(self._dataset().prefetch(2))
                tf.train.Checkpoint(data=self._iterator).read(self.state_file).assert_consumed()
                self.restored = True
            except (tf.errors.OpError, AssertionError, ValueError) as e:
                warnings.warn(
                    f"the saved data iterator {self.state_file} does not fit this pipeline "
                    f"({str(e).splitlines()[0]}); replaying to batch {self.position} instead",
                    stacklevel=2,
                )
        if not self.restored:
            self._iterator = iter(self._dataset().skip(self.position).prefetch(2))

    def save_state(self, path: str) -> None:
        """Save the iterator where it stands (TensorFlow checkpoint files `path.*`)."""
        tf = import_tensorflow()
        tf.train.Checkpoint(data=self._iterator).write(path)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = {k: v.numpy() for k, v in next(self._iterator).items()}
        self.position += 1
        return batch


MIXING_CAP = 2**19  # SPoT's K


def examples_in(task, split: str = "train") -> int:
    """Examples in a task's split: from SeqIO's cache statistics when it is read cached, the
    source's metadata, else counted once."""
    if seqio_cache.reads_cached() and task.supports_caching and task.cache_dir:
        return int(task.get_cached_stats(split)["examples"])
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


# ---------------------------------------------------------------------------------------------
# Example caches: a task's preprocessed examples as NumPy arrays, for hosts without TensorFlow.

CACHE_FEATURES = ("encoder_input_tokens", "decoder_target_tokens")


def model_features(encoder_inputs: np.ndarray, decoder_targets: np.ndarray) -> dict:
    """What SeqIO's unpacked EncDecFeatureConverter makes of padded inputs and targets: the
    decoder input is the target shifted right behind a 0, and the loss covers non-pad tokens."""
    targets = np.asarray(decoder_targets, np.int32)
    return {
        "encoder_input_tokens": np.asarray(encoder_inputs, np.int32),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }


def write_example_cache(
    name: str,
    path: str | Path,
    feature_lengths: Mapping[str, int],
    passes: int = 1,
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "validation"),
) -> dict[str, int]:
    """Write `passes` shuffled passes over each split (each with its own seed, so random
    preprocessing such as span corruption differs between passes) to one .npz; returns the
    examples written per split. The file appears only once complete."""

    task = get_task(name)
    vocab_size = task.output_features["targets"].vocabulary.vocab_size
    dtype = np.uint16 if vocab_size <= 2**16 else np.int32
    arrays, counts = {}, {}
    for split in splits:
        chunks = {k: [] for k in CACHE_FEATURES}
        for p in range(passes if split == "train" else 1):
            ds = batched_dataset(name, split, feature_lengths, 1024, seed + p, num_epochs=1)
            for batch in ds.as_numpy_iterator():
                for k in CACHE_FEATURES:
                    chunks[k].append(batch[k].astype(dtype))
        for k in CACHE_FEATURES:
            arrays[f"{split}/{k}"] = np.concatenate(chunks[k])
        counts[split] = len(arrays[f"{split}/{CACHE_FEATURES[0]}"])
    arrays["task"] = np.asarray(name)
    arrays["vocab_size"] = np.asarray(vocab_size)
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    files.atomic_write_bytes(path, buffer.getvalue())
    return counts


def read_example_cache(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """{split: model features} from a cache written by `write_example_cache`."""
    try:
        with np.load(path) as f:
            splits = sorted({k.split("/")[0] for k in f.files if "/" in k})
            return {
                s: model_features(f[f"{s}/{CACHE_FEATURES[0]}"], f[f"{s}/{CACHE_FEATURES[1]}"])
                for s in splits
            }
    except (OSError, ValueError, KeyError) as e:
        raise TaskError(
            f"example cache {path} is unreadable ({e}); write it again with "
            "`prompt-transfer cache-examples`"
        ) from None


def pad_token_rows(rows: list[list[int]]) -> np.ndarray:
    """Right-pad token id lists with 0 into an int32 array [N, max length]."""
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
