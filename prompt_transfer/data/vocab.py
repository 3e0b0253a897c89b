"""SeqIO SentencePiece vocabulary with T5's id layout.

pad 0, eos 1, unk 2; the 32,000 pieces of cc_all.32000.100extra plus 100 sentinel ids
(`<extra_id_0>` is 32099, counting down), 32,100 ids in all; T5 models pad the embedding table
to 32,128 rows for TPU-friendly shapes.
"""

from __future__ import annotations

import os

from prompt_transfer.base import assets, environment, files
from prompt_transfer.base.errors import UserError

DEFAULT_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
# The project's own vocabulary, trained on the offline corpus (`prompt-transfer build-vocab`).
OFFLINE_VOCAB_PATH = str(assets.ASSETS_DIR / "offline_spm.model")
OFFLINE_VOCAB_PIECES = 8000
EXTRA_IDS = 100
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class VocabularyError(UserError):
    pass


def get_vocabulary(path: str | os.PathLike | None = None, extra_ids: int = EXTRA_IDS):
    """A `seqio.SentencePieceVocabulary` (T5's standard one by default, or any local file)."""
    from prompt_transfer.base.tf_import import import_seqio

    seqio = import_seqio()
    path = str(path or DEFAULT_VOCAB_PATH)
    if not path.startswith("gs://") and not os.path.isfile(path):
        raise VocabularyError(f"SentencePiece model not found: {path}")
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


_model_vocabulary: str | None = None  # set by `follow_model`: the vocabulary of the model in use


def resolve(name: str) -> str:
    """A vocabulary name from a gin file: a path, or `shipped:offline_spm.model` (hash-checked)."""
    if name.startswith(assets.SHIPPED_PREFIX):
        return str(assets.verify(name[len(assets.SHIPPED_PREFIX) :]))
    return name


def follow_model(name: str | None) -> None:
    """Tasks registered from now on take the vocabulary of the model in use (its size gin file
    names it as VOCABULARY), over $PROMPT_TRANSFER_VOCAB; None keeps the defaults below."""
    global _model_vocabulary
    _model_vocabulary = resolve(name) if name else None


def task_vocabulary():
    """The vocabulary SeqIO tasks are registered with: the model's own (`follow_model`), else
    $PROMPT_TRANSFER_VOCAB (a local SentencePiece file), else T5's standard one (read lazily)."""
    return get_vocabulary(task_vocabulary_path())


def task_vocabulary_path() -> str:
    """The file `task_vocabulary` reads (T5's gs:// one when nothing else is named)."""
    return str(_model_vocabulary or environment.vocab_override() or DEFAULT_VOCAB_PATH)


def offline_vocabulary():
    """The offline suite's vocabulary: the model's own, else $PROMPT_TRANSFER_VOCAB, else the
    project's own (trained on the offline corpus, shipped in prompt_transfer/assets)."""
    return get_vocabulary(_model_vocabulary or environment.vocab_override() or OFFLINE_VOCAB_PATH)


def check_model_reads(task, model_vocab_size: int, model_vocabulary: str | None) -> None:
    """Refuse a task whose tokens the model cannot read: ids past its embedding table (they
    would be clamped silently), or another vocabulary than the one the model names."""
    vocabulary = task.output_features["targets"].vocabulary
    own = getattr(vocabulary, "sentencepiece_model_file", None)
    if (
        model_vocabulary
        and own
        and os.path.abspath(own) != os.path.abspath(resolve(model_vocabulary))
    ):
        raise VocabularyError(
            f"task {task.name!r} is tokenized with {own}, but the model reads "
            f"{model_vocabulary}; register the task after choosing the model (one command per "
            "model) or set VOCABULARY to the task's vocabulary"
        )
    if vocabulary.vocab_size > model_vocab_size:
        raise VocabularyError(
            f"task {task.name!r} has {vocabulary.vocab_size} token ids but the model embeds "
            f"{model_vocab_size}; use the model's own vocabulary (VOCABULARY in its size gin file)"
        )


def sentinel_id(vocabulary, index: int) -> int:
    """Id of `<extra_id_{index}>`: sentinels count down from the top of the vocabulary."""
    return vocabulary.vocab_size - 1 - index


def train_vocabulary(
    texts,
    output: str | os.PathLike,
    size: int = OFFLINE_VOCAB_PIECES,
    seed_sentences: int = 200_000,
) -> str:
    """Train a unigram SentencePiece model with T5's id layout (pad 0, eos 1, unk 2, no bos);
    SeqIO adds the 100 sentinels above it. Written atomically; returns the path."""
    import tempfile

    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=os.path.join(tmp, "spm"),
            vocab_size=size,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=0.9995,
            input_sentence_size=seed_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=8192,
            num_threads=2,
            minloglevel=2,
        )
        with open(os.path.join(tmp, "spm.model"), "rb") as f:
            files.atomic_write_bytes(output, f.read())
    return str(output)
