"""T5X's `t5x.trainer.Trainer`, as a gin name (t5x_habits.fold): num_microbatches is
NUM_MICROBATCHES; its learning rate comes from `utils.create_learning_rate_scheduler`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Trainer:
    model: object = None
    train_state: object = None
    partitioner: object = None
    eval_names: object = ()
    summary_dir: str | None = None
    train_state_axes: object = None
    rng: object = None
    learning_rate_fn: object = None
    num_microbatches: int | None = None
    weight_metrics_computer: object = None
