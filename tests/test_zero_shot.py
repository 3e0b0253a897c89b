"""Zero-shot transfer: every prompt used as is on a target; plotted as a heatmap."""

import jax.numpy as jnp
import numpy as np
import pytest
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, TINY_CHECKPOINT
from prompt_transfer.configure import gin_files
from prompt_transfer.data import batches, metrics
from prompt_transfer.data.batches import pad_token_rows
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import checkpoints, t5
from prompt_transfer.prompt import prompts
from prompt_transfer.stages import figures
from prompt_transfer.transfer import retrieval

LENGTHS = {"inputs": 12, "targets": 4}


@pytest.fixture(scope="module")
def setup(anchors):
    register_keyword_task(T5_VOCAB)
    module = t5.T5(gin_files.read_model_config("tiny"))
    network = checkpoints.restore_params(TINY_CHECKPOINT, t5.abstract_params(module))
    rng = np.random.default_rng(0)
    stack = rng.uniform(-0.5, 0.5, (2, 5, 4)).astype(np.float32)
    return EncoderDecoderModel(module), network, stack


def _by_hand(model, network, prompt, task="test_keyword") -> tuple[float, float]:
    """Rank classification over yes/no on the validation split, computed directly: (accuracy,
    balanced accuracy)."""
    ds = batches.get_task(task).get_dataset(LENGTHS, "validation", shuffle=False)
    examples = list(ds.as_numpy_iterator())
    tokens = jnp.asarray(pad_token_rows([list(e["inputs"]) for e in examples]))
    vocab = batches.get_task("test_keyword").output_features["targets"].vocabulary
    candidates = jnp.asarray(pad_token_rows([vocab.encode(w) + [1] for w in ("yes", "no")]))
    scores = model.rank_classify(
        prompts.with_prompt(network, jnp.asarray(prompt)), tokens, candidates
    )
    predicted = np.where(np.argmax(np.asarray(scores), -1) == 0, "yes", "no")
    truth = [e["targets_pretokenized"].decode() for e in examples]
    truth = np.asarray(truth)
    recalls = [np.mean(predicted[truth == label] == label) for label in ("yes", "no")]
    return 100.0 * np.mean(predicted == truth), 100.0 * np.mean(recalls)


def test_zero_shot_matrix_scores_each_prompt_on_each_target(setup, tmp_path):
    model, network, stack = setup
    matrix = retrieval.zero_shot_matrix(
        model, network, stack, ["test_keyword"], LENGTHS, batch_size=8
    )
    assert matrix.shape == (2, 1)
    for i in range(2):
        assert matrix[i, 0] == pytest.approx(_by_hand(model, network, stack[i])[0])
    png = figures.heatmap(
        matrix, ["p0", "p1"], ["test_keyword"], tmp_path / "zero_shot.png", "zero-shot accuracy"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zero_shot_scores_by_the_measure_asked(setup):
    """A study measured in balanced accuracy gets its zero-shot matrix in it too, not in the
    task's first metric (accuracy)."""
    model, network, stack = setup
    task = register_keyword_task(
        T5_VOCAB,
        "test_keyword_balanced",
        n_validation=40,
        metric_fns=(metrics.accuracy, metrics.balanced_accuracy),
    )
    by_hand = [_by_hand(model, network, prompt, task) for prompt in stack]
    assert by_hand[0][0] != by_hand[0][1]  # 40 examples, not half of each: the two measures part
    for measure, column in [(None, 0), ("balanced_accuracy", 1)]:
        matrix = retrieval.zero_shot_matrix(
            model, network, stack, [task], LENGTHS, batch_size=8, measure=measure
        )
        np.testing.assert_allclose(matrix[:, 0], [scores[column] for scores in by_hand])
