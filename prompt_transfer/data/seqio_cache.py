"""SeqIO's offline cache of a task: read (T5X's USE_CACHED_TASKS and --seqio_additional_cache_dirs)
and written in the format `seqio_cache_tasks` writes, without Apache Beam.

A cached task is a folder `CACHE_DIR/<task name>/` holding, per split, `info.SPLIT.json` (the
features' dtypes and shapes), `stats.SPLIT.json` (examples and token counts) and
`SPLIT.tfrecord-NNNNN-of-MMMMM` (tf.Example records of the examples as they leave the task's
preprocessors before its `CacheDatasetPlaceholder`), and a `COMPLETED` file written last. SeqIO
reads it itself (`Task.get_dataset(use_cached=True)`) from the folders of
`seqio.add_global_cache_dirs`; what comes after the placeholder (EOS, trimming to
TASK_FEATURE_LENGTHS) runs on the cached examples as it would on the source's.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from prompt_transfer.base import paths
from prompt_transfer.base.errors import UserError
from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.data import registry

_read_cached = False  # the run's USE_CACHED_TASKS (RunSpec.register_tasks sets it)


class CacheError(UserError):
    pass


def read_cached(flag: bool) -> None:
    """Whether tasks are read from SeqIO's cache (True) or from their sources (False)."""
    global _read_cached
    _read_cached = bool(flag)


def reads_cached() -> bool:
    return _read_cached


def add_dirs(directories) -> None:
    """T5X's --seqio_additional_cache_dirs: folders searched for cached tasks (local or gs://),
    each checked to exist."""
    folders = [d for d in directories if d]
    for folder in folders:
        if not paths.path(folder).is_dir():
            raise CacheError(
                f"--seqio_additional_cache_dirs: {folder} is no folder; give the folder "
                "seqio_cache_tasks (or `prompt-transfer cache-tasks`) wrote as --output_cache_dir"
            )
    import_seqio().add_global_cache_dirs([paths.native(f) for f in folders])


def use_for(task, split: str) -> bool:
    """SeqIO's `use_cached` for reading `split` of `task` (a task or mixture): the run's
    USE_CACHED_TASKS, after `check_cached` when it is True."""
    check_cached(task, split)
    return _read_cached


def check_cached(task, split: str | None = None) -> None:
    """When tasks are read cached: every task of `task` (a task or mixture) that can be cached
    is cached (with `split`, when given), else one line that says where SeqIO looked and the
    two fixes."""
    if not _read_cached:
        return
    seqio = import_seqio()
    for sub in registry.subtasks(task):
        if not sub.supports_caching:
            continue  # SeqIO reads such a task from its source, as in T5X
        folder = sub.cache_dir
        if folder is None:
            searched = ", ".join(seqio.utils.get_global_cache_dirs()) or "none given"
            raise CacheError(
                f"USE_CACHED_TASKS=True, but task {sub.name!r} is not cached in SeqIO's cache "
                f"folders ({searched}); cache it (`prompt-transfer cache-tasks --tasks="
                f"{sub.name} --output_cache_dir=DIR`, or seqio_cache_tasks) and pass "
                "--seqio_additional_cache_dirs=DIR, or set --gin.USE_CACHED_TASKS=False"
            )
        if split and not paths.path(seqio.utils.get_cached_info_path(folder, split)).exists():
            raise CacheError(
                f"task {sub.name!r} is cached in {folder} without its {split!r} split; cache "
                f"that split again, or set --gin.USE_CACHED_TASKS=False"
            )


def write(name: str, output_dir: str, splits=None) -> tuple[str, dict[str, int]]:
    """Cache task `name` (not a mixture) under `output_dir` as seqio_cache_tasks does: each split
    (default: all the source has) through the preprocessors before the cache placeholder, in
    source order, one record file per split. The folder appears whole or not at all. Returns
    (the task's cache folder, {split: examples cached})."""
    seqio = import_seqio()
    task = seqio.get_mixture_or_task(name)
    if not isinstance(task, seqio.Task):
        names = ", ".join(t.name for t in task.tasks)
        raise CacheError(f"{name!r} is a mixture; cache its tasks ({names})")
    if not task.supports_caching:
        raise CacheError(
            f"task {name!r} has no seqio.CacheDatasetPlaceholder among its preprocessors, so "
            "SeqIO never reads it cached; add one where caching should stop"
        )
    splits = list(splits or task.splits)
    unknown = [s for s in splits if s not in task.splits]
    if unknown:
        has = ", ".join(task.splits)
        raise CacheError(f"task {name!r} has no split {unknown[0]!r} (it has {has})")
    final = paths.path(output_dir) / seqio.utils.get_task_dir_from_name(name)
    staging = paths.path(f"{final}.incomplete")
    if staging.exists():
        shutil.rmtree(paths.native(staging))
    staging.mkdir(parents=True)
    counts = {split: _write_split(task, split, paths.native(staging)) for split in splits}
    (staging / "COMPLETED").write_text("")
    if final.exists():
        shutil.rmtree(paths.native(final))
    os.replace(paths.native(staging), paths.native(final))
    return paths.native(final), counts


def _write_split(task, split: str, folder: str) -> int:
    """One split's records, info and statistics in `folder`; returns the examples written."""
    seqio, tf = import_seqio(), import_tensorflow()
    ds = task.source.get_dataset(split=split, shuffle=False, seed=None)
    ds = task.preprocess_precache(ds, seed=None)
    record = seqio.utils.get_cached_tfrecord_prefix(folder, split) + "-00000-of-00001"
    features, tokens, longest, count = {}, {}, {}, 0
    with tf.io.TFRecordWriter(record) as out:
        for example in ds.as_numpy_iterator():
            out.write(seqio.dict_to_tfexample(example).SerializeToString())
            if not features:
                features = {k: _feature(v) for k, v in example.items()}
            for key, feature in task.output_features.items():
                if key in example and np.asarray(example[key]).dtype.kind == "i":
                    n = _tokens(np.asarray(example[key]), feature.vocabulary)
                    tokens[key] = tokens.get(key, 0) + n
                    longest[key] = max(longest.get(key, 0), n)
            count += 1
    info = {"num_shards": 1, "features": features, "seqio_version": seqio.__version__}
    stats = {"examples": count}
    stats.update({f"{k}_tokens": v for k, v in tokens.items()})
    stats.update({f"{k}_max_tokens": v for k, v in longest.items()})
    with open(seqio.utils.get_cached_info_path(folder, split), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    with open(seqio.utils.get_cached_stats_path(folder, split), "w") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    return count


def _feature(value) -> dict:
    """SeqIO's description of one feature: its dtype, and its shape with the first dimension
    (the sequence) left open."""
    array = np.asarray(value)
    dtype = "string" if array.dtype.kind in "SUO" else array.dtype.name
    shape = [None, *array.shape[1:]] if array.shape else []
    return {"shape": shape, "dtype": dtype}


def _tokens(values: np.ndarray, vocabulary) -> int:
    """Tokens that are neither EOS nor padding, as SeqIO's statistics count them."""
    keep = np.ones_like(values, dtype=bool)
    for special in (vocabulary.eos_id, vocabulary.pad_id):
        if special is not None:
            keep &= values != special
    return int(keep.sum())
