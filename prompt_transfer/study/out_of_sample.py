"""Each source predictor judged where it was not chosen: leave one target out (issue 37).

A study's metrics table ranks the predictors on the targets it measured, so the best of them is
chosen and judged on the same targets, and looks better than it will on a new one. Here, for
each target in turn, the predictor with the lowest mean regret on the *other* targets is
chosen, and the source it ranks first on the held-out target is scored: its regret against that
target's oracle, whether it is the oracle, its gain, and whether that gain at the first budget
beats random init by more than the seeds' spread. A source tied first in the chosen ranking
counts at its expectation (as `analysis.judge` counts ties), so a constant predictor scores
what picking blindly does.

Intervals resample both sources of noise: each run's seeds (with replacement, so the gains
move as they would with other seeds; the choice is made again on the resampled gains) and
then the targets. Pure functions on already-measured scores. Letters: S sources, T targets,
R seeds, K step budgets, P predictors.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
SEED = 0
# Issue 37's goals for the chosen source, out of sample.
GOAL_REGRET = 1.0  # points, mean over targets
GOAL_ORACLE_RATE = 0.6
GOAL_BEYOND_SPREAD = 0.5  # share of the judged targets, at the first budget


def first_choice(values: np.ndarray) -> np.ndarray:
    """[S] the probability that each source is ranked first by `values` [S] (ties at the top
    shared evenly; a NaN never is)."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(len(values))
    top = finite & (values == np.max(values[finite]))
    return top / top.sum()


def _outcomes(values: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """[T, 3]: per target, (regret, oracle hit, gain) of the source `values` [T, S] ranks
    first among the measured ones of `gains` [T, S]; NaN rows where nothing is measured."""
    out = np.full((len(gains), 3), np.nan)
    for t, (v, g) in enumerate(zip(values, gains, strict=True)):
        ok = np.isfinite(g) & np.isfinite(v)
        if not ok.any():
            continue
        p = first_choice(np.where(ok, v, np.nan))[ok]
        best = g[ok].max()
        out[t] = best - p @ g[ok], p @ (g[ok] == best), p @ g[ok]
    return out


def _choose(regrets: np.ndarray) -> np.ndarray:
    """[T] per held-out target, the predictor (row of `regrets` [P, T]) with the lowest mean
    regret over the other targets with a measured source; ties go to the earlier row."""
    measured = np.isfinite(regrets)
    total = np.where(measured, regrets, 0.0).sum(1, keepdims=True)  # [P, 1]
    count = measured.sum(1, keepdims=True)
    others = (total - np.where(measured, regrets, 0.0)) / np.maximum(count - measured, 1)
    others = np.where(count - measured > 0, others, np.inf)
    return np.argmin(others, axis=0)


def _gains(transfer, random_init, index: int, rng=None) -> np.ndarray:
    """[T, S] mean transfer score minus mean random init score at budget `index`; with `rng`,
    each run's seeds resampled with replacement first. `transfer[t][s]` is [R, K] or None."""

    def mean(scores):
        scores = np.asarray(scores, float)[:, index]
        if rng is not None:
            scores = scores[rng.integers(0, len(scores), len(scores))]
        return scores.mean()

    out = np.full((len(transfer), len(transfer[0])), np.nan)
    for t, row in enumerate(transfer):
        base = mean(random_init[t])
        for s, scores in enumerate(row):
            if scores is not None:
                out[t, s] = mean(scores) - base
    return out


def beats_spread(ours, base) -> bool | None:
    """Whether scores `ours` [R] beat `base` [R'] by more than the seeds' spread, the larger
    standard deviation (ddof 1) of the two runs' seeds; None with one seed on either side."""
    ours, base = np.asarray(ours, float), np.asarray(base, float)
    if len(ours) < 2 or len(base) < 2:
        return None
    return bool(ours.mean() - base.mean() > max(np.std(ours, ddof=1), np.std(base, ddof=1)))


def _beats_spread(transfer, random_init) -> np.ndarray:
    """[T, S] `beats_spread` of each pair at the first budget (NaN: not judged)."""
    out = np.full((len(transfer), len(transfer[0])), np.nan)
    for t, row in enumerate(transfer):
        for s, scores in enumerate(row):
            if scores is not None:
                beats = beats_spread(np.asarray(scores)[:, 0], np.asarray(random_init[t])[:, 0])
                out[t, s] = np.nan if beats is None else beats
    return out


def _each(values: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """[P, T, 3] `_outcomes` of every predictor in `values` [P, T, S]."""
    return np.stack([_outcomes(v, gains) for v in values])


def _held_out(each: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chosen predictor per target [T], outcomes [T, 3] of its first-ranked source), from
    every predictor's outcomes `each` [P, T, 3]."""
    chosen = _choose(each[:, :, 0])
    return chosen, each[chosen, np.arange(len(chosen))]


def judge(
    rankings: dict[str, np.ndarray],
    transfer: list[list[np.ndarray | None]],
    random_init: list[np.ndarray],
    targets: list[str],
    sources: list[str],
) -> dict:
    """study.json's `out_of_sample`: per target the predictor chosen on the others and the
    source it picks; the means over targets of regret, oracle hits, gain and beating the
    seeds' spread at the first budget, each with a 95% interval (seeds, then targets,
    resampled); the same means in sample for the predictor best on all targets; and the goals.

    `rankings` {predictor: [T, S], higher = ranked first}; `transfer[t][s]` [R, K] or None;
    `random_init[t]` [R, K].
    """
    names = list(rankings)
    values = np.stack([np.asarray(rankings[n], float) for n in names])  # [P, T, S]
    gains = _gains(transfer, random_init, -1)
    in_sample = _each(values, gains)  # [P, T, 3]: every predictor judged on every target
    chosen, outcomes = _held_out(in_sample)
    beats = _beats_spread(transfer, random_init)
    firsts = [
        first_choice(np.where(np.isfinite(gains[t]), values[c, t], np.nan))
        for t, c in enumerate(chosen)
    ]
    beyond = np.asarray([_expected(p, b) for p, b in zip(firsts, beats, strict=True)])
    per_target = np.column_stack([outcomes, beyond])  # [T, 4]
    best = int(np.argmin(np.nanmean(in_sample[:, :, 0], 1)))
    result = {
        "chosen": {
            t: {
                "predictor": names[c],
                "source": sources[int(np.argmax(firsts[i]))],  # the first of any tied
                "regret": float(outcomes[i, 0]),
            }
            for i, (t, c) in enumerate(zip(targets, chosen, strict=True))
            if np.isfinite(outcomes[i, 0])
        },
        **_means(per_target),
        "intervals": _intervals(values, transfer, random_init),
        "in_sample": {"predictor": names[best], **_means(in_sample[best])},
    }
    result["goals"] = {
        "regret": _at_most(result["regret"], GOAL_REGRET),
        "oracle_rate": _at_least(result["oracle_rate"], GOAL_ORACLE_RATE),
        "beyond_spread": _at_least(result["beyond_spread"], GOAL_BEYOND_SPREAD),
    }
    return result


def _expected(chance: np.ndarray, beats: np.ndarray) -> float:
    """The expected share of `beats` [S] over the first choice `chance` [S] (NaN where a source
    that may be chosen cannot be judged, or nothing can be chosen)."""
    held = chance > 0
    if not held.any() or not np.isfinite(beats[held]).all():
        return np.nan
    return float(chance[held] @ beats[held])


def _means(per_target: np.ndarray) -> dict:
    """Means over the targets with a measured source (beyond_spread: over those judged)."""
    keys = ("regret", "oracle_rate", "gain", "beyond_spread")
    out = {}
    for key, column in zip(keys, per_target.T, strict=False):
        finite = column[np.isfinite(column)]
        out[key] = float(finite.mean()) if len(finite) else None
        out[f"{key}_targets"] = int(len(finite))
    return out


def _intervals(values, transfer, random_init) -> dict:
    """95% percentile intervals of the out-of-sample means: each resample draws every run's
    seeds again (gains, and so the choices, move), then the targets."""
    rng = np.random.default_rng(SEED)
    draws = []
    for _ in range(RESAMPLES):
        _, outcomes = _held_out(_each(values, _gains(transfer, random_init, -1, rng)))
        rows = rng.integers(0, len(outcomes), len(outcomes))
        draws.append([np.nanmean(outcomes[rows, j]) if np.isfinite(outcomes[rows, j]).any()
                      else np.nan for j in range(3)])  # fmt: skip
    draws = np.asarray(draws)
    return {
        key: [float(np.nanpercentile(draws[:, j], 2.5)), float(np.nanpercentile(draws[:, j], 97.5))]
        if np.isfinite(draws[:, j]).any() else [None, None]
        for j, key in enumerate(("regret", "oracle_rate", "gain"))
    }  # fmt: skip


def _at_most(value, goal) -> bool | None:
    return None if value is None else value <= goal


def _at_least(value, goal) -> bool | None:
    return None if value is None else value >= goal
