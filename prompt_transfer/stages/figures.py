"""What the flow's and the study's reports show: PNG figures (matplotlib, headless: heatmaps of
similarity and zero-shot transfer, convergence curves; written atomically) and numbers to as
many significant digits as tell them apart (`significant`)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from prompt_transfer.base import files, paths


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    files.atomic_write_bytes(path, buffer.getvalue())
    return paths.path(path)


def heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    path: str | Path,
    title: str,
    value_format: str = "{:.2f}",
) -> Path:
    """A labelled heatmap with each cell's value written in it."""
    plt = pyplot()
    matrix = np.asarray(matrix, float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(columns), 1.0 + 0.5 * len(rows)))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                value_format.format(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] < np.nanmean(matrix) else "black",
                fontsize=8,
            )
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    path = save(fig, path)
    plt.close(fig)
    return path


def curves(
    series: Mapping[str, tuple],
    path: str | Path,
    title: str,
    ylabel: str,
) -> Path:
    """One line per name: (steps, values) or (steps, mean, standard deviation or None), the
    deviation drawn as a band of +- one around the mean."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (steps, values, *spread) in series.items():
        (line,) = ax.plot(steps, values, marker="o", label=name)
        if spread and spread[0] is not None:
            low = np.asarray(values) - np.asarray(spread[0])
            high = np.asarray(values) + np.asarray(spread[0])
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = save(fig, path)
    plt.close(fig)
    return path


def significant(values, least: int = 3, most: int = 8) -> list[str]:
    """`values` with the fewest significant digits (at least `least`) that keep different
    values apart: 1/(1+||A-B||) of prompts with norm ~60 is about 0.007 for every pair, and a
    fixed 3 decimals printed 0.007 for all of them."""
    distinct = len(set(values))
    for digits in range(least, most + 1):
        text = [f"{v:.{digits}g}" for v in values]
        if len(set(text)) == distinct:
            return text
    return text
