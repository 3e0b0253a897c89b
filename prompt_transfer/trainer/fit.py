"""The fit: K >= 1 runs on one frozen network, from their starting prompts to their last step.

One run is the case K = 1: its own step (train_state.LazyStep), its own early stopping. K > 1
runs share one stacked step (train_state.compile_stacked_step: vmap over the runs, the network
unmapped), each on its own batches with its own optimizer state and dropout key, and each keeps
its own MODEL_DIR, checkpoints, evaluations and log, so that each ends where it would have alone
(within float rounding; tests/test_train.py). The prompt comes in and goes out in its wide form
(prompts.widen); `weights.place` joins it to the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_transfer.data import batches as data
from prompt_transfer.model import seqio_eval
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import checkpoints, t5
from prompt_transfer.prompt import kinds
from prompt_transfer.trainer import loop, run_dir, run_record, saving, weights
from prompt_transfer.trainer.config import RunSpec, TrainConfig, data_shards
from prompt_transfer.trainer.train_state import (
    LazyStep,
    compile_stacked_step,
    create_state,
    learning_rate_schedule,
    make_optimizer,
    merge,
    stack_states,
    unstack_state,
)


def fit(
    specs: Sequence[RunSpec],
    config: TrainConfig,
    network,
    mesh,
    starts: Sequence[np.ndarray | None],
    logs: Sequence[run_dir.ProgressLog],
    config_text: str = "",
) -> list[tuple[dict, np.ndarray | None]]:
    """Train each run from its starting prompt (`starts`, wide form; None: no prompt),
    resuming from its MODEL_DIR's latest checkpoint when there is one; returns
    [(summary, final prompt in the wide form, or None)] per run (a multi-task run's final is
    {task: its composed prompt}). Runs of one call share every
    setting of `config` but where they live, what they start from and their library entry."""
    optimizer = make_optimizer(config.optimizer)
    kind = kinds.of_config(config)
    placed = [
        weights.place(network, start, spec.trainable_regex, mesh, kind.load(spec.model_dir))
        for spec, start in zip(specs, starts, strict=True)
    ]
    fixed, fixed_shardings = placed[0][1], placed[0][2]
    model = EncoderDecoderModel(network.module, kind=kind)
    with contextlib.ExitStack() as open_stores:
        states, streams, hooks, bests = [], [], [], []
        for spec, log, (trainable, _, _) in zip(specs, logs, placed, strict=True):
            store = open_stores.enter_context(
                saving.CheckpointStore(spec.model_dir, config.keep_checkpoints)
            )
            log.info(_trainable_line(trainable, fixed, len(specs)))
            state, stream = _open(
                spec, config, create_state(trainable, optimizer, mesh), store, log
            )
            spec.run_dir.write_config(run_record.operative_config(config_text, spec, config))
            run_record.write(spec, config, trainable)
            bests.append(run_dir.BestTracker.load(spec.run_dir.root))
            hooks.append(run_hooks(spec, config, model, fixed, store, bests[-1], log, stream))
            states.append(state)
            streams.append(stream)
        schedule = loop.Schedule(
            config.steps,
            config.log_period,
            config.save_period,
            config.eval_period,
            start=checkpoints.initial_step(specs[0].initial_checkpoint),
        )
        runner = _Runner(specs, config, model, optimizer, mesh, fixed_shardings)
        state, stopped_early = loop.run(
            runner.state(states),
            fixed,
            runner.step(states),
            runner.stream(streams),
            runner.rng(),
            schedule,
            runner.hooks(hooks),
        )
    results = []
    for k, spec in enumerate(specs):
        run = runner.unstack(state, k)
        summary = {
            "step": int(run.step),
            "best": dataclasses.asdict(bests[k]),
            "stopped_early": stopped_early,
        }
        final = kind.exported(spec, config, merge(fixed, run.trainable), logs[k])
        results.append((summary, final))
    return results


def _trainable_line(trainable: dict, fixed: dict, runs: int) -> str:
    line = (
        f"trainable {t5.param_count(trainable):,} parameters "
        f"({len(jax.tree.leaves(trainable))} arrays), fixed {t5.param_count(fixed):,}"
    )
    if runs > 1:
        line += f", trained together with {runs - 1} other run(s) in one stacked step"
    return line


def _open(spec, config, state, store, log):
    """(state, data stream) of a run: from its latest checkpoint and saved iterator when
    MODEL_DIR holds one, else `state` and the data's first batch."""
    store.set_aside_damaged(log.info)  # a damaged newest checkpoint: go on from a whole one
    position, restored = 0, store.latest_step() is not None
    start = checkpoints.initial_step(spec.initial_checkpoint)  # T5X's count goes on from it
    if restored:
        run_record.check_counted(spec.model_dir, start)
        state, position = store.restore(state)
        log.info(f"resumed from checkpoint_{int(state.step)} (data position {position})")
    elif spec.phase == 2:  # phase 2 counts and reads on from phase 1's end (phases.py)
        boundary = spec.run_dir.read_phases()
        state = _at_step(state, boundary["phase1_step"])
        position = boundary["phase1_step"] - start  # one batch a step
    else:
        state = _at_step(state, start)
        log.info(
            f"steps {start + 1:,}-{config.steps:,}: {config.steps - start:,} steps"
            + (f" (counting on from INITIAL_CHECKPOINT_PATH's step {start:,})" if start else "")
        )
    saved = store.data_state(int(state.step)) if position and restored else None
    stream = open_stream(spec, config, position, saved)
    if stream.restored:
        log.info(f"data iterator restored at batch {position} (no replay)")
    return state, stream


def _at_step(state, step: int):
    """`state` with its step counter at `step` (a run counts on from its checkpoint's step)."""
    if not step:
        return state
    value = jnp.asarray(step, state.step.dtype)
    return state.replace(step=jax.device_put(value, state.step.sharding))


class _Runner:
    """How K runs become the loop's one state, step, stream and hooks: K = 1 is the run itself;
    K > 1 stacks them (every leaf gains a leading K axis) behind the vmapped step."""

    def __init__(self, specs, config, model, optimizer, mesh, fixed_shardings):
        self.specs, self.stacked = specs, len(specs) > 1
        self.recipe = (
            model,
            optimizer,
            learning_rate_schedule(config.optimizer),
            config.num_microbatches,
            mesh,
        )
        self.fixed_shardings = fixed_shardings

    def state(self, states):
        return stack_states(states) if self.stacked else states[0]

    def step(self, states):
        if not self.stacked:
            return LazyStep(*self.recipe, states[0], self.fixed_shardings)
        shardings = jax.tree.map(lambda x: x.sharding, states[0])
        step = compile_stacked_step(*self.recipe, shardings, self.fixed_shardings)
        rngs = jnp.stack([jax.random.PRNGKey(s.seed) for s in self.specs])
        return lambda state, fixed, batch, _: step(state, fixed, batch, rngs)

    def stream(self, streams):
        return _StackedStream(streams) if self.stacked else streams[0]

    def rng(self):
        return None if self.stacked else jax.random.PRNGKey(self.specs[0].seed)

    def hooks(self, hooks):
        return _each(hooks) if self.stacked else hooks[0]

    def unstack(self, state, k: int):
        return unstack_state(state, k) if self.stacked else state


class _StackedStream:
    """The runs' batch streams as one: each next() stacks one batch of every run."""

    def __init__(self, streams: Sequence[data.BatchStream]):
        self.streams = streams

    def __next__(self) -> dict:
        batches = [next(s) for s in self.streams]
        return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    @property
    def position(self) -> int:
        return self.streams[0].position  # every run has read as many batches


def _each(hooks: Sequence[loop.Hooks]) -> loop.Hooks:
    """The loop's hooks for a stacked state: each run's own hooks on its slice."""

    def log_each(n: int, means: dict, steps: int) -> None:
        for k, h in enumerate(hooks):
            h.log(n, {m: v[k] for m, v in means.items()}, steps)

    def save_each(state, position: int) -> None:
        for k, h in enumerate(hooks):
            h.save(unstack_state(state, k), position)

    def evaluate_each(state, n: int) -> bool:
        for k, h in enumerate(hooks):
            h.evaluate(unstack_state(state, k), n)
        return False  # no early stopping in a stack (train.stack_key): all go to the end

    def evaluated_each(n: int) -> bool:
        return all(h.evaluated(n) for h in hooks)

    return loop.Hooks(log_each, save_each, evaluate_each, evaluated_each)


def open_stream(
    spec: RunSpec, config: TrainConfig, position: int = 0, state_file: str | None = None
) -> data.BatchStream:
    """The run's batches from data `position` (its saved iterator in `state_file`, if any):
    this process's rows of each global batch, read from its own data shards."""
    shards, processes, me = data_shards(config), jax.process_count(), jax.process_index()
    mine = shards // processes
    return data.BatchStream(
        spec.task,
        spec.feature_lengths,
        config.batch_size // processes,
        spec.seed,
        position,
        num_shards=shards,
        shards=tuple(range(me * mine, (me + 1) * mine)),
        state_file=state_file,
        task_index=kinds.of_config(config).task_index,
    )


def run_hooks(spec, config, model, fixed, store, best, log, stream) -> loop.Hooks:
    """What the loop does at log, save and evaluation points."""
    evaluator = (
        seqio_eval.TaskEvaluator(
            model, spec.task, config.eval_split, spec.feature_lengths, config.eval_batch_size
        )
        if config.eval_period
        else None
    )

    def log_window(step: int, means: dict, steps_in_window: int) -> None:
        log.train_metrics(step, means, config.batch_size, spec.feature_lengths, steps_in_window)

    def save(state, position: int) -> None:
        store.save(state, position, weights.input_prompt(state, fixed), stream)

    def evaluate(state, step: int) -> bool:
        results = evaluator.evaluate(merge(fixed, state.trainable), step)
        name, value = seqio_eval.main_metric(results)
        log.eval_metrics(
            step, results, name, value, evaluator.predictions, evaluator.labels,
            evaluator.likelihoods(),
        )  # fmt: skip
        if best.update(step, name, value):
            store.save_best(state, weights.input_prompt(state, fixed), best)
        patience = config.early_stopping_patience
        if patience and best.evals_since_best >= patience:
            log.info(
                f"early stopping at step {step}: no better {name} for "
                f"{best.evals_since_best} evaluations"
            )
            return True
        return False

    def evaluated(step: int) -> bool:
        return not evaluator or any(h["step"] == step for h in spec.run_dir.read_eval_history())

    return loop.Hooks(log_window, save, evaluate, evaluated)
