"""What the shared stages read of a SPoT flow's FlowConfig or a study's StudyConfig (`Plan`):
both satisfy it, and neither stage names the other's config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

SHARED_START = "shared_start.npy"  # in WORK_DIR: what the trained_ metrics subtract


class Plan(Protocol):
    work_dir: str  # every run, the library and the report
    sources: Sequence[str]
    targets: Sequence[str]
    source_steps: int
    embedding_steps: int
    target_steps: int
    metrics: Sequence[str]  # the similarities measured
    retrieval_metric: str  # the one retrieval ranks by
    seeds_per_run: int
    stack_runs: int  # prompt runs trained together in one stacked step
    race_score: str  # what decides a race's rung (RACE_SCORE)

    def seeds(self, first: int) -> list[int]: ...

    @property
    def races(self) -> bool: ...  # whether the sources race on each target

    @property
    def total_runs(self) -> int: ...
