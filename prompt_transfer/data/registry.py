"""Helpers that `tasks/` uses to register SeqIO tasks, and what the trainer asks of a task.

A text-to-text task yields `{"inputs": str, "targets": str}`. A classification task also
declares its label strings: evaluation ranks them by log-likelihood (rank classification)
instead of decoding, and the class-label prompt initialiser embeds them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prompt_transfer.base.tf_import import import_seqio
from prompt_transfer.data import metrics

_CLASS_LABELS: dict[str, tuple[str, ...]] = {}


def class_labels(name: str) -> tuple[str, ...] | None:
    """The label strings of a classification task (None for generative tasks)."""
    return _CLASS_LABELS.get(name)


def text_features(vocabulary) -> dict:
    seqio = import_seqio()
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def register_text_task(
    name: str,
    source,
    vocabulary,
    *,
    labels: Sequence[str] | None = None,
    metric_fns: Sequence[Callable] = (metrics.accuracy,),
    preprocessors: Sequence[Callable] = (),
    postprocess_fn=None,
    replace: bool = True,
):
    """Register a text-to-text SeqIO task; `labels` makes it a classification task."""
    seqio = import_seqio()
    if replace and name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            *preprocessors,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=text_features(vocabulary),
        metric_fns=list(metric_fns),
        postprocess_fn=postprocess_fn,
    )
    if labels:
        _CLASS_LABELS[name] = tuple(labels)
    else:
        _CLASS_LABELS.pop(name, None)
    return task


def register_span_corruption_task(
    name: str, source, vocabulary, text_key: str = "text", replace: bool = True
):
    """Register T5's span-corruption objective over a text source (pre-training, C4)."""
    from prompt_transfer.data import span_corruption

    return _register_unsupervised(
        name, source, vocabulary, span_corruption.preprocessors(text_key), replace
    )


def register_prefix_lm_task(
    name: str, source, vocabulary, text_key: str = "text", replace: bool = True
):
    """Register the prefix-LM objective (T5 1.1 "LM adaptation") over a text source."""
    from prompt_transfer.data import span_corruption

    return _register_unsupervised(
        name, source, vocabulary, span_corruption.prefix_lm_preprocessors(text_key), replace
    )


def _register_unsupervised(name, source, vocabulary, preprocessors, replace):
    seqio = import_seqio()
    if replace and name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    _CLASS_LABELS.pop(name, None)
    return seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=preprocessors,
        output_features=text_features(vocabulary),
        metric_fns=[],
    )


def subtasks(task) -> list:
    """The tasks of a mixture, or [the task] itself."""
    return task.tasks if isinstance(task, import_seqio().Mixture) else [task]


def mixture_labels(name: str) -> dict[str, tuple[str, ...] | None]:
    """Label strings per sub-task of a task or mixture."""
    tasks = subtasks(import_seqio().get_mixture_or_task(name))
    return {t.name: class_labels(t.name) for t in tasks}


def reports(name: str, metric: Callable) -> bool:
    """Whether every sub-task of a task or mixture has `metric` among its metric functions."""
    named = lambda fn: getattr(getattr(fn, "func", fn), "__name__", "")  # noqa: E731
    tasks = subtasks(import_seqio().get_mixture_or_task(name))
    return all(metric.__name__ in {named(fn) for fn in t.metric_fns} for t in tasks)
