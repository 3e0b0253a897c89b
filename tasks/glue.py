"""GLUE from TFDS in T5's text-to-text format: glue_<task> and the `glue` mixture."""

import functools

from prompt_transfer import metrics, registry, text_formats, vocab
from prompt_transfer.tf_import import import_seqio

seqio = import_seqio()

# name: (TFDS config, label names or None for regression, metric functions)
GLUE = {
    "cola": ("cola", ("unacceptable", "acceptable"), [metrics.matthews_corrcoef]),
    "sst2": ("sst2", ("negative", "positive"), [metrics.accuracy]),
    "mrpc": ("mrpc", ("not_equivalent", "equivalent"), [metrics.f1_and_accuracy]),
    "qqp": ("qqp", ("not_duplicate", "duplicate"), [metrics.f1_and_accuracy]),
    "stsb": ("stsb", None, [metrics.pearson_and_spearman]),
    "qnli": ("qnli", ("entailment", "not_entailment"), [metrics.accuracy]),
    "rte": ("rte", ("entailment", "not_entailment"), [metrics.accuracy]),
    "wnli": ("wnli", ("not_entailment", "entailment"), [metrics.accuracy]),
}
MNLI_LABELS = ("entailment", "neutral", "contradiction")
CAP = 2**19  # SPoT's examples-proportional mixing cap K


SPLITS = ("train", "validation", "test")


def _register(name, tfds_config, labels, metric_fns, splits=SPLITS, prefix=None):
    postprocess = (
        text_formats.string_to_float
        if labels is None
        else text_formats.string_label_to_class_id(labels)
    )
    registry.register_text_task(
        f"glue_{name}",
        seqio.TfdsDataSource(tfds_name=f"glue/{tfds_config}:2.0.0", splits=splits),
        vocab.task_vocabulary(),
        labels=labels,
        metric_fns=metric_fns,
        preprocessors=[text_formats.glue_text(prefix or tfds_config, labels)],
        postprocess_fn=postprocess,
    )


for _name, (_config, _labels, _metrics) in GLUE.items():
    _register(_name, _config, _labels, _metrics)
for _which in ("matched", "mismatched"):
    _register(
        f"mnli_{_which}",
        "mnli",
        MNLI_LABELS,
        [metrics.accuracy],
        prefix="mnli",
        splits={"train": "train", "validation": f"validation_{_which}", "test": f"test_{_which}"},
    )

GLUE_TASKS = [f"glue_{n}" for n in (*GLUE, "mnli_matched")]
seqio.MixtureRegistry.add(
    "glue", GLUE_TASKS, default_rate=functools.partial(seqio.mixing_rate_num_examples, maximum=CAP)
)
