"""Metric functions in SeqIO's `(targets, predictions) -> {name: value}` form.

Values are percentages (correlations x 100), as T5 reports GLUE and SuperGLUE. The first metric
a task lists is its main metric (the one that picks the best checkpoint). Definitions follow
T5's `t5.evaluation.metrics` and the official SQuAD / ReCoRD / MultiRC scripts.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np


def _check(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Exact-match accuracy of postprocessed predictions."""
    _check(targets, predictions)
    hits = [t == p for t, p in zip(targets, predictions, strict=True)]
    return {"accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}


BALANCED_ACCURACY = "balanced_accuracy"  # the key `balanced_accuracy` reports its value under


def balanced_accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Mean recall over the classes the targets hold: 100/C for any constant answer, however
    imbalanced the split (where accuracy gives a constant answer the majority class's share)."""
    _check(targets, predictions)
    classes = sorted(set(targets), key=repr)
    recalls = [
        np.mean([p == c for t, p in zip(targets, predictions, strict=True) if t == c])
        for c in classes
    ]
    return {BALANCED_ACCURACY: 100.0 * float(np.mean(recalls)) if recalls else 0.0}


def _binary_f1(targets, predictions, positive) -> float:
    t = np.asarray([x == positive for x in targets])
    p = np.asarray([x == positive for x in predictions])
    tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
    return 0.0 if tp == 0 else float(2 * tp / (2 * tp + fp + fn))


def f1_and_accuracy(targets: Sequence, predictions: Sequence, positive=1) -> dict[str, float]:
    """Binary F1 of the `positive` class (an invalid prediction counts as wrong), then accuracy:
    MRPC and QQP report both, F1 first."""
    _check(targets, predictions)
    return {
        "f1": 100.0 * _binary_f1(targets, predictions, positive),
        **accuracy(targets, predictions),
    }


def macro_f1(targets: Sequence, predictions: Sequence, labels: Sequence | None = None):
    """Mean per-class F1 over `labels` (default: the classes seen in targets); CB reports it."""
    _check(targets, predictions)
    labels = sorted(set(targets)) if labels is None else list(labels)
    return {
        "macro_f1": 100.0 * float(np.mean([_binary_f1(targets, predictions, c) for c in labels]))
    }


def matthews_corrcoef(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Matthews correlation of binary labels (CoLA); 0 when a marginal is constant."""
    _check(targets, predictions)
    t = np.asarray(targets) == 1
    p = np.asarray(predictions) == 1
    tp, tn = np.sum(t & p), np.sum(~t & ~p)
    fp, fn = np.sum(~t & p), np.sum(t & ~p)
    denominator = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    value = 0.0 if denominator == 0 else float(tp * tn - fp * fn) / denominator
    return {"matthews_corrcoef": 100.0 * value}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return 0.0 if denominator == 0 else float((a * b).sum() / denominator)


def pearson_and_spearman(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Correlations of float scores (STS-B); reported x 100, Pearson first."""
    _check(targets, predictions)
    t, p = np.asarray(targets, float), np.asarray(predictions, float)
    return {
        "pearson_corrcoef": 100.0 * _pearson(t, p),
        "spearman_corrcoef": 100.0 * _pearson(_ranks(t), _ranks(p)),
    }


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
    t, p = normalize_answer(target).split(), normalize_answer(prediction).split()
    common = sum((collections.Counter(t) & collections.Counter(p)).values())
    if common == 0:
        return float(t == p)  # both empty counts as a match
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """Exact match and token F1, each the max over an example's reference answers (SQuAD,
    ReCoRD, DROP)."""
    _check(targets, predictions)
    em = [
        max(normalize_answer(a) == normalize_answer(p) for a in answers)
        for answers, p in zip(targets, predictions, strict=True)
    ]
    f1 = [
        max(_token_f1(a, p) for a in answers)
        for answers, p in zip(targets, predictions, strict=True)
    ]
    return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def multirc(targets: Sequence[dict], predictions: Sequence[int]) -> dict[str, float]:
    """MultiRC: F1 over all answer options (F1a, the main metric), then exact match per
    question (all its options right). Targets are `{"group": question id, "value": 0 or 1}`."""
    _check(targets, predictions)
    groups = collections.defaultdict(list)
    for t, p in zip(targets, predictions, strict=True):
        groups[t["group"]].append(t["value"] == p)
    values = [t["value"] for t in targets]
    return {
        "exact_match": 100.0 * float(np.mean([all(g) for g in groups.values()])),
        "f1a": 100.0 * _binary_f1(values, list(predictions), 1),
    }
