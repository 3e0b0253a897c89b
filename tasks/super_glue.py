"""SuperGLUE from TFDS in T5's text-to-text format: super_glue_<task> and mixtures."""

import functools

from prompt_transfer.base.tf_import import import_seqio
from prompt_transfer.data import metrics, registry, text_formats, vocab

from .glue import CAP, GLUE_TASKS, SPLITS

seqio = import_seqio()

SUPER_GLUE = {
    "boolq": (("False", "True"), [metrics.accuracy]),
    "cb": (("entailment", "contradiction", "neutral"), [metrics.accuracy, metrics.macro_f1]),
    "copa": (("choice1", "choice2"), [metrics.accuracy]),
    "rte": (("entailment", "not_entailment"), [metrics.accuracy]),
    "wic": (("False", "True"), [metrics.accuracy]),
    "wsc": (("False", "True"), [metrics.accuracy]),
}

for _name, (_labels, _metrics) in SUPER_GLUE.items():
    for _task_name in (f"super_glue_{_name}", f"super_glue_{_name}_v102"):  # ours, T5's
        registry.register_text_task(
            _task_name,
            seqio.TfdsDataSource(tfds_name=f"super_glue/{_name}:1.0.2", splits=SPLITS),
            vocab.task_vocabulary(),
            labels=_labels,
            metric_fns=_metrics,
            preprocessors=[text_formats.glue_text(_name, _labels)],
            postprocess_fn=text_formats.string_label_to_class_id(_labels),
        )

registry.register_text_task(
    "super_glue_multirc",
    seqio.TfdsDataSource(tfds_name="super_glue/multirc:1.0.2", splits=SPLITS),
    vocab.task_vocabulary(),
    labels=("False", "True"),
    metric_fns=[metrics.multirc],
    preprocessors=[text_formats.multirc_format()],
    postprocess_fn=text_formats.multirc_postprocess,
)

# ReCoRD: the target is the first answer; every answer stays in `answers` for the metric (T5
# repeats training examples once per answer; one target per passage keeps the task one source).
registry.register_text_task(
    "super_glue_record",
    seqio.TfdsDataSource(tfds_name="super_glue/record:1.0.2", splits=SPLITS),
    vocab.task_vocabulary(),
    metric_fns=[metrics.squad],
    preprocessors=[text_formats.record_format()],
    postprocess_fn=text_formats.record_postprocess,
)

SUPER_GLUE_TASKS = [f"super_glue_{n}" for n in (*SUPER_GLUE, "multirc", "record")]
_rate = functools.partial(seqio.mixing_rate_num_examples, maximum=CAP)
seqio.MixtureRegistry.add("super_glue", SUPER_GLUE_TASKS, default_rate=_rate)
seqio.MixtureRegistry.add("glue_and_super_glue", GLUE_TASKS + SUPER_GLUE_TASKS, default_rate=_rate)
