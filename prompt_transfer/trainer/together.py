"""Runs trained together: several prompts on one frozen network in one stacked step.

A SPoT flow trains dozens of prompts on one frozen model (the sources; a target's baselines,
strategies and seeds). `train_together` trains the new ones that can share a step as one
stacked state (state.stacked_train_step: vmap over the runs, the network unmapped), each on its
own batches, with its own optimizer state, dropout key, MODEL_DIR, checkpoints, evaluations, log
and library entry, so that each ends where it would have alone (within float rounding; see
tests/test_train.py). On 2 CPU cores the step is compute-bound and stacking gains little
(benchmarks/many_prompts.py at the demo's shapes: 1.13x the prompt-steps per second for K = 3,
0.98x for K = 9), hence the flow's STACK_RUNS = 3; an accelerator that a small batch leaves
idle is where a larger K should pay (not yet measured).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_transfer import data, partitioning, prompts, t5
from prompt_transfer.errors import UserError
from prompt_transfer.models import EncoderDecoderModel
from prompt_transfer.trainer import loop, run_dir, weights
from prompt_transfer.trainer.entry import (
    RunSpec,
    TrainConfig,
    add_to_library,
    check_numbers,
    check_run,
    initial_prompt_of,
    model_record,
    network_of,
    open_stream,
    run_hooks,
    train,
    warn_random_network,
)
from prompt_transfer.trainer.state import (
    compile_stacked_step,
    create_state,
    learning_rate_schedule,
    make_optimizer,
    merge,
    stack_states,
    unstack_state,
)


def train_together(
    runs: Sequence[tuple[RunSpec, TrainConfig]], *, config_text: str = "", most: int = 0
) -> list[dict]:
    """Several runs on one frozen network; new ones that can be (`stackable`) train in one
    stacked step, up to `most` at a time (0: no limit). Each stacked run's prompt moves on
    its own batches with its own optimizer state (state.stacked_train_step), and each keeps
    its own MODEL_DIR, checkpoints, evaluations, log and library entry, as if trained alone
    (equal within float rounding). Runs a MODEL_DIR already holds resume alone through
    `train`, as do runs that stack with no other. Returns each run's summary, in order."""
    summaries: dict[int, dict] = {}
    groups: dict[str, list[int]] = {}
    for i, (spec, config) in enumerate(runs):
        key = None if run_dir.holds_run(spec.model_dir) else _stack_key(spec, config)
        if key is None:
            summaries[i] = train(spec, config, config_text=config_text, resume=True)
        else:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        size = most or len(members)
        for chunk in (members[j : j + size] for j in range(0, len(members), size)):
            if len(chunk) == 1:
                summaries[chunk[0]] = train(*runs[chunk[0]], config_text=config_text, resume=True)
            else:
                together = _train_stacked([runs[i] for i in chunk], config_text)
                summaries.update(zip(chunk, together, strict=True))
    return [summaries[i] for i in range(len(runs))]


def _stack_key(spec: RunSpec, config: TrainConfig) -> str | None:
    """What runs must share to train in one stacked step (None: this run cannot): everything
    but MODEL_DIR, task, seed, prompt initialisation and library kind. Only prompts stack (the
    network is shared and frozen), and not with early stopping (all stop together)."""
    prompt_only = spec.trainable_regex in (
        prompts.PROMPT_PATH,
        f"{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}",
    )
    if not prompt_only or not spec.prompt_length or config.early_stopping_patience:
        return None
    return repr(  # a repr: a spec's feature lengths are a dict, which does not hash
        (
            dataclasses.replace(spec, model_dir="", task="", seed=0),
            dataclasses.replace(config, prompt_init=prompts.PromptInit(), library_kind=""),
        )
    )


def stackable(runs: Sequence[tuple[RunSpec, TrainConfig]]) -> bool:
    """Whether `train_together` trains all these runs in one stacked step."""
    keys = {_stack_key(s, c) for s, c in runs}
    return (
        len(runs) > 1
        and len(keys) == 1
        and None not in keys
        and len({s.model_dir for s, _ in runs}) == len(runs)
        and not any(run_dir.holds_run(s.model_dir) for s, _ in runs)
    )


def _train_stacked(runs: Sequence[tuple[RunSpec, TrainConfig]], config_text: str) -> list[dict]:
    """`train` for new runs of one stack key: checked, locked and logged each, trained in one
    stacked step; returns each run's summary."""
    specs, configs = [s for s, _ in runs], [c for _, c in runs]
    for spec, config in runs:
        check_numbers(spec, config)
    mesh = partitioning.make_mesh(specs[0].num_partitions)
    for spec, config in runs:
        check_run(spec, config, mesh)
    with contextlib.ExitStack() as stack:
        for spec in specs:
            stack.enter_context(run_dir.lock(spec.model_dir))
            run_dir.check_model_dir(spec.model_dir, config_text, overwrite=False, resume=True)
        network = network_of(specs[0], mesh)
        for spec in specs:
            run_dir.check_model(spec.model_dir, model_record(spec, network), create=True)
        try:
            logs = [stack.enter_context(run_dir.ProgressLog(s.model_dir, c.steps)) for s, c in runs]
            for spec, log in zip(specs, logs, strict=True):
                warn_random_network(spec, log)
            starts = [
                initial_prompt_of(s, c, network, mesh, log)
                for (s, c), log in zip(runs, logs, strict=True)
            ]
            results = _fit_together(specs, configs[0], network, mesh, starts, logs, config_text)
        except UserError:
            for spec in specs:  # a refused group leaves nothing behind, as a refused run does
                if not run_dir.holds_checkpoint(spec.model_dir):
                    run_dir.clear_run(spec.model_dir)
            raise
        summaries = []
        for (spec, config), log, (summary, final) in zip(runs, logs, results, strict=True):
            if config.library_dir and final is not None:
                entry = add_to_library(spec, config, network, final, summary, config_text)
                log.info(f"added the prompt to the library {config.library_dir} as {entry.id}")
                summary["library_entry"] = entry.id
            summaries.append(summary)
    return summaries


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


def _fit_together(specs, config, network, mesh, starts, logs, config_text):
    """`fit` for new runs in one stacked step; returns [(summary, final prompt)] per run."""
    optimizer = make_optimizer(config.optimizer)
    placed = []
    for spec, start in zip(specs, starts, strict=True):
        prompt, deep = prompts.narrow(start, spec.model_config)
        placed.append(weights.place(network, prompt, spec.trainable_regex, mesh, deep))
    fixed, fixed_shardings = placed[0][1], placed[0][2]
    states = [create_state(trainable, optimizer, mesh) for trainable, _, _ in placed]
    stores = [run_dir.CheckpointStore(s.model_dir, config.keep_checkpoints) for s in specs]
    bests = [run_dir.BestTracker.load(s.model_dir) for s in specs]
    streams = [open_stream(s, config) for s in specs]
    model = EncoderDecoderModel(network.module)
    step = compile_stacked_step(
        model,
        optimizer,
        learning_rate_schedule(config.optimizer),
        config.num_microbatches,
        mesh,
        jax.tree.map(lambda x: x.sharding, states[0]),
        fixed_shardings,
    )
    rngs = jnp.stack([jax.random.PRNGKey(s.seed) for s in specs])
    hooks = []
    for k, (spec, log) in enumerate(zip(specs, logs, strict=True)):
        log.info(
            f"trainable {t5.param_count(placed[k][0]):,} parameters, trained together with "
            f"{len(specs) - 1} other run(s) in one stacked step"
        )
        run_dir.write_config(spec.model_dir, config_text)
        hooks.append(run_hooks(spec, config, model, fixed, stores[k], bests[k], log, streams[k]))
    schedule = loop.Schedule(
        config.steps, config.log_period, config.save_period, config.eval_period
    )
    try:
        state, _ = loop.run(
            stack_states(states),
            fixed,
            lambda state, fixed, batch, _: step(state, fixed, batch, rngs),
            _StackedStream(streams),
            None,
            schedule,
            _each(hooks),
        )
    finally:
        for store in stores:
            store.close()
    results = []
    for k, spec in enumerate(specs):
        run = unstack_state(state, k)
        summary = {
            "step": int(run.step),
            "best": dataclasses.asdict(bests[k]),
            "stopped_early": False,
        }
        results.append((summary, prompts.wide_of(merge(fixed, run.trainable), spec.model_config)))
    return results


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
        return False  # no early stopping in a group (see `_stack_key`): all go to the end

    def evaluated_each(n: int) -> bool:
        return all(h.evaluated(n) for h in hooks)

    return loop.Hooks(log_each, save_each, evaluate_each, evaluated_each)
