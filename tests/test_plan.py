"""The memory plan: exact parameter bytes per device, the step compiled only where the
parameters fit, and the command simulating more devices than the host has."""

import json

import jax
import numpy as np

from prompt_transfer import cli
from prompt_transfer.configure import gin_files
from prompt_transfer.network import partitioning, t5
from prompt_transfer.trainer import plan, weights


def test_parameter_bytes_per_device_are_what_placement_puts_on_a_device():
    config = gin_files.read_model_config("tiny")
    abstract = t5.abstract_params(t5.T5(config))
    for ways in (1, 2, 4, 8):
        mesh = partitioning.make_mesh(ways)
        network = weights.frozen_network(config, None, mesh, seed=0)
        on_device = sum(
            shard.data.nbytes
            for leaf in jax.tree.leaves(network.params)
            for shard in leaf.addressable_shards
            if shard.device == mesh.devices.flat[0]
        )
        assert plan.bytes_per_device(abstract, mesh) == on_device
        if ways > 1:  # the vocabulary split: less on each device
            assert on_device < plan.bytes_per_device(abstract, partitioning.make_mesh(1))
    half = plan.bytes_per_device(abstract, partitioning.make_mesh(1), "bfloat16")
    assert 2 * half == plan.bytes_per_device(abstract, partitioning.make_mesh(1))


def _tiny(memory_gb: float) -> plan.Shape:
    return plan.Shape("tiny", 8, memory_gb, batch=8, inputs=12, targets=4, prompt_length=5,
                      frozen_dtype="float32", activation_dtype="float32")  # fmt: skip


def test_the_step_is_compiled_only_where_the_parameters_fit():
    roomy = _tiny(80.0)
    rows = plan.plan(roomy)
    assert [r.partitions for r in rows] == [1, 2, 4, 8]
    assert rows[0].working > 0 and all(r.working is None for r in rows[1:])
    assert plan.smallest_fit(roomy, rows) is rows[0]
    # A device that holds the network split 2 ways but not whole.
    budget = (rows[0].frozen + rows[1].frozen) / 2 + rows[0].trainable
    tight = plan.Shape(**{**roomy.__dict__, "device_memory_gb": budget / roomy.headroom / 1e9})
    rows = plan.plan(tight)
    assert rows[0].working is None and rows[0].note == "parameters alone do not fit"
    assert rows[1].working is not None  # compiled: its parameters fit
    fit = plan.smallest_fit(tight, rows)
    assert fit is None or fit.partitions >= 2


def test_the_plan_command_simulates_more_devices_than_the_host_has(capfd):
    argv = ["plan", "--size=tiny", "--devices=16", "--device-memory-gb=80", "--batch=32",
            "--inputs=16", "--targets=4", "--prompt-length=5", "--json"]  # fmt: skip
    assert len(jax.devices()) < 16
    assert cli.main(argv) == 0
    result = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert [r["partitions"] for r in result["rows"]] == [1, 2, 4, 8, 16]
    assert result["fits"] == 1 and result["rows"][0]["working"] > 0
    frozen = [r["frozen"] for r in result["rows"]]
    assert frozen == sorted(frozen, reverse=True) and frozen[0] > frozen[-1]
    assert np.isclose(result["shape"]["device_memory_gb"], 80)
