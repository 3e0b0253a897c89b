"""The SPoT flow's report: scores at fixed step budgets, a verdict per target, Markdown, and
PNG figures (convergence curves, similarity heatmaps, the zero-shot transfer matrix)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

import numpy as np

from prompt_transfer.base import files
from prompt_transfer.model import seqio_eval
from prompt_transfer.spot.config import BASELINES, RANDOM_INIT, changes_network
from prompt_transfer.stages import figures
from prompt_transfer.stages.figures import significant
from prompt_transfer.trainer import forget, race


def _random_init(names) -> str | None:
    names = set(names)
    return next((n for n in RANDOM_INIT if n in names), None)


def _over_seeds(per_seed: list) -> tuple[list[int], list[float], list[float] | None]:
    """(steps, mean, standard deviation or None for one seed) of one run's seeds' curves, at
    the evaluation steps every seed has."""
    steps = sorted(set.intersection(*(set(s) for s, _ in per_seed))) if per_seed else []
    table = np.asarray([[dict(zip(s, v, strict=True))[k] for k in steps] for s, v in per_seed])
    if not steps:
        return [], [], None
    spread = table.std(0, ddof=1).tolist() if len(per_seed) > 1 else None
    return steps, table.mean(0).tolist(), spread


def _steps_to_reach(history: list[dict], value: float) -> int | None:
    return next((h["step"] for h in history if h["value"] >= value), None)


NEAR_CONSTANT = 0.95  # a run that gives one label to this share of the examples


def _single_label(counts: dict | None) -> str | None:
    """The label a run gave (nearly) every example, or None: a (near-)constant predictor's
    accuracy is a class frequency, whatever its prompt started from."""
    total = sum((counts or {}).values())
    if not total:
        return None
    label = max(counts, key=counts.get)
    return label if counts[label] >= NEAR_CONSTANT * total else None


def _constant(per_seed: list | None) -> str | None:
    """The label(s) a run gave (nearly) every example in every seed, or None."""
    labels = [_single_label(counts) for counts in per_seed or []]
    if not labels or None in labels:
        return None
    return "/".join(sorted(set(labels)))


@dataclasses.dataclass
class TargetRuns:
    """What the target runs gave, run by run and seed by seed."""

    curves: dict = dataclasses.field(default_factory=dict)  # {(target, run): [(steps, values)]}
    picked: dict = dataclasses.field(default_factory=dict)  # {(target, run): transfer report}
    # {(target, run): [{label: count} of each seed]}: what the runs predicted at their last
    # evaluation; {target: {label: count}}: the true labels of the evaluation split.
    predictions: dict = dataclasses.field(default_factory=dict)
    labels: dict = dataclasses.field(default_factory=dict)
    # {(target, run): [forget report of each seed]}: what a run that trained the network kept
    # of the sources' scores (trainer/forget.py)
    kept: dict = dataclasses.field(default_factory=dict)
    # {(target, run): [race report of each seed]}: a race row's picks and cost (trainer/race.py)
    races: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Results:
    """What the flow found, for the report. N source prompts in the library's order."""

    targets: Sequence[str]
    sources: Sequence[str]  # the N source prompts' tasks
    runs: TargetRuns
    similarities: Mapping[str, np.ndarray]  # {metric: [targets, N]}
    zero_shot: np.ndarray  # [N, targets]: each source prompt used as is on each target
    eval_period: int
    target_steps: int
    study: Sequence[str] = ()  # what a transferability study says of the retrieval


def write_report(work, results: Results) -> dict:
    """Write report.json, report.md and the figures; returns the report. Scores are means over
    the seeds, with their standard deviation where there are several."""
    curves = {key: _over_seeds(per_seed) for key, per_seed in results.runs.curves.items()}
    budgets = _budgets(results.eval_period, results.target_steps)
    rows = _rows(curves, budgets, results.runs)
    majority = {}
    for task, counts in results.runs.labels.items():
        label, share = seqio_eval.majority_share(counts)
        majority[task] = {"label": label, "share": share, "labels": counts}
    report = {
        "targets": list(results.targets),
        "sources": list(results.sources),
        "budgets": budgets,
        "rows": rows,
        "majority": majority,
        "verdict": _verdict(rows, results.targets, results.target_steps, majority),
        "races": _races(results.runs.races, results.target_steps),
        "kept": forget.seed_rows(results.runs.kept),
        "similarities": {m: v.tolist() for m, v in results.similarities.items()},
        "zero_shot": results.zero_shot.tolist(),
        "study": list(results.study),
    }
    report["verdict"] += _then_model_verdict(rows, report["kept"], results)
    files.atomic_write_text(work / "report.json", json.dumps(report, indent=1))
    _figures(work, results, curves)
    files.atomic_write_text(work / "report.md", _markdown(report))
    return report


def _budgets(eval_period: int, target_steps: int) -> list[int]:
    """Fixed step budgets at evaluation points: the first, about 1/4, 1/2 and the end."""
    on_grid = lambda s: max(eval_period, round(s / eval_period) * eval_period)
    return sorted({eval_period, *(on_grid(target_steps * f) for f in (0.25, 0.5)), target_steps})


def _rows(curves: dict, budgets: list[int], runs: TargetRuns) -> list[dict]:
    """One row per (target, run): its scores at the budgets and how it compares with random
    init. `curves` {(target, run): (steps, mean, spread or None)}."""
    rows, predictions, picked = [], runs.predictions, runs.picked
    reference = {t: _random_init(n for (task, n) in curves if task == t) for t, _ in curves}
    for (task, name), (steps, values, spread) in curves.items():
        at = dict(zip(steps, values, strict=True))
        spread_at = dict(zip(steps, spread, strict=True)) if spread else {}
        baseline_values = curves.get((task, reference[task]), ([], [], None))[1]
        final_random = baseline_values[-1] if baseline_values else None
        history = [{"step": s, "value": v} for s, v in zip(steps, values, strict=True)]
        rows.append(
            {
                "target": task,
                "run": name,
                "scores": {b: at.get(b) for b in budgets},
                "spread": {b: spread_at.get(b) for b in budgets} if spread else None,
                "seeds": len(predictions.get((task, name)) or []) or None,
                "steps_to_random_final": (
                    _steps_to_reach(history, final_random) if final_random is not None else None
                ),
                "sources": picked.get((task, name), {}).get("chosen")
                or picked.get((task, name), {}).get("sources"),
                "predictions": predictions.get((task, name)),
                "constant": _constant(predictions.get((task, name))),
            }
        )
    return rows


def _figures(work, results: Results, curves: dict) -> None:
    """The similarity heatmaps, the zero-shot matrix and each target's convergence curves."""
    targets, sources = list(results.targets), list(results.sources)
    for metric, matrix in results.similarities.items():
        figures.heatmap(
            matrix,
            targets,
            sources,
            work / f"similarity_{metric}.png",
            f"task similarity ({metric}): target embedding vs source prompt",
        )
    figures.heatmap(
        results.zero_shot,
        sources,
        targets,
        work / "zero_shot.png",
        "zero-shot transfer: source prompt used as is on the target",
        "{:.1f}",
    )
    seeded = any(spread for _, _, spread in curves.values())
    for task in targets:
        figures.curves(
            {name: curves[(t, name)] for (t, name) in curves if t == task},
            work / f"curves_{task}.png",
            f"{task}: validation score"
            + (" (mean of the seeds, band: +- 1 std)" if seeded else ""),
            "main metric",
        )


def _final_spread(row: dict, target_steps: int) -> float | None:
    return (row.get("spread") or {}).get(target_steps)


def _verdict(rows: list[dict], targets, target_steps: int, majority=None) -> list[str]:
    """One plain sentence per target: did the best transfer strategy beat random init? Where a
    run gives every example the same label it says so: a gap between two constant predictors
    is a gap between two class frequencies, not a verdict on transfer."""
    lines, majority = [], majority or {}
    for task in targets:
        final = {r["run"]: r["scores"].get(target_steps) for r in rows if r["target"] == task}
        reference = _random_init(final)
        random = final.get(reference)
        transfers = {
            r["run"]: r
            for r in rows
            if r["target"] == task
            and r["run"] not in BASELINES
            and not changes_network(r["run"])  # against model tuning: _then_model_verdict
            and final[r["run"]] is not None
        }
        if random is None or not transfers:
            lines.append(f"{task}: no random-init run or no transfer run to compare")
            continue
        best = max(transfers, key=lambda n: final[n])
        gain, reach = final[best] - random, transfers[best]["steps_to_random_final"]
        spreads = [_final_spread(r, target_steps) for r in rows if r["target"] == task]
        noise = max((x for x in spreads if x is not None), default=None)
        if noise is not None and abs(gain) <= noise:
            how = (
                f"makes no difference: {gain:+.1f} points against random init at step "
                f"{target_steps}, within the seeds' spread ({noise:.1f})"
            )
        elif gain > 0:
            how = f"helps: beats random init by {gain:.1f} points at step {target_steps}"
        elif gain == 0:
            how = f"ties random init at step {target_steps}"
        else:
            how = f"hurts: {-gain:.1f} points below random init at step {target_steps}"
        speed = f"reaches random init's final score at step {reach}" if reach else "never does"
        line = (
            f"{task}: the best transfer ({best}, {final[best]:.1f}; random init"
            f"{'' if reference == RANDOM_INIT[0] else f' ({reference})'} {random:.1f}) "
            f"{how}; it {speed}"
        )
        if noise is None:
            line += "; one seed, so no spread to judge the gap by"
        constant = {r["run"]: r["constant"] for r in rows if r["target"] == task}
        if constant.get(best) and constant.get(reference):
            line = (
                f"{task}: no verdict: the best transfer ({best}) predicts {constant[best]!r} and "
                f"random init {constant[reference]!r} for (nearly) every input, so their "
                f"{final[best]:.1f} and {random:.1f} are class frequencies"
            )
        elif constant.get(best):
            line += f"; but it predicts {constant[best]!r} for (nearly) every input"
        if task in majority:
            line += f" (majority class {majority[task]['label']!r}: {majority[task]['share']:.1f})"
        lines.append(line)
    return lines


def _races(races: dict, target_steps: int) -> list[str]:
    """One line per race row and target: the source each seed's race picked, over how many,
    what racing cost against one target run, and where the picked source's run went on from
    (its raced steps count in the row's TARGET_STEPS)."""
    lines = []
    for (task, name), seeds in races.items():
        picks = [r["chosen"] for r in seeds]
        steps = float(np.mean([r["steps"] for r in seeds]))
        seconds = float(np.mean([r["seconds"] for r in seeds]))
        counted = {p: picks.count(p) for p in dict.fromkeys(picks)}
        picked = ", ".join(f"{p} ({n} of {len(picks)} seeds)" for p, n in counted.items())
        rungs = seeds[0]["rungs"]
        went_on = sorted({race.reached(r["rungs"], r["chosen"]) for r in seeds}, reverse=True)
        lines.append(
            f"{task}: the race ({name}) picked {picked} among {len(seeds[0]['ranking'])} "
            f"sources in {len(rungs)} rung(s); it cost {steps:,.0f} prompt steps "
            f"a seed ({steps / target_steps:.2f}x one target run of {target_steps:,} steps), "
            f"{seconds:.0f} s, and the picked source's run went on from its step "
            + " or ".join(f"{step:,}" for step in went_on)
        )
    return lines


def _then_model_verdict(rows: list[dict], kept_rows: list[dict], results: Results) -> list[str]:
    """Per target with model tuning and a prompt-then-model row: the best of those rows against
    model tuning at the same total steps, and what each kept of the sources' scores."""
    lines, steps = [], results.target_steps
    for task in results.targets:
        final = {r["run"]: r for r in rows if r["target"] == task and r["scores"].get(steps)}
        both = [n for n in final if changes_network(n) and n != "model_tuning"]
        if "model_tuning" not in final or not both:
            continue
        best = max(both, key=lambda n: final[n]["scores"][steps])
        ours, theirs = final[best]["scores"][steps], final["model_tuning"]["scores"][steps]
        gain = ours - theirs
        spreads = [_final_spread(final[n], steps) for n in (best, "model_tuning")]
        noise = max((x for x in spreads if x is not None), default=None)
        if noise is not None and abs(gain) <= noise:
            how = f"is level with model tuning ({gain:+.1f} points, within the seeds' spread "
            how += f"{noise:.1f})"
        else:
            how = f"{'beats' if gain > 0 else 'is below'} model tuning by {abs(gain):.1f} points"
        line = (
            f"{task}: prompt, then model ({best}, {ours:.1f}; model tuning {theirs:.1f}) {how} "
            f"at step {steps}"
        )
        held = {r["run"]: r for r in kept_rows if r["target"] == task}
        if best in held and "model_tuning" in held:
            line += (
                f"; of the sources' scores it keeps {forget.kept_share(held[best])}, model tuning "
                f"{forget.kept_share(held['model_tuning'])}"
            )
        lines.append(line)
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _markdown(report: dict) -> str:
    """The verdicts and the score table, then the matrices."""
    with_spread = lambda r, b: (
        _fmt(r["scores"][b])
        + (f" ± {r['spread'][b]:.1f}" if r.get("spread") and r["spread"][b] is not None else "")
    )
    budgets = report["budgets"]
    lines = [
        "# SPoT flow report",
        "",
        f"Sources: {', '.join(report['sources'])}. Targets: {', '.join(report['targets'])}.",
        "",
        *(f"- {line}" for line in [*report["verdict"], *report.get("races", [])]),
        "",
        "Scores are the validation main metric at each step budget (the mean over seeds, ± their "
        "standard deviation); the majority-class row is what a constant predictor scores, and "
        "the last column what each run predicted at its last evaluation, seed by seed (a single "
        "label there means a constant predictor). Random init is the random_uniform run, or "
        "sampled_vocab where the flow ran no random_uniform.",
        "",
        "| target | run | "
        + " | ".join(f"step {b}" for b in budgets)
        + " | steps to random-init final | sources used | predictions at the last evaluation |",
        "|---|---|" + "---|" * len(budgets) + "---|---|---|",
    ]
    shown_majority = set()
    for r in report["rows"]:
        task = r["target"]
        if task in report.get("majority", {}) and task not in shown_majority:
            shown_majority.add(task)
            m = report["majority"][task]
            true = ", ".join(f"{label} {n}" for label, n in m["labels"].items())
            lines.append(
                f"| {task} | majority class ({m['label']}) | "
                + " | ".join(_fmt(m["share"]) for _ in budgets)
                + f" | - | - | true labels: {true} |"
            )
        sources = r["sources"] if isinstance(r["sources"], str) else ", ".join(r["sources"] or [])
        reach = r["steps_to_random_final"]
        given = " / ".join(
            ", ".join(f"{label} {n}" for label, n in counts.items() if n)
            for counts in r.get("predictions") or []
        )
        lines.append(
            f"| {task} | {r['run']} | "
            + " | ".join(with_spread(r, b) for b in budgets)
            + f" | {reach if reach is not None else 'not reached'} | {sources or '-'} "
            + f"| {given or '-'} |"
        )
    if report.get("study"):
        lines += ["", "## Retrieval against the transferability study", ""]
        lines += [f"- {line}" for line in report["study"]]
    return "\n".join([*lines, *forget.seed_markdown(report.get("kept") or []), *_matrices(report)])


def _matrices(report: dict) -> list[str]:
    """The zero-shot matrix and each metric's similarities as Markdown tables."""
    sources, targets = report["sources"], report["targets"]
    lines = [
        "",
        "## Zero-shot transfer (source prompt used as is on the target)",
        "",
        "| source | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    lines += [
        f"| {s} | " + " | ".join(_fmt(v) for v in row) + " |"
        for s, row in zip(sources, report["zero_shot"], strict=True)
    ]
    for metric, matrix in report["similarities"].items():
        lines += [
            "",
            f"## Similarity ({metric}): target task embedding vs source prompt",
            "",
            "| target | " + " | ".join(sources) + " |",
            "|---|" + "---|" * len(sources),
        ]
        lines += [
            f"| {t} | " + " | ".join(significant(row)) + " |"
            for t, row in zip(targets, matrix, strict=True)
        ]
    lines += [
        "",
        "Figures: `curves_<target>.png` (convergence), `similarity_<metric>.png`, `zero_shot.png`.",
        "",
    ]
    return lines
