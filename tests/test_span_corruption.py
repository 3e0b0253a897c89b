"""T5's span corruption: lengths, noise fraction, and inputs + targets rebuild the text."""

import numpy as np
import pytest

from prompt_transfer.base.tf_import import import_tensorflow
from prompt_transfer.data import span_corruption as sc

VOCAB = 1000


def _corrupt(tokens, seed=0):
    tf = import_tensorflow()
    ds = tf.data.Dataset.from_tensors({"targets": tf.constant(tokens, tf.int32)})
    ds = sc.split_to_pieces(len(tokens))(ds)
    import seqio

    with seqio.utils.map_seed_manager(seed):
        out = sc.span_corruption(VOCAB)(ds)
    return next(out.as_numpy_iterator())


def _rebuild(inputs, targets):
    """Put each sentinel's span from the targets back in place of the sentinel."""
    spans, current = {}, None
    for t in targets:
        if t >= VOCAB - 100:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    return [x for t in inputs for x in (spans[t] if t >= VOCAB - 100 else [t])]


def test_t5_lengths():
    assert sc.raw_length_for(512) == (568, 114)  # T5's numbers for C4 pre-training
    assert sc.lengths_after_corruption(568) == (512, 114)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inputs_and_targets_rebuild_the_piece(seed):
    tokens = list(range(3, 3 + 568))
    ex = _corrupt(tokens, seed)
    assert len(ex["inputs"]) + 1 == 512 and len(ex["targets"]) + 1 == 114  # + EOS later
    assert _rebuild(ex["inputs"], ex["targets"]) == tokens
    sentinels = [t for t in ex["inputs"] if t >= VOCAB - 100]
    assert sentinels == list(range(VOCAB - 1, VOCAB - 1 - len(sentinels), -1))
    noise = len(ex["targets"]) - len(sentinels)
    assert noise == round(0.15 * 568) and len(sentinels) == round(noise / 3)


def test_seeds_change_the_spans():
    tokens = list(range(3, 3 + 200))
    a, b = _corrupt(tokens, 0), _corrupt(tokens, 1)
    assert not np.array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["inputs"], _corrupt(tokens, 0)["inputs"])


def _prefix_lm(tokens, seed=0):
    tf = import_tensorflow()
    import seqio

    ds = tf.data.Dataset.from_tensors({"targets": tf.constant(tokens, tf.int32)})
    with seqio.utils.map_seed_manager(seed):
        return next(sc.prefix_lm_split()(ds).as_numpy_iterator())


def test_prefix_lm_splits_a_piece_into_prefix_and_continuation():
    tokens = list(range(3, 3 + 63))
    cuts = set()
    for seed in range(8):
        ex = _prefix_lm(tokens, seed)
        assert list(ex["inputs"]) + list(ex["targets"]) == tokens
        assert len(ex["inputs"]) >= 1 and len(ex["targets"]) >= 1
        cuts.add(len(ex["inputs"]))
    assert len(cuts) > 4  # the split point is random
