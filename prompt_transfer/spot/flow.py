"""The whole SPoT flow in one command (Vu et al. 2022), on real or offline tasks, as stages:

1-3. The stages it shares with the study (stages/sources.py): sources, task embeddings,
   retrieval; and, for the multitask_ rows, one multi-task run over the sources.
4. Targets: training from each transfer strategy and each baseline (random, sampled
   vocabulary, class labels, model tuning), evaluated along the way.
5. Report (report.py): score at fixed step budgets, steps to reach the random-init run's final
   score, which sources each strategy used; convergence curves, the similarity heatmap and the
   zero-shot transfer matrix.

What the flow does is a FlowConfig (config.py); how each of its runs trains is the RunSpec and
TrainConfig of gin/runs/prompt_tuning.gin, with the run's own folder, task and steps
(stages/runs.py, which also reuses what a folder already holds, so a re-run only does what is
missing).
"""

from __future__ import annotations

import dataclasses

from prompt_transfer.base import files, paths
from prompt_transfer.configure import gin_utils
from prompt_transfer.data import batches
from prompt_transfer.network import partitioning
from prompt_transfer.prompt import multitask, prompts
from prompt_transfer.spot import against_study, strategies
from prompt_transfer.spot.config import (
    COMPOSE_STRATEGIES,
    MULTITASK_RUN,
    THEN_MODEL,
    FlowConfig,
    changes_network,
)
from prompt_transfer.spot.report import Results, TargetRuns, write_report
from prompt_transfer.stages.checks import check_tasks, checked, refuse_run_macros
from prompt_transfer.stages.runs import FlowError, Runs, base_run
from prompt_transfer.stages.sources import (
    Progress,
    Retrieved,
    log,
    retrieve,
    train_embeddings,
    train_sources,
    zero_shot_matrix,
)
from prompt_transfer.trainer import forget, remote, run_dir
from prompt_transfer.trainer.config import RunSpec, TrainConfig
from prompt_transfer.trainer.train import network_of
from prompt_transfer.transfer import library


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


def train_targets(
    flow: FlowConfig, runs: Runs, lib: library.Library, found: Retrieved, progress: Progress
) -> TargetRuns:
    """4. Every baseline and strategy on every target, once per seed, a target at a time; then
    what each run that trained the network forgets of the sources (trainer/forget.py)."""
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
            _gather(trained, task, name, spec.run_dir)
        changed = [(name, run) for (name, _), run in planned.items() if changes_network(name)]
        if changed:
            log(f"what the {len(changed)} target runs that trained the network forget")
            runs_changed = [r for _, r in changed]
            reports = forget.measure_runs(runs_changed, flow.sources, str(lib.root), frozen)
            for (name, _), report in zip(changed, reports, strict=True):
                trained.kept.setdefault((task, name), []).append(report)
    return trained


def _gather(trained: TargetRuns, task: str, name: str, folder: run_dir.RunDir) -> None:
    """Add one target run's (one seed's) curve, predictions and transfer report; a
    prompt-then-model run's curve is phase 1's (MODEL_DIR/phase1) then phase 2's."""
    phase1 = folder.below(run_dir.PHASE1)
    history = folder.read_eval_history(trained=True)  # steps after the checkpoint's
    if phase1.root.exists():
        later = {h["step"] for h in history}  # phase 2 evaluates at the boundary step too
        history = [
            *(h for h in phase1.read_eval_history(trained=True) if h["step"] not in later),
            *history,
        ]
    trained.curves.setdefault((task, name), []).append(
        ([h["step"] for h in history], [h["value"] for h in history])
    )
    if history and history[-1].get("predictions"):  # classification targets
        last = history[-1]
        trained.predictions.setdefault((task, name), []).append(last["predictions"].get(task))
        trained.labels[task] = last["labels"].get(task)
    for where in (folder, phase1):
        report_file = where.file("transfer", "report.json")
        if not report_file.exists():
            continue
        picked = files.read_json(report_file, "remove that run's folder to train it again")
        trained.picked.setdefault((task, name), picked)
        if "race" in picked:  # every seed's race: what it picked and what it cost
            trained.races.setdefault((task, name), []).append(picked["race"])


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
    for line in [*written["verdict"], *written["races"], *written["study"]]:
        log(line)
    log(f"report: {runs.work / 'report.md'}")
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
        log(
            f"note: TOP_K={flow.top_k} is more than the {len(flow.sources)} source(s); "
            f"using TOP_K={len(flow.sources)}"
        )
        flow = dataclasses.replace(flow, top_k=len(flow.sources))
    return flow
