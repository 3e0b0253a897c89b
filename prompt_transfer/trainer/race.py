"""Source racing: every candidate source starts the target at once, and the worse half goes.

Each candidate prompt (a library source, fitted to the run) is a short run on the target under
MODEL_DIR/transfer/race/<name>/seed_<j>; all of a rung's runs train in one stacked step
(fit.py), RACE_STEPS more steps each, and are evaluated on the whole validation split. The
better half by their mean score over RACE_SEEDS seeds goes on from its checkpoint (successive
halving; a tie keeps the retrieval order), until one source is left. The score (RACE_SCORE) is
the main metric, or the mean log-probability of the true label among the labels
(`likelihood`), which tells apart runs whose accuracy is the same handful of examples, or
balanced accuracy (`balanced_accuracy`), under which a run that answers the majority class for
every input, as many do after a rung's few steps, scores 100 / classes rather than the
majority's share and so does not outrun one that has begun to tell the classes apart. The
survivor's run then becomes the target run (`adopt`): MODEL_DIR takes over its checkpoint,
optimizer state and data position included, and goes on from the race's last step to
TRAIN_STEPS, so the steps it raced count in the run's budget. What racing costs is every
runner's steps in every rung; with the rest of the survivor's run, the race row trains that
plus TRAIN_STEPS minus the raced steps.

The order in which sources leave is a ranking of all of them (the survivor first); the study
scores it as a predictor of transfer beside the similarities (study/run.py). With a second
predictor's scores (`prior`: the race_and_overlap strategy passes each source's activation
overlap with the target), the race picks the source whose two ranks average best, ties going
to the one that raced longer (the study's race_and_overlap predictor, study/run.py); a
source that left the race early is picked with the run it had then (its best seed's checkpoint
at the rung it left), which goes on to TRAIN_STEPS, so picking it costs no step more than the
survivor. A finished race is written to race.json beside its runs and read back when the same
race is asked again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
import typing
from collections.abc import Sequence

import numpy as np
from scipy import stats

from prompt_transfer.base import files, paths, runtime
from prompt_transfer.data import metrics, registry
from prompt_transfer.model import seqio_eval
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import run_dir
from prompt_transfer.trainer.config import RunSpec, TrainConfig, resolved
from prompt_transfer.trainer.fit import fit
from prompt_transfer.transfer import initial

RACE_FILE = "race.json"
BALANCED = metrics.BALANCED_ACCURACY  # a RACE_SCORE: the mean recall over the classes
PROMPT_FILE = "survivor_prompt.npy"  # the picked source's prompt (named when only survivors were)
# What the picked source's run folder hands on to the target run (`adopt`): its checkpoint with the
# optimizer's state, the data iterator's state, the exported prompts, its evaluations and its
# record (which says the steps count on from the initial checkpoint's).
ADOPTED = ("checkpoint_{step}", "checksums/checkpoint_{step}.json", "data_state",
           "numpy_checkpoints", "prompts", "eval_history.jsonl", "run.json")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Race:
    """What a race found, and what it cost."""

    chosen: str  # the source picked: the survivor, or the best by mean rank with `prior`
    prompt: np.ndarray  # its prompt where it left the race (wide form)
    folder: str  # the picked source's run folder (its best seed's), which the target run adopts
    ranking: list[str]  # every candidate, best first: by the rung each left at, then its score
    # per rung: {"step", "scores": {source: mean score}, "kept": [...], "examples": the
    # validation examples each runner was scored on (0: a task without labels)}
    rungs: list[dict]
    steps: int  # prompt-training steps of every runner in every rung
    seconds: float
    seeds: int  # runs per source in each rung
    # {source: its score by a second predictor} when the pick weighs one ({}: the survivor)
    prior: dict = dataclasses.field(default_factory=dict)

    def report(self) -> dict:
        """Every field but the prompt (race.json keeps that beside it, PROMPT_FILE)."""
        out = {f: getattr(self, f) for f in REPORTED}
        return dict(out, seconds=round(self.seconds, 1))

    @property
    def reached(self) -> int:
        return reached(self.rungs, self.chosen)

    def cost_line(self, run_steps: int) -> str:
        """`race: offline_x won ...; cost 100 steps (0.33x one run of 300), 12 s; ...`."""
        won = f"{self.chosen} won"
        if self.prior:
            survivor = self.ranking[0]
            won = f"{self.chosen} picked by its mean rank in the race and by activation overlap"
            won += "" if self.chosen == survivor else f" (the race's survivor: {survivor})"
        return (
            f"race: {won} over {len(self.ranking) - 1} other source(s) in "
            f"{len(self.rungs)} rung(s); cost {self.steps:,} prompt steps "
            f"({self.steps / run_steps:.2f}x one run of {run_steps:,}), {self.seconds:.0f} s; "
            f"its run goes on from its step {self.reached:,} to the run's last"
        )


REPORTED = tuple(f.name for f in dataclasses.fields(Race) if f.name != "prompt")
# what a race.json must hold to be read back (`prior` came later: an older race had none)
REQUIRED = tuple(f.name for f in dataclasses.fields(Race) if f.name not in ("prompt", "prior"))


class Runner(typing.NamedTuple):
    """What one run of a rung ended with."""

    score: float  # its RACE_SCORE at the rung's last step
    prompt: np.ndarray  # its prompt there (wide form)
    examples: int  # validation examples it was scored on (0: a task without labels)


def reached(rungs: Sequence[dict], chosen: str) -> int:
    """The steps the `chosen` source trained in a race, from its rungs (a Race's, or
    report.json's): the last rung it ran in; 0 when there was no race (one candidate)."""
    return max((rung["step"] for rung in rungs if chosen in rung["scores"]), default=0)


def rung_sizes(candidates: int) -> list[int]:
    """The sources that train in each rung of a race of `candidates` (halving, ceil(n / 2)
    going on, until one is left): 6 -> [6, 3, 2]."""
    sizes = []
    while candidates > 1:
        sizes.append(candidates)
        candidates = math.ceil(candidates / 2)
    return sizes


def halve(scores: dict[str, float], order: Sequence[str]) -> list[str]:
    """The better half of the sources in `scores` (ceil(n / 2) of n), best first; a tie keeps
    `order`'s ranking (retrieval's), so a race on a coarse score is still deterministic."""
    ranked = sorted(scores, key=lambda name: (-scores[name], list(order).index(name)))
    return ranked[: math.ceil(len(ranked) / 2)]


def ranking(rungs: Sequence[dict], order: Sequence[str]) -> list[str]:
    """Every source, best first: the later a source left the race the better, and among those
    that left at the same rung the higher score (then `order`)."""
    left_at = {name: (0, 0.0) for name in order}
    for r, rung in enumerate(rungs, 1):
        for name, score in rung["scores"].items():
            left_at[name] = (r + (name in rung["kept"]), score)
    return sorted(order, key=lambda n: (-left_at[n][0], -left_at[n][1], list(order).index(n)))


def mean_rank(first: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """Predictors' scores of the same sources (higher: more promising) as one: minus the mean of
    each source's ranks (1: the best; tied values share the mean of their ranks), and where two
    sources' means tie, the one `first` ranks higher comes first. Nothing is fitted: the
    predictors count alike."""
    ranks = [stats.rankdata(-np.asarray(s, np.float64)) for s in (first, *others)]
    mean = np.mean(ranks, axis=0)
    # a tie in the mean goes to `first`'s order: less than the smallest step between two means
    return -(mean + ranks[0] / (len(ranks) * (len(mean) + 1)))


def pick(ranking_: Sequence[str], prior: dict[str, float]) -> str:
    """The source whose ranks in the race (`ranking_`, best first) and by `prior` average best;
    a tie goes to the one that raced longer."""
    by_race = -np.arange(len(ranking_), dtype=np.float64)
    joint = mean_rank(by_race, np.asarray([prior[name] for name in ranking_]))
    return ranking_[int(np.argmax(joint))]


def race(
    spec: RunSpec,
    config: TrainConfig,
    network,
    mesh,
    candidates: Sequence[tuple[str, np.ndarray]],
    steps: int,
    seeds: int,
    folder,
    say=print,
    score: str = "metric",
    prior: dict[str, float] | None = None,
) -> Race:
    """Race `candidates` ((source name, its prompt in the run's wide form), in retrieval's
    order) on `spec.task`, RACE_STEPS `steps` a rung, `seeds` runs per source from
    `spec.seed`, each rung decided by `score` (RACE_SCORE), under `folder`; the pick is the
    survivor, or with `prior` ({source: score}) the best by mean rank (`pick`). A race.json
    there of the same race is read back instead."""
    folder = paths.path(folder)
    names = [name for name, _ in candidates]
    asked = _asked(spec, candidates, steps, seeds, score, prior)
    done = _read_back(folder, asked)
    if done is not None:
        say(f"race: read back from {folder / RACE_FILE}")
        return done
    started = time.monotonic()
    alive, rungs, last, spent = names, [], {}, 0
    starts = {(name, j): prompt for name, prompt in candidates for j in range(seeds)}
    while len(alive) > 1:
        runners = [(name, j) for name in alive for j in range(seeds)]
        reached = steps * (len(rungs) + 1)
        results = _rung(spec, config, network, mesh, folder, runners, reached, steps, starts, score)
        last.update(results)  # each runner's latest: where it stands if it leaves here
        spent += steps * len(runners)
        scores = {
            name: float(np.mean([results[(name, j)].score for j in range(seeds)])) for name in alive
        }
        kept = halve(scores, names)
        examples = results[runners[0]].examples  # every runner reads the same validation split
        rungs.append({"step": reached, "scores": scores, "kept": kept, "examples": examples})
        say(
            f"race rung {len(rungs)} (steps {reached - steps + 1}-{reached}, "
            f"{len(runners)} runs in one stacked step, {examples} validation examples each, "
            f"by RACE_SCORE={score!r}): "
            + ", ".join(f"{n} {scores[n]:.2f}{'' if n in kept else ' (out)'}" for n in scores)
        )
        alive = kept
    ranked = ranking(rungs, names)
    chosen, best = (pick(ranked, prior) if prior else alive[0]), 0
    if rungs:  # its best seed's prompt where it left the race
        best = max(range(seeds), key=lambda j: last[(chosen, j)].score)
        prompt = last[(chosen, best)].prompt
    else:  # one candidate: nothing to race
        prompt = dict(candidates)[chosen]
    found = Race(
        chosen,
        np.asarray(prompt, np.float32),
        str(folder / chosen / f"seed_{best}"),
        ranked,
        rungs,
        spent,
        time.monotonic() - started,
        seeds,
        dict(prior or {}),
    )
    files.save_npy(folder / PROMPT_FILE, found.prompt)
    record = dict(found.report(), asked=asked)
    files.atomic_write_text(folder / RACE_FILE, json.dumps(record, indent=1))
    return found


def check_score(task: str, score: str) -> None:
    """Refuse a RACE_SCORE that `task` cannot be scored by (the flow and the study ask this of
    every target before any run trains)."""
    if score == "likelihood" and not all(registry.mixture_labels(task).values()):
        raise initial.TransferError(
            f"RACE_SCORE='likelihood' needs a classification target, and {task!r} has no "
            "labels to score; use RACE_SCORE='metric'"
        )
    if score == BALANCED and not registry.reports(task, metrics.balanced_accuracy):
        raise initial.TransferError(
            f"RACE_SCORE='balanced_accuracy' needs a target whose tasks report it, and "
            f"{task!r} does not (add data.metrics.balanced_accuracy to its metric_fns); "
            "use RACE_SCORE='metric'"
        )


def _asked(spec, candidates, steps, seeds, score, prior) -> dict:
    """What identifies a race (race.json's `asked`), once its arguments are checked."""
    names = [name for name, _ in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"race candidates must have distinct names: {names}")
    if prior is not None and set(prior) != set(names):
        raise ValueError(f"a race's prior must score every candidate: {names}, not {list(prior)}")
    check_score(spec.task, score)
    return {
        "candidates": names,
        "prompts": _fingerprint([prompt for _, prompt in candidates]),
        "steps_per_rung": steps,
        "seeds": seeds,
        "seed": spec.seed,
        # a race decided by the main metric reads back the races written before RACE_SCORE
        **({"score": score} if score != "metric" else {}),
        **({"prior": {name: float(prior[name]) for name in names}} if prior else {}),
    }


def adopt(found: Race, target: run_dir.RunDir, start: int) -> None:
    """Make the picked source's run the target run's own (`target`: its MODEL_DIR) up to where
    it left the race (`ADOPTED`; `start`: the initial checkpoint's step, from which the steps
    count), so that the target run resumes from it, optimizer state and data position included,
    instead of starting over. Process 0 copies; the others wait for it."""
    if not found.rungs:
        return
    step, picked = start + found.reached, run_dir.RunDir(found.folder)

    def copy() -> None:
        for name in ADOPTED:
            _copy(picked.file(name.format(step=step)), target.file(name.format(step=step)))

    if files.is_chief():
        copy()
    runtime.barrier("the race's pick adopted")


def _copy(source, target) -> None:
    """`source` (a file or a folder, local or gs://) copied to `target`, file by file."""
    if source.is_dir():
        for child in source.iterdir():
            _copy(child, target / child.name)
    elif source.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())


def _fingerprint(prompts_: Sequence[np.ndarray]) -> str:
    """What the candidates' prompts are, in 16 hex digits (a source trained again is another
    race)."""
    digest = hashlib.sha256()
    for prompt in prompts_:
        digest.update(np.ascontiguousarray(prompt, np.float32).tobytes())
    return digest.hexdigest()[:16]


def _read_back(folder, asked: dict) -> Race | None:
    """The race finished in `folder` before, if it was this one (same candidates and their
    prompts, rungs and seeds); None otherwise."""
    record_file, prompt_file = folder / RACE_FILE, folder / PROMPT_FILE
    if not (record_file.exists() and prompt_file.exists()):
        return None
    record = files.read_json(record_file)
    if record.get("asked") != asked or not set(REQUIRED) <= record.keys():
        return None  # another race, or one recorded before a field existed: race again
    prompt = files.load_npy(prompt_file, fix="delete the race folder to race again")
    return Race(prompt=prompt, **{f: record[f] for f in REPORTED if f in record})


def _rung(spec, config, network, mesh, folder, runners, reached, steps, starts, score) -> dict:
    """{(source, seed index): its `Runner`}: each trained up to step `reached` (from its
    source's prompt on the first rung, from its checkpoint after), all in one stacked step,
    evaluated at the end and scored by `score`."""
    first = reached == steps
    sub = config.nested(reached, eval_period=steps, save_period=steps)
    specs = [
        dataclasses.replace(
            spec,
            model_dir=str(folder / name / f"seed_{j}"),
            seed=spec.seed + j,
        )
        for name, j in runners
    ]
    sub = resolved(specs[0], sub)
    blank = prompts.blank(spec.prompt_length, spec.model_config, spec.deep_prompt)
    with contextlib.ExitStack() as held:
        for s in specs:
            s.run_dir.check_config("", overwrite=first, resume=not first)
        logs = [held.enter_context(run_dir.ProgressLog(s.run_dir, sub.steps)) for s in specs]
        begin = [starts[r] if first else blank for r in runners]
        results = fit(specs, sub, network, mesh, begin, logs)
    out = {}
    for runner, s, (_, final) in zip(runners, specs, results, strict=True):
        last = s.run_dir.read_eval_history()[-1]
        examples = sum(((last.get("labels") or {}).get(s.task) or {}).values())
        out[runner] = Runner(_score(last, score), final, examples)
    return out


def _score(evaluation: dict, score: str) -> float:
    """A runner's score from its evaluation (a line of eval_history.jsonl): the main metric, or
    the mean over the target's tasks of the log-probability of the true label, or of their
    balanced accuracy."""
    if score == "likelihood":
        return float(np.mean(list(evaluation["label_log_likelihood"].values())))
    if score == BALANCED:
        return float(np.mean([task[BALANCED] for task in evaluation["results"].values()]))
    return seqio_eval.main_metric(evaluation["results"])[1]
