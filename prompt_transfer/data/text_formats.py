"""Text-to-text formats of T5 and SPoT, as SeqIO preprocessors and postprocessors.

A GLUE-style example becomes `"<task> key1: value1 key2: value2"` with the keys in sorted order
(T5's convention: `"rte sentence1: ... sentence2: ..."`, `"mnli hypothesis: ... premise: ..."`)
and its label becomes the label's name (`"entailment"`); STS-B scores are rounded to 0.2 and
written as text. Postprocessors map a model's text back to a class id (-1 when it is none of
the labels, which counts as wrong) or a float.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from prompt_transfer.base.tf_import import import_tensorflow

UNKNOWN_LABEL = "<unk>"


def _join(prefix: str, ex, keys: Sequence[str]):
    """'rte sentence1: ... sentence2: ...' (T5's); without a prefix (prompt-tuning's "taskless"
    tasks), 'sentence1: ... sentence2: ...'."""
    tf = import_tensorflow()
    parts = []
    for key in keys:
        gap = " " if parts or prefix else ""
        parts += [tf.constant(f"{gap}{key}: "), tf.strings.strip(ex[key])]
    return tf.strings.join([tf.constant(prefix), *parts])


def _label_text(label, label_names: Sequence[str]):
    tf = import_tensorflow()
    names = tf.constant([*label_names, UNKNOWN_LABEL])
    index = tf.where(label < 0, len(label_names), tf.cast(label, tf.int32))
    return tf.gather(names, index)


def glue_text(prefix: str, label_names: Sequence[str] | None, keys: Sequence[str] | None = None):
    """Preprocessor for a classification or regression example with text fields.

    Args:
      prefix: the task name that opens the input ("rte").
      label_names: class names in label order; None for STS-B-style float labels.
      keys: the text fields in order (default: every string field except label/idx, sorted).
    """
    tf = import_tensorflow()

    def fn(ds):
        def convert(ex):
            fields = keys or sorted(
                k for k, v in ex.items() if k not in ("label", "idx") and v.dtype == tf.string
            )
            if label_names is None:  # STS-B: round to the nearest 0.2, T5's regression target
                target = tf.strings.as_string(tf.round(ex["label"] * 5) / 5, precision=1)
            else:
                target = _label_text(ex["label"], label_names)
            out = {"inputs": _join(prefix, ex, fields), "targets": target}
            if "idx" in ex:
                out["idx"] = ex["idx"]
            return out

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    return fn


def string_label_to_class_id(label_names: Sequence[str]):
    """Postprocessor: the text -> its index in `label_names`, -1 if it is none of them."""
    names = list(label_names)

    def fn(output, example=None, is_target=False):
        text = output.decode() if isinstance(output, bytes) else str(output)
        return names.index(text.strip()) if text.strip() in names else -1

    return fn


def string_to_float(output, example=None, is_target=False, default: float = -1.0) -> float:
    text = output.decode() if isinstance(output, bytes) else str(output)
    try:
        return float(text)
    except ValueError:
        return default


def multirc_format():
    """MultiRC: one example per answer option, `"multirc question: answer: paragraph:"`."""
    return glue_text("multirc", ("False", "True"), keys=("question", "answer", "paragraph"))


def multirc_postprocess(output, example=None, is_target=False):
    """Targets carry their question (`group`) so exact match can be taken per question."""
    value = string_label_to_class_id(("False", "True"))(output)
    if not is_target:
        return value
    idx = example["idx"]
    return {"group": (int(idx["paragraph"]), int(idx["question"])), "value": value}


def _record_passage(passage):
    tf = import_tensorflow()
    passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record_format():
    """ReCoRD as T5 formats it: `"record query: ... entities: a, b passage: ..."` -> the first
    answer, with every correct answer kept in `answers` (the metric takes the best match)."""
    tf = import_tensorflow()

    def fn(ds):
        def convert(ex):
            inputs = tf.strings.join(
                [
                    "record query: ",
                    ex["query"],
                    " entities: ",
                    tf.strings.reduce_join(ex["entities"], separator=", "),
                    " passage: ",
                    _record_passage(ex["passage"]),
                ]
            )
            answers = ex["answers"]
            first = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(""))
            return {"inputs": inputs, "targets": first, "answers": answers}

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    return fn


def record_postprocess(output, example=None, is_target=False):
    if is_target:
        return [a.decode() if isinstance(a, bytes) else str(a) for a in example["answers"]]
    return output.decode() if isinstance(output, bytes) else str(output)


def answers_postprocess(output, example=None, is_target=False):
    if is_target:
        return [a.decode() if isinstance(a, bytes) else str(a) for a in example["answers"]]
    return output.decode() if isinstance(output, bytes) else str(output)


def clean_text(text: str) -> str:
    """Collapse whitespace; used by the file-based and offline sources."""
    return re.sub(r"\s+", " ", text).strip()


LETTERS = ("A", "B", "C", "D")


def _listed(options):
    """`"(A) first (B) second ..."` from a [N] string tensor of options."""
    tf = import_tensorflow()
    options = options[: len(LETTERS)]
    n = tf.shape(options)[0]
    letters = tf.constant([f"({c}) " for c in LETTERS])[:n]
    return tf.strings.reduce_join(tf.strings.join([letters, options]), separator=" ")


def multiple_choice(prefix: str, context_keys: Sequence[str], options_fn, label_fn):
    """Multiple choice as `"<prefix> key: ... options: (A) .. (B) .."` -> the answer's letter.

    `options_fn(ex)` gives the [N] options, `label_fn(ex)` the 0-based index of the answer.
    """
    tf = import_tensorflow()

    def fn(ds):
        def convert(ex):
            inputs = tf.strings.join(
                [_join(prefix, ex, context_keys), " options: ", _listed(options_fn(ex))]
            )
            label = tf.cast(label_fn(ex), tf.int32)
            valid = (label >= 0) & (label < len(LETTERS))  # unlabelled test examples: <unk>
            target = tf.gather(
                tf.constant([*LETTERS, UNKNOWN_LABEL]), tf.where(valid, label, len(LETTERS))
            )
            return {"inputs": inputs, "targets": target}

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    return fn


def race_questions():
    """RACE stores several questions per article: one example per question (letter answers)."""
    tf = import_tensorflow()

    def fn(ds):
        def per_question(ex):
            options = ex["options"]
            if isinstance(options, tf.RaggedTensor):
                options = options.to_tensor(default_value="")
            n = tf.reduce_min(
                [tf.shape(ex["questions"])[0], tf.shape(options)[0], tf.shape(ex["answers"])[0]]
            )  # equal in RACE; guard anyway
            return tf.data.Dataset.from_tensor_slices(
                {
                    "article": tf.fill([n], ex["article"]),
                    "question": ex["questions"][:n],
                    "options": options[:n, :4],
                    "answer": ex["answers"][:n],
                }
            )

        def convert(ex):
            inputs = tf.strings.join(
                [_join("race", ex, ("question", "article")), " options: ", _listed(ex["options"])]
            )
            known = tf.reduce_any(tf.equal(ex["answer"], tf.constant(LETTERS)))
            return {"inputs": inputs, "targets": tf.where(known, ex["answer"], UNKNOWN_LABEL)}

        return ds.flat_map(per_question).map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    return fn


def qa_format(prefix: str, question_key: str, context_key: str, answers_fn):
    """Extractive / abstractive QA: `"<prefix> question: ... context: ..."` -> first answer,
    all reference answers kept in `answers` for the metric."""
    tf = import_tensorflow()

    def fn(ds):
        def convert(ex):
            answers = answers_fn(ex)
            return {
                "inputs": tf.strings.join(
                    [prefix, " question: ", ex[question_key], " context: ", ex[context_key]]
                ),
                "targets": answers[0],
                "answers": answers,
            }

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    return fn
