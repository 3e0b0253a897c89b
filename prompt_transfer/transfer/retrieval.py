"""Retrieval: which library prompts may start a target, and in which order.

SPoT's recipe (Vu et al. 2022, Sec. 3): the target's task embedding (its prompt after a short
training run) is compared with every eligible source prompt in the library by a similarity
metric (similarity.py), or by a score that needs the frozen model (activation overlap, or each
source used as is on the target: Su et al.'s zero-shot transfer); the top k are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from prompt_transfer.base.errors import UserError
from prompt_transfer.data.batches import BatchStream
from prompt_transfer.model import seqio_eval
from prompt_transfer.prompt import prompts as prompts_lib
from prompt_transfer.transfer import similarity, views
from prompt_transfer.transfer.library import Entry, Library

# need the frozen model to score: activation overlap with the target's embedding, each source
# used as is on the target's validation split (its score), or on a few of the target's training
# batches (minus its loss: no validation example seen, nothing trained)
MODEL_METRICS = ("activation_overlap", "zero_shot", "zero_shot_loss")
LOSS_BATCHES = 8  # zero_shot_loss: the target's training batches each source is scored on


class TransferError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class Ranked:
    entry: Entry
    score: float


def eligible_sources(
    lib: Library,
    model_fingerprint: str,
    embed_dim: int,
    exclude_tasks: Sequence[str] = (),
    deep_width: int = 0,
) -> list[Entry]:
    """Library entries trained with this frozen model, excluding the target's own task(s).

    A prompt from another model (fingerprint or width) is not eligible: it would need a
    projector (`projector.py`), which makes it a different entry. A deep-prompt target
    (`deep_width` > 0) takes only entries with a deep part of that width; a plain target takes
    any entry's input prompt.
    """
    entries = [e for e in lib.entries() if e.task not in set(exclude_tasks)]
    if not entries:
        raise TransferError(
            f"the prompt library {lib.root} is empty"
            + (" apart from the target's own task" if exclude_tasks else "")
        )
    fits = [
        e
        for e in entries
        if e.embed_dim == embed_dim
        and (not model_fingerprint or e.model_fingerprint == model_fingerprint)
        and (not deep_width or e.deep_width == deep_width)
    ]
    if not fits:
        models = sorted(
            {
                f"{e.model} ({e.model_fingerprint or 'no fingerprint'}, width {e.embed_dim})"
                for e in entries
            }
        )
        deep = f", deep width {deep_width}" if deep_width else ""
        raise TransferError(
            f"no library prompt was trained with this model "
            f"(fingerprint {model_fingerprint}, width {embed_dim}{deep}); the "
            f"library holds prompts of {', '.join(models)}; train sources with "
            "this model or project them with a cross-model projector"
        )
    return fits


def _is_wide(target: np.ndarray, entries: list[Entry]) -> bool:
    """Whether a target embedding is a deep prompt's wide form (compare sources in it too)."""
    return bool(entries) and target.shape[-1] > entries[0].embed_dim


def rank_sources(
    lib: Library,
    target_prompt: np.ndarray,
    metric: str,
    entries: list[Entry],
    top_k: int | None = None,
    signatures: dict | None = None,
) -> list[Ranked]:
    """Sources ordered by similarity to the target (highest first), optionally the top k.

    `signatures` ({entry id or "target": on/off vector}) is needed for `activation_overlap`.
    """
    similarity.get_metric(metric)  # unknown metric: list the choices before any work
    metric, inputs_only = similarity.input_only(metric)
    if inputs_only and entries:  # the input prompts alone: a deep target's first E columns
        target_prompt = np.asarray(target_prompt)[:, : entries[0].embed_dim]
    if metric == "activation_overlap":
        if signatures is None:
            raise TransferError(
                "activation_overlap needs activation signatures of the target "
                "and of every source (similarity.activation_signature)"
            )
        scores = similarity.score_library(
            metric, signatures["target"], np.stack([signatures[e.id] for e in entries])
        )
        healthy = entries
    elif metric in similarity.SUMMARY_METRICS:  # the library's cached summaries suffice
        healthy, summaries = lib.summaries(entries, deep=_is_wide(target_prompt, entries))
        if not healthy:
            raise TransferError("no healthy source prompt left in the library")
        scores = similarity.score_summaries(metric, target_prompt, summaries)
    else:
        healthy, prompts = lib.load(entries, deep=_is_wide(target_prompt, entries))
        if not healthy:
            raise TransferError("no healthy source prompt left in the library")
        scores = similarity.score_library(metric, target_prompt, prompts)
    order = np.argsort(-np.asarray(scores), kind="stable")
    ranked = [Ranked(healthy[i], float(scores[i])) for i in order]
    return ranked[:top_k] if top_k else ranked


def rank_by_zero_shot(entries: list[Entry], scores: np.ndarray, top_k: int | None = None):
    """Sources ordered by a per-source score, highest first (e.g. their zero-shot score on the
    target: one column of the zero-shot matrix; or a similarity computed elsewhere)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    ranked = [Ranked(entries[i], float(scores[i])) for i in order]
    return ranked[:top_k] if top_k else ranked


def zero_shot_matrix(
    model,
    network,
    prompts: np.ndarray,
    targets: Sequence[str],
    feature_lengths,
    split: str = "validation",
    batch_size: int = 32,
    measure: str | None = None,
):
    """[N prompts, T targets] scores of each prompt used as is on each target task (no
    training): Su et al.'s zero-shot transfer, and a retrieval signal of its own. A target's
    `measure` (e.g. balanced_accuracy) when given, else its main metric."""
    matrix = np.zeros((len(prompts), len(targets)))
    for j, target in enumerate(targets):
        evaluator = seqio_eval.TaskEvaluator(model, target, split, feature_lengths, batch_size)
        for i, prompt in enumerate(prompts):
            results = evaluator.evaluate(prompts_lib.join(network, model.module.config, prompt))
            matrix[i, j] = (
                results[target][measure] if measure else seqio_eval.main_metric(results)[1]
            )
    return matrix


def zero_shot_loss_matrix(
    model, network, prompts: np.ndarray, targets: Sequence[str], feature_lengths, batch_size: int
) -> np.ndarray:
    """[N prompts, T targets]: the token-mean cross entropy of each target's first
    LOSS_BATCHES training batches (seed 0, the same for every prompt) under each prompt used as
    is: the loss a target run would start from, before any step."""
    loss = jax.jit(lambda params, batch: model.loss(params, batch)[1]["cross_entropy"])
    matrix = np.zeros((len(prompts), len(targets)))
    for j, target in enumerate(targets):
        stream = BatchStream(target, feature_lengths, batch_size, seed=0)
        batches = [next(stream) for _ in range(LOSS_BATCHES)]
        for i, prompt in enumerate(prompts):
            params = prompts_lib.join(network, model.module.config, prompt)
            matrix[i, j] = float(np.mean([loss(params, b) for b in batches]))
    return matrix


def model_scores(
    model, network, task_name, feature_lengths, split, batch_size, metric, target, sources
):
    """Scores of source prompts [N, P, E] that need the frozen model: activation overlap with
    the target's embedding, each source's zero-shot score on the target's `split`, or minus
    its loss on the target's first training batches (higher: more promising)."""
    if metric == "zero_shot_loss":
        return -zero_shot_loss_matrix(
            model, network, sources, [task_name], feature_lengths, batch_size
        )[:, 0]
    if metric == "activation_overlap":
        signature = lambda p: similarity.activation_signature(model.module, network, p)
        return similarity.score_library(
            metric, signature(target), np.stack([signature(p) for p in sources])
        )
    return zero_shot_matrix(
        model, network, sources, [task_name], feature_lengths, split, batch_size
    )[:, 0]


def retrieve(
    lib: Library,
    target: np.ndarray,
    entries: list[Entry],
    metric: str,
    top_k: int,
    model_scores=None,
    viewer=None,
) -> list[Ranked]:
    """The top-k `entries` for the `target` task embedding [P, E] by `metric`.

    `model_scores(metric, target, source prompts [N, P, E]) -> [N]` scores the metrics that
    run the frozen model (MODEL_METRICS).
    `viewer(prompts [..., P, W]) -> view` maps prompts to what a metric of views.VIEW_METRICS
    compares (views.view with the model's config and the prompts' shared start).
    """
    if metric in MODEL_METRICS:
        if model_scores is None:
            raise TransferError(f"metric {metric} needs the frozen model to score sources")
        healthy, prompts = lib.load(entries, deep=_is_wide(target, entries))
        return rank_by_zero_shot(healthy, model_scores(metric, target, prompts), top_k)
    if metric in views.VIEW_METRICS:
        if viewer is None:
            raise TransferError(f"metric {metric} compares views of prompts: it needs the model")
        healthy, prompts = lib.load(entries, deep=_is_wide(target, entries))
        if not healthy:
            raise TransferError("no healthy source prompt left in the library")
        scores = similarity.score_library(views.VIEWED_METRIC, viewer(target), viewer(prompts))
        return rank_by_zero_shot(healthy, scores, top_k)
    return rank_sources(lib, target, metric, entries, top_k)
