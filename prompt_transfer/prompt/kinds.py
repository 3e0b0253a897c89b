"""The kinds of prompt a run can have, each behind one protocol (`PromptKind`), chosen once.

  single     one prompt for every input (prompts.py): plain [P, E], or deep (P keys and values
             in every self-attention too)
  attention  each input's prompt mixed from frozen source prompts by a trained module
             (attention.py, ATTEMPT)
  multitask  each example's prompt composed for its task from a shared prompt and the task's
             part (multitask.py; MPT's distillation an option of it)

A run's kind comes from its configuration: `of_config` when it trains (MULTITASK_HOW, a transfer
strategy that mixes per input), `of_run` when a command reads it back (the pieces file the run's
start wrote under MODEL_DIR/transfer/; none: single). Nothing looks into a parameter tree to
find it. Deep or not is the prompt's width, not a kind: every kind carries a deep prompt's keys
and values where the run has them (prompts.widen; network/prompt_slots.py is where they enter).

A new kind is one module with a frozen dataclass that has the members below, and a line in
`_READ_BACK` (and `of_config`); the trainer starts every kind the same way (`begin`, with a
`Start`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from prompt_transfer.prompt import attention, multitask, prompts
from prompt_transfer.prompt.multitask import MultitaskError


class PromptKind(Protocol):
    name: str
    task_index: bool  # whether each batch says each example's task (data.BatchStream)

    def load(self, model_dir):
        """What a run folder keeps beside the prompt (the pieces the run started with; their
        `flat()` and `abstract()` are their parameters and logical axes), or None."""

    def found(self, model_dir) -> PromptKind | None:
        """This kind as the run in `model_dir` started it, or None when it is another kind."""

    def check(self, spec, config) -> None:
        """Refuse, in one line before any work, a run this kind cannot train."""

    def begin(self, context: Start) -> None:
        """A fresh run's start: keep what the kind needs beside the prompt (what `load` reads)."""

    def compose(self, params, network, own, tokens, task_index, config):
        """Inside the model (jitted): (network with any per-input deep prompt, the prompt that
        joins the encoder input: [P, E] or [B, P, E]); `network` is `params` without its
        prompt, `own` the run's own prompt."""

    def repeat(self, network: dict, times: int) -> dict:
        """`network` whose per-input deep prompts follow encodings repeated `times` times."""

    def teacher(self, params, network, task_index, config):
        """(network, prompt, weights) of a teacher the prompt is distilled from, or None."""

    def for_task(self, params: dict, k: int, config):
        """(kind, parameters) that score the k-th task of the run's mixture."""

    def tasks(self, model_dir) -> tuple[str, ...] | None:
        """The tasks with a prompt of their own (None: one prompt for all)."""

    def exported(self, spec, config, params, log) -> np.ndarray | dict | None:
        """What stands for the trained run in the library and the exports: one wide prompt
        [P, W], or {task: prompt}."""

    def refusal(self, model_dir) -> str | None:
        """Why the run's trained prompt alone is not the run (None: it is)."""


Start = prompts.Start  # what `begin` draws on
SINGLE: PromptKind = prompts.SINGLE
_READ_BACK = (attention.KIND, multitask.Multitask())  # kinds that keep pieces in the run folder


def of_config(config) -> PromptKind:
    """The kind a run of TrainConfig `config` trains."""
    init = config.prompt_init
    mixes = init.method == "transfer" and init.transfer.mixes_per_input
    if config.multitask.how and mixes:
        raise MultitaskError(
            f"strategy {init.transfer.strategy!r} mixes sources per input, which a multi-task "
            "run does not compose with; start its shared prompt from one prompt instead"
        )
    if config.multitask.how:
        return multitask.Multitask(distills=config.multitask.distills)
    return attention.KIND if mixes else SINGLE


def of_run(model_dir) -> PromptKind:
    """The kind of the run in `model_dir`, as its start recorded it."""
    return next(filter(None, (kind.found(model_dir) for kind in _READ_BACK)), SINGLE)
