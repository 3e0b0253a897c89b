"""Mesh, logical axis names and rules, and sharded placement of parameter trees.

Logical axis names are T5X's, so a T5X user's `logical_axis_rules` carry over. Every parameter of
the network is annotated with them (`flax.linen.with_logical_partitioning`); the rules map them
onto the physical mesh axes `data` and `model`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_transfer.base.errors import UserError


class MeshError(UserError):
    pass


# Logical axes (T5X names). Defined once; modules import these constants.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
JOINED_KV = "joined_kv"
VOCAB = "vocab"
RELPOS_BUCKETS = "relpos_buckets"
PROMPT = "prompt"
PROMPT_EMBED = "prompt_embed"

# Physical mesh axes.
DATA_AXIS = "data"
MODEL_AXIS = "model"

AxisRules = Sequence[tuple[str, str | None]]


def standard_logical_axis_rules() -> list[tuple[str, str | None]]:
    """T5X's default rules (1-D parameter and activation partitioning) plus the prompt's.

    The prompt is tiny ([P, E]) and replicated by default: sharding it would add a collective to
    every step for no memory saving.
    """
    return [
        (BATCH, DATA_AXIS),
        (VOCAB, MODEL_AXIS),
        (EMBED, None),
        (MLP, MODEL_AXIS),
        (HEADS, MODEL_AXIS),
        (KV, None),
        (JOINED_KV, MODEL_AXIS),
        (RELPOS_BUCKETS, None),
        (LENGTH, None),
        (PROMPT, None),
        (PROMPT_EMBED, None),
    ]


def make_mesh(num_partitions: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (`data`, `model`) mesh over all devices, `num_partitions` of them along `model`.

    The grid follows the devices' physical topology where JAX knows it (TPU slices, GPU hosts:
    `mesh_utils.create_device_mesh` puts the model axis on the fastest links), else their
    order. Built with `Mesh(...)` rather than `jax.make_mesh`, whose default Explicit axis types
    do not accept logical sharding constraints.
    """
    from jax.experimental import mesh_utils

    devices = list(devices if devices is not None else jax.devices())
    if len(devices) % num_partitions:
        raise MeshError(
            f"NUM_PARTITIONS={num_partitions} does not divide the {len(devices)} devices; "
            "choose a divisor of the device count"
        )
    shape = (len(devices) // num_partitions, num_partitions)
    try:
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):  # a layout it cannot map
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: AxisRules | None = None) -> Iterator[None]:
    """The mesh's axes and the logical axis rules in context, so the model's activation
    constraints (`t5.constrain`) take effect, as T5X's partitioner does. Usable around a jitted
    call and inside a traced function alike."""
    rules = standard_logical_axis_rules() if rules is None else rules
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` laid out by its logical `axes` under `activation_rules` (a no-op outside them); a
    dimension its mesh axes do not divide stays whole, as parameters do (`param_shardings`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = nn.logical_to_mesh_axes(axes, nn.get_logical_axis_rules())
    if spec is None:  # no rules in context
        return x
    return jax.lax.with_sharding_constraint(x, divisible_spec(spec, x.shape, mesh))


def mesh_of(tree) -> Mesh | None:
    """The mesh a tree of arrays is placed on (None when its first leaf is not on one)."""
    sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


def logical_partition_specs(boxed_tree) -> dict:
    """PartitionSpecs of logical axis names for a tree of `nn.LogicallyPartitioned` leaves."""
    return nn.get_partition_spec(boxed_tree)


def mesh_shardings(logical_specs, mesh: Mesh, rules: AxisRules | None = None):
    """NamedShardings on `mesh` for a tree of logical PartitionSpecs."""
    rules = standard_logical_axis_rules() if rules is None else rules
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def divisible_spec(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide their dimension (e.g. 2 heads over 4 devices)."""
    entries = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        entries.append(axes if dim % ways == 0 else None)
    return PartitionSpec(*entries)


def param_shardings(abstract_params, mesh: Mesh, rules: AxisRules | None = None):
    """NamedShardings for a boxed parameter tree (`nn.LogicallyPartitioned` leaves).

    A dimension too small to split over its mesh axes is replicated instead of failing, so
    tiny test models and odd head counts still place on any mesh.
    """
    shardings = mesh_shardings(logical_partition_specs(abstract_params), mesh, rules)
    return jax.tree.map(
        lambda s, x: NamedSharding(mesh, divisible_spec(s.spec, x.shape, mesh)),
        shardings,
        nn.unbox(abstract_params),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch-major arrays ([B, ...]) split along `data`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, *([None] * (ndim - 1))))


def global_batch(batch, shardings):
    """This process's rows of a batch as global arrays on the mesh: placed directly in a
    single-process job, or assembled with the other processes' rows into one array that spans
    them all (`jax.make_array_from_process_local_data`). `shardings` is a tree like `batch` or
    one sharding for every leaf."""
    if jax.process_count() == 1:
        return jax.device_put(batch, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, batch)
    return jax.tree.map(jax.make_array_from_process_local_data, shardings, batch)


def host_array(x) -> np.ndarray:
    """A device array as NumPy on this host, also when its shards live on other processes (a
    model axis that spans hosts): those are gathered from every process, which all must call."""
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
