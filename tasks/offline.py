"""The offline suite (no network): tasks built from installed packages, see offline_data."""

from prompt_transfer import metrics, offline_data, registry, text_formats, vocab
from prompt_transfer.tf_import import import_seqio, import_tensorflow

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


OFFLINE_TASKS = offline_data.task_labels()
for _name, _labels in OFFLINE_TASKS.items():
    registry.register_text_task(
        _name,
        _source(_name),
        vocab.task_vocabulary(),
        labels=_labels,
        metric_fns=[metrics.accuracy],
        postprocess_fn=text_formats.string_label_to_class_id(_labels),
    )
