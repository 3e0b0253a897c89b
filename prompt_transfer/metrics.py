"""Metric functions in SeqIO's `(targets, predictions) -> {name: value}` form.

Percentages, as T5's metrics report them. The first metric a task lists is its main metric
(the one that picks the best checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Exact-match accuracy of postprocessed predictions, in percent."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    hits = [t == p for t, p in zip(targets, predictions, strict=True)]
    return {"accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}
