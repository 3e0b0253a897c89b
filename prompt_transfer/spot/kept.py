"""What the flow's target runs that trained the network forget of the sources (ProMoT's
measurement, trainer/forget.py): each source task scored with its library prompt on the frozen
network and on each such run's network (model tuning, prompt then model), seed by seed; the
report's "kept" table and its prompt-then-model verdict.

A run's measurement is written beside it (MODEL_DIR/forget_validation_latest.json) and reused
when the flow runs again on the finished run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prompt_transfer.base import paths
from prompt_transfer.data import batches, registry
from prompt_transfer.trainer import forget, run_dir
from prompt_transfer.trainer.config import RunSpec, TrainConfig, resolved

SPLIT, CHECKPOINT = "validation", "latest"


def measure(
    runs: Sequence[tuple[RunSpec, TrainConfig]],
    sources: Sequence[str],
    library_dir: str,
    frozen_scores: dict,
) -> list[dict]:
    """forget.forget of each run on the sources that are not its own task (a report each, in
    order); `frozen_scores` is shared, so each source prompt meets the frozen network once."""
    reports = []
    for spec, config in runs:
        written = run_dir.subdir(spec.model_dir, f"forget_{SPLIT}_{CHECKPOINT}.json")
        if written.exists():
            held = paths.read_json(written, "remove it to measure it again")
            stop = resolved(spec, config).total_steps
            if held.get("step") == stop and "mean_kept_balanced" in held:
                reports.append(held)
                continue
        own = {t.name for t in registry.subtasks(batches.get_task(spec.task))}
        reports.append(
            forget.forget(
                spec,
                library_dir,
                split=SPLIT,
                checkpoint=CHECKPOINT,
                tasks=[s for s in sources if s not in own],
                batch_size=config.eval_batch_size,
                frozen_scores=frozen_scores,
            )
        )
    return reports


def _mean_spread(values) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return None, None
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else None


def _per_seed(reports: list[dict], key: str, task: str) -> list:
    return [next(r[key] for r in report["tasks"] if r["task"] == task) for report in reports]


def rows(kept: Mapping[tuple[str, str], list[dict]]) -> list[dict]:
    """One row per (target, run) over its seeds' forget reports: each source task's kept share
    of the main metric and of balanced accuracy, and their means over the tasks, as (mean over
    the seeds, standard deviation or None)."""
    table = []
    for (target, name), reports in kept.items():
        first = reports[0]["tasks"] if reports else []
        table.append(
            {
                "target": target,
                "run": name,
                "seeds": len(reports),
                "tasks": {
                    r["task"]: {
                        "metric": r["metric"],
                        "before": _mean_spread(_per_seed(reports, "before", r["task"]))[0],
                        "kept": _mean_spread(_per_seed(reports, "kept", r["task"])),
                        "balanced_kept": _mean_spread(
                            _per_seed(reports, "balanced_kept", r["task"])
                        ),
                    }
                    for r in first
                },
                "mean_kept": _mean_spread(r["mean_kept"] for r in reports),
                "mean_kept_balanced": _mean_spread(r["mean_kept_balanced"] for r in reports),
            }
        )
    return table


def share(row: dict, named: bool = True) -> str:
    """`85.0% ± 3.1 (balanced accuracy 60.2% ± 5.0)`: a row's mean kept share over its tasks
    (`named` False: without the words, as in the table)."""
    text = _pct(row["mean_kept"])
    if row["mean_kept_balanced"][0] is not None:
        text += f" ({'balanced accuracy ' if named else ''}{_pct(row['mean_kept_balanced'])})"
    return text


def _pct(pair) -> str:
    mean, spread = pair
    if mean is None:
        return "-"
    return f"{mean:.1f}%" + (f" ± {spread:.1f}" if spread is not None else "")


def markdown(table: list[dict]) -> list[str]:
    """The report's "kept" section (nothing when no run trained the network)."""
    if not table:
        return []
    tasks = list(dict.fromkeys(t for row in table for t in row["tasks"]))
    lines = [
        "",
        "## What training the network forgets",
        "",
        "Each source task scored with its own library prompt on the network a target run left, "
        "as a share of its score on the frozen network (mean over the seeds ± their standard "
        "deviation); in brackets, the same share of balanced accuracy.",
        "",
        "| target | run | " + " | ".join(tasks) + " | mean |",
        "|---|---|" + "---:|" * (len(tasks) + 1),
    ]
    for row in table:
        cells = []
        for task in tasks:
            cell = row["tasks"].get(task)
            if not cell:
                cells.append("-")
                continue
            text = _pct(cell["kept"])
            if cell["balanced_kept"][0] is not None:
                text += f" ({_pct(cell['balanced_kept'])})"
            cells.append(text)
        mean = share(row, named=False)
        lines.append(f"| {row['target']} | {row['run']} | " + " | ".join(cells) + f" | {mean} |")
    return lines
