"""What a transferability study found: each source prompt's gain on each target over random
init, and how well each similarity metric, and the zero-shot score, predicts that gain (SPoT's
Figure 5 and Table 3, Vu et al. 2110.07904; Su et al.'s transferability indicators, 2111.06719).

Pure functions on already-measured scores; study/report.py writes what `analyse` returns.
Letters: S sources, T targets, R seeds, K step budgets.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from prompt_transfer.study import out_of_sample

ZERO_SHOT = "zero_shot"  # ranks each target's sources by their zero-shot score on it
TOP_K = 3
# Issue 24's goals for the metric retrieval uses.
GOAL_SPEARMAN = 0.5
GOAL_TOP3 = 0.8
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclasses.dataclass(frozen=True)
class StudyData:
    """The scores a study measured (all 0-100, `measure`); the runner fills it."""

    sources: list[str]  # S source tasks
    targets: list[str]  # T target tasks
    steps: list[int]  # evaluated step budgets, ascending; the last is the final one
    # (source, target) -> [R, K]; a pair may be absent (a source is not its own target)
    transfer: dict[tuple[str, str], np.ndarray]
    random_init: dict[str, np.ndarray]  # target -> [R, K], the same seeds
    zero_shot: np.ndarray  # [S, T]: each source prompt used as is on each target
    similarity: dict[str, np.ndarray]  # metric -> [T, S], higher = more similar
    default_metric: str  # the metric retrieval uses (RETRIEVAL_METRIC)
    measure: str = "accuracy"
    # target -> the score of always answering the majority class (chance for balanced
    # measures); None or absent where unknown
    chance: dict[str, float | None] = dataclasses.field(default_factory=dict)
    # what the study cost: {"runs": trained or reused, "steps": of all its runs, "minutes"}
    cost: dict = dataclasses.field(default_factory=dict)


def analyse(data: StudyData) -> dict:
    """study.json's dict: every pair's gain, each metric's power to predict it, a verdict.

    `pairs`: per (source, target) run, the gain (points of the transfer's mean score over
    random init's, at the final step), `gain_at` every step (keys are the steps as strings),
    the relative error reduction at the final step, the zero-shot score and each similarity.
    `zero_shot` [S, T] and `similarity` {metric: [T, S]}: the matrices as measured.
    `metrics`: per similarity metric and `zero_shot`, see `judge`. `spread`: per target, the
    standard deviation over seeds of random init's final score (None with one seed).
    `seeds`: the seeds every run has (each pair also carries its own count).
    """
    _check(data)
    pairs = _pairs(data)
    gains = np.full((len(data.targets), len(data.sources)), np.nan)  # [T, S]
    for p in pairs:
        if p["gain"] is not None:
            gains[data.targets.index(p["target"]), data.sources.index(p["source"])] = p["gain"]
    rankings = {**data.similarity, ZERO_SHOT: np.asarray(data.zero_shot, float).T}
    metrics = {m: judge(np.asarray(v, float), gains, data.targets) for m, v in rankings.items()}
    ranked = [m for m in metrics if metrics[m]["spearman"] is not None]
    held_out = lambda chosen_from: out_of_sample.judge(  # noqa: E731
        chosen_from,
        [[data.transfer.get((s, t)) for s in data.sources] for t in data.targets],
        [data.random_init[t] for t in data.targets],
        data.targets,
        data.sources,
    )
    trains = (data.cost or {}).get("predictor_steps") or {}  # {predictor: steps per target}
    free = {m: v for m, v in rankings.items() if not trains.get(m)}
    first, final = data.steps[0], data.steps[-1]
    finals = {t: np.asarray(data.random_init[t], float)[:, -1] for t in data.targets}  # [R]
    result = {
        "measure": data.measure,
        "steps": list(data.steps),
        "sources": list(data.sources),
        "targets": list(data.targets),
        "seeds": min(len(a) for a in [*data.transfer.values(), *data.random_init.values()]),
        "default_metric": data.default_metric,
        "best_metric": max(ranked, key=lambda m: metrics[m]["spearman"], default=None),
        "pairs": pairs,
        "random_init": {t: _number(np.mean(finals[t])) for t in data.targets},
        "spread": {t: _std(finals[t]) for t in data.targets},
        "chance": {t: _number(data.chance.get(t)) for t in data.targets},
        "zero_shot": [[_number(v) for v in row] for row in np.asarray(data.zero_shot, float)],
        "similarity": {
            m: [[_number(v) for v in row] for row in np.asarray(matrix, float)]
            for m, matrix in data.similarity.items()
        },
        "metrics": metrics,
        "beyond_spread": {str(s): _beyond_spread(data, pairs, i) for i, s in _ends(first, final)},
        # the same for the source retrieval picks (issue 24's goal: half the targets at the
        # first budget)
        "retrieved_beyond_spread": {
            str(s): _beyond_spread(data, pairs, i, retrieved=True) for i, s in _ends(first, final)
        },
        "cost": dict(data.cost),
        "out_of_sample": held_out(rankings),
        # the same choice among the predictors that train nothing (no race): what the race's
        # training buys is the difference
        "out_of_sample_free": held_out(free) if len(free) < len(rankings) and free else None,
    }
    result["verdict"] = _verdict(result)
    return result


def _ends(first: int, final: int) -> list[tuple[int, int]]:
    return [(0, first)] if first == final else [(0, first), (-1, final)]


def _check(data: StudyData) -> None:
    """Shapes agree, in one line naming what does not."""
    S, T, K = len(data.sources), len(data.targets), len(data.steps)
    problems = []
    if not K or list(data.steps) != sorted(set(data.steps)):
        problems.append(f"steps {list(data.steps)} are not ascending")
    if np.shape(data.zero_shot) != (S, T):
        problems.append(f"zero_shot is {np.shape(data.zero_shot)}, not [S, T] = {(S, T)}")
    for metric, matrix in data.similarity.items():
        if np.shape(matrix) != (T, S):
            problems.append(f"similarity {metric!r} is {np.shape(matrix)}, not [T, S] = {(T, S)}")
    for target in data.targets:
        if target not in data.random_init:
            problems.append(f"no random init scores for {target!r}")
    runs = {**{(t,): a for t, a in data.random_init.items()}, **data.transfer}
    for key, scores in runs.items():
        if np.ndim(scores) != 2 or np.shape(scores)[1] != K or not len(scores):
            problems.append(f"{'/'.join(key)} scores are {np.shape(scores)}, not [seeds, {K}]")
    for source, target in data.transfer:
        if source not in data.sources or target not in data.targets:
            problems.append(f"transfer pair {(source, target)} is not a source and a target")
    if problems:
        raise ValueError("study data: " + "; ".join(problems))


def _number(value) -> float | None:
    """A JSON number: None for a missing or non-finite value."""
    return None if value is None or not np.isfinite(value) else float(value)


def _std(values: np.ndarray) -> float | None:
    """The standard deviation over seeds (ddof=1); None with one seed."""
    return _number(np.std(values, ddof=1)) if len(values) > 1 else None


def _pairs(data: StudyData) -> list[dict]:
    """One record per measured (source, target), target by target, sources in order."""
    pairs = []
    for t, target in enumerate(data.targets):
        base = np.mean(np.asarray(data.random_init[target], float), 0)  # [K]
        for s, source in enumerate(data.sources):
            if (source, target) not in data.transfer:
                continue
            scores = np.asarray(data.transfer[(source, target)], float)  # [R, K]
            mean = scores.mean(0)  # [K]
            errors = 100.0 - base[-1], 100.0 - mean[-1]
            pairs.append(
                {
                    "source": source,
                    "target": target,
                    "gain": _number(mean[-1] - base[-1]),
                    "gain_at": {
                        str(k): _number(m - b)
                        for k, m, b in zip(data.steps, mean, base, strict=True)
                    },
                    "relative_error_reduction": (
                        _number((errors[0] - errors[1]) / errors[0]) if errors[0] != 0 else None
                    ),
                    "score": _number(mean[-1]),
                    "spread": _std(scores[:, -1]),
                    "seeds": len(scores),
                    "zero_shot": _number(data.zero_shot[s][t]),
                    "similarity": {m: _number(v[t][s]) for m, v in data.similarity.items()},
                }
            )
    return pairs


def judge(values: np.ndarray, gains: np.ndarray, targets: list[str]) -> dict:
    """How well `values` [T, S] (a metric, higher = more similar) predict `gains` [T, S]
    (NaN: a pair not measured, skipped).

    Per target, across its sources, as SPoT does: Spearman (ranks, ties averaged) and Pearson
    correlation, averaged over the targets where both gains and values vary (a constant has no
    correlation); `spearman_ci95` is the 2.5 and 97.5 percentiles of that average over
    `BOOTSTRAP_RESAMPLES` resamples of those targets with replacement (a fixed seed), [None,
    None] with fewer than 2. The oracle is the target's source with the largest gain;
    `top1_oracle_rate` is the share of targets where the metric's first-ranked source is an
    oracle, `top3_oracle_rate` where one is in its top min(3, S); `regret` the oracle's gain
    minus that of the first-ranked source, and `top1_gain` / `top3_gain` the gain of the best of
    the top 1 / 3, each averaged over the targets with a measured source. Sources tied in the
    metric are ranked at random: a rate or gain is its expectation over the tie's orders, so a
    constant metric scores what picking blindly does.
    """
    spearman, pearson, oracle, top1, top3 = {}, [], [], [], []
    for t, target in enumerate(targets):
        ok = np.isfinite(gains[t]) & np.isfinite(values[t])
        g, v = gains[t, ok], values[t, ok]
        if not len(g):
            continue
        oracle.append(g.max())
        top1.append(_top(v, g, 1))
        top3.append(_top(v, g, min(TOP_K, len(g))))
        if len(g) > 1 and np.ptp(g) > 0 and np.ptp(v) > 0:
            spearman[target] = float(stats.spearmanr(v, g).statistic)
            pearson.append(float(stats.pearsonr(v, g).statistic))
    mean = lambda xs: _number(np.mean(xs)) if len(xs) else None
    return {
        "spearman": mean(list(spearman.values())),
        "spearman_ci95": _bootstrap(list(spearman.values())),
        "pearson": mean(pearson),
        "top1_oracle_rate": mean([hit for hit, _ in top1]),
        "top3_oracle_rate": mean([hit for hit, _ in top3]),
        "regret": mean([o - best for o, (_, best) in zip(oracle, top1, strict=True)]),
        "top1_gain": mean([best for _, best in top1]),
        "top3_gain": mean([best for _, best in top3]),
        "oracle_gain": mean(oracle),
        "targets": len(spearman),
        "spearman_per_target": spearman,
    }


def _top(values: np.ndarray, gains: np.ndarray, k: int) -> tuple[float, float]:
    """(the probability that the best of the top `k` by `values` [S] is an oracle, the
    expected gain of that best), ties in `values` across the cut ranked at random."""
    cut = np.sort(values)[::-1][k - 1]
    above, tied = values > cut, values == cut
    places = k - int(above.sum())  # how many of the tied sources make the top k
    known = gains[above].max() if above.any() else -np.inf
    tied_gains = np.sort(gains[tied])[::-1]
    b = len(tied_gains)
    # the best of a random `places` of the b tied is its i-th best with this probability
    chance = np.asarray([math.comb(b - 1 - i, places - 1) for i in range(b)]) / math.comb(b, places)
    best = np.maximum(known, tied_gains)
    return float(chance[best == gains.max()].sum()), float(chance @ best)


def _bootstrap(values: list[float]) -> list[float | None]:
    """A 95% percentile interval of the mean of `values`, resampling them (see `judge`)."""
    if len(values) < 2:
        return [None, None]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    x = np.asarray(values)
    means = x[rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def _retrieved(data: StudyData, target: str, ours: list[dict]) -> dict | None:
    """The pair of the source the default metric ranks first for `target` (None: unmeasured)."""
    scores = (
        np.asarray(data.zero_shot, float).T
        if data.default_metric == ZERO_SHOT
        else data.similarity.get(data.default_metric)
    )
    if scores is None:
        return None
    row = np.asarray(scores, float)[data.targets.index(target)]
    return max(ours, key=lambda p: row[data.sources.index(p["source"])])


def _beyond_spread(data: StudyData, pairs: list[dict], index: int, retrieved=False) -> dict:
    """How many targets' best source (by gain at steps[index]; with `retrieved`, the source
    the default metric ranks first) beats random init there by more than the seeds' spread (the
    larger standard deviation of the two runs' seeds), of those that can be judged (a measured
    pair, more than one seed)."""
    step, wins, judged = str(data.steps[index]), 0, 0
    for target in data.targets:
        ours = [p for p in pairs if p["target"] == target and p["gain_at"][step] is not None]
        if not ours:
            continue
        if retrieved:
            best = _retrieved(data, target, ours)
            if best is None:
                continue
        else:
            best = max(ours, key=lambda p: p["gain_at"][step])
        beats = out_of_sample.beats_spread(
            np.asarray(data.transfer[(best["source"], target)], float)[:, index],
            np.asarray(data.random_init[target], float)[:, index],
        )
        if beats is None:
            continue
        judged += 1
        wins += beats
    return {"targets": wins, "judged": judged}


def predicts(metric: dict) -> bool:
    """Whether a metric predicts transfer on the study: a mean Spearman of at least
    `GOAL_SPEARMAN` with its 95% interval above 0."""
    spearman, low = metric["spearman"], metric["spearman_ci95"][0]
    return spearman is not None and spearman >= GOAL_SPEARMAN and low is not None and low > 0


def _verdict(study: dict) -> list[str]:
    """A few plain sentences: does anything predict transfer, which metric is best, how the
    default metric meets issue 24's goals, and whether transfer beats the seeds' noise."""
    metrics = study["metrics"]
    good = [m for m, v in metrics.items() if predicts(v)]
    best = study["best_metric"]
    if good:
        lines = [
            f"{len(good)} of the {len(metrics)} metrics predict{'s' if len(good) == 1 else ''} "
            "transfer on this study "
            f"(mean Spearman >= {GOAL_SPEARMAN} with its 95% interval above 0): "
            + ", ".join(good)
            + "."
        ]
    elif best is None:
        lines = [
            "Nothing predicts transfer on this study: no target has two measured sources "
            "whose gains and a metric's values both vary, so no correlation exists."
        ]
    else:
        lines = [
            f"Nothing predicts transfer on this study: no metric reaches a mean Spearman of "
            f"{GOAL_SPEARMAN} with its 95% interval above 0."
        ]
    if best is not None:
        lines.append(f"The best metric is {best}: {_summary(metrics[best])}.")
    lines.append(_default_line(study))
    lines.append(_out_of_sample_line(study["out_of_sample"]))
    if study.get("out_of_sample_free"):
        lines.append(_out_of_sample_line(study["out_of_sample_free"], free=True))
    lines += _noise_lines(study)
    return lines


def _out_of_sample_line(held: dict, free: bool = False) -> str:
    """The choice of predictor judged where it was not made (study/out_of_sample.py); `free`:
    among the predictors that train nothing."""
    among = "among the predictors that train nothing, " if free else ""
    if held["regret"] is None:
        return f"Out of sample, {among}no target has a measured source."
    low, high = held["intervals"]["regret"]
    interval = f" [{low:.1f}, {high:.1f}]" if low is not None else ""
    inside = held["in_sample"]
    beyond = (
        f", beats random init by more than the seeds' spread at the first budget on "
        f"{held['beyond_spread']:.0%} of {held['beyond_spread_targets']}"
        if held["beyond_spread"] is not None
        else ""
    )
    missed = [goal for goal, ok in held["goals"].items() if ok is False]
    return (
        f"Out of sample ({among}each target's predictor chosen by its regret on the other "
        "targets), "
        f"the chosen source's regret is {held['regret']:.1f}{interval} points, it is the oracle "
        f"on {held['oracle_rate']:.0%} of {held['regret_targets']} targets{beyond}; in sample "
        f"the best predictor ({inside['predictor']}) shows regret {_f(inside['regret'], '.1f')}"
        + (f". Issue 37's goals missed: {', '.join(missed)}." if missed else ".")
    )


def _summary(metric: dict) -> str:
    low, high = metric["spearman_ci95"]
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
    return (
        f"mean Spearman {_f(metric['spearman'], '.2f')}{interval} over {metric['targets']} "
        f"target(s), the oracle first for {_f(metric['top1_oracle_rate'], '.0%')} and in the "
        f"top {TOP_K} for {_f(metric['top3_oracle_rate'], '.0%')} of targets, regret "
        f"{_f(metric['regret'], '.1f')} points"
    )


def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _default_line(study: dict) -> str:
    name = study["default_metric"]
    metric = study["metrics"].get(name)
    if metric is None:
        return f"The default metric, {name}, was not measured in this study."
    spearman, top3 = metric["spearman"], metric["top3_oracle_rate"]
    goals = [
        (spearman is not None and spearman >= GOAL_SPEARMAN, f"Spearman >= {GOAL_SPEARMAN}"),
        (
            top3 is not None and top3 >= GOAL_TOP3,
            f"the oracle in its top {TOP_K} for >= {GOAL_TOP3:.0%} of targets",
        ),
    ]
    met = [text for ok, text in goals if ok]
    missed = [text for ok, text in goals if not ok]
    how = (
        "meets both of issue 24's goals"
        if not missed
        else "misses issue 24's goal"
        + ("s" if len(missed) > 1 else "")
        + " of "
        + " and ".join(missed)
        + (f" (it meets {met[0]})" if met else "")
    )
    return f"The default metric, {name}, {how}: {_summary(metric)}."


def _noise_lines(study: dict) -> list[str]:
    lines = []
    for step, count in study["beyond_spread"].items():
        if not count["judged"]:
            lines.append(
                f"At step {step} no target can be judged against the seeds' spread (one seed "
                "per run, or no measured pair)."
            )
            continue
        got = study["retrieved_beyond_spread"][step]
        lines.append(
            f"At step {step}, {count['targets']} of {count['judged']} target(s) have a best "
            "source whose gain beats random init by more than the seeds' spread (the larger "
            "standard deviation of the two runs); the source the default metric ranks first "
            f"does on {got['targets']} of {got['judged']}."
        )
    return lines
