"""The network: T5X tree and axes, size gin files, encode/decode split, dtypes, dropout."""

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import tiny_config
from prompt_transfer.configure import gin_files
from prompt_transfer.network import partitioning, t5

# Published sizes of the T5 1.1 (LM-adapted) checkpoints, 3 significant digits.
PUBLISHED = {"small": 77.0e6, "base": 248e6, "large": 783e6, "xl": 2.85e9, "xxl": 11.1e9}


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_size_gin_files_give_published_parameter_counts(size):
    params = t5.abstract_params(t5.T5(gin_files.read_model_config(size)))
    count = t5.param_count(params)
    assert count == pytest.approx(PUBLISHED[size], rel=5e-3)


def test_size_gin_files_parse_with_gin_itself():
    for size in gin_files.available_sizes():
        gin.clear_config()
        gin.parse_config_file(str(gin_files.size_file(size)))
        gin.finalize()
        gin.clear_config()
    assert set(PUBLISHED) | {"tiny"} <= set(gin_files.available_sizes())


def test_unknown_size_lists_sizes():
    with pytest.raises(
        gin_files.GinFileError,
        match="choose one of: base, large, offline_small, small, tiny, xl, xxl",
    ):
        gin_files.read_model_config("medium")


def test_every_parameter_has_t5x_logical_axes():
    boxed = t5.abstract_params(t5.T5(gin_files.read_model_config("tiny")))
    specs = {
        name: tuple(spec)
        for name, spec in traverse_util.flatten_dict(
            partitioning.logical_partition_specs(boxed), sep="/"
        ).items()
    }
    assert specs["token_embedder/embedding"] == ("vocab", "embed")
    assert specs["decoder/layers_0/self_attention/out/kernel"] == ("joined_kv", "embed")
    assert specs["encoder/layers_1/mlp/wo/kernel"] == ("mlp", "embed")
    assert specs["decoder/relpos_bias/rel_embedding"] == ("heads", "relpos_buckets")
    assert specs["decoder/logits_dense/kernel"] == ("embed", "vocab")
    assert all(len(s) >= 1 and all(a is not None for a in s) for s in specs.values())


CONFIG = tiny_config(vocab_size=50, mlp_dim=24, num_decoder_layers=1, dropout_rate=0.3)


@pytest.fixture(scope="module")
def net():
    module = t5.T5(CONFIG)
    inputs = jnp.asarray([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]])
    targets = jnp.asarray([[0, 11, 12], [0, 13, 14]])
    params = module.init(jax.random.PRNGKey(0), inputs, targets)["params"]
    return module, params, inputs, targets


def test_encode_then_decode_equals_call(net):
    module, params, inputs, targets = net
    full = module.apply({"params": params}, inputs, targets)
    encoded, mask = module.apply({"params": params}, inputs, method=t5.T5.encode)
    assert encoded.shape == (2, 6, 16)
    np.testing.assert_array_equal(mask, inputs > 0)
    split = module.apply({"params": params}, encoded, mask, targets, method=t5.T5.decode)
    np.testing.assert_allclose(split, full, rtol=1e-6)


def test_padding_does_not_change_valid_positions(net):
    module, params, inputs, targets = net
    padded = jnp.pad(inputs, ((0, 0), (0, 4)))
    np.testing.assert_allclose(
        module.apply({"params": params}, padded, targets),
        module.apply({"params": params}, inputs, targets),
        atol=1e-5,
    )


def test_bfloat16_activations_keep_float32_params_and_logits(net):
    module, params, inputs, targets = net
    bf16 = t5.T5(dataclasses.replace(CONFIG, dtype="bfloat16"))
    logits = bf16.apply({"params": params}, inputs, targets)
    assert logits.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    reference = module.apply({"params": params}, inputs, targets)
    assert float(jnp.max(jnp.abs(logits - reference))) < 0.05 * float(jnp.max(jnp.abs(reference)))


def test_dropout_only_when_enabled(net):
    module, params, inputs, targets = net
    quiet = module.apply({"params": params}, inputs, targets)
    noisy = module.apply(
        {"params": params},
        inputs,
        targets,
        enable_dropout=True,
        rngs={"dropout": jax.random.PRNGKey(1)},
    )
    assert not np.allclose(quiet, noisy)
    np.testing.assert_array_equal(quiet, module.apply({"params": params}, inputs, targets))


def test_t5_1_0_style_has_no_logits_dense_and_rescales():
    cfg = dataclasses.replace(
        CONFIG, mlp_activations=("relu",), logits_via_embedding=True, dropout_rate=0.0
    )
    module = t5.T5(cfg)
    inputs, targets = jnp.asarray([[3, 4, 1]]), jnp.asarray([[0, 5]])
    params = nn.unbox(module.init(jax.random.PRNGKey(0), inputs, targets)["params"])
    assert "logits_dense" not in params["decoder"] and "wi" in params["encoder"]["layers_0"]["mlp"]
    # Tied logits: decoder output dotted with the embedding table, divided by sqrt(E).
    encoded, mask = module.apply({"params": params}, inputs, method=t5.T5.encode)
    logits = module.apply({"params": params}, encoded, mask, targets, method=t5.T5.decode)
    hidden = module.apply(
        {"params": params},
        encoded,
        mask,
        targets,
        method=t5.T5.decode,
        capture_intermediates=lambda m, _: m.name == "decoder_norm",
    )[1]
    y = jax.tree.leaves(hidden["intermediates"])[0]
    np.testing.assert_allclose(logits, y @ params["token_embedder"]["embedding"].T / 4.0, rtol=1e-5)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="swish"):
        t5.T5Config(mlp_activations=("swish", "linear"))


def test_rematerialised_layers_give_the_same_loss_and_gradients_in_the_same_tree():
    config = dataclasses.replace(gin_files.read_model_config("tiny"), dropout_rate=0.1)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(2, 100, (4, 12)), jnp.int32)
    targets = jnp.asarray(rng.integers(2, 100, (4, 4)), jnp.int32)
    init = lambda module: module.init(jax.random.PRNGKey(0), tokens, targets)["params"]
    params = jax.jit(init, static_argnums=0)(t5.T5(config))
    results = {}
    for policy in ("none", "minimal", "full"):
        module = t5.T5(dataclasses.replace(config, remat_policy=policy))
        tree = jax.tree.structure(jax.eval_shape(lambda m=module: init(m)))
        assert tree == jax.tree.structure(params)  # checkpoints fit either way

        def loss(p, module=module):
            logits = module.apply({"params": p}, tokens, targets, enable_dropout=True,
                                  rngs={"dropout": jax.random.PRNGKey(3)})  # fmt: skip
            return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

        results[policy] = jax.jit(jax.value_and_grad(loss))(params)
        program = str(jax.make_jaxpr(jax.value_and_grad(loss))(params))
        assert ("remat" in program) == (policy != "none")  # recomputed, not kept
    value, grads = results["none"]
    for policy in ("minimal", "full"):
        other_value, other_grads = results[policy]
        assert float(other_value) == pytest.approx(float(value), rel=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(other_grads), strict=True):
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="REMAT_POLICY='some' must be one of 'none'"):
        t5.T5Config(remat_policy="some")
