"""Evaluation through SeqIO's Evaluator: rank classification or decoding, then task metrics.

For a classification task (one with label strings, see `registry`), the "prediction" handed to
SeqIO is the label whose token sequence the model scores highest (rank classification); for a
generative task it is the greedy decode. SeqIO then detokenizes, postprocesses and applies the
task's metric functions, so a task's metrics are the same whichever way it is evaluated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.data import batches, registry, seqio_cache
from prompt_transfer.model import encoder_decoder
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning


class TaskEvaluator:
    """Evaluates parameter trees on every task of a task or mixture, one SeqIO Evaluator each.

    For classification tasks it also counts, per evaluation, which label each example was given
    (`predictions`) and which it carries (`labels`, read off the same batches): a run whose
    accuracy equals one class's share and whose predictions are all that class is a constant
    predictor, and a report should say so. And it measures how much probability the model puts
    on each example's true label among the labels (`likelihoods`: the mean log of it, in nats),
    a score that moves with every step where accuracy moves by whole examples.
    """

    def __init__(
        self,
        model: EncoderDecoderModel,
        name: str,
        split: str,
        feature_lengths: Mapping[str, int],
        batch_size: int,
        log_dir: str | None = None,
        how=None,
    ):
        """`log_dir`: SeqIO's JSON and TensorBoard loggers write there, as T5X's evaluations do
        (`<task>-metrics.jsonl`, `<task>-<step>.jsonl` predictions, event files). `how`: a
        decoding.Decoding for generative tasks (None: greedy)."""
        seqio = import_seqio()
        self.model, self.batch_size, self.how = model, batch_size, how
        self.max_decode_length = int(feature_lengths["targets"])
        self.input_length = int(feature_lengths["inputs"])
        self.evaluators, self.candidates, self.label_names = {}, {}, {}
        self._sets: dict[str, tuple] = {}  # task: what names its evaluation set (host_batches)
        self.predictions: dict[str, dict[str, int]] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self._likelihood: dict[str, list[float]] = {}  # task: [sum of log p(true label), count]
        for task_name, labels in registry.mixture_labels(name).items():
            task = seqio.get_mixture_or_task(task_name)
            if split not in task.splits:
                raise batches.TaskError(
                    f"task {task_name!r} has no split {split!r} to evaluate on; "
                    f"it has {sorted(task.splits)}"
                )
            lengths = tuple(sorted(feature_lengths.items()))
            cached = seqio_cache.use_for(task, split)
            self.evaluators[task_name] = _seqio_evaluator(task, split, lengths, log_dir, cached)
            self._sets[task_name] = (task, split, lengths, cached)
            if labels:
                vocab = task.output_features["targets"].vocabulary
                self.candidates[task_name] = [vocab.encode(label) for label in labels]
                self.label_names[task_name] = list(labels)
        check_labels_fit(name, feature_lengths)

    def _predict_fn(self, params, task_name: str, model=None, prompt=None):
        """SeqIO's predict_fn: `model` (the evaluator's by default) on `params`."""
        model = model or self.model
        rank, decode = _jitted(model)
        candidates = self.candidates.get(task_name)
        labels = self.label_names.get(task_name, [])  # in the candidates' order
        counts = self.predictions[task_name] = dict.fromkeys(labels, 0)
        truth = self.labels[task_name] = dict.fromkeys(labels, 0)
        likelihood = self._likelihood[task_name] = [0.0, 0]
        column = {tuple(c): i for i, c in enumerate(candidates or [])}  # a label's ids: its column
        eos = model.eos_id
        place, replicate, rules = input_placers(params, self.batch_size)
        candidate_ids = (
            None
            if candidates is None
            else replicate(batches.pad_token_rows([c + [eos] for c in candidates]))
        )
        padded = None if candidates is None else batches.pad_token_rows(candidates)

        def predict(ds) -> list[tuple[int, list[int]]]:
            outputs = []
            for index, tokens, targets in self._batches(ds, task_name, params, place):
                real = index >= 0  # padding rows say -1
                if candidate_ids is not None:
                    with rules():
                        scores = rank(params, tokens, candidate_ids, prompt)
                    scores = partitioning.host_array(scores)[real]
                    best = np.argmax(scores, -1)
                    # Equal-length rows: SeqIO stacks predictions into one array (as T5X's
                    # padded decodes are); the pad id decodes to nothing.
                    rows = [padded[b].tolist() for b in best]
                    for b in best:
                        counts[labels[b]] += 1
                    # the log-probability of each label among the labels
                    given = special.log_softmax(scores.astype(np.float64), axis=-1)
                    for i, row in enumerate(targets[real]):
                        c = column.get(tuple(t for t in row.tolist() if t not in (0, eos)))
                        if c is not None:
                            truth[labels[c]] += 1
                            likelihood[0] += float(given[i, c])
                            likelihood[1] += 1
                elif self.how is not None and self.how.method != "greedy":
                    with rules():
                        decoded = model.decode(
                            params, tokens, self.max_decode_length, self.how, prompt=prompt
                        )
                else:
                    with rules():
                        decoded = decode(
                            params, tokens, max_length=self.max_decode_length, prompt=prompt
                        )
                    rows = [list(r) for r in partitioning.host_array(decoded)[real]]
                outputs.extend(zip(index[real].tolist(), rows, strict=True))
            return outputs

        return predict

    def _batches(self, ds, task_name: str, params, place):
        """(index [B], input tokens on the mesh [B, L], targets [B, T]) of each batch of `ds`
        (SeqIO's (index, features) pairs of `task_name`); padding rows have index -1.

        In a multi-process job each process reads its own share of the examples (`ds.shard`)
        and every batch is assembled from all processes' rows; its index and targets are read
        back whole, so every process sees every prediction and computes the same metrics."""
        size, processes = self.batch_size, jax.process_count()
        if processes == 1:
            for index, tokens, targets in host_batches(ds, self._sets[task_name], size):
                yield index, place(tokens), targets
            return
        from jax.experimental import multihost_utils

        mesh = partitioning.mesh_of(params)
        ways = mesh.shape[partitioning.DATA_AXIS]
        if size % ways or ways % processes:
            raise batches.TaskError(
                f"EVAL_BATCH_SIZE={size} does not split over the {ways} data-parallel devices "
                f"of {processes} processes; use a multiple of {ways}"
            )
        rows = size // processes
        mine = list(ds.shard(processes, jax.process_index()).batch(rows).as_numpy_iterator())
        count = int(np.max(multihost_utils.process_allgather(np.int32(len(mine)))))
        sharding = {
            k: partitioning.data_sharding(mesh, d) for k, d in (("i", 1), ("x", 2), ("y", 2))
        }
        for b in range(count):  # the same number of batches on every process
            index, features = mine[b] if b < len(mine) else (np.zeros(0, np.int64), {})
            local = {
                "i": _pad_index(index, rows),
                "x": self._rows(features, "encoder_input_tokens", self.input_length, rows),
                "y": self._rows(features, "decoder_target_tokens", self.max_decode_length, rows),
            }
            whole = partitioning.global_batch(local, sharding)
            yield (
                partitioning.host_array(whole["i"]),
                whole["x"],
                partitioning.host_array(whole["y"]),
            )

    @staticmethod
    def _rows(features, name: str, length: int, rows: int) -> np.ndarray:
        if name not in features:  # this process has no examples left: padding only
            return np.zeros((rows, length), np.int32)
        return encoder_decoder.pad_batch(features[name], rows)

    def likelihoods(self) -> dict[str, float]:
        """{task: the mean log-probability of the true label among the task's labels} of the
        last evaluation, for the classification tasks whose examples carry a label."""
        return {task: total / n for task, (total, n) in self._likelihood.items() if n}

    def evaluate(self, params, step: int | None = None) -> dict[str, dict[str, float]]:
        """{task name: {metric: value}} for `params` (network + prompt)."""
        results = {}
        for k, (task_name, evaluator) in enumerate(self.evaluators.items()):
            # a multi-task run scores each task with its own prompt (its kind's for_task)
            kind, own = self.model.kind.for_task(params, k, self.model.module.config)
            model = dataclasses.replace(self.model, kind=kind)
            future, _ = evaluator.evaluate(
                compute_metrics=True, step=step, predict_fn=self._predict_fn(own, task_name, model)
            )
            results[task_name] = {k: float(v) for k, v in future.result()[task_name].items()}
        return results


def input_placers(params, rows: int):
    """(place, replicate, rules) for evaluation inputs, which every process reads whole and
    alike: on the parameters' mesh, a batch splits along `data` when its rows divide, else it
    (and anything small) is replicated; `rules()` is the context in which the model's
    activation layout applies. Parameters not on a mesh leave placement to jit."""
    mesh = partitioning.mesh_of(params)
    if mesh is None:
        return jnp.asarray, jnp.asarray, contextlib.nullcontext
    whole = partitioning.replicated(mesh)
    split = partitioning.data_sharding(mesh, 2)
    if rows % mesh.shape[partitioning.DATA_AXIS]:
        split = whole
    return (
        lambda x: jax.device_put(np.asarray(x), split),
        lambda x: jax.device_put(np.asarray(x), whole),
        lambda: partitioning.activation_rules(mesh),
    )


_HOST_BATCHES: dict[tuple, tuple] = {}
HOST_BATCHES_KEPT = 32  # evaluation sets; the oldest goes first


def host_batches(ds, evaluation_set: tuple, size: int) -> tuple:
    """The (index, input tokens, targets) NumPy batches of `size` rows of an evaluation set,
    padded (index -1): read from `ds` (SeqIO's enumerated, cached examples) the first time
    the set (task object, split, lengths, source) is evaluated at this batch size in this
    process, then kept. Every evaluation of a run, and every run of a flow, on that set reads
    the same examples in the same order; building and draining a tf.data iterator over them
    cost ~0.15 s an evaluation (300 short examples; a warm `eval` of a tiny run takes 0.4-0.65
    s). The tokens are held beside SeqIO's own in-memory copy of the examples, which holds more
    (every feature, the texts too)."""
    key = (*evaluation_set, size)
    if key not in _HOST_BATCHES:
        while len(_HOST_BATCHES) >= HOST_BATCHES_KEPT:
            del _HOST_BATCHES[next(iter(_HOST_BATCHES))]
        _HOST_BATCHES[key] = tuple(
            (
                _pad_index(index, size),
                encoder_decoder.pad_batch(features["encoder_input_tokens"], size),
                encoder_decoder.pad_batch(features["decoder_target_tokens"], size),
            )
            for index, features in ds.batch(size).as_numpy_iterator()
        )
    return _HOST_BATCHES[key]


def _pad_index(index: np.ndarray, size: int) -> np.ndarray:
    """Example indices padded to `size` rows with -1 (rows that are not examples)."""
    return np.pad(np.asarray(index, np.int64), (0, size - len(index)), constant_values=-1)


@functools.lru_cache(maxsize=32)
def _seqio_evaluator(
    task, split: str, feature_lengths: tuple, log_dir: str | None = None, cached: bool = False
):
    """One SeqIO Evaluator per task object, split, lengths, log folder and source (`cached`:
    SeqIO's cache, else the task's source): it reads and caches
    the split once, and every run of a flow that evaluates on it shares that (a task registered
    again is a new object, so it is read again). The examples its metrics walk are kept in
    memory (`_examples_in_memory`)."""
    seqio = import_seqio()
    loggers = (seqio.JSONLogger, seqio.TensorBoardLogger) if log_dir else ()
    evaluator = seqio.Evaluator(
        task.name,
        batches.feature_converter(),
        eval_split=split,
        sequence_length=dict(feature_lengths),
        logger_cls=loggers,
        log_dir=log_dir,
        use_cached=cached,
    )
    examples, in_memory = evaluator.cached_task_datasets, _examples_in_memory()
    for name, ds in examples.items():  # SeqIO's own dict: what its metrics read
        examples[name] = in_memory(ds)
    return evaluator


@functools.cache
def _examples_in_memory():
    """The class of a task's evaluation examples kept in memory (made once TensorFlow is
    imported; a module that defined it would import TensorFlow with `seqio_eval`)."""

    class ExamplesInMemory(import_tensorflow().data.Dataset):
        """A task's evaluation examples as SeqIO cached them (`ds`), whose Python iteration
        replays them from a list. SeqIO's metrics walk the examples beside the predictions at
        every evaluation (`tfds.as_numpy`, one eager iterator step per example); from the list
        the walk yields the same tensors without running the dataset. As a dataset (batched,
        mapped, counted) it is `ds`, unchanged."""

        def __init__(self, ds):
            self._ds = ds
            self._examples = list(ds)
            super().__init__(ds._variant_tensor)

        def _inputs(self):
            return [self._ds]

        @property
        def element_spec(self):
            return self._ds.element_spec

        def __iter__(self):
            return iter(self._examples)

    return ExamplesInMemory


@functools.lru_cache(maxsize=4)
def _jitted(model: encoder_decoder.EncoderDecoderModel):
    """Rank classification and decoding, jitted once per model: every evaluator of a flow's runs
    shares the compiled functions."""
    return jax.jit(model.rank_classify), jax.jit(model.predict, static_argnames=("max_length",))


def majority_share(counts: Mapping[str, int]) -> tuple[str, float]:
    """(the most frequent label, its share of the examples in %): the constant predictor's
    accuracy, the floor a trained classifier must clear."""
    label = max(counts, key=counts.get)
    return label, 100.0 * counts[label] / max(sum(counts.values()), 1)


def check_labels_fit(name: str, feature_lengths: Mapping[str, int]) -> None:
    """Every label of a classification task (or mixture) fits the target length with its EOS:
    training trims targets, so a longer label would be learnt cut short and then never win
    rank classification."""
    seqio = import_seqio()
    room = int(feature_lengths["targets"])
    for task_name, labels in registry.mixture_labels(name).items():
        vocab = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
        need = max((len(vocab.encode(label)) + 1 for label in labels or ()), default=0)
        if need > room:
            label = max(labels, key=lambda x: len(vocab.encode(x)))
            raise batches.TaskError(
                f"label {label!r} of {task_name!r} needs {need} target tokens with EOS, more "
                f"than TASK_FEATURE_LENGTHS['targets']={room}; set it to at least {need}"
            )


def main_metric(results: Mapping[str, Mapping[str, float]]) -> tuple[str, float]:
    """(name, value) of the headline metric: each task's first metric, averaged over tasks."""
    firsts = [(k, v) for metrics in results.values() for k, v in list(metrics.items())[:1]]
    name = firsts[0][0] if len({k for k, _ in firsts}) == 1 else "mean_main_metric"
    return name, float(np.mean([v for _, v in firsts]))
