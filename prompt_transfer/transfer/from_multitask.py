"""A finished multi-task run as the start of a new task (MPT's and PEFT's inits): the shared
prompt alone, one source task's own prompt, or the shared prompt with the parts averaged."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from prompt_transfer.prompt import multitask
from prompt_transfer.prompt.multitask import MultitaskError, combine

# PEFT's MultitaskPromptTuningInit AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED
TRANSFER_INITS = ("average_source_tasks", "exact_source_task", "only_source_shared")


def read_trained(model_dir) -> tuple[np.ndarray, multitask.Pieces]:
    """(shared prompt [P, W], the trained parts) of a finished multi-task run."""
    trained = multitask.read_trained(model_dir)
    if trained is None:
        started = multitask.load(model_dir) is not None
        raise MultitaskError(
            f"MULTITASK_RUN={str(model_dir)!r} "
            + (
                "has not finished (no transfer/multitask_trained.npz); train it to its last step"
                if started
                else "is not a multi-task run (gin/runs/multitask_prompt.gin)"
            )
        )
    return trained


def transfer_start(model_dir, init: str, task: str = "") -> tuple[np.ndarray, dict]:
    """(wide prompt, report) a new task starts from, out of a finished multi-task run:
    `exact_source_task` is `task`'s own prompt; `only_source_shared` the shared prompt alone;
    `average_source_tasks` the shared prompt with the tasks' parts averaged (for mpt, as PEFT
    does: U and V averaged over the tasks, then multiplied)."""
    shared, pieces = read_trained(model_dir)
    report = {"sources": [str(model_dir)], "init": init, "how": pieces.how}
    if init == "only_source_shared":
        return shared, report
    if init == "exact_source_task":
        if task not in pieces.names:
            raise MultitaskError(
                f"MULTITASK_SOURCE_TASK={task!r} is not one of the run's tasks: "
                f"{', '.join(pieces.names)}"
            )
        k = pieces.names.index(task)
        every = np.asarray(combine(jnp.asarray(shared), pieces.parts))
        return every[k], dict(report, task=task)
    mean = {k: v.mean(0, keepdims=True) for k, v in pieces.parts.items()}
    return np.asarray(combine(jnp.asarray(shared), mean))[0], dict(report, tasks=list(pieces.names))
