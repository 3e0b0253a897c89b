"""`prompt-transfer study`: what each source actually gives each target, and which similarity
predicts it (SPoT's Figure 5 and Table 3; Su et al.'s indicators of transferability).

Stages, each reusing the SPoT flow's runs (so a rerun, or a rerun with more seeds, only trains
what is missing):
1. Sources and task embeddings, as the flow trains them (the shared stages, stages/).
2. Similarity of every target's embedding to every source prompt, by each metric; activation
   overlap runs the frozen model on each prompt.
3. Transfer: each target trained from each source prompt alone (single_source), and from the
   baseline initialisation, with the same seeds.
4. A race of the sources on each target (trainer/race.py), with a seed none of the judged runs
   has: its order of elimination (`race`) and its first rung's scores (`first_rung`) are
   predictors beside the similarities, and what they cost is said; so is each source's loss on
   the target's first training batches before any step (`zero_shot_loss`, nothing trained),
   and, where activation overlap is measured, the race and it together (`race_and_overlap`:
   the mean of a source's two ranks).
5. The zero-shot matrix, then study.json, study.md and the figures (study/report.py).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from prompt_transfer.base import errors, paths
from prompt_transfer.configure import gin_utils
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning
from prompt_transfer.prompt import prompts
from prompt_transfer.stages import checks
from prompt_transfer.stages import sources as sources_stage
from prompt_transfer.stages.runs import Runs, base_run
from prompt_transfer.study.config import RACE_SEED_OFFSET, StudyConfig
from prompt_transfer.trainer import race, remote, run_dir
from prompt_transfer.trainer.config import RunSpec, TrainConfig
from prompt_transfer.trainer.train import network_of
from prompt_transfer.transfer import initial, library, retrieval, similarity, views


def run(study: StudyConfig, spec: RunSpec, config: TrainConfig, *, config_text: str = "") -> dict:
    """Run the study; returns study.json's dict (also written with study.md and the PNGs)."""
    from prompt_transfer.study.analysis import StudyData
    from prompt_transfer.study.report import write_study

    started = time.monotonic()
    work = paths.path(study.work_dir)
    runs = Runs(*base_run(spec, config), work, study.stack_runs, config_text)
    lib = library.Library(work / "library")
    progress = sources_stage.Progress(study.total_runs, "study")
    sources_stage.train_sources(study, runs, lib, progress)
    sources_stage.train_embeddings(study, runs, lib, progress)
    network = network_of(runs.spec, partitioning.make_mesh(runs.spec.num_partitions))
    found, entries = _similarities(study, runs.spec, lib, network)
    steps, transfer, baseline = _transfer(study, runs, lib, entries, progress)
    raced = _races(study, runs, network, found, progress)
    found.similarities.update(raced.pop("predictors"))
    overlap = found.similarities.get("activation_overlap")
    if overlap is not None:  # the race's order and the frozen model's view of the prompts
        found.similarities[RACE_AND_OVERLAP] = joint_rank(found.similarities[RACE], overlap)
        raced["predictor_steps"][RACE_AND_OVERLAP] = raced["predictor_steps"][RACE]
    found.similarities[ZERO_SHOT_LOSS] = -retrieval.zero_shot_loss_matrix(
        EncoderDecoderModel(network.module),
        network.params,
        found.source_prompts,
        study.targets,
        runs.spec.feature_lengths,
        runs.config.batch_size,
    ).T
    zero_shot = sources_stage.zero_shot_matrix(runs, network, found, study.targets, study.measure)
    data = StudyData(
        sources=found.sources,
        targets=list(study.targets),
        steps=steps,
        transfer=transfer,
        random_init=baseline,
        zero_shot=zero_shot,
        similarity=found.similarities,
        default_metric=study.retrieval_metric,
        measure=study.measure,
        chance={t: _chance(runs, study, t) for t in study.targets},
        cost=dict(
            runs=study.total_runs,
            steps=study.total_steps,
            minutes=(time.monotonic() - started) / 60,
            **raced,
        ),
    )
    written = write_study(work, data)
    for line in written["verdict"]:
        _log(line)
    cost = written["cost"]
    _log(f"cost: {cost['runs']} runs, {cost['steps']:,} steps, {cost['minutes']:.1f} minutes")
    _log(f"study: {work / 'study.md'}")
    return written


class StudyError(errors.UserError):
    pass


def _log(message: str) -> None:
    print(f"[study] {message}", file=sys.stderr, flush=True)


def _similarities(study: StudyConfig, spec: RunSpec, lib, network):
    """The flow's retrieval for the prompt metrics, plus activation overlap (the frozen model
    on each prompt); returns it and {source task: its library entry}."""
    measured = [*study.metrics, study.retrieval_metric]  # retrieval's own metric, always
    prompt_metrics = list(dict.fromkeys(m for m in measured if m in similarity.PROMPT_METRICS))
    found = sources_stage.retrieve(
        dataclasses.replace(study, metrics=prompt_metrics), spec, lib, network
    )
    if "activation_overlap" in study.metrics:
        signature = lambda p: similarity.activation_signature(network.module, network.params, p)
        sources = np.stack([signature(p) for p in found.source_prompts])
        found.similarities["activation_overlap"] = np.stack(
            [
                similarity.score_library(
                    "activation_overlap",
                    signature(lib.prompt(found.embeddings[t], deep=spec.deep_prompt)),
                    sources,
                )
                for t in study.targets
            ]
        )
    found.similarities.update(_viewed(study, spec, lib, network, found))
    ours = dict(model_fingerprint=library.model_fingerprint(network.params), kind="trained")
    entries = {e.task: e for e in lib.entries(deep_width=spec.deep_width, **ours)}
    return found, {task: entries[task] for task in found.sources}


def _viewed(study: StudyConfig, spec: RunSpec, lib, network, found) -> dict[str, np.ndarray]:
    """views.VIEWED_METRIC on each view of the prompts (transfer/views.py):
    `{view}_cosine_avg_tokens` [targets, sources]. The trained views subtract the start every
    source and embedding shared (stages/sources.py's shared_start); a plain prompt's one block is
    its input prompt, each position scaled to unit norm."""
    initial = sources_stage.shared_start(spec, network, study.sources[0])
    names = views.VIEWS if spec.deep_prompt else ("blocks", "trained", "trained_blocks")
    config = spec.model_config
    targets = np.stack(
        [lib.prompt(found.embeddings[t], deep=spec.deep_prompt) for t in study.targets]
    )
    out = {}
    for name in names:
        sources = views.view(name, found.source_prompts, config, initial)
        wanted = views.view(name, targets, config, initial)
        out[f"{name}_{views.VIEWED_METRIC}"] = np.stack(
            [similarity.score_library(views.VIEWED_METRIC, t, sources) for t in wanted]
        )
    return out


def _transfer(study: StudyConfig, runs: Runs, lib, entries: dict, progress):
    """3. Every target from each source alone and from the baseline, per seed; returns (the
    evaluated steps, {(source, target): [seeds, steps]}, {target: [seeds, steps]})."""
    seeds = study.seeds(runs.spec.seed)
    planned = {}
    for target in study.targets:
        starts = {study.baseline: prompts.PromptInit(study.baseline)}
        for source, entry in entries.items():
            if source != target:
                init = initial.TransferInit(
                    strategy="single_source", library=str(lib.root), source=entry.id
                )
                starts[f"from_{source}"] = prompts.PromptInit("transfer", transfer=init)
        for name, start in starts.items():
            for seed in seeds:
                folder = runs.work / "study" / target / name / f"seed_{seed}"
                planned[(target, name, seed)] = runs.make(
                    folder,
                    target,
                    steps=study.target_steps,
                    eval_period=runs.config.eval_period,
                    seed=seed,
                    prompt_init=start,
                )
    progress.stage(
        f"transfer: {len(study.targets)} target(s) x ({len(entries)} sources + "
        f"{study.baseline}) x {len(seeds)} seed(s)",
        len(planned),
    )
    runs.train(list(planned.values()))
    steps = _budgets(runs.config.eval_period, study.target_steps)
    curves = {
        key: _scores(spec.model_dir, steps, spec.task, study.measure)
        for key, (spec, _) in planned.items()
    }
    transfer, baseline = {}, {}
    for target in study.targets:
        baseline[target] = np.stack([curves[(target, study.baseline, s)] for s in seeds])
        for source in entries:
            if source != target:
                name = f"from_{source}"
                transfer[(source, target)] = np.stack([curves[(target, name, s)] for s in seeds])
    return steps, transfer, baseline


RACE = "race"  # the race's order of elimination, the survivor first
# minus the target's loss on its first training batches under each source, before any step
ZERO_SHOT_LOSS = "zero_shot_loss"
FIRST_RUNG = "first_rung"  # each source's score after the race's first rung
RACE_AND_OVERLAP = "race_and_overlap"  # the mean of a source's ranks by the two


def joint_rank(*scores: np.ndarray) -> np.ndarray:
    """[T, S] predictors (higher: more promising; NaN: not ranked, the target itself) as one,
    target by target (race.mean_rank): minus the mean of each source's ranks among the target's
    ranked sources, a tie going to the first predictor's order, as the race_and_overlap
    strategy picks. Nothing is fitted: two predictors count alike on every target."""
    known = np.all([np.isfinite(s) for s in scores], axis=0)
    out = np.full(scores[0].shape, np.nan)
    for t in range(out.shape[0]):
        out[t, known[t]] = race.mean_rank(*(s[t, known[t]] for s in scores))
    return out


def _races(study: StudyConfig, runs: Runs, network, found, progress) -> dict:
    """4. Every source but the target races on each target (in RETRIEVAL_METRIC's order, which
    breaks ties), with seed RANDOM_SEED + RACE_SEED_OFFSET; returns {"predictors": {race,
    first_rung: [T, S], NaN where a source is the target}, "race_steps": per target,
    "race_minutes": all races', "predictor_steps": {predictor: its prompt steps per target,
    mean} with "run_steps": one transfer run's}."""
    seed = runs.spec.seed + RACE_SEED_OFFSET
    mesh = partitioning.make_mesh(runs.spec.num_partitions)
    shape = (len(study.targets), len(found.sources))
    order, first = np.full(shape, np.nan), np.full(shape, np.nan)
    progress.stage(
        f"races: the sources on each of {len(study.targets)} target(s), {study.race_steps} "
        f"steps a rung, seed {seed}",
        len(study.targets),
    )
    started, spent, first_steps = time.monotonic(), [], []
    for t, target in enumerate(study.targets):
        rank = found.similarities.get(study.retrieval_metric, np.zeros(shape))[t]
        ours = [i for i in np.argsort(-rank, kind="stable") if found.sources[i] != target]
        candidates = [(found.sources[i], found.source_prompts[i]) for i in ours]
        folder = runs.work / "study" / target / "race"
        spec, config = runs.make(
            folder, target, steps=study.race_steps, eval_period=study.race_steps, seed=seed
        )
        say = lambda line, target=target: _log(f"{target}: {line}")  # noqa: E731
        found_race = race.race(
            spec, config, network, mesh, candidates, study.race_steps, study.race_seeds,
            folder, say, study.race_score,
        )  # fmt: skip
        spent.append(found_race.steps)
        first_steps.append(study.race_rungs(target)[0] * study.race_steps * study.race_seeds)
        for place, name in enumerate(found_race.ranking):
            order[t, found.sources.index(name)] = len(found_race.ranking) - place
        for name, score in (found_race.rungs[0]["scores"] if found_race.rungs else {}).items():
            first[t, found.sources.index(name)] = score
    return {
        "predictors": {RACE: order, FIRST_RUNG: first},
        "race_steps": dict(zip(study.targets, spent, strict=True)),
        "race_minutes": (time.monotonic() - started) / 60,
        "predictor_steps": {RACE: float(np.mean(spent)), FIRST_RUNG: float(np.mean(first_steps))},
        "run_steps": study.target_steps,
    }


def _budgets(eval_period: int, steps: int) -> list[int]:
    return list(range(eval_period, steps + 1, eval_period)) if eval_period else [steps]


def _scores(model_dir: str, steps: list[int], task: str, measure: str) -> np.ndarray:
    """The run's `measure` of `task` at each of `steps` (its evaluation history)."""
    # steps after the checkpoint's
    history = run_dir.RunDir(model_dir).read_eval_history(trained=True)
    by_step = {h["step"]: h["results"][task].get(measure) for h in history}
    if any(by_step.get(s) is None for s in steps):
        raise StudyError(
            f"{model_dir} has no {measure} at every step of {steps}; its task reports "
            f"{', '.join(history[-1]['results'][task])} (STUDY_MEASURE)"
        )
    return np.asarray([by_step[s] for s in steps], np.float64)


def _chance(runs: Runs, study: StudyConfig, target: str) -> float | None:
    """What a constant answer scores on the target's validation labels (from a baseline run's
    last evaluation), in points: the majority class's share for accuracy, 100 / classes for
    balanced accuracy; None for a task without labels."""
    folder = runs.work / "study" / target / study.baseline / f"seed_{runs.spec.seed}"
    history = run_dir.RunDir(folder).read_eval_history()
    labels = (history[-1].get("labels") or {}).get(target) if history else None
    if not labels:
        return None
    if study.measure == "balanced_accuracy":
        return 100.0 / len([n for n in labels.values() if n])
    return 100.0 * max(labels.values()) / sum(labels.values())


def main(argv: list[str]) -> dict:
    """`prompt-transfer study --gin_file=experiments/study_offline`: the study as
    gin/runs/study.gin binds it, its runs as gin/runs/prompt_tuning.gin binds them; every
    setting and task is checked before the first source trains."""
    launch = gin_utils.parse_command_line(argv, flags=("check",))
    checks.refuse_run_macros(launch.bindings)
    config_text = gin_utils.configure(launch.files, launch.bindings, launch.search_paths)
    study = gin_utils.build(StudyConfig)
    spec, config = gin_utils.build(RunSpec), gin_utils.build(TrainConfig)
    remote.check_run(spec, {"WORK_DIR": study.work_dir}, tasks=[*study.sources, *study.targets])
    checks.check_tasks(study, spec)
    if launch.flags["check"]:
        return checks.checked(study, spec, {"metrics": study.metrics})
    return run(study, spec, config, config_text=config_text)
