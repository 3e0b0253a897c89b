"""SPoT's 16 source and 10 target tasks (Vu et al. 2022, Table 1) under stable names.

`spot_source_<name>` and `spot_target_<name>`: TFDS-backed where a builder exists (aliases of
the GLUE/SuperGLUE tasks, or new registrations here); DocNLI, CxC and CR have no TFDS builder
and read local files (`file_tasks`) named by environment variables, with these columns:
  DocNLI  $SPOT_DOCNLI_DIR/{train,validation}.jsonl   premise, hypothesis, label
          (entailment / not_entailment)
  CxC     $SPOT_CXC_DIR/{train,validation}.tsv        sentence1, sentence2, label (0..5 similarity)
  CR      $SPOT_CR_DIR/{train,validation}.tsv         sentence, label (negative / positive)
C4 is T5's span-corruption objective (`span_corruption`). Mixtures: `spot_sources` (all
registered sources, examples-proportional with SPoT's cap K = 2^19).
"""

import functools
import os

from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.data import file_tasks, metrics, registry, text_formats, vocab

from . import super_glue  # noqa: F401  (the aliases below name its tasks)
from .glue import CAP

seqio = import_seqio()
tf = import_tensorflow()


ALIASES = {}  # stable SPoT name -> the registered task it stands for


def _alias(name, task):
    ALIASES[name] = task
    seqio.MixtureRegistry.add(name, [(task, 1.0)])


def _tfds(
    name,
    tfds_name,
    splits,
    preprocessor,
    labels=None,
    metric_fns=(metrics.accuracy,),
    postprocess=None,
):
    registry.register_text_task(
        name,
        seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits),
        vocab.task_vocabulary(),
        labels=labels,
        metric_fns=metric_fns,
        preprocessors=[preprocessor],
        postprocess_fn=postprocess
        or (text_formats.string_label_to_class_id(labels) if labels else None),
    )


_mc = lambda n: (text_formats.LETTERS[:n], [metrics.accuracy])

_tfds(
    "spot_source_squad",
    "squad/v1.1:3.0.0",
    {"train": "train", "validation": "validation"},
    text_formats.qa_format("squad", "question", "context", lambda ex: ex["answers"]["text"]),
    metric_fns=[metrics.squad],
    postprocess=text_formats.answers_postprocess,
)
_tfds(
    "spot_source_drop",
    "drop:2.0.0",
    {"train": "train", "validation": "dev"},
    text_formats.qa_format(
        "drop",
        "question",
        "passage",
        lambda ex: tf.concat([[ex["answer"]], ex["validated_answers"]], 0),
    ),
    metric_fns=[metrics.squad],
    postprocess=text_formats.answers_postprocess,
)
_tfds(
    "spot_source_winogrande",
    "winogrande:1.2.0",
    {"train": "train_xl", "validation": "validation", "test": "test"},
    text_formats.multiple_choice(
        "winogrande",
        ("sentence",),
        lambda ex: tf.stack([ex["option1"], ex["option2"]]),
        lambda ex: ex["label"],
    ),
    *_mc(2),
)
_tfds(
    "spot_source_hellaswag",
    "hellaswag:1.1.0",
    {"train": "train", "validation": "validation", "test": "test"},
    text_formats.multiple_choice(
        "hellaswag", ("context",), lambda ex: ex["endings"], lambda ex: ex["label"]
    ),
    *_mc(4),
)
_tfds(
    "spot_source_cosmos_qa",
    "cosmos_qa:1.0.0",
    {"train": "train", "validation": "validation", "test": "test"},
    text_formats.multiple_choice(
        "cosmosqa",
        ("question", "context"),
        lambda ex: tf.stack([ex[f"answer{i}"] for i in range(4)]),
        lambda ex: ex["label"],
    ),
    *_mc(4),
)
_tfds(
    "spot_source_race",
    "race/high:2.0.0",
    {"train": "train", "validation": "dev", "test": "test"},
    text_formats.race_questions(),
    *_mc(4),
)
_tfds(
    "spot_source_yelp2",
    "yelp_polarity_reviews:0.2.0",
    {"train": "train[:95%]", "validation": "train[95%:]", "test": "test"},
    text_formats.glue_text("yelp", ("negative", "positive"), keys=("text",)),
    labels=("negative", "positive"),
)

registry.register_span_corruption_task(
    "spot_source_c4",
    seqio.TfdsDataSource(tfds_name="c4/en:3.1.0", splits=("train", "validation")),
    vocab.task_vocabulary(),
)

for _source, _task in {
    "mnli": "glue_mnli_matched",
    "qqp": "glue_qqp",
    "qnli": "glue_qnli",
    "sst2": "glue_sst2",
    "record": "super_glue_record",
    "multirc": "super_glue_multirc",
}.items():
    _alias(f"spot_source_{_source}", _task)
for _target, _task in {
    "boolq": "super_glue_boolq",
    "cola": "glue_cola",
    "stsb": "glue_stsb",
    "wic": "super_glue_wic",
    "mrpc": "glue_mrpc",
    "rte": "super_glue_rte",
    "wsc": "super_glue_wsc",
    "copa": "super_glue_copa",
    "cb": "super_glue_cb",
}.items():
    _alias(f"spot_target_{_target}", _task)

# No TFDS builder: local files, registered when their directory is configured.
_FILE_TASKS = {
    "spot_source_docnli": (
        "SPOT_DOCNLI_DIR",
        "jsonl",
        ("premise", "hypothesis"),
        ("entailment", "not_entailment"),
    ),
    "spot_source_cxc": (
        "SPOT_CXC_DIR",
        "tsv",
        ("sentence1", "sentence2"),
        ("0", "1", "2", "3", "4", "5"),
    ),
    "spot_target_cr": ("SPOT_CR_DIR", "tsv", ("sentence",), ("negative", "positive")),
}
for _name, (_env, _ext, _inputs, _labels) in _FILE_TASKS.items():
    if os.environ.get(_env):
        file_tasks.register_file_task(
            file_tasks.FileTask(
                name=_name,
                train=os.path.join(os.environ[_env], f"train.{_ext}"),
                validation=os.path.join(os.environ[_env], f"validation.{_ext}"),
                inputs=_inputs,
                labels=_labels,
                prefix=_name.split("_")[-1],
            )
        )

SOURCES = [
    "c4",
    "squad",
    "drop",
    "winogrande",
    "hellaswag",
    "cosmos_qa",
    "race",
    "yelp2",
    "mnli",
    "qqp",
    "qnli",
    "sst2",
    "record",
    "multirc",
    "docnli",
    "cxc",
]
TARGETS = ["boolq", "cola", "stsb", "wic", "cr", "mrpc", "rte", "wsc", "copa", "cb"]
_source_tasks = [ALIASES.get(f"spot_source_{s}", f"spot_source_{s}") for s in SOURCES]
seqio.MixtureRegistry.add(
    "spot_sources",
    [t for t in _source_tasks if t in seqio.TaskRegistry.names()],
    default_rate=functools.partial(seqio.mixing_rate_num_examples, maximum=CAP),
)
