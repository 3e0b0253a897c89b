"""Similarity metrics against independent NumPy implementations on the released prompts."""

import numpy as np
import pytest

from conftest import RELEASED_PROMPTS
from prompt_transfer.transfer import similarity


@pytest.fixture(scope="module")
def released(anchors):
    names = ("sst2", "mrpc", "rte")
    return {n: np.load(RELEASED_PROMPTS / "t5_1_1_lm100k_base" / f"{n}.npy") for n in names}


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def reference(metric, a, b):
    """Loop-by-loop definitions, float64, written independently of the library code."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine_avg_tokens":
        return _cos(a.mean(0), b.mean(0))
    if metric == "cosine_per_token":
        return np.mean([[_cos(x, y) for y in b] for x in a])
    if metric == "cosine_flat":
        return _cos(a.ravel(), b.ravel())
    if metric == "euclidean":
        return 1 / (1 + np.sqrt(((a - b) ** 2).sum()))
    if metric == "euclidean_per_token":
        return np.mean([[1 / (1 + np.sqrt(((x - y) ** 2).sum())) for y in b] for x in a])
    raise KeyError(metric)


PROMPT_METRICS = [
    "cosine_avg_tokens",
    "cosine_per_token",
    "cosine_flat",
    "euclidean",
    "euclidean_per_token",
]


@pytest.mark.parametrize("metric", PROMPT_METRICS)
def test_metrics_match_numpy_on_released_prompts(released, metric):
    names = list(released)
    library = np.stack([released[n] for n in names])
    for target in names:
        got = similarity.score_library(metric, released[target], library)
        want = [reference(metric, released[target], released[n]) for n in names]
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("metric", PROMPT_METRICS)
def test_symmetric_and_identical(released, metric):
    stack = np.stack(list(released.values()))
    matrix = similarity.pairwise(metric, stack)
    np.testing.assert_allclose(matrix, matrix.T, rtol=1e-5, atol=1e-7)
    # A copy of an entry scores exactly as the entry itself.
    twin = similarity.score_library(metric, stack[0], np.stack([stack[1], stack[1]]))
    assert twin[0] == twin[1]
    if metric in ("cosine_avg_tokens", "cosine_flat", "euclidean"):
        np.testing.assert_allclose(np.diag(matrix), 1.0, rtol=1e-5)
        assert (matrix <= 1 + 1e-5).all()


def test_activation_overlap_is_cosine_of_binary_vectors():
    rng = np.random.default_rng(0)
    target, library = rng.random(64) > 0.5, rng.random((4, 64)) > 0.5
    got = similarity.score_library("activation_overlap", target, library)
    want = [_cos(target.astype(float), row.astype(float)) for row in library]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_activation_signature_reads_the_feed_forward_layers(anchors):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from prompt_transfer.configure import gin_files
    from prompt_transfer.network import t5

    module = t5.T5(gin_files.read_model_config("tiny"))
    tokens = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
    prompt = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    signature = similarity.activation_signature(module, params, prompt)
    assert signature.shape == (2 * 8,) and signature.dtype == bool
    window = similarity.activation_signature(module, params, prompt, layers=(1, 2))
    np.testing.assert_array_equal(window, signature[8:])
    assert similarity.score_library("activation_overlap", signature, signature[None])[0] == (
        pytest.approx(1.0)
    )


def test_unequal_lengths_and_unknown_metrics_are_explained(released):
    short = released["rte"][:10]
    with pytest.raises(similarity.SimilarityError, match="equal length"):
        similarity.score_library("euclidean", short, released["sst2"][None])
    assert similarity.score_library("cosine_per_token", short, released["sst2"][None]).shape == (1,)
    with pytest.raises(similarity.SimilarityError, match="cosine_avg_tokens, cosine_per_token"):
        similarity.get_metric("kl")
