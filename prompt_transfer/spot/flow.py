"""The whole SPoT flow in one command (Vu et al. 2022), on real or offline tasks, as stages:

1. Sources: prompt tuning on each source task; each final prompt joins the library.
2. Embeddings: a short run on each target; its prompt joins the library.
3. Retrieval: every source ranked for every target by each similarity metric.
4. Targets: training from each transfer strategy and each baseline (random, sampled
   vocabulary, class labels, model tuning), evaluated along the way.
5. Report (report.py): score at fixed step budgets, steps to reach the random-init run's final
   score, which sources each strategy used; convergence curves, the similarity heatmap and the
   zero-shot transfer matrix.

What the flow does is a FlowConfig (config.py); how each of its runs trains is the RunSpec and
TrainConfig of gin/runs/prompt_tuning.gin, with the run's own folder, task and steps (runs.py,
which also reuses what a folder already holds, so a re-run only does what is missing).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from prompt_transfer.base import errors, paths
from prompt_transfer.configure import gin_utils
from prompt_transfer.data import batches
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning
from prompt_transfer.prompt import multitask, prompts
from prompt_transfer.spot import against_study, kept, strategies
from prompt_transfer.spot.config import (
    COMPOSE_STRATEGIES,
    MULTITASK_RUN,
    SHARED_START,
    THEN_MODEL,
    FlowConfig,
    changes_network,
)
from prompt_transfer.spot.report import Results, TargetRuns, write_report
from prompt_transfer.spot.runs import FlowError, Runs, base_run
from prompt_transfer.trainer import remote, run_dir
from prompt_transfer.trainer import start as start_lib
from prompt_transfer.trainer.config import RunSpec, TrainConfig
from prompt_transfer.trainer.train import network_of
from prompt_transfer.transfer import library, retrieval, similarity, views


def run(flow: FlowConfig, spec: RunSpec, config: TrainConfig, *, config_text: str = "") -> dict:
    """Run the flow; returns the report dict (also written to WORK_DIR/report.{json,md}).

    `spec` and `config` are how every run trains (prompt_tuning.gin's); each run takes its own
    folder, task, steps and prompt initialisation, and `config.eval_period` is the target runs'.
    With `spec.deep_prompt` every prompt run (sources, task embeddings, strategies, baselines)
    trains a deep prompt, and retrieval and transfer move it whole (prompts.widen); model tuning
    stays as it is. Up to `flow.stack_runs` prompt runs of one stage (the sources; a target's
    baselines, strategies and seeds) train together in one stacked step on the shared frozen
    network (train.train_together), each in its own directory as if alone."""
    work = paths.path(flow.work_dir)
    runs = Runs(*base_run(spec, config), work, flow.stack_runs, config_text)
    lib = library.Library(work / "library")
    progress = Progress(flow.total_runs)
    train_sources(flow, runs, lib, progress)
    train_multitask(flow, runs, progress)
    train_embeddings(flow, runs, lib, progress)
    network = network_of(runs.spec, partitioning.make_mesh(runs.spec.num_partitions))
    found = retrieve(flow, runs.spec, lib, network)
    trained = train_targets(flow, runs, lib, found, progress)
    return report(flow, runs, found, trained, network)


def _log(message: str) -> None:
    print(f"[spot] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Progress:
    """`[spot] runs 3-5/12: ...`: which of the flow's runs a stage trains (or reuses)."""

    total: int
    done: int = 0

    def stage(self, message: str, runs: int = 1) -> None:
        first, self.done = self.done + 1, self.done + runs
        counted = f"run {first}" if runs == 1 else f"runs {first}-{self.done}"
        _log(f"{counted}/{self.total}: {message}")


@dataclasses.dataclass(frozen=True)
class Retrieved:
    """The library as the targets see it. N healthy source prompts, in the library's order."""

    sources: list[str]  # the N source prompts' tasks
    source_prompts: np.ndarray  # [N, P, E (+ deep width)]
    embeddings: dict[str, library.Entry]  # {target: its task embedding}
    similarities: dict[str, np.ndarray]  # {metric: [targets, N]}


def _tasks(kind: str, tasks) -> str:
    return f"{kind}{'s' if len(tasks) > 1 else ''}: {', '.join(tasks)}"


def train_sources(flow: FlowConfig, runs: Runs, lib: library.Library, progress: Progress) -> None:
    """1. A prompt on each source task, evaluated once at the end; each joins the library."""
    progress.stage(_tasks("source prompt", flow.sources), len(flow.sources))
    sampled = prompts.PromptInit("sampled_vocab")
    runs.train(
        [
            runs.make(
                runs.work / "sources" / task,
                task,
                steps=flow.source_steps,
                eval_period=flow.source_steps,
                prompt_init=sampled,
                library_dir=str(lib.root),
            )
            for task in flow.sources
        ]
    )


def train_multitask(flow: FlowConfig, runs: Runs, progress: Progress) -> None:
    """1b. For the multitask_ rows: one multi-task run over every source (their mixture, at
    SOURCE_STEPS), whose tasks' prompts the rows start from; it stays out of the library."""
    if not flow.multitask_runs:
        return
    progress.stage(f"multi-task prompt ({flow.multitask_how}) over the sources")
    mixture = batches.register_mixture("spot_multitask_sources", flow.sources)
    runs.train(
        [
            runs.make(
                runs.work / "sources" / MULTITASK_RUN,
                mixture,
                steps=flow.source_steps,
                eval_period=flow.source_steps,
                prompt_init=prompts.PromptInit("sampled_vocab"),
                trainable_regex=multitask.TRAINABLE,
                multitask=multitask.MultitaskPrompt(flow.multitask_how, flow.multitask_rank),
            )
        ]
    )


def train_embeddings(
    flow: FlowConfig, runs: Runs, lib: library.Library, progress: Progress
) -> None:
    """2. A short run on each target, never evaluated; its prompt joins the library as the
    target's task embedding."""
    progress.stage(_tasks("task embedding", flow.targets), len(flow.targets))
    sampled = prompts.PromptInit("sampled_vocab")
    runs.train(
        [
            runs.make(
                runs.work / "embeddings" / task,
                task,
                steps=flow.embedding_steps,
                eval_period=0,
                prompt_init=sampled,
                library_dir=str(lib.root),
                library_kind="task_embedding",
            )
            for task in flow.targets
        ]
    )


def shared_start(spec: RunSpec, network, task: str) -> np.ndarray:
    """The prompt every source and task embedding of the flow starts from (wide form): sampled
    vocabulary, and its keys and values in every layer for a deep prompt, of RANDOM_SEED."""
    first = dataclasses.replace(spec, task=task)
    sampled = TrainConfig(
        relative_steps=1, batch_size=1, prompt_init=prompts.PromptInit("sampled_vocab")
    )
    mesh = partitioning.make_mesh(spec.num_partitions)
    return start_lib.initial_prompt(first, sampled, network, mesh, log=None)


def retrieve(flow: FlowConfig, spec: RunSpec, lib: library.Library, network) -> Retrieved:
    """3. The library's prompts of this model, and every target's similarity to every source
    prompt by each metric (and by RETRIEVAL_METRIC when it compares views of the prompts:
    transfer/views.py; its shared start is written to WORK_DIR for the target runs)."""
    ours = dict(
        model_fingerprint=library.model_fingerprint(network.params),
        deep_width=spec.deep_width,
    )
    entries = [e for e in lib.entries(kind="trained", **ours) if e.task in flow.sources]
    embeddings = {e.task: e for e in lib.entries(kind="task_embedding", **ours)}
    entries, source_prompts = lib.load(entries, deep=spec.deep_prompt)  # healthy ones
    width = spec.model_config.emb_dim
    cut = lambda prompts, m: prompts[..., :width] if similarity.input_only(m)[1] else prompts
    similarities = {
        m: np.stack(
            [
                similarity.score_library(
                    m,
                    cut(lib.prompt(embeddings[t], deep=spec.deep_prompt), m),
                    cut(source_prompts, m),
                )
                for t in flow.targets
            ]
        )
        for m in flow.metrics
    }
    view = views.view_of(flow.retrieval_metric)
    if view is not None:
        start = None
        if views.needs_start(flow.retrieval_metric):
            start = shared_start(spec, network, flow.sources[0])
            paths.save_npy(paths.path(flow.work_dir) / SHARED_START, start)
        seen = lambda x: views.view(view, x, spec.model_config, start)  # noqa: E731
        targets = [lib.prompt(embeddings[t], deep=spec.deep_prompt) for t in flow.targets]
        similarities[flow.retrieval_metric] = np.stack(
            [
                similarity.score_library(views.VIEWED_METRIC, seen(t), seen(source_prompts))
                for t in targets
            ]
        )
    return Retrieved([e.task for e in entries], source_prompts, embeddings, similarities)


def train_targets(
    flow: FlowConfig, runs: Runs, lib: library.Library, found: Retrieved, progress: Progress
) -> TargetRuns:
    """4. Every baseline and strategy on every target, once per seed, a target at a time; then
    what each run that trained the network forgets of the sources (kept.py)."""
    seeds = flow.seeds(runs.spec.seed)
    trained, frozen = TargetRuns(), {}  # frozen: the sources' scores on the frozen network
    for task in flow.targets:
        embedding = found.embeddings[task].id
        by_name = strategies.target_inits(flow, lib.root, embedding, runs.spec.prompt_length)
        planned = {
            (name, seed): runs.make(
                runs.work / "targets" / task / name / f"seed_{seed}",
                task,
                **{"steps": flow.target_steps, **changes},
                eval_period=runs.config.eval_period,
                seed=seed,
            )
            for name, changes in by_name.items()
            for seed in seeds
        }
        described = ", ".join(by_name)
        if len(seeds) > 1:
            described += f"; seeds {seeds[0]}-{seeds[-1]}"
        progress.stage(f"target {task}: {described}", len(planned))
        runs.train(list(planned.values()))
        for (name, _), (spec, _) in planned.items():
            _gather(trained, task, name, paths.path(spec.model_dir))
        changed = [(name, run) for (name, _), run in planned.items() if changes_network(name)]
        if changed:
            _log(f"what the {len(changed)} target runs that trained the network forget")
            reports = kept.measure([r for _, r in changed], flow.sources, str(lib.root), frozen)
            for (name, _), report in zip(changed, reports, strict=True):
                trained.kept.setdefault((task, name), []).append(report)
    return trained


def _gather(trained: TargetRuns, task: str, name: str, model_dir) -> None:
    """Add one target run's (one seed's) curve, predictions and transfer report; a
    prompt-then-model run's curve is phase 1's (MODEL_DIR/phase1) then phase 2's."""
    phase1 = run_dir.subdir(model_dir, run_dir.PHASE1)
    history = run_dir.read_eval_history(model_dir, trained=True)  # steps after the checkpoint's
    if phase1.exists():
        later = {h["step"] for h in history}  # phase 2 evaluates at the boundary step too
        history = [
            *(h for h in run_dir.read_eval_history(phase1, trained=True) if h["step"] not in later),
            *history,
        ]
    trained.curves.setdefault((task, name), []).append(
        ([h["step"] for h in history], [h["value"] for h in history])
    )
    if history and history[-1].get("predictions"):  # classification targets
        last = history[-1]
        trained.predictions.setdefault((task, name), []).append(last["predictions"].get(task))
        trained.labels[task] = last["labels"].get(task)
    for where in (model_dir, phase1):
        report_file = where / "transfer" / "report.json"
        if report_file.exists() and (task, name) not in trained.picked:
            trained.picked[(task, name)] = paths.read_json(
                report_file, "remove that run's folder to train it again"
            )


def zero_shot_matrix(
    runs: Runs, network, found: Retrieved, targets, measure: str | None = None
) -> np.ndarray:
    """[sources, targets]: each source prompt used as is on each target's validation split,
    scored by `measure` (default: each target's main metric)."""
    return retrieval.zero_shot_matrix(
        EncoderDecoderModel(network.module),
        network.params,
        found.source_prompts,
        list(targets),
        runs.spec.feature_lengths,
        batch_size=runs.config.eval_batch_size,
        measure=measure,
    )


def report(flow: FlowConfig, runs: Runs, found: Retrieved, trained: TargetRuns, network) -> dict:
    """5. The zero-shot matrix (each source prompt used as is on each target), then the report
    with its figures; its verdicts go to the log."""
    zero_shot = zero_shot_matrix(runs, network, found, flow.targets)
    results = Results(
        targets=flow.targets,
        sources=found.sources,
        runs=trained,
        similarities=found.similarities,
        zero_shot=zero_shot,
        eval_period=runs.config.eval_period,
        target_steps=flow.target_steps,
        study=against_study.lines(
            against_study.read(flow.study_file),
            flow.study_file,
            flow.retrieval_metric,
            flow.targets,
            found.sources,
            found.similarities,
        ),
    )
    written = write_report(runs.work, results)
    for line in [*written["verdict"], *written["study"]]:
        _log(line)
    _log(f"report: {runs.work / 'report.md'}")
    return written


def main(argv: list[str]) -> dict:
    """`prompt-transfer spot --gin_file=experiments/spot_tiny --gin.WORK_DIR=...`: the flow as
    gin/runs/spot.gin binds it, its runs as gin/runs/prompt_tuning.gin binds them. Everything
    is checked before the first source trains (check_flow)."""
    launch = gin_utils.parse_command_line(argv, flags=("check",))
    refuse_run_macros(launch.bindings)
    config_text = gin_utils.configure(launch.files, launch.bindings, launch.search_paths)
    flow = gin_utils.build(FlowConfig)
    spec, config = gin_utils.build(RunSpec), gin_utils.build(TrainConfig)
    remote.check_run(spec, {"WORK_DIR": flow.work_dir}, tasks=[*flow.sources, *flow.targets])
    flow = check_flow(flow, spec)
    if launch.flags["check"]:
        return checked(flow, spec, {"strategies": flow.strategies, "baselines": flow.baselines})
    return run(flow, spec, config, config_text=config_text)


def checked(settings, spec: RunSpec, more: dict) -> dict:
    """`--check` of the flow or the study (`settings`), after their own checks: every task's
    data is where it is read from, the frozen checkpoint's step is read; nothing is written.
    Returns what the command would do."""
    from prompt_transfer.network import checkpoints

    for task in (*settings.sources, *settings.targets):
        batches.check_prepared(task)
    start = checkpoints.initial_step(spec.initial_checkpoint)
    return {
        "check": "ok",
        "work_dir": settings.work_dir,
        "initial_checkpoint": f"{spec.initial_checkpoint or 'none (random init)'} (step {start})",
        "sources": ", ".join(settings.sources),
        "targets": ", ".join(settings.targets),
        "steps": f"sources {settings.source_steps}, task embeddings {settings.embedding_steps}, "
        f"targets {settings.target_steps}, each after step {start}",
        **{k: ", ".join(v) for k, v in more.items()},
    }


def check_flow(flow: FlowConfig, spec: RunSpec) -> FlowConfig:
    """COMPOSE_SOURCES among the sources when a strategy composes, prompt steps left to the
    *_then_model rows, `check_tasks`, and a TOP_K above the sources is clamped to them, with a
    note. (Types, ranges, strategies, baselines, metrics and empty lists are the schema's:
    gin_utils.build.)"""
    composing = [s for s in flow.strategies if s.removesuffix(THEN_MODEL) in COMPOSE_STRATEGIES]
    if composing and (
        len(flow.compose_sources) < 2 or not set(flow.compose_sources) <= set(flow.sources)
    ):
        raise FlowError(
            f"STRATEGIES={list(flow.strategies)!r} compose sub-tasks' prompts: "
            f"COMPOSE_SOURCES={list(flow.compose_sources)!r} must name two or more of SOURCES"
        )
    two_phase = [n for n in (*flow.baselines, *flow.strategies) if n.endswith(THEN_MODEL)]
    if two_phase and not 0 < flow.phase2_steps < flow.target_steps:
        raise FlowError(
            f"THEN_MODEL_STEPS={flow.then_model_steps} leaves the prompt of {two_phase[0]} no "
            f"steps of TARGET_STEPS={flow.target_steps}; give fewer (phase 2's part of them)"
        )
    if two_phase and not spec.prompt_length:
        raise FlowError(
            f"{two_phase[0]} trains a prompt first: PROMPT_LENGTH=0 leaves none; give a length"
        )
    check_tasks(flow, spec)
    if flow.top_k > len(flow.sources):
        _log(
            f"note: TOP_K={flow.top_k} is more than the {len(flow.sources)} source(s); "
            f"using TOP_K={len(flow.sources)}"
        )
        flow = dataclasses.replace(flow, top_k=len(flow.sources))
    return flow


def check_tasks(settings, spec: RunSpec) -> None:
    """Refuse, before any work, a source or target (of the flow's or a study's `settings`)
    that is not a registered task, and a task named twice."""
    spec.register_tasks()
    for macro, tasks in (("SOURCES", settings.sources), ("TARGETS", settings.targets)):
        for task in tasks:
            try:
                batches.get_task(task)
            except errors.UserError as e:
                raise FlowError(f"{macro}={list(tasks)!r}: {errors.one_line(e)}") from e
        twice = sorted({t for t in tasks if list(tasks).count(t) > 1})
        if twice:
            raise FlowError(f"{macro}={list(tasks)!r} names {', '.join(twice)} twice")


# prompt_tuning.gin's macros that the flow sets for each of its runs, and what to set instead.
_SET_PER_RUN = {
    "MODEL_DIR": "WORK_DIR",
    "MIXTURE_OR_TASK_NAME": "SOURCES and TARGETS",
    "TRAIN_STEPS": "SOURCE_STEPS, EMBEDDING_STEPS or TARGET_STEPS",
    "SAVE_PERIOD": "SOURCE_STEPS, EMBEDDING_STEPS or TARGET_STEPS (each run saves at its end)",
    "TRAINABLE": "DEEP_PROMPT (model tuning is a baseline: BASELINES)",
    "LIBRARY_DIR": "WORK_DIR (its library/ folder)",
    "MODEL_STEPS": "THEN_MODEL_STEPS (phase 2's part of TARGET_STEPS in the *_then_model rows)",
    "MODEL_PROMPT": "THEN_MODEL_PROMPT",
    "MODEL_LEARNING_RATE": "MODEL_TUNING_LEARNING_RATE (phase 2 trains as model tuning does)",
}


def refuse_run_macros(bindings: list[str]) -> None:
    """A macro the flow sets for each run would be ignored if given: refuse it in one line."""
    for text in bindings:
        name = gin_utils.bound_name(text)
        if name in _SET_PER_RUN:
            raise FlowError(
                f"--gin.{name}=... is set by the SPoT flow for each of its runs; "
                f"use {_SET_PER_RUN[name]}"
            )
