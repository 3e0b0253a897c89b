"""T5X's `t5x.adafactor.Adafactor`, as a gin name (t5x_habits.fold): its settings are the project's
optimizer's (trainer/train_state.OptimizerConfig)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Adafactor:
    learning_rate: float | None = None
    factored: bool = True
    multiply_by_parameter_scale: bool = True
    beta1: float | None = None
    decay_rate: float = 0.8
    step_offset: int = 0
    clipping_threshold: float | None = 1.0
    weight_decay_rate: float | None = None
    min_dim_size_to_factor: int = 128
    epsilon1: float = 1e-30
    epsilon2: float = 1e-3
    dtype_momentum: object = None
    factor_map: object = None
    logical_factor_rules: object = None
    weight_decay_rate_lr_exponent: float | None = None
    global_norm_clip_threshold: float | None = None
    max_parameter_scale: float | None = None
    skip_nan_updates: bool = False


def standard_logical_factor_rules(rules=None):
    """T5X's factor rules factory; here only its bindings count (t5x_habits.fold)."""
    return None
