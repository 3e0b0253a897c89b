"""T5's vocabulary layout on the real T5 SentencePiece model."""

import pytest

from conftest import T5_VOCAB
from prompt_transfer.data import vocab


def test_t5_id_layout(anchors):
    v = vocab.get_vocabulary(T5_VOCAB)
    assert (v.pad_id, v.eos_id, v.unk_id) == (vocab.PAD_ID, vocab.EOS_ID, vocab.UNK_ID)
    assert v.vocab_size == 32100
    assert vocab.sentinel_id(v, 0) == 32099 and v.encode("<extra_id_0>") == [32099]
    assert v.decode([vocab.sentinel_id(v, 99)]) == "<extra_id_99>"
    ids = v.encode("The cat sat on the mat.")
    assert ids and max(ids) < 32000 and v.decode(ids) == "The cat sat on the mat."


def test_missing_vocabulary_is_named(tmp_path):
    with pytest.raises(vocab.VocabularyError, match="nope.model"):
        vocab.get_vocabulary(tmp_path / "nope.model")


def test_shipped_offline_vocabulary_has_t5_layout_and_covers_the_corpus():
    import numpy as np

    from prompt_transfer.data import offline_data

    v = vocab.get_vocabulary(vocab.OFFLINE_VOCAB_PATH)
    assert (v.pad_id, v.eos_id, v.unk_id, v.vocab_size) == (0, 1, 2, 8100)
    assert v.encode("<extra_id_0>") == [8099]
    texts = offline_data.corpus_texts()  # prepares the offline suite if needed
    ids = np.concatenate([v.encode(t) for t in texts[::50]])
    assert np.mean(ids == v.unk_id) < 0.005
