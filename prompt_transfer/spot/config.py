"""What the SPoT flow does (`FlowConfig`): which tasks, how long each stage trains, which
strategies and baselines, how retrieval ranks the library.

How each run of the flow trains (model, lengths, batch, prompt, optimizer, partitions, ...) is
not here: it is the RunSpec and TrainConfig that gin/runs/prompt_tuning.gin binds, which the flow
copies into every run with that run's own folder, task and steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from prompt_transfer.trainer.train_state import OptimizerConfig

BASELINES = ("random_uniform", "sampled_vocab", "class_labels", "model_tuning")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """The flow's own settings; fields follow gin/runs/spot.gin's macros."""

    work_dir: str  # WORK_DIR: every run's folder, the library and the report, local or gs://
    sources: Sequence[str]  # SOURCES: their prompts make the library
    targets: Sequence[str]  # TARGETS
    source_steps: int = 1000  # SOURCE_STEPS; also a top_k_mixture run's steps on its mixture
    embedding_steps: int = 100  # EMBEDDING_STEPS: the short run whose prompt embeds a target
    target_steps: int = 1000  # TARGET_STEPS, evaluated every EVAL_PERIOD
    strategies: Sequence[str] = ("top_k_average", "best_of_top_k", "top_k_mixture")
    baselines: Sequence[str] = BASELINES
    metrics: Sequence[str] = ("cosine_avg_tokens", "cosine_per_token")  # SIMILARITY_METRICS
    retrieval_metric: str = "cosine_avg_tokens"  # the one the strategies rank sources by
    top_k: int = 2
    candidate_steps: int = 50  # CANDIDATE_STEPS: best_of_top_k's trial run per candidate
    # Model tuning trains every weight, with T5X's fine-tuning recipe rather than the prompt
    # runs' optimizer (MODEL_TUNING_LEARNING_RATE, model_tuning/train_state.OptimizerConfig).
    model_tuning_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3)
    seeds_per_run: int = 1  # SEEDS_PER_RUN: target runs repeat with seeds RANDOM_SEED, +1, ...
    stack_runs: int = 3  # STACK_RUNS: prompt runs trained together in one stacked step

    def seeds(self, first: int) -> list[int]:
        """Each target run's seeds, from RANDOM_SEED (`first`) on."""
        return [first + i for i in range(self.seeds_per_run)]

    @property
    def total_runs(self) -> int:
        """Runs the flow trains (or reuses): sources, task embeddings, and per target every
        baseline and strategy once per seed."""
        per_target = 1 + self.seeds_per_run * (len(self.baselines) + len(self.strategies))
        return len(self.sources) + len(self.targets) * per_target
