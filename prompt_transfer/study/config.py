"""What a transferability study measures (`StudyConfig`, bound by gin/runs/study.gin).

How each of its runs trains is the RunSpec and TrainConfig of gin/runs/prompt_tuning.gin, as in
the SPoT flow; the study shares the flow's macros (WORK_DIR, SOURCES, TARGETS, SEEDS_PER_RUN,
the step counts, SIMILARITY_METRICS, RETRIEVAL_METRIC) so that a flow's gin file reads as a
study's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from prompt_transfer.base import paths
from prompt_transfer.base.settings import setting
from prompt_transfer.trainer import race
from prompt_transfer.transfer import initial, similarity, views

# Source prompts are compared with the target's task embedding by these; `zero_shot` (each
# source used as is on the target) is always measured and ranked too.
METRICS = (*similarity.METRICS, *similarity.INPUT_METRICS)
BASELINES = ("sampled_vocab", "random_uniform")
# The races' seed is RANDOM_SEED + this, which no judged run has (SEEDS_PER_RUN stays below it)
# and which more seeds leave as it is, so a rerun reads the races back.
RACE_SEED_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Every source against every target: single-source transfer and random init with the
    same seeds, the zero-shot score, and every similarity metric."""

    work_dir: str = setting(
        valid=paths.folder_problem, macro="WORK_DIR"
    )  # every run, the library and study.{json,md}
    sources: Sequence[str] = setting(non_empty=True, macro="SOURCES")
    targets: Sequence[str] = setting(non_empty=True, macro="TARGETS")
    source_steps: int = setting(1000, least=1, macro="SOURCE_STEPS")
    embedding_steps: int = setting(100, least=1, macro="EMBEDDING_STEPS")
    target_steps: int = setting(1000, least=1, macro="TARGET_STEPS")  # every EVAL_PERIOD
    metrics: Sequence[str] = setting(
        ("cosine_avg_tokens", "cosine_per_token", "euclidean", "activation_overlap"),
        one_of=METRICS,
        non_empty=True,
        macro="SIMILARITY_METRICS",
    )
    # the metric retrieval uses; the study says how it predicts transfer
    retrieval_metric: str = setting(
        "trained_blocks_cosine_avg_tokens",
        one_of=(*METRICS, *views.VIEW_METRICS, "zero_shot"),
        macro="RETRIEVAL_METRIC",
    )
    # the prompt run without transfer each transfer is compared with (same seeds)
    baseline: str = setting("sampled_vocab", one_of=BASELINES, macro="STUDY_BASELINE")
    # what the scores are: accuracy, or balanced accuracy (mean recall over the classes: an
    # imbalanced split's constant answer scores 100/C, not the majority's share)
    measure: str = setting(
        "accuracy", one_of=("accuracy", "balanced_accuracy"), macro="STUDY_MEASURE"
    )
    seeds_per_run: int = setting(3, least=1, most=RACE_SEED_OFFSET - 1, macro="SEEDS_PER_RUN")
    stack_runs: int = setting(3, least=1, macro="STACK_RUNS")  # prompt runs in one step
    # the race of the sources on each target (a predictor, and what it costs): each rung's
    # steps, the runs per source that decide, and by what
    race_steps: int = setting(20, least=1, macro="RACE_STEPS")
    race_seeds: int = setting(1, least=1, macro="RACE_SEEDS")
    race_score: str = setting("metric", one_of=initial.RACE_SCORES, macro="RACE_SCORE")

    def seeds(self, first: int) -> list[int]:
        return [first + i for i in range(self.seeds_per_run)]

    def pairs(self) -> list[tuple[str, str]]:
        """(source, target) pairs the study transfers: every source to every other task."""
        return [(s, t) for t in self.targets for s in self.sources if s != t]

    def race_rungs(self, target: str) -> list[int]:
        """The sources in each rung of the race on `target` (every source but the target;
        trainer/race.py's halving)."""
        return race.rung_sizes(len([s for s in self.sources if s != target]))

    def race_steps_of(self, target: str) -> int:
        """Prompt steps of the race on `target`: each rung's runners, `race_steps` each."""
        return sum(self.race_rungs(target)) * self.race_steps * self.race_seeds

    @property
    def total_steps(self) -> int:
        """Training steps of all the study's runs, the races' included."""
        transfer = self.seeds_per_run * (len(self.pairs()) + len(self.targets))
        return (
            len(self.sources) * self.source_steps
            + len(self.targets) * self.embedding_steps
            + transfer * self.target_steps
            + sum(self.race_steps_of(t) for t in self.targets)
        )

    @property
    def races(self) -> bool:
        """Always: a race of the sources on each target is one of the study's predictors."""
        return True

    @property
    def total_runs(self) -> int:
        """Runs the study trains (or reuses), one race per target counted as one."""
        per_seed = len(self.pairs()) + len(self.targets)
        return 2 * len(self.targets) + len(self.sources) + self.seeds_per_run * per_seed
