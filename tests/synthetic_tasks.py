"""Small SeqIO tasks built in memory for trainer tests (real SeqIO, real T5 vocabulary)."""

import numpy as np

from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.data import registry, vocab

WORDS_A = ["apple", "banana", "cherry", "grape", "lemon", "mango"]
WORDS_B = ["river", "mountain", "forest", "desert", "ocean", "valley"]


def keyword_examples(n: int, seed: int, labels=("yes", "no")) -> dict[str, list[str]]:
    """'is it fruit?': the label says which word list the sentence's words come from."""
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for _ in range(n):
        fruit = bool(rng.integers(2))
        words = rng.choice(WORDS_A if fruit else WORDS_B, size=3)
        inputs.append("topic: " + " ".join(words))
        targets.append(labels[0] if fruit else labels[1])
    return {"inputs": inputs, "targets": targets}


def register_keyword_task(
    vocab_path,
    name: str = "test_keyword",
    n_train: int = 256,
    n_validation: int = 32,
    labels: tuple[str, str] = ("yes", "no"),
    metric_fns=None,  # the registry's default: accuracy
):
    seqio, tf = import_seqio(), import_tensorflow()
    splits = {
        "train": keyword_examples(n_train, 0, labels),
        "validation": keyword_examples(n_validation, 1, labels),
    }

    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices(splits[split])

    source = seqio.FunctionDataSource(dataset_fn, splits=tuple(splits))
    more = {} if metric_fns is None else {"metric_fns": metric_fns}
    registry.register_text_task(
        name, source, vocab.get_vocabulary(vocab_path), labels=labels, **more
    )
    return name
