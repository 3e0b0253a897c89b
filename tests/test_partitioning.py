"""Model parallelism as T5X does it: NUM_PARTITIONS splits the frozen network's kernels along
`model`, the model's activation layout applies inside the step, and a run ends where the
data-parallel run does; FROZEN_DTYPE='bfloat16' stores the frozen network in half the memory
while the prompt and its optimizer stay float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, TINY_CHECKPOINT, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.configure import gin_files
from prompt_transfer.network import partitioning
from prompt_transfer.network import partitioning as pt
from prompt_transfer.trainer import weights

STEPS = 4


@pytest.fixture(scope="module")
def task(anchors):
    return register_keyword_task(T5_VOCAB)


def _train(model_dir, *extra):
    periods = [f"--gin.SAVE_PERIOD={STEPS}", f"--gin.EVAL_PERIOD={STEPS}", "--gin.LOG_PERIOD=1"]
    argv = tiny_run_args(
        model_dir, f"--gin.TRAIN_STEPS={STEPS}", *periods, "--gin.DROPOUT_RATE=0.0", *extra
    )
    assert cli.main(["train", *argv]) == 0
    lines = (model_dir / "log.txt").read_text().splitlines()
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines if " loss " in line]
    return np.load(model_dir / "prompts" / f"checkpoint_{STEPS}.npy"), np.asarray(losses)


@pytest.fixture(scope="module")
def data_parallel(task, tmp_path_factory):
    """(prompt, losses) of the run on 8 data-parallel devices, float32 throughout."""
    return _train(tmp_path_factory.mktemp("p1") / "run")


def test_model_parallel_runs_end_where_the_data_parallel_run_does(data_parallel, tmp_path):
    prompt, losses = data_parallel
    assert len(losses) == STEPS
    for ways in (2, 4):
        other, other_losses = _train(tmp_path / f"p{ways}", f"--gin.NUM_PARTITIONS={ways}")
        np.testing.assert_allclose(other_losses, losses, rtol=1e-5)
        np.testing.assert_allclose(other, prompt, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ways", [2, 4])
def test_the_embedding_and_mlp_kernels_are_split_along_model(ways):
    config = gin_files.read_model_config("tiny")
    mesh = partitioning.make_mesh(ways)
    assert dict(mesh.shape) == {"data": 8 // ways, "model": ways}
    network = weights.frozen_network(config, str(TINY_CHECKPOINT), mesh, seed=0)
    embedding = network.params["token_embedder"]["embedding"]  # [vocab, embed]
    assert embedding.sharding.spec == PartitionSpec("model", None)
    assert embedding.addressable_shards[0].data.shape == (32128 // ways, 4)
    wi = network.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # [embed, mlp]
    assert wi.sharding.spec == PartitionSpec(None, "model")
    assert wi.addressable_shards[0].data.shape == (4, 8 // ways)


def _axes(x) -> tuple:
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def test_activation_constraints_apply_only_under_the_rules():
    mesh = partitioning.make_mesh(4)
    x = jax.device_put(np.ones((8, 3, 8), np.float32), partitioning.replicated(mesh))

    def hidden(x):
        return pt.constrain(x * 2, (pt.BATCH, pt.LENGTH, pt.MLP))

    def odd(x):  # 3 positions do not split 4 ways: that dimension stays whole
        return pt.constrain(x * 2, (pt.BATCH, pt.MLP, pt.EMBED))

    def under_rules(fn):
        def traced(x):
            with partitioning.activation_rules(mesh):
                return fn(x)

        return _axes(jax.jit(traced)(x))

    assert _axes(jax.jit(hidden)(x)) == (None, None, None)
    assert under_rules(hidden) == ("data", None, "model")
    assert under_rules(odd) == ("data", None, None)


def test_a_bfloat16_frozen_network_trains_a_float32_prompt(data_parallel, tmp_path):
    prompt, losses = data_parallel
    half, half_losses = _train(tmp_path / "bf16", "--gin.FROZEN_DTYPE='bfloat16'")
    config = gin_files.read_model_config("tiny")
    mesh = partitioning.make_mesh(1)
    network = weights.frozen_network(config, str(TINY_CHECKPOINT), mesh, 0, jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(network.params)} == {jnp.dtype(jnp.bfloat16)}
    assert half.dtype == np.float32
    # bfloat16 weights round to 3 significant digits: the same run, to that precision.
    np.testing.assert_allclose(half_losses, losses, rtol=2e-2)
    assert not np.array_equal(half, prompt)  # it did run on other weights
    assert np.linalg.norm(half - prompt) < 0.1 * np.linalg.norm(prompt)  # measured 0.023
