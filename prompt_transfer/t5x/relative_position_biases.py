"""Flaxformer's `relative_position_biases.RelativePositionBiases`, as a gin name (t5x_habits.fold):
its buckets and distance are t5.T5Config's (prompt-tuning's test/t5_1_1_tiny_prompt.gin binds
them)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RelativePositionBiases:
    num_buckets: int = 32
    max_distance: int = 128
    num_heads: int | None = None
    dtype: object = None
    embedding_init: object = None
