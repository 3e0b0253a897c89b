"""GLUE from TFDS in T5's text-to-text format: glue_<task> and the `glue` mixture.

Each task is registered under T5's name too (glue_<task>_v002), and without the task's name
opening the input under prompt-tuning's names (taskless_glue_<task>_v200, and
taskless_glue_<task>_v200_examples, whose examples T5X writes to TensorBoard: here evaluations
write their predictions anyway), so that a T5X job's MIXTURE_OR_TASK_NAME finds the same data.
"""

import functools

from prompt_transfer.base.tf_import import import_seqio
from prompt_transfer.data import metrics, registry, text_formats, vocab

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
    names = {
        f"glue_{name}": prefix or tfds_config,
        f"glue_{name}_v002": prefix or tfds_config,  # T5's name (TFDS 2.0.0 here)
        f"taskless_glue_{name}_v200": "",  # prompt-tuning's
        f"taskless_glue_{name}_v200_examples": "",
    }
    for task_name, opening in names.items():
        registry.register_text_task(
            task_name,
            seqio.TfdsDataSource(tfds_name=f"glue/{tfds_config}:2.0.0", splits=splits),
            vocab.task_vocabulary(),
            labels=labels,
            metric_fns=metric_fns,
            preprocessors=[text_formats.glue_text(opening, labels)],
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
