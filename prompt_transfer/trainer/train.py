"""Training runs, one or many: open each run, start it, fit, and finish it.

    python -m prompt_transfer train --gin_file=experiments/prompt_tuning_tiny \\
        --gin.MODEL_DIR=/tmp/run --gin.MIXTURE_OR_TASK_NAME=my_task

`train` is one run; `train_together` trains a SPoT flow's runs (the sources; a target's
baselines, strategies and seeds), those that can share a step in stacks of several. Both go
through `train_stack`, so one run is a stack of one: checked, locked and logged, started from
its initial prompt (start.py), fitted (fit.py), and its final prompt added to the library.

On 2 CPU cores the step is compute-bound and stacking gains little (benchmarks/many_prompts.py
at the demo's shapes: 1.13x the prompt-steps per second for K = 3, 0.98x for K = 9), hence the
flow's STACK_RUNS = 3; an accelerator that a small batch leaves idle is where a larger K should
pay (not yet measured).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Sequence

from prompt_transfer.base import runtime
from prompt_transfer.base.errors import UserError
from prompt_transfer.network import checkpoints, partitioning
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import phases, run_dir, run_record, weights
from prompt_transfer.trainer.config import RunSpec, TrainConfig, check_numbers, check_run
from prompt_transfer.trainer.fit import fit
from prompt_transfer.trainer.start import starting_prompt
from prompt_transfer.transfer import library
from prompt_transfer.transfer.initial import RACES


def train(
    spec: RunSpec,
    config: TrainConfig,
    *,
    config_text: str = "",
    overwrite: bool = False,
    resume: bool = False,
) -> dict:
    """Train the TRAINABLE parameters on the task; returns a summary dict.

    A MODEL_DIR that holds a run with the same config resumes from its latest checkpoint; one
    with a different config is refused unless `overwrite` (start over) or `resume` (continue
    anyway). Everything is checked before the first compilation. With MODEL_STEPS > 0 the run
    is a prompt-then-model run of two phases (phases.py).
    """
    config = resolve_steps(spec, config)
    if config.then_model.steps:
        return train_two_phases(spec, config, config_text, overwrite, resume)
    [summary] = train_stack([(spec, config)], config_text, overwrite=overwrite, resume=resume)
    return summary


def check_only(
    spec: RunSpec,
    config: TrainConfig,
    config_text: str = "",
    overwrite: bool = False,
    resume: bool = False,
) -> dict:
    """`train --check`: what `train` checks before its first compilation (settings, steps,
    tasks and their data, labels, prompt file, devices, MODEL_DIR), nothing written and no
    weights read; returns the run as it would go."""
    from prompt_transfer.data import batches

    config = resolve_steps(spec, config)
    mesh = partitioning.make_mesh(spec.num_partitions)
    check_run(spec, config, mesh)
    batches.check_prepared(spec.task)
    if overwrite and spec.run_dir.holds_run():
        folder = "holds a run that --overwrite would clear"
    else:
        spec.run_dir.check_config(config_text, overwrite=False, resume=resume)
        folder = "holds a run that resumes" if spec.run_dir.holds_run() else "new"
    start = checkpoints.initial_step(spec.initial_checkpoint)
    return {
        "check": "ok",
        "task": spec.task,
        "model_dir": f"{spec.model_dir} ({folder})",
        "initial_checkpoint": spec.initial_checkpoint or "none (random init)",
        "steps": f"{start + 1}-{config.steps} ({config.steps - start} steps)",
        "batch_size": config.batch_size,
        "trainable": spec.trainable_regex,
        "prompt": f"{spec.prompt_length} x {spec.model_config.emb_dim}, "
        f"{config.prompt_init.method}",
        "devices": f"{mesh.devices.size} ({dict(mesh.shape)})",
    }


def resolve_steps(spec: RunSpec, config: TrainConfig) -> TrainConfig:
    """`config` with TRAIN_STEPS the step to stop at, counting on from the initial checkpoint's
    step as T5X does (TrainConfig.resolved); both macros set: TRAIN_STEPS_RELATIVE decides, as in
    T5X, said in a line."""
    check_numbers(spec, config)  # a wrong type or range first, in its own words
    start = checkpoints.initial_step(spec.initial_checkpoint)
    if config.relative_steps is not None and config.steps is not None:
        run_record.say(
            f"TRAIN_STEPS_RELATIVE={config.relative_steps} decides (as in T5X): the run stops at "
            f"step {start + config.relative_steps:,}; TRAIN_STEPS={config.steps} is not used"
        )
    return config.resolved(start)


def train_together(
    runs: Sequence[tuple[RunSpec, TrainConfig]], *, config_text: str = "", most: int = 0
) -> list[dict]:
    """Several runs on one frozen network; new ones that can be (`stack_key`) train in one
    stacked step, up to `most` at a time (0: no limit), each in its own MODEL_DIR as if
    trained alone (equal within float rounding). Runs a MODEL_DIR already holds resume alone,
    as do runs that stack with no other and prompt-then-model runs (both phases, `train`).
    Returns each run's summary, in order."""
    runs = [(spec, resolve_steps(spec, config)) for spec, config in runs]
    alone: list[list[int]] = []  # trained first, in order
    stacks: dict[str, list[int]] = {}
    two_phases: list[int] = []  # prompt-then-model runs: `train` drives both phases
    for i, (spec, config) in enumerate(runs):
        if config.then_model.steps:
            two_phases.append(i)
            continue
        key = None if spec.run_dir.holds_run() else stack_key(spec, config)
        if key is None:
            alone.append([i])
        else:
            stacks.setdefault(key, []).append(i)
    summaries: dict[int, dict] = {}
    for i in two_phases:
        summaries[i] = train(*runs[i], config_text=config_text, resume=True)
    for members in [*alone, *stacks.values()]:
        size = most or len(members)
        for chunk in (members[j : j + size] for j in range(0, len(members), size)):
            together = train_stack([runs[i] for i in chunk], config_text, resume=True)
            summaries.update(zip(chunk, together, strict=True))
    return [summaries[i] for i in range(len(runs))]


def stack_key(spec: RunSpec, config: TrainConfig) -> str | None:
    """What runs must share to train in one stacked step (None: this run cannot): everything
    but MODEL_DIR, task, seed, prompt initialisation and library kind. Only prompts stack (the
    network is shared and frozen), and not with early stopping (all stop together)."""
    prompt_only = spec.trainable_regex in (
        prompts.PROMPT_PATH,
        f"{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}",
    )
    transfer = config.prompt_init.transfer
    raced = config.prompt_init.method == "transfer" and transfer.strategy in RACES
    if (
        not prompt_only
        or not spec.prompt_length
        or config.early_stopping_patience
        or config.then_model.steps
        or spec.phase
        or raced  # it goes on from its race's last step, where no other run of a stack is
    ):
        return None
    return repr(  # a repr: a spec's feature lengths are a dict, which does not hash
        (
            dataclasses.replace(spec, model_dir="", task="", seed=0),
            dataclasses.replace(config, prompt_init=prompts.PromptInit(), library_kind=""),
        )
    )


def stackable(runs: Sequence[tuple[RunSpec, TrainConfig]]) -> bool:
    """Whether `train_together` trains all these runs in one stacked step."""
    keys = {stack_key(s, c) for s, c in runs}
    return (
        len(runs) > 1
        and len(keys) == 1
        and None not in keys
        and len({s.model_dir for s, _ in runs}) == len(runs)
        and not any(s.run_dir.holds_run() for s, _ in runs)
    )


def train_stack(
    runs: Sequence[tuple[RunSpec, TrainConfig]],
    config_text: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    with_final: bool = False,
) -> list:
    """Runs of one stack key (one run, or several new ones): checked, locked and logged each,
    started, fitted in one step, finished; returns each run's summary (`with_final`: each
    run's (summary, final prompt in the wide form))."""
    specs = [spec for spec, _ in runs]
    for spec, config in runs:
        check_numbers(spec, config)
    mesh = partitioning.make_mesh(specs[0].num_partitions)
    for spec, config in runs:
        check_run(spec, config, mesh)
    with contextlib.ExitStack() as held:
        for spec in specs:
            held.enter_context(spec.run_dir.lock())
            spec.run_dir.check_config(config_text, overwrite=overwrite, resume=resume)
        runtime.barrier("model_dir checked")  # process 0 cleared them when told to
        network = network_of(specs[0], mesh)
        fresh = [not spec.run_dir.holds_run() for spec in specs]
        for spec in specs:
            spec.run_dir.check_model(model_record(spec, network), create=True)
        try:
            logs = [held.enter_context(run_dir.ProgressLog(s.run_dir, c.steps)) for s, c in runs]
            starts = []
            for (spec, config), log in zip(runs, logs, strict=True):
                warn_random_network(spec, log)
                starts.append(starting_prompt(spec, config, network, mesh, log))
            results = fit(specs, runs[0][1], network, mesh, starts, logs, config_text)
        except UserError:
            # Refused before its first checkpoint (a transfer source that does not fit, say):
            # a new run leaves nothing behind that a corrected launch would trip over.
            for spec, new in zip(specs, fresh, strict=True):
                if new and not spec.run_dir.holds_checkpoint():
                    spec.run_dir.clear_run()
            raise
        summaries = [
            finish(spec, config, network, log, summary, final, config_text)
            for (spec, config), log, (summary, final) in zip(runs, logs, results, strict=True)
        ]
        if with_final:
            return [(s, final) for s, (_, final) in zip(summaries, results, strict=True)]
        return summaries


def train_two_phases(
    spec: RunSpec, config: TrainConfig, config_text: str, overwrite: bool, resume: bool
) -> dict:
    """Phase 1 (unless the boundary says it is done), the boundary, phase 2; returns phase 2's
    summary with phase 1's under "phase1"."""
    check_numbers(spec, config)
    check_run(spec, config, partitioning.make_mesh(spec.num_partitions))
    with spec.run_dir.lock():  # --overwrite clears both phases, a new config is refused
        spec.run_dir.check_config(config_text, overwrite=overwrite, resume=resume)
    runtime.barrier("two-phase model_dir checked")
    boundary = spec.run_dir.read_phases()
    first = None
    if boundary is None:
        [(first, final)] = train_stack(
            [phases.phase1_run(spec, config)], config_text, resume=resume, with_final=True
        )
        boundary = phases.write_boundary(spec, config, first, final)
    second_spec, second_config = phases.phase2_run(spec, config, boundary)
    with run_dir.ProgressLog(spec.run_dir, second_config.steps) as log:
        log.info(
            f"phase 2: the network trains ({config.then_model.trainable!r}, learning rate "
            f"{config.then_model.learning_rate:g}) with phase 1's prompt "
            f"{'frozen' if boundary['prompt'] == 'frozen' else 'training on'}, steps "
            f"{boundary['phase1_step'] + 1}-{second_config.steps}"
        )
    [summary] = train_stack([(second_spec, second_config)], config_text, resume=resume)
    if first is None:  # phase 1 finished in an earlier launch
        first = {"step": boundary["phase1_step"]}
    return dict(summary, phase1=first)


def network_of(spec: RunSpec, mesh):
    """The run's frozen network on `mesh`, stored in FROZEN_DTYPE (shared within a process)."""
    return weights.frozen_network(
        spec.model_config, spec.initial_checkpoint, mesh, spec.seed, spec.frozen_dtype
    )


def model_record(spec: RunSpec, network) -> dict:
    return {
        "fingerprint": library.model_fingerprint(network.params),
        "checkpoint": spec.initial_checkpoint,
        "vocabulary": spec.vocabulary,
    }


def warn_random_network(spec: RunSpec, log) -> None:
    """Prompt tuning against a random initialisation is a baseline, rarely what was meant."""
    if not spec.initial_checkpoint and spec.trainable_regex != ".*":
        log.info(
            "warning: INITIAL_CHECKPOINT_PATH is None, so the frozen network is a random "
            "initialisation and the prompt learns against it (intended for a baseline; "
            "otherwise set INITIAL_CHECKPOINT_PATH)"
        )


def finish(spec, config, network, log, summary: dict, final, config_text: str) -> dict:
    """The run's summary, its final prompt (wide form) added to LIBRARY_DIR when set."""
    if config.library_dir and isinstance(final, dict):  # a multi-task run: one per task
        last = (spec.run_dir.read_eval_history() or [{}])[-1]
        entries = {}
        for task, prompt in final.items():
            first = list(last.get("results", {}).get(task, {}).items())[:1]
            best = {"step": summary["step"], "metric": first[0][0], "value": first[0][1]}
            own = dict(summary, best=best if first else {"step": -1, "metric": None})
            run = dataclasses.replace(spec, task=task)
            entries[task] = add_to_library(run, config, network, prompt, own, config_text).id
        shown = ", ".join(f"{task} as {entry}" for task, entry in entries.items())
        log.info(f"added each task's prompt to the library {config.library_dir}: {shown}")
        summary["library_entries"] = entries
    elif config.library_dir and final is not None:
        entry = add_to_library(spec, config, network, final, summary, config_text)
        log.info(f"added the prompt to the library {config.library_dir} as {entry.id}")
        summary["library_entry"] = entry.id
    return summary


def add_to_library(spec, config, network, prompt, summary, config_text):
    """The run's final prompt as a library entry (a trained source, or a task embedding), with
    its deep part when the run had one."""
    best = summary["best"]
    prompt, deep = prompts.columns(prompt, spec.model_config)
    store = library.Library(config.library_dir)
    add = (
        lambda: store.add(
            prompt,
            deep=deep,
            task=spec.task,
            model=spec.model_name or "unnamed",
            model_fingerprint=library.model_fingerprint(network.params),
            steps=summary["step"] - checkpoints.initial_step(spec.initial_checkpoint),  # trained
            seed=spec.seed,
            score=best["value"] if best["step"] >= 0 else None,
            metric=best["metric"],
            kind=config.library_kind,
            config_hash=hashlib.sha256(config_text.encode()).hexdigest()[:16],
        )
    )
    return runtime.chief_first("library entry", add)  # the others find it stored
