"""Logits equal HF transformers' PyTorch T5 on the same weights, through our HF importer."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import small_hf_t5  # noqa: E402
from prompt_transfer.network import hf_t5  # noqa: E402
from prompt_transfer.network.t5 import T5  # noqa: E402

CONFIGS = {
    # T5 1.1 / LM-adapted / flan-t5: gated-GELU, untied, no output rescaling.
    "t5_1_1": dict(
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        num_layers=2,
        num_decoder_layers=2,
    ),
    # T5 1.0: ReLU, output projection tied to the embedding and rescaled by 1/sqrt(d_model).
    "t5_1_0": dict(
        feed_forward_proj="relu", tie_word_embeddings=True, num_layers=2, num_decoder_layers=2
    ),
    # Unequal depth.
    "t5_1_1_deep_encoder": dict(
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        num_layers=3,
        num_decoder_layers=1,
    ),
}


def _hf_model(tmp_path, name, fmt):
    # Random layer-norm scales too (noise), so a mis-mapped norm shows up.
    return small_hf_t5(
        tmp_path,
        fmt,
        noise=0.5,
        vocab_size=96,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        **CONFIGS[name],
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_logits_match_transformers(tmp_path, name, fmt):
    model = _hf_model(tmp_path, name, fmt)
    rng = np.random.default_rng(1)
    inputs = rng.integers(2, 96, size=(3, 11))
    inputs[1, 7:] = 0  # padding on one row
    targets = rng.integers(2, 96, size=(3, 6))
    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor(inputs),
            attention_mask=torch.tensor(inputs > 0),
            decoder_input_ids=torch.tensor(targets),
        ).logits.numpy()

    config, params = hf_t5.load_hf_t5(tmp_path)
    assert config.logits_via_embedding == (name == "t5_1_0")
    assert config.num_encoder_layers == CONFIGS[name]["num_layers"]
    assert config.num_decoder_layers == CONFIGS[name]["num_decoder_layers"]
    ours = T5(config).apply({"params": params}, jnp.asarray(inputs), jnp.asarray(targets))
    np.testing.assert_allclose(
        np.asarray(ours), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def test_missing_weight_is_named(tmp_path):
    _hf_model(tmp_path, "t5_1_1", "safetensors")
    from safetensors.numpy import load_file, save_file

    state = load_file(str(tmp_path / "model.safetensors"))
    del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        hf_t5.HFCheckpointError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wo"
    ):
        hf_t5.load_hf_t5(tmp_path)
