"""The training loop: steps, and the hooks that log, save and evaluate between them.

The loop holds no policy of its own: what a log line, a save or an evaluation does is a hook
(fit.py builds them). It syncs with the host only at hook points: step metrics stay on the
device until a window of them is summarised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np

from prompt_transfer.base.errors import Diverged, Preempted


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the hooks run: every `log`, `save`, `evaluate` steps (0: never) counted from
    `start` (the initial checkpoint's step, where the run's count begins, as T5X counts its
    periods from the first step), and at `total`, the step the run stops at."""

    total: int
    log: int
    save: int
    evaluate: int = 0
    start: int = 0

    def due(self, done: int, period: int) -> bool:
        return bool(period) and ((done - self.start) % period == 0 or done == self.total)


@dataclasses.dataclass(frozen=True)
class Hooks:
    log: Callable[[int, dict, int], None]  # (step, window means, steps in the window)
    save: Callable[[object, int], None]  # (state, data position)
    evaluate: Callable[[object, int], bool]  # (state, step) -> stop early?
    evaluated: Callable[[int], bool] = lambda step: True  # whether `step` was evaluated


def summarize(window: list[Mapping], first_step: int, last_step: int) -> dict:
    """Means of a window of step metrics (one host transfer); a NaN/inf loss stops the run.

    Metrics of runs stacked in one step ([K] each) give [K] means, one per run."""
    fetched = jax.device_get(window)
    losses = np.asarray([m["loss"] for m in fetched]).reshape(len(fetched), -1)
    finite = np.isfinite(losses).all(1)
    if not finite.all():
        bad = first_step + int(np.flatnonzero(~finite)[0])
        raise Diverged(
            f"loss became NaN or inf at step {bad} (window {first_step}-{last_step}); "
            "the last good checkpoint is kept in MODEL_DIR"
        )
    means = {k: np.mean(np.stack([m[k] for m in fetched]), 0) for k in fetched[0]}
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in means.items()}


@contextlib.contextmanager
def sigterm_flag() -> Iterator[Callable[[int], bool]]:
    """`preempted(step)`: whether SIGTERM (how TPU and spot VMs announce pre-emption) arrived
    while the loop runs; the loop saves and stops at that step.

    In a multi-process job the processes must stop at the same step, so there the answer is
    JAX's preemption sync point: a SIGTERM to any process makes all of them stop at one step
    they agree on. Outside the main thread of a single process signals cannot be caught and
    the flag stays down."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if not jax.distributed.is_initialized():  # e.g. a TPU pod that JAX joined itself
            warnings.warn(
                "this multi-process job did not start jax.distributed, so a SIGTERM stops it "
                "without saving; launch with --coordinator_address=... or "
                "PROMPT_TRANSFER_DISTRIBUTED=1 (launch/tpu_pod.sh sets it)",
                stacklevel=3,
            )
        yield multihost_utils.reached_preemption_sync_point
        return
    raised = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield lambda step: raised.is_set()
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: raised.set())
    try:
        yield lambda step: raised.is_set()
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(state, fixed, step_fn, stream, rng, schedule: Schedule, hooks: Hooks):
    """Train from `state.step` to `schedule.total`; returns (state, stopped_early).

    `step_fn(state, fixed, batch, rng) -> (state, metrics)` is the compiled step; `stream`
    yields batches and knows its `position` (saved with each checkpoint, so a resumed run
    reads the data where the saved one stopped).
    """
    start = int(np.max(state.step))  # runs stacked in one step share their step count
    if (
        start > schedule.start
        and schedule.due(start, schedule.evaluate)
        and not hooks.evaluated(start)
    ):
        # Pre-empted at an evaluation step, it saved without evaluating: evaluate now.
        if hooks.evaluate(state, start):
            return state, True
    window, first = [], start + 1
    with sigterm_flag() as preempted:
        for step in range(start, schedule.total):
            state, metrics = step_fn(state, fixed, next(stream), rng)
            window.append(metrics)
            done = step + 1
            stopping = preempted(done)
            if stopping or any(
                schedule.due(done, p) for p in (schedule.log, schedule.save, schedule.evaluate)
            ):
                hooks.log(done, summarize(window, first, done), len(window))
                window, first = [], done + 1
            # Evaluate before saving: a run killed during an evaluation resumes from the save
            # before it and evaluates this step again, so no evaluation is ever lost.
            stop_early = (
                not stopping
                and schedule.due(done, schedule.evaluate)
                and hooks.evaluate(state, done)
            )
            if stopping or stop_early or schedule.due(done, schedule.save):
                hooks.save(state, stream.position)
            if stopping:
                raise Preempted(
                    f"SIGTERM at step {done}: saved checkpoint_{done}; "
                    "run the same command again to resume"
                )
            if stop_early:
                return state, True
    return state, False
