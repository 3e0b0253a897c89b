"""T5X's `t5x.partitioning` configurables, as gin names (t5x_habits.fold): the partitioner's
model-parallel ways become NUM_PARTITIONS; the logical axis rules are the project's
(prompt_transfer.network.partitioning.standard_logical_axis_rules, T5X's plus the prompt's axes)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class PjitPartitioner:
    num_partitions: int | None = None
    model_parallel_submesh: object = None
    params_on_devices: bool = True
    backend: str | None = None
    ici_mesh_shape: object = None
    dcn_mesh_shape: object = None
    logical_axis_rules: object = None
    use_cpu_pjit: bool = False


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: object = None,
):
    """T5X's rules factory; here only its bindings count (t5x_habits.fold)."""
    return None
