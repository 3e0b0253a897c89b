"""The checks a SPoT flow and a study share before any work: their tasks, the macros they set
for each run, and what `--check` prints."""

from __future__ import annotations

from prompt_transfer.base import errors
from prompt_transfer.configure import gin_utils
from prompt_transfer.data import batches
from prompt_transfer.stages.plan import Plan
from prompt_transfer.stages.runs import FlowError
from prompt_transfer.trainer import race
from prompt_transfer.trainer.config import RunSpec


def checked(plan: Plan, spec: RunSpec, more: dict) -> dict:
    """`--check` of the flow or the study (`plan`), after their own checks: every task's
    data is where it is read from, the frozen checkpoint's step is read; nothing is written.
    Returns what the command would do."""
    from prompt_transfer.network import checkpoints

    for task in (*plan.sources, *plan.targets):
        batches.check_prepared(task)
    start = checkpoints.initial_step(spec.initial_checkpoint)
    return {
        "check": "ok",
        "work_dir": plan.work_dir,
        "initial_checkpoint": f"{spec.initial_checkpoint or 'none (random init)'} (step {start})",
        "sources": ", ".join(plan.sources),
        "targets": ", ".join(plan.targets),
        "steps": f"sources {plan.source_steps}, task embeddings {plan.embedding_steps}, "
        f"targets {plan.target_steps}, each after step {start}",
        **{k: ", ".join(v) for k, v in more.items()},
    }


def check_tasks(plan: Plan, spec: RunSpec) -> None:
    """Refuse, before any work, a source or target (of the flow's or a study's `plan`)
    that is not a registered task, a task named twice, and a target its races cannot score by
    RACE_SCORE."""
    spec.register_tasks()
    for macro, tasks in (("SOURCES", plan.sources), ("TARGETS", plan.targets)):
        for task in tasks:
            try:
                batches.get_task(task)
            except errors.UserError as e:
                raise FlowError(f"{macro}={list(tasks)!r}: {errors.one_line(e)}") from e
        twice = sorted({t for t in tasks if list(tasks).count(t) > 1})
        if twice:
            raise FlowError(f"{macro}={list(tasks)!r} names {', '.join(twice)} twice")
    for task in plan.targets if plan.races else ():
        try:
            race.check_score(task, plan.race_score)
        except errors.UserError as e:
            raise FlowError(f"TARGETS={list(plan.targets)!r}: {errors.one_line(e)}") from e


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
