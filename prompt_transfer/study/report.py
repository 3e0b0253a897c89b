"""The study's report: study.json (for scripts), study.md (the gain and zero-shot matrices, the
metrics table after SPoT's Table 3, the verdict) and two figures, the gain heatmap and each
metric's similarity against gain. Every file is written atomically, local or gs://."""

from __future__ import annotations

import json
import math

import numpy as np

from prompt_transfer.base import files, paths
from prompt_transfer.stages import figures
from prompt_transfer.stages.figures import significant
from prompt_transfer.study import analysis
from prompt_transfer.study.analysis import StudyData


def write_study(work_dir: paths.PathLike, data: StudyData) -> dict:
    """Write study.json, study.md, study_gain.png and study_scatter.png into `work_dir`;
    returns `analysis.analyse(data)`, the dict study.json holds."""
    work = paths.path(work_dir)
    study = analysis.analyse(data)
    files.atomic_write_text(work / "study.json", json.dumps(study, indent=1))
    gain_figure(study, work / "study_gain.png")
    scatter_figure(study, work / "study_scatter.png")
    files.atomic_write_text(work / "study.md", markdown(study))
    return study


def _pair(study: dict) -> dict:
    return {(p["source"], p["target"]): p for p in study["pairs"]}


def _oracles(study: dict) -> dict:
    """{target: its source with the largest final gain}."""
    best = {}
    for p in study["pairs"]:
        held = best.get(p["target"])
        if p["gain"] is not None and (held is None or p["gain"] > held["gain"]):
            best[p["target"]] = p
    return {t: p["source"] for t, p in best.items()}


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _spread(value: float | None) -> str:
    return "" if value is None else f" ± {value:.1f}"


def _cost(cost: dict | None) -> str:
    if not cost:
        return ""
    return (
        f" Cost: {cost['runs']} runs, {cost['steps']:,} training steps, "
        f"{cost['minutes']:.0f} minutes in this invocation (reused runs cost nothing)."
    )


def markdown(study: dict) -> str:
    """study.md: the verdict, the gains, the baselines, the zero-shot matrix, the metrics."""
    sources, targets, final = study["sources"], study["targets"], study["steps"][-1]
    pair, oracle = _pair(study), _oracles(study)
    head = "| source \\ target | " + " | ".join(targets) + " |"
    rule = "|---|" + "---|" * len(targets)
    lines = [
        "# Transferability study",
        "",
        f"Sources: {', '.join(sources)}. Targets: {', '.join(targets)}. Scores: "
        f"{study['measure']} (0-100), the mean of {study['seeds']} seed(s) per run; step "
        f"budgets {', '.join(map(str, study['steps']))}.{_cost(study.get('cost'))}",
        "",
        *(f"- {line}" for line in study["verdict"]),
        "",
        f"## Gain over random init at step {final}",
        "",
        "Each cell: the transfer's mean score minus random init's on the target, in points, ± "
        "the standard deviation of the transfer's seeds; bold: the target's best source (the "
        "oracle); `-`: not run. The baselines' own scores follow.",
        "",
        head,
        rule,
    ]
    for s in sources:
        cells = []
        for t in targets:
            p = pair.get((s, t))
            text = "-" if p is None else _fmt(p["gain"], "+.1f") + _spread(p["spread"])
            cells.append(f"**{text}**" if oracle.get(t) == s else text)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| baseline at step {final} | " + " | ".join(targets) + " |",
        rule,
        "| random init (± std of its seeds) | "
        + " | ".join(_fmt(study["random_init"][t]) + _spread(study["spread"][t]) for t in targets)
        + " |",
        "| majority class / chance | "
        + " | ".join(_fmt(study["chance"].get(t)) for t in targets)
        + " |",
        "",
        f"## Zero-shot transfer (source prompt used as is on the target, {study['measure']})",
        "",
        head,
        rule,
    ]
    lines += [
        f"| {s} | " + " | ".join(_fmt(v) for v in row) + " |"
        for s, row in zip(sources, study["zero_shot"], strict=True)
    ]
    return "\n".join(
        [*lines, *_metrics_table(study), *_out_of_sample(study), *_gains_by_step(study)]
    )


def _out_of_sample(study: dict) -> list[str]:
    """Per target, the predictor chosen on the other targets and what its pick cost."""
    held = study["out_of_sample"]
    lines = [
        "",
        "## Chosen out of sample (leave one target out)",
        "",
        "For each target, the predictor with the lowest mean regret on the other targets, the "
        "source it ranks first here, and that source's regret against this target's oracle. "
        "Intervals (95%) resample each run's seeds, then the targets.",
        "",
        "| target | predictor chosen | source | regret |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t} | {c['predictor']} | {c['source']} | {c['regret']:.1f} |"
        for t, c in held["chosen"].items()
    ]
    low, high = held["intervals"]["regret"]
    if held["regret"] is not None:
        lines.append(
            f"| mean | | | {held['regret']:.1f}"
            + (f" [{low:.1f}, {high:.1f}]" if low is not None else "")
            + " |"
        )
    free = study.get("out_of_sample_free")
    if free and free["regret"] is not None:
        low, high = free["intervals"]["regret"]
        chosen = sorted({c["predictor"] for c in free["chosen"].values()})
        lines += [
            "",
            f"Chosen the same way among the predictors that train nothing ({', '.join(chosen)} "
            f"chosen): mean regret {free['regret']:.1f}"
            + (f" [{low:.1f}, {high:.1f}]" if low is not None else "")
            + f", the oracle on {free['oracle_rate']:.0%} of {free['regret_targets']} targets.",
        ]
    return lines


def _share(part: float | None, whole: float | None) -> str:
    """`part` as a share of the oracle's mean gain; '-' where the oracle gains nothing."""
    if part is None or whole is None or whole <= 0:
        return "-"
    return f"{part / whole:.0%} ({part:+.1f})"


def _metrics_table(study: dict) -> list[str]:
    """SPoT's Table 3 for this study: how each metric's ranking of the sources does."""
    lines = [
        "",
        "## Which metric predicts transfer (after SPoT's Table 3)",
        "",
        "Per target, the sources are ranked by the metric (`zero_shot`: by their zero-shot "
        "score). Spearman and Pearson: the correlation of metric and final gain across the "
        "target's sources, averaged over the targets where both vary, with a 95% bootstrap "
        "interval over targets. Best of top-k: the mean gain of the best source among the "
        "metric's top k, as a share of the oracle's mean gain (its points in brackets). Oracle "
        "rates: the share of targets whose best source is ranked first / in the top "
        f"{analysis.TOP_K}. Regret: the oracle's gain minus the first-ranked source's, mean "
        "over targets, in points. Ties in a metric count at their expected value. Training: "
        "the prompt steps a predictor trains per target before it ranks (`race`: the race of "
        "the sources; `first_rung`: its first rung; `race_and_overlap`: the race, its ranks "
        "averaged with activation overlap's), against one transfer run's; the others train "
        "nothing (zero-shot and activation overlap evaluate the frozen model).",
        "",
        "| metric | Spearman [95% CI] | Pearson | targets | best of top-1 | best of top-3 "
        "| top-1 is the oracle | oracle in top-3 | regret | training |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in study["metrics"].items():
        low, high = m["spearman_ci95"]
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
        label = name + (" (default)" if name == study["default_metric"] else "")
        label += " (best)" if name == study["best_metric"] else ""
        lines.append(
            f"| {label} | {_fmt(m['spearman'], '.2f')}{interval} | {_fmt(m['pearson'], '.2f')} "
            f"| {m['targets']} | {_share(m['top1_gain'], m['oracle_gain'])} "
            f"| {_share(m['top3_gain'], m['oracle_gain'])} | {_fmt(m['top1_oracle_rate'], '.0%')} "
            f"| {_fmt(m['top3_oracle_rate'], '.0%')} | {_fmt(m['regret'], '.1f')} "
            f"| {_training(study.get('cost') or {}, name)} |"
        )
    return lines


def _training(cost: dict, predictor: str) -> str:
    """`260 steps (1.3x a run)`: what `predictor` trains per target; `0` for the others."""
    steps = (cost.get("predictor_steps") or {}).get(predictor)
    if not steps:
        return "0"
    run = cost.get("run_steps")
    return f"{steps:,.0f} steps" + (f" ({steps / run:.1f}x a run)" if run else "")


def _gains_by_step(study: dict) -> list[str]:
    """Each pair's gain at every budget, its relative error reduction and similarities."""
    steps, metrics = study["steps"], [m for m in study["metrics"] if m != analysis.ZERO_SHOT]
    lines = [
        "",
        "## Every pair",
        "",
        "Gain over random init (points) at each step budget; error reduction: (random init's "
        "error - the transfer's) / random init's at the last step, error = 100 - score.",
        "",
        "| target | source | "
        + " | ".join(f"step {s}" for s in steps)
        + " | error reduction | zero-shot | "
        + " | ".join(metrics)
        + " |",
        "|---|---|" + "---|" * (len(steps) + 2 + len(metrics)),
    ]
    # SPoT's rule for similarities: as many digits as keep different values apart
    similarity = {
        m: significant([p["similarity"][m] or 0.0 for p in study["pairs"]]) for m in metrics
    }
    for i, p in enumerate(study["pairs"]):
        lines.append(
            f"| {p['target']} | {p['source']} | "
            + " | ".join(_fmt(p["gain_at"][str(s)], "+.1f") for s in steps)
            + f" | {_fmt(p['relative_error_reduction'], '.0%')} | {_fmt(p['zero_shot'])} | "
            + " | ".join(
                similarity[m][i] if p["similarity"][m] is not None else "-" for m in metrics
            )
            + " |"
        )
    lines += [
        "",
        "Figures: `study_gain.png` (the gains), `study_scatter.png` (metric vs gain).",
        "",
    ]
    return lines


def gain_figure(study: dict, path) -> None:
    """The gain heatmap, sources x targets: 0 is random init (white), each cell ± the std of the
    transfer's seeds; each target's random-init score and chance under its name."""
    plt = figures.pyplot()
    sources, targets, pair = study["sources"], study["targets"], _pair(study)
    gain = np.full((len(sources), len(targets)), np.nan)  # [S, T]
    for (s, t), p in pair.items():
        gain[sources.index(s), targets.index(t)] = np.nan if p["gain"] is None else p["gain"]
    limit = float(np.nanmax(np.abs(gain))) if np.isfinite(gain).any() else 1.0
    limit = limit or 1.0
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(targets), 1.5 + 0.6 * len(sources)))
    colours = plt.get_cmap("RdBu").with_extremes(bad="lightgrey")  # grey: not measured
    image = ax.imshow(
        np.ma.masked_invalid(gain), cmap=colours, vmin=-limit, vmax=limit, aspect="auto"
    )
    columns = [
        f"{t}\nrandom init {_fmt(study['random_init'][t])}{_spread(study['spread'][t])}"
        + (f"\nchance {study['chance'][t]:.1f}" if study["chance"].get(t) is not None else "")
        for t in targets
    ]
    ax.set_xticks(range(len(targets)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(sources)), sources)
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            p = pair.get((s, t)) or {"gain": None}
            text = "-" if p["gain"] is None else f"{p['gain']:+.1f}" + _spread(p["spread"])
            dark = p["gain"] is not None and abs(p["gain"]) > 0.6 * limit
            colour = "white" if dark else "black"
            ax.text(
                j, i, text.replace(" ± ", "\n±"), ha="center", va="center", fontsize=8, color=colour
            )
    ax.set_title(
        f"gain over random init at step {study['steps'][-1]} ({study['measure']} points; mean "
        f"of {study['seeds']} seed(s), ± std of the transfer's seeds)",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="gain (points); 0 = random init")
    figures.save(fig, path)
    plt.close(fig)


def scatter_figure(study: dict, path) -> None:
    """One panel per metric: each pair's similarity against its gain (± the std of the
    transfer's seeds), a colour per target; the dashed line is random init and the grey band
    the largest std of random init's seeds over targets: the noise a gain must clear."""
    plt = figures.pyplot()
    names, targets = list(study["metrics"]), study["targets"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.3 * columns, 3.7 * rows), squeeze=False)
    noise = max((s for s in study["spread"].values() if s is not None), default=None)
    colours = plt.get_cmap("tab10")
    for ax, name in zip(axes.flat, names, strict=False):
        value = lambda p, n=name: p["zero_shot"] if n == analysis.ZERO_SHOT else p["similarity"][n]
        for i, target in enumerate(targets):
            ours = [
                p
                for p in study["pairs"]
                if p["target"] == target and p["gain"] is not None and value(p) is not None
            ]
            ax.errorbar(
                [value(p) for p in ours],
                [p["gain"] for p in ours],
                yerr=[p["spread"] or 0.0 for p in ours],
                fmt="o",
                capsize=2,
                color=colours(i % 10),
                label=target,
            )
        ax.axhline(0.0, color="grey", linestyle="--", linewidth=1, label="random init")
        if noise is not None:
            ax.axhspan(
                -noise, noise, color="grey", alpha=0.15, linewidth=0, label="± its seeds' std"
            )
        m = study["metrics"][name]
        ax.set_title(f"{name}: mean Spearman per target {_fmt(m['spearman'], '.2f')}", fontsize=9)
        ax.set_xlabel("zero-shot score" if name == analysis.ZERO_SHOT else f"{name} similarity")
        ax.set_ylabel("gain over random init (points)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(5, len(labels)))
    fig.suptitle(
        f"similarity against gain at step {study['steps'][-1]} (a point per pair)", fontsize=10
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    figures.save(fig, path)
    plt.close(fig)
