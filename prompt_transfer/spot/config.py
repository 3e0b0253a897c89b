"""What the SPoT flow does (`FlowConfig`): which tasks, how long each stage trains, which
strategies and baselines, how retrieval ranks the library.

How each run of the flow trains (model, lengths, batch, prompt, optimizer, partitions, ...) is
not here: it is the RunSpec and TrainConfig that gin/runs/prompt_tuning.gin binds, which the flow
copies into every run with that run's own folder, task and steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from prompt_transfer.base import paths
from prompt_transfer.base.settings import setting
from prompt_transfer.trainer.train_state import OptimizerConfig
from prompt_transfer.transfer import initial, similarity, views

BASELINES = (
    "random_uniform",
    "sampled_vocab",
    "class_labels",
    "model_tuning",
    "prompt_then_model",
)
# The prompt run without transfer that transfer is judged against ("random init"), in order of
# preference: the first of these the flow runs (prompt_then_model's phase 1 starts from it too).
RANDOM_INIT = ("random_uniform", "sampled_vocab")
# What a target can start from in the flow: each ranks the library for the target (attention
# keeps the top k beside the target and mixes them per input); the compose_ rows build it from
# COMPOSE_SOURCES (transfer/initial.py's compose, one row per way), and each_source trains one
# row per source, from that source alone (`from_<source>`). The multitask_ rows start from one
# multi-task run over all the SOURCES (prompt/multitask.py), trained beside the sources:
# its tasks' parts averaged, or its shared prompt alone.
COMPOSE_STRATEGIES = ("compose_concat", "compose_weighted_sum", "compose_attention")
MULTITASK_STRATEGIES = {
    "multitask_average": "average_source_tasks",
    "multitask_shared": "only_source_shared",
}
# <strategy>_then_model: the strategy's prompt trains for TARGET_STEPS - THEN_MODEL_STEPS steps,
# then the network with it attached for THEN_MODEL_STEPS (ProMoT; trainer/phases.py). A prompt
# per input (attention) or per task (multitask_) is not carried into phase 2.
THEN_MODEL_FROM = (
    "top_1",
    "top_k_average",
    "best_of_top_k",
    "top_k_mixture",
    "race",
    "race_and_overlap",
    "compose_concat",
    "compose_weighted_sum",
)
THEN_MODEL = "_then_model"
STRATEGIES = (
    "top_1",
    "top_k_average",
    "best_of_top_k",
    "top_k_mixture",
    "race",
    "race_and_overlap",
    "attention",
    *COMPOSE_STRATEGIES,
    *MULTITASK_STRATEGIES,
    "each_source",
    *(f"{s}{THEN_MODEL}" for s in THEN_MODEL_FROM),
)
MULTITASK_RUN = "multitask"  # WORK_DIR/sources/multitask: the multitask_ rows' source run
# The flow compares prompts with prompts; a model's activations or scores rank sources only.
PROMPT_METRICS = similarity.PROMPT_METRICS
RETRIEVAL_METRICS = (
    *similarity.METRICS,
    *similarity.INPUT_METRICS,
    *views.VIEW_METRICS,
    "zero_shot",
    "zero_shot_loss",
)


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """The flow's own settings; fields follow gin/runs/spot.gin's macros."""

    work_dir: str = setting(
        valid=paths.folder_problem, macro="WORK_DIR"
    )  # every run, the library and the report
    sources: Sequence[str] = setting(non_empty=True, macro="SOURCES")  # make the library
    targets: Sequence[str] = setting(non_empty=True, macro="TARGETS")
    # SOURCE_STEPS; also a top_k_mixture run's steps on its mixture
    source_steps: int = setting(1000, least=1, macro="SOURCE_STEPS")
    # EMBEDDING_STEPS: the short run whose prompt embeds a target
    embedding_steps: int = setting(100, least=1, macro="EMBEDDING_STEPS")
    target_steps: int = setting(1000, least=1, macro="TARGET_STEPS")  # evaluated every EVAL_PERIOD
    strategies: Sequence[str] = setting(
        ("top_k_average", "best_of_top_k", "top_k_mixture"),
        one_of=STRATEGIES,
        non_empty=True,
        macro="STRATEGIES",
    )
    baselines: Sequence[str] = setting(
        BASELINES[:4], one_of=BASELINES, non_empty=True, macro="BASELINES"
    )
    metrics: Sequence[str] = setting(
        ("cosine_avg_tokens", "cosine_per_token"),
        one_of=PROMPT_METRICS,
        non_empty=True,
        macro="SIMILARITY_METRICS",
    )
    # the one the strategies rank sources by
    retrieval_metric: str = setting(
        "trained_blocks_cosine_avg_tokens", one_of=RETRIEVAL_METRICS, macro="RETRIEVAL_METRIC"
    )
    # STUDY_FILE: a study.json (`prompt-transfer study`); the report says how its retrieval
    # metric predicted transfer there and whether each target's first source was the best
    study_file: str | None = setting(None, macro="STUDY_FILE")
    top_k: int = setting(2, least=1, macro="TOP_K")
    # COMPOSE_SOURCES: the sub-tasks (among SOURCES) whose prompts the compose_ rows combine
    compose_sources: Sequence[str] = setting((), macro="COMPOSE_SOURCES")
    # MULTITASK_HOW, MULTITASK_RANK: how the multitask_ rows' run over the sources composes its
    # tasks' prompts (its prompts are PROMPT_LENGTH long, as the targets')
    multitask_how: str = setting("mpt", one_of=("add", "mpt"), macro="MULTITASK_HOW")
    multitask_rank: int = setting(1, least=1, macro="MULTITASK_RANK")
    # CANDIDATE_STEPS: best_of_top_k's trial run per candidate
    candidate_steps: int = setting(50, least=1, macro="CANDIDATE_STEPS")
    # RACE_SOURCES, RACE_STEPS, RACE_SEEDS, RACE_SCORE: the race rows' sources (the first by
    # RETRIEVAL_METRIC; 0: all), each rung's steps, the runs per source that decide, and by what
    race_sources: int = setting(0, least=0, macro="RACE_SOURCES")
    race_steps: int = setting(20, least=1, macro="RACE_STEPS")
    race_seeds: int = setting(1, least=1, macro="RACE_SEEDS")
    race_score: str = setting("metric", one_of=initial.RACE_SCORES, macro="RACE_SCORE")
    # Model tuning trains every weight, with T5X's fine-tuning recipe rather than the prompt
    # runs' optimizer (MODEL_TUNING_LEARNING_RATE, model_tuning/train_state.OptimizerConfig).
    model_tuning_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3)
    # THEN_MODEL_STEPS: of a prompt_then_model or <strategy>_then_model row's TARGET_STEPS, those
    # of phase 2, where the network trains with model tuning's optimizer (0: half of them), the
    # prompt frozen or training on (THEN_MODEL_PROMPT)
    then_model_steps: int = setting(0, least=0, macro="THEN_MODEL_STEPS")
    then_model_prompt: str = setting(
        "frozen", one_of=("frozen", "trains"), macro="THEN_MODEL_PROMPT"
    )
    # SEEDS_PER_RUN: target runs repeat with seeds RANDOM_SEED, +1, ...
    seeds_per_run: int = setting(1, least=1, macro="SEEDS_PER_RUN")
    # STACK_RUNS: prompt runs trained together in one stacked step
    stack_runs: int = setting(3, least=1, macro="STACK_RUNS")

    @property
    def phase2_steps(self) -> int:
        """Phase 2's steps of a then_model row (THEN_MODEL_STEPS, or half of TARGET_STEPS)."""
        return self.then_model_steps or self.target_steps // 2

    def seeds(self, first: int) -> list[int]:
        """Each target run's seeds, from RANDOM_SEED (`first`) on."""
        return [first + i for i in range(self.seeds_per_run)]

    @property
    def total_runs(self) -> int:
        """Runs the flow trains (or reuses): sources, task embeddings, and per target every
        baseline and strategy once per seed."""
        rows = len(self.baselines) + sum(
            len(self.sources) if s == "each_source" else 1 for s in self.strategies
        )
        per_target = 1 + self.seeds_per_run * rows
        return len(self.sources) + self.multitask_runs + len(self.targets) * per_target

    @property
    def races(self) -> bool:
        """Whether a row races the sources (race, race_and_overlap, or their _then_model)."""
        return any(s.removesuffix(THEN_MODEL) in initial.RACES for s in self.strategies)

    @property
    def multitask_runs(self) -> int:
        """1 when a multitask_ row needs the multi-task run over the sources, else 0."""
        return int(any(s in MULTITASK_STRATEGIES for s in self.strategies))


def changes_network(run: str) -> bool:
    """Whether a target row trains the network (model tuning, prompt then model), so that the
    report measures what the network forgets."""
    return run == "model_tuning" or run.endswith(THEN_MODEL)
