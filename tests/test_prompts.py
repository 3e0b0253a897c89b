"""Prompt joining, initialisers, and mixed-task batches through one frozen model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import RELEASED_PROMPTS, tiny_config
from prompt_transfer.base.errors import UserError
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import prompt_slots, t5
from prompt_transfer.prompt import prompts


def _inputs():
    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    prompt = -jnp.arange(1, 7, dtype=jnp.float32).reshape(2, 3)
    return x, mask, prompt


def test_prefix_puts_prompt_first_and_unmasks_it():
    x, mask, prompt = _inputs()
    joined, joined_mask = prompt_slots.join_prompt(x, mask, prompt, "prefix")
    assert joined.shape == (2, 7, 3)
    np.testing.assert_array_equal(joined[:, :2], jnp.broadcast_to(prompt, (2, 2, 3)))
    np.testing.assert_array_equal(joined[:, 2:], x)
    np.testing.assert_array_equal(joined_mask.sum(1), [5, 7])


def test_suffix_follows_each_rows_last_real_token():
    x, mask, prompt = _inputs()
    joined, joined_mask = prompt_slots.join_prompt(x, mask, prompt, "suffix")
    np.testing.assert_array_equal(joined[0, :3], x[0, :3])
    np.testing.assert_array_equal(joined[0, 3:5], prompt)
    np.testing.assert_array_equal(joined_mask[0], [1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(joined[1, :5], x[1])
    np.testing.assert_array_equal(joined[1, 5:], prompt)
    assert joined_mask[1].all()


def test_per_example_prompts():
    x, mask, _ = _inputs()
    per_example = jnp.stack([jnp.zeros((2, 3)), jnp.ones((2, 3))])
    joined, _ = prompt_slots.join_prompt(x, mask, per_example, "prefix")
    assert joined[0, :2].sum() == 0 and joined[1, :2].sum() == 6


def test_initialisers():
    embedding = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    uniform = prompts.initial_prompt(prompts.PromptInit("random_uniform"), 7, embedding, seed=1)
    assert uniform.shape == (7, 4) and np.abs(uniform).max() <= 0.5
    np.testing.assert_array_equal(
        uniform, prompts.initial_prompt(prompts.PromptInit("random_uniform"), 7, embedding, seed=1)
    )

    vocab = prompts.initial_prompt(
        prompts.PromptInit("sampled_vocab", vocab_population=10), 6, embedding
    )
    rows = {tuple(r) for r in embedding[3:13]}
    assert all(tuple(r) in rows for r in vocab)  # only the 10 most frequent regular ids

    encode = {"yes": [7], "not sure": [8, 9]}.__getitem__
    labels = prompts.initial_prompt(
        prompts.PromptInit("class_labels", labels=("yes", "not sure")), 5, embedding, encode=encode
    )
    np.testing.assert_allclose(labels[0], embedding[7])
    np.testing.assert_allclose(labels[1], embedding[[8, 9]].mean(0))

    text = prompts.initial_prompt(
        prompts.PromptInit("text", text="yes"), 3, embedding, encode=encode
    )
    np.testing.assert_array_equal(text[0], embedding[7])


def test_prompt_file_shape_and_content_checked(anchors, tmp_path):
    released = RELEASED_PROMPTS / "prompt_5x256.npy"
    loaded = prompts.from_file(released, 5, 256)
    assert loaded.dtype == np.float32  # the file is float64; prompts are float32
    np.testing.assert_array_equal(loaded, np.load(released).astype(np.float32))
    with pytest.raises(prompts.PromptError, match=r"\(5, 256\) but the run expects \(100, 768\)"):
        prompts.from_file(released, 100, 768)
    bad = tmp_path / "nan.npy"
    np.save(bad, np.full((2, 2), np.nan))
    with pytest.raises(prompts.PromptError, match="NaN"):
        prompts.from_file(bad, 2, 2)


def test_unknown_init_lists_choices():
    with pytest.raises(UserError, match="must be one of 'random_uniform', 'sampled_vocab', 'cl"):
        prompts.PromptInit("zeros")


def test_mixed_task_batch_equals_one_prompt_at_a_time():
    module = t5.T5(tiny_config(vocab_size=60, mlp_dim=24))
    inputs = jnp.asarray(np.random.default_rng(0).integers(3, 60, (4, 6))).at[1, 4:].set(0)
    network = module.init(jax.random.PRNGKey(0), inputs, inputs[:, :3])["params"]
    rng = np.random.default_rng(1)
    task_prompts = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 5, 16)), jnp.float32)
    task_of_row = jnp.asarray([0, 1, 1, 0])
    model = EncoderDecoderModel(module)
    candidates = jnp.asarray([[5, 1], [6, 7]])
    mixed_rank = model.rank_classify(network, inputs, candidates, prompt=task_prompts[task_of_row])
    mixed_pred = model.predict(network, inputs, max_length=5, prompt=task_prompts[task_of_row])
    for task in (0, 1):
        alone = prompts.with_prompt(network, task_prompts[task])
        rows = np.flatnonzero(np.asarray(task_of_row) == task)
        np.testing.assert_allclose(
            model.rank_classify(alone, inputs[rows], candidates),
            mixed_rank[rows],
            rtol=1e-5,
            atol=1e-5,
        )
        np.testing.assert_array_equal(
            model.predict(alone, inputs[rows], max_length=5), mixed_pred[rows]
        )
    assert not np.allclose(
        mixed_rank[0],
        model.rank_classify(prompts.with_prompt(network, task_prompts[1]), inputs[:1], candidates)[
            0
        ],
    )
