"""What a run that changed the network forgets (ProMoT's measurement, Wang et al. 2022).

After a model-tuning or prompt-then-model run, the network is no longer the frozen one the
library's prompts were trained on. Each other task of the library is scored with its own prompt
(the newest trained entry of this frozen model) twice: on the frozen network, and on the run's
network; "kept" is the second score as a share of the first. A run that left the network alone
(prompt tuning) keeps 100% everywhere.

    prompt-transfer forget --run MODEL_DIR --library DIR [--split validation] [--tasks a,b]

A run's measurement is written beside it (MODEL_DIR/forget_<split>_<checkpoint>.json); a SPoT
flow measures each of its target runs that trained the network (`measure_runs`, reusing what a
finished run already holds) and reports them over the seeds (`seed_rows`, `seed_markdown`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from flax import traverse_util

from prompt_transfer.base import errors, files
from prompt_transfer.data import batches, metrics, registry
from prompt_transfer.model import seqio_eval
from prompt_transfer.network import partitioning
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import config as config_lib
from prompt_transfer.trainer import evaluate
from prompt_transfer.trainer.config import RunSpec, TrainConfig
from prompt_transfer.trainer.train import network_of
from prompt_transfer.trainer.train_state import TrainError
from prompt_transfer.transfer import library, retrieval


def without_prompt(params: dict) -> dict:
    """The network alone: no input prompt, deep prompt, attention or multi-task pieces."""
    flat = traverse_util.flatten_dict(params, sep="/")
    kept = {
        k: v
        for k, v in flat.items()
        if not k.startswith("encoder/prompt/") and not k.endswith(f"/{prompts.DEEP_PREFIX}")
    }
    return traverse_util.unflatten_dict(kept, sep="/")


def other_tasks(
    lib: library.Library, fingerprint: str, width: int, own: Sequence[str], only: Sequence[str] = ()
) -> list[library.Entry]:
    """The newest trained prompt of this frozen model (`fingerprint`, embedding `width`) for
    each task of the library but the run's own (`only`: these tasks, each of which must be
    there)."""
    newest: dict[str, library.Entry] = {}
    for entry in retrieval.eligible_sources(lib, fingerprint, width, own):
        if entry.kind != "trained" or (only and entry.task not in only):
            continue
        if entry.task not in newest or entry.created > newest[entry.task].created:
            newest[entry.task] = entry
    missing = [t for t in only if t not in newest]
    if missing:
        raise TrainError(
            f"--tasks {missing[0]!r}: the library {lib.root} holds no trained prompt of it for "
            "this run's frozen model (or it is the run's own task)"
        )
    if not newest:
        raise TrainError(
            f"the library {lib.root} holds no trained prompt of another task for this run's "
            "frozen model; train sources into it first (LIBRARY_DIR)"
        )
    return [newest[t] for t in sorted(newest)]


BALANCED = metrics.BALANCED_ACCURACY  # reported beside the main metric where a task has it


def forget(
    spec: RunSpec,
    library_dir: str,
    *,
    split: str = "validation",
    checkpoint: str = "latest",
    tasks: Sequence[str] = (),
    batch_size: int = 32,
    frozen_scores: dict | None = None,
) -> dict:
    """Each other task's score with its library prompt on the frozen network and on the run's
    `checkpoint`, and the share kept (of the main metric, and of balanced accuracy where the
    task has it: a network that drifts to the majority class keeps much of the accuracy of an
    imbalanced task and little of its balanced accuracy); written to
    MODEL_DIR/forget_<split>_<checkpoint>.json. `frozen_scores`: a dict shared by calls on runs
    of one frozen network, which then scores each library prompt on it once."""
    lib = library.Library(library_dir)
    if not lib.root.exists():
        raise TrainError(f"--library {library_dir!r} does not exist; give the run's prompt library")
    model, changed, step = evaluate.trained(spec, checkpoint)
    frozen = network_of(spec, partitioning.make_mesh(spec.num_partitions)).params
    own = [t.name for t in registry.subtasks(batches.get_task(spec.task))]
    fingerprint, width = library.model_fingerprint(frozen), spec.model_config.emb_dim
    entries = other_tasks(lib, fingerprint, width, own, tasks)
    frozen_scores = {} if frozen_scores is None else frozen_scores
    rows = []
    for entry in entries:
        try:
            batches.get_task(entry.task)
        except batches.TaskError as e:
            raise TrainError(
                f"library task {entry.task!r}: {errors.one_line(e)}; pass --tasks without it"
            ) from e
        prompt = np.asarray(lib.prompt(entry, deep=bool(entry.deep_width)))  # as it was trained
        evaluator = seqio_eval.TaskEvaluator(
            model, entry.task, split, spec.feature_lengths, batch_size
        )
        key = (fingerprint, entry.id, split, tuple(sorted(spec.feature_lengths.items())))
        if key not in frozen_scores:
            frozen_scores[key] = _scores(evaluator, without_prompt(frozen), spec, prompt)
        after = _scores(evaluator, without_prompt(changed), spec, prompt)
        rows.append(_row(entry, frozen_scores[key], after))
    report = {
        "run": str(spec.model_dir),
        "step": step,
        "split": split,
        "checkpoint": checkpoint,
        "tasks": rows,
        "mean_kept": _mean(r["kept"] for r in rows),
        "mean_kept_balanced": _mean(r["balanced_kept"] for r in rows),
    }
    target = spec.run_dir.file(f"forget_{split}_{checkpoint}.json")
    files.atomic_write_text(target, json.dumps(report, indent=1))
    return report


def _scores(evaluator, network, spec: RunSpec, prompt) -> tuple[str, float, float | None]:
    """(main metric, its value, balanced accuracy or None) of `prompt` on `network`."""
    results = evaluator.evaluate(prompts.join(network, spec.model_config, prompt))
    metric, value = seqio_eval.main_metric(results)
    balanced = [m[BALANCED] for m in results.values() if BALANCED in m]
    return metric, value, float(np.mean(balanced)) if balanced else None


def _kept(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return 100.0 * after / before if before else float("nan")


def _row(entry: library.Entry, before: tuple, after: tuple) -> dict:
    (metric, value_before, balanced_before), (_, value_after, balanced_after) = before, after
    return {
        "task": entry.task,
        "entry": entry.id,
        "metric": metric,
        "before": value_before,
        "after": value_after,
        "kept": _kept(value_before, value_after),
        "balanced_before": balanced_before,
        "balanced_after": balanced_after,
        "balanced_kept": _kept(balanced_before, balanced_after),
    }


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def table(report: dict) -> str:
    """The report as a Markdown table (the console's), balanced accuracy beside the main metric
    where the tasks have it."""
    balanced = report.get("mean_kept_balanced") is not None
    pct = lambda v: "-" if v is None else f"{v:.1f}%"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    head = "| task | metric | frozen network | after the run | kept |"
    rule = "|---|---|---:|---:|---:|"
    if balanced:
        head += " balanced accuracy: frozen | after | kept |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for r in report["tasks"]:
        line = f"| {r['task']} | {r['metric']} | {num(r['before'])} | {num(r['after'])} "
        line += f"| {pct(r['kept'])} |"
        if balanced:
            line += f" {num(r.get('balanced_before'))} | {num(r.get('balanced_after'))} "
            line += f"| {pct(r.get('balanced_kept'))} |"
        lines.append(line)
    if report["mean_kept"] is not None:
        line = f"| mean | | | | {pct(report['mean_kept'])} |"
        lines.append(line + (f" | | {pct(report['mean_kept_balanced'])} |" if balanced else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# A flow's runs, seed by seed (spot/report.py's "kept" table and prompt-then-model verdict).

SPLIT, CHECKPOINT = "validation", "latest"


def measure_runs(
    runs: Sequence[tuple[RunSpec, TrainConfig]],
    sources: Sequence[str],
    library_dir: str,
    frozen_scores: dict,
) -> list[dict]:
    """`forget` of each finished run on the sources that are not its own task (a report each,
    in order), or the report already beside it when it measured the run at its last step;
    `frozen_scores` is shared, so each source prompt meets the frozen network once."""
    reports = []
    for spec, config in runs:
        written = spec.run_dir.file(f"forget_{SPLIT}_{CHECKPOINT}.json")
        if written.exists():
            held = files.read_json(written, "remove it to measure it again")
            stop = config_lib.resolved(spec, config).total_steps
            if held.get("step") == stop and "mean_kept_balanced" in held:
                reports.append(held)
                continue
        own = {t.name for t in registry.subtasks(batches.get_task(spec.task))}
        reports.append(
            forget(
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


def seed_rows(kept: Mapping[tuple[str, str], list[dict]]) -> list[dict]:
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


def kept_share(row: dict, named: bool = True) -> str:
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


def seed_markdown(table: list[dict]) -> list[str]:
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
        mean = kept_share(row, named=False)
        lines.append(f"| {row['target']} | {row['run']} | " + " | ".join(cells) + f" | {mean} |")
    return lines
