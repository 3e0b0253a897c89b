"""T5X's `t5x.utils` configurables (checkpoints, data sets, the learning-rate schedule), as gin
names only: `t5x_habits.fold` gives their bound values to the project's settings."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SaveCheckpointConfig:
    dtype: str = "float32"
    keep: int | None = None
    period: int | None = None
    checkpoint_steps: object = None
    save_dataset: bool = False
    keep_dataset_checkpoints: int | None = None
    checkpointer_cls: object = None
    state_transformation_fns: object = ()


@dataclasses.dataclass
class RestoreCheckpointConfig:
    path: object = None
    mode: str = "latest"
    assignment_map: object = None
    strict: bool = True
    fallback_to_scratch: bool = False
    dtype: str | None = None
    restore_dataset: bool = False
    checkpointer_cls: object = None
    state_transformation_fns: object = ()


@dataclasses.dataclass
class DatasetConfig:
    mixture_or_task_name: object = None
    task_feature_lengths: object = None
    split: str = "train"
    batch_size: int = 32
    shuffle: bool = True
    seed: int | None = None
    use_cached: bool = False
    pack: bool = False
    use_custom_packing_ops: bool = False
    module: str | None = None
    use_memory_cache: bool = True
    trim_output_features: bool = True


@dataclasses.dataclass
class CheckpointConfig:
    save: object = None
    restore: object = None


def create_learning_rate_scheduler(
    factors: str = "constant * linear_warmup * rsqrt_decay",
    base_learning_rate: float = 0.5,
    warmup_steps: int = 1000,
    decay_factor: float = 0.5,
    steps_per_decay: int = 20000,
    steps_per_cycle: int = 100000,
    step_offset: int = 0,
    min_learning_rate: float = 1e-8,
):
    """T5X's schedule factory; here only its bindings count (t5x_habits.fold)."""
    return None
