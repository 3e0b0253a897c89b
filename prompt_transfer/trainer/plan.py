"""A memory plan before renting a pod: what one device holds in a prompt-tuning run of a model
size on N devices, and the smallest NUM_PARTITIONS that fits.

    prompt-transfer plan --size xxl --devices 32 --device-memory-gb 32 --batch 32

Per device, for each NUM_PARTITIONS that divides the devices and leaves a data axis the batch
splits over:
- the frozen network, from its abstract shapes (`jax.eval_shape`) in FROZEN_DTYPE, each
  parameter divided as the logical axis rules split it on the (data, model) mesh;
- the prompt and its optimizer state (float32, replicated);
- the step's own working memory: XLA's memory analysis of the compiled train step (temporaries
  plus the batch), compiled for N devices that this host simulates on its CPU, so a plan for 32
  chips runs on a laptop. XLA's CPU compiler fuses and schedules differently from a TPU's or a
  GPU's: read it as an estimate. The parameter bytes are exact.
A partitioning whose parameters alone do not fit is not compiled.
"""

from __future__ import annotations

import dataclasses
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_transfer.base.errors import UserError
from prompt_transfer.configure import gin_files
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning, t5
from prompt_transfer.trainer import train_state

GB = 1e9


class PlanError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class Shape:
    """The run a plan is for (the flags of `prompt-transfer plan`)."""

    size: str
    devices: int
    device_memory_gb: float
    batch: int = 32
    inputs: int = 512
    targets: int = 16
    prompt_length: int = 100
    frozen_dtype: str = "bfloat16"
    activation_dtype: str = "bfloat16"
    remat_policy: str = "none"  # REMAT_POLICY
    headroom: float = 0.9  # the share of a device's memory a plan may fill


@dataclasses.dataclass(frozen=True)
class Row:
    partitions: int
    frozen: int  # bytes per device: the frozen network
    trainable: int  # the prompt and its optimizer state
    working: int | None  # the compiled step's temporaries and batch; None: not compiled
    note: str = ""

    @property
    def total(self) -> int | None:
        return None if self.working is None else self.frozen + self.trainable + self.working


def _mesh_shape(devices: int, partitions: int):
    """A stand-in with a mesh's `shape` (what `divisible_spec` reads)."""
    return types.SimpleNamespace(
        shape={partitioning.DATA_AXIS: devices // partitions, partitioning.MODEL_AXIS: partitions}
    )


def bytes_per_device(boxed_tree, mesh, dtype=None) -> int:
    """Bytes one device holds of a boxed (logically annotated) abstract tree placed by the
    standard rules on `mesh`, each leaf stored in `dtype` (None: its own)."""
    specs = partitioning.logical_partition_specs(boxed_tree)
    rules = partitioning.standard_logical_axis_rules()
    total = 0
    leaves = jax.tree.leaves(nn.unbox(boxed_tree))
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for leaf, logical in zip(leaves, flat_specs, strict=True):
        spec = nn.logical_to_mesh_axes(logical, rules)
        spec = partitioning.divisible_spec(spec, leaf.shape, mesh)
        ways = 1
        for axes in spec:
            for name in (axes,) if isinstance(axes, str) else tuple(axes or ()):
                ways *= mesh.shape[name]
        count = int(np.prod(leaf.shape)) // ways
        total += count * jnp.dtype(dtype or leaf.dtype).itemsize
    return total


def _abstract(shape: Shape):
    """(config, module, the frozen network's boxed abstract parameters)."""
    try:
        config = gin_files.read_model_config(shape.size)
    except UserError as e:
        raise PlanError(f"--size={shape.size}: {e}") from e
    config = dataclasses.replace(
        config,
        dtype=shape.activation_dtype,
        dropout_rate=0.0,
        remat_policy=shape.remat_policy,
    )
    module = t5.T5(config)
    return config, module, t5.abstract_params(module)


def candidates(shape: Shape) -> list[int]:
    """NUM_PARTITIONS values that divide the devices and leave a data axis the batch splits."""
    return [
        p
        for p in range(1, shape.devices + 1)
        if shape.devices % p == 0 and shape.batch % (shape.devices // p) == 0
    ]


def plan(shape: Shape, compile_step: bool = True) -> list[Row]:
    """One row per candidate NUM_PARTITIONS, fewest partitions first; compiled up to the first
    that fits (later rows only when the earlier did not)."""
    if shape.devices < 1 or shape.batch < 1:
        raise PlanError(f"--devices={shape.devices} and --batch={shape.batch} must be >= 1")
    if not candidates(shape):
        raise PlanError(
            f"--batch={shape.batch} splits over no data axis of {shape.devices} devices; use a "
            "multiple of the device count, or of a divisor of it"
        )
    config, module, network = _abstract(shape)
    optimizer = train_state.make_optimizer(train_state.OptimizerConfig())
    prompt = jax.ShapeDtypeStruct((shape.prompt_length, config.emb_dim), jnp.float32)
    abstract_state = jax.eval_shape(
        lambda p: train_state.init_state({"encoder": {"prompt": {"prompt": p}}}, optimizer), prompt
    )
    trainable = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
    budget = shape.device_memory_gb * GB * shape.headroom
    rows = []
    for partitions in candidates(shape):
        mesh = _mesh_shape(shape.devices, partitions)
        frozen = bytes_per_device(network, mesh, shape.frozen_dtype)
        fitted = any(r.total is not None and r.total <= budget for r in rows)
        if fitted or not compile_step:
            rows.append(Row(partitions, frozen, trainable, None, "not compiled"))
        elif frozen + trainable > budget:
            rows.append(Row(partitions, frozen, trainable, None, "parameters alone do not fit"))
        else:
            working = _working_bytes(shape, module, network, partitions, optimizer, abstract_state)
            rows.append(Row(partitions, frozen, trainable, working))
    return rows


def smallest_fit(shape: Shape, rows: list[Row]) -> Row | None:
    budget = shape.device_memory_gb * GB * shape.headroom
    return next((r for r in rows if r.total is not None and r.total <= budget), None)


def _working_bytes(shape, module, network, partitions, optimizer, abstract_state) -> int:
    """Temporaries plus the batch per device, from XLA's memory analysis of the train step
    compiled for `shape.devices` devices."""
    devices = jax.devices()
    if len(devices) < shape.devices:
        raise PlanError(
            f"this process has {len(devices)} devices, fewer than --devices={shape.devices}; "
            "run `prompt-transfer plan`, which simulates them on the CPU"
        )
    mesh = partitioning.make_mesh(partitions, devices[: shape.devices])
    fixed_shardings = partitioning.param_shardings(network, mesh)
    fixed = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(shape.frozen_dtype)), nn.unbox(network)
    )
    whole = partitioning.replicated(mesh)
    state_shardings = jax.tree.map(lambda _: whole, abstract_state)
    rows = shape.batch
    batch = {
        "encoder_input_tokens": jax.ShapeDtypeStruct((rows, shape.inputs), jnp.int32),
        "decoder_target_tokens": jax.ShapeDtypeStruct((rows, shape.targets), jnp.int32),
        "decoder_input_tokens": jax.ShapeDtypeStruct((rows, shape.targets), jnp.int32),
    }
    step, _ = train_state.compile_train_step(  # the trainer's own step, as a run compiles it
        EncoderDecoderModel(module),
        optimizer,
        train_state.learning_rate_schedule(train_state.OptimizerConfig()),
        1,
        mesh,
        state_shardings,
        fixed_shardings,
        batch,
    )
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    memory = step.lower(abstract_state, fixed, batch, rng).compile().memory_analysis()
    per_device_batch = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(batch)) // (
        shape.devices // partitions
    )
    return int(memory.temp_size_in_bytes) + per_device_batch


def describe(shape: Shape, rows: list[Row], best: Row | None) -> str:
    """The plan as a table and a verdict."""
    gb = lambda n: "-" if n is None else f"{n / GB:.2f}"  # noqa: E731
    lines = [
        f"{shape.size} on {shape.devices} devices of {shape.device_memory_gb:g} GB "
        f"({shape.headroom:.0%} usable): batch {shape.batch}, inputs {shape.inputs} + prompt "
        f"{shape.prompt_length}, targets {shape.targets}; frozen {shape.frozen_dtype}, "
        f"activations {shape.activation_dtype}, remat {shape.remat_policy}. GB per device:",
        f"{'NUM_PARTITIONS':>14}  {'frozen':>8}  {'prompt+opt':>10}  {'step':>8}  {'total':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r.partitions:>14}  {gb(r.frozen):>8}  {gb(r.trainable):>10}  {gb(r.working):>8}  "
            f"{gb(r.total):>8}  {r.note}"
        )
    if best:
        lines.append(
            f"smallest NUM_PARTITIONS that fits: {best.partitions} "
            f"({best.total / GB:.2f} GB of {shape.device_memory_gb * shape.headroom:.1f} GB)"
        )
    else:
        hint = "" if shape.remat_policy == "full" else " or --remat full (REMAT_POLICY)"
        lines.append(
            "no NUM_PARTITIONS fits: use more devices, a smaller --batch, shorter --inputs" + hint
        )
    return "\n".join(lines)
