"""What each of the flow's target rows is (`target_inits`): the RunSpec and TrainConfig changes
of every baseline and strategy on a target: where its prompt starts, what trains, and for the
*_then_model rows the split of TARGET_STEPS into the prompt's phase and the network's."""

from __future__ import annotations

from prompt_transfer.base import paths
from prompt_transfer.prompt import attention, prompts
from prompt_transfer.spot.config import (
    COMPOSE_STRATEGIES,
    MULTITASK_RUN,
    MULTITASK_STRATEGIES,
    RANDOM_INIT,
    THEN_MODEL,
    FlowConfig,
)
from prompt_transfer.stages.plan import SHARED_START
from prompt_transfer.trainer.config import ModelPhase
from prompt_transfer.transfer import initial, views


def target_inits(
    flow: FlowConfig, library_root, embedding_id: str, prompt_length: int
) -> dict[str, dict]:
    """{run name: RunSpec/TrainConfig changes (and "steps" where not TARGET_STEPS)} for the
    baselines and strategies on a target."""
    changes = {}
    for name in flow.baselines:
        if name == "prompt_then_model":  # the flow's random init, then the network
            random = next((n for n in RANDOM_INIT if n in flow.baselines), "sampled_vocab")
            changes[name] = _then_model(flow, {"prompt_init": prompts.PromptInit(random)})
            continue
        method = name if name != "model_tuning" else "random_uniform"
        changes[name] = {"prompt_init": prompts.PromptInit(method)}
        if name == "model_tuning":
            changes[name].update(
                trainable_regex=".*",
                prompt_length=0,
                deep_prompt=False,
                optimizer=flow.model_tuning_optimizer,
            )
    for strategy in flow.strategies:
        if strategy == "each_source":
            for source in flow.sources:
                init = initial.TransferInit(
                    strategy="single_source", library=str(library_root), source=source
                )
                changes[f"from_{source}"] = {
                    "prompt_init": prompts.PromptInit("transfer", transfer=init)
                }
            continue
        prompt_part = strategy.removesuffix(THEN_MODEL)
        found = _strategy_init(flow, prompt_part, library_root, embedding_id, prompt_length)
        changes[strategy] = found if prompt_part == strategy else _then_model(flow, found)
    return changes


def _then_model(flow: FlowConfig, changes: dict) -> dict:
    """A row's prompt run as phase 1 of a prompt-then-model run of TARGET_STEPS in all: phase 2
    trains every weight for THEN_MODEL_STEPS with model tuning's optimizer."""
    phase = ModelPhase(
        steps=flow.phase2_steps,
        trainable=".*",
        prompt=flow.then_model_prompt,
        learning_rate=flow.model_tuning_optimizer.learning_rate,
        optimizer=flow.model_tuning_optimizer,
    )
    return {**changes, "steps": flow.target_steps - flow.phase2_steps, "then_model": phase}


def _strategy_init(
    flow: FlowConfig, strategy: str, library_root, embedding_id: str, prompt_length: int
) -> dict:
    """The changes of a strategy's row (not each_source): where its prompt starts."""
    transfer = lambda init: {"prompt_init": prompts.PromptInit("transfer", transfer=init)}
    if strategy in MULTITASK_STRATEGIES:
        return transfer(
            initial.TransferInit(
                strategy="multitask",
                multitask_run=str(paths.path(flow.work_dir) / "sources" / MULTITASK_RUN),
                multitask_init=MULTITASK_STRATEGIES[strategy],
            )
        )
    if strategy in COMPOSE_STRATEGIES:
        how = strategy.removeprefix("compose_")
        changes = transfer(
            initial.TransferInit(
                strategy="compose",
                library=str(library_root),
                compose_sources=tuple(flow.compose_sources),
                compose_how=how,
            )
        )
        if how == "concat":  # the parts side by side: as long as all of them
            changes["prompt_length"] = prompt_length * len(flow.compose_sources)
        if how == "attention":
            changes["trainable_regex"] = attention.TRAINABLE
        return changes
    changes = transfer(
        initial.TransferInit(
            strategy=strategy,
            library=str(library_root),
            target_embedding=embedding_id,
            metric=flow.retrieval_metric,
            top_k=flow.top_k,
            candidate_steps=flow.candidate_steps,
            **_race(flow) if strategy in initial.RACES else {},
            mixture_steps=flow.source_steps,
            start=str(paths.path(flow.work_dir) / SHARED_START)
            if views.needs_start(flow.retrieval_metric)
            else "",
        )
    )
    if strategy == "attention":  # its module trains too; its sources stay fixed
        changes["trainable_regex"] = attention.TRAINABLE
    return changes


def _race(flow: FlowConfig) -> dict:
    """The race row's settings (the other rows keep TransferInit's defaults, so that a run
    recorded before the race existed is still the same run)."""
    return dict(
        race_sources=flow.race_sources,
        race_steps=flow.race_steps,
        race_seeds=flow.race_seeds,
        race_score=flow.race_score,
    )
