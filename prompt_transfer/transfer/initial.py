"""How a target prompt starts from library prompts: SPoT's strategies (Vu et al. 2022).

single_source (one named prompt), top_1 (the most similar source), top_k_average (their
similarity-weighted average), best_of_top_k (a short run from each of the top k, keep the best
on validation), top_k_mixture (one prompt trained on the top-k sources' mixture), race (every
eligible source, or the RACE_SOURCES first, trained at once with the worse half dropped after
each rung until one is left: trainer/race.py) and race_and_overlap (the same race, whose pick
is the source with the best mean of its ranks in the race and by activation overlap with the
target embedding). Prompts of
another length are fitted explicitly (truncate, pad, interpolate); prompts of another model
width only through a trained projector (projector.py). The short runs are the caller's: this
module receives them as functions, so it never imports the trainer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from prompt_transfer.base import paths, settings
from prompt_transfer.base.settings import setting
from prompt_transfer.transfer import from_multitask, retrieval, similarity, views
from prompt_transfer.transfer.library import Library, read_t5x_prompt
from prompt_transfer.transfer.retrieval import TransferError

LENGTH_FITS = ("error", "truncate", "pad", "interpolate")
STRATEGIES = (
    "single_source",
    "top_1",
    "top_k_average",
    "best_of_top_k",
    "top_k_mixture",
    "race",
    "race_and_overlap",
    "attention",
    "compose",
    "multitask",
)
RACES = ("race", "race_and_overlap")  # the strategies that race the sources (trainer/race.py)
COMPOSE_HOW = ("concat", "weighted_sum", "attention")
# What decides a race's rung: each runner's main metric (accuracy); the mean log-probability of
# the true label among the labels on the same validation examples (classification only), which
# moves with every step where accuracy moves by whole examples; or balanced accuracy (the mean
# recall over the classes, for tasks that report it), where a run that answers one class for
# every input scores 100 / classes instead of the majority class's share.
RACE_SCORES = ("metric", "likelihood", "balanced_accuracy")


@dataclasses.dataclass(frozen=True)
class TransferInit:
    """How a target prompt starts from library prompts (bound by gin/transfer/*.gin).

    strategy: single_source (the prompt `source`: a library entry id or a .npy file);
      top_1 (the most similar source); top_k_average (similarity-weighted average of the top k);
      best_of_top_k (a short run from each of the top k, keep the best on validation);
      top_k_mixture (one prompt trained on the top-k sources' mixture starts the target);
      race (the RACE_SOURCES most similar sources, 0: all, race on the target by successive
      halving, RACE_STEPS a rung, RACE_SEEDS runs each; the winner's run goes on as the
      target run: trainer/race.py); race_and_overlap (the same race; the source picked is the
      one whose ranks in it and by activation overlap with the target average best, ties to
      the one that raced longer, and its run goes on from where it left the race);
      attention (the top k stay frozen beside the target, which starts from the first, and a
      trained module mixes them per input: prompt/attention.py); compose (the prompts of the
      target's sub-tasks, `compose_sources`, joined along the sequence, summed with weights, or
      mixed per input by attention); multitask (a finished multi-task run's prompts,
      `multitask_run`, as `multitask_init` says: prompt/multitask.py).
    target_embedding: the target's task embedding (library entry id or .npy) for retrieval.
    """

    strategy: str = setting("top_k_average", one_of=STRATEGIES)
    library: str = ""
    source: str = ""
    target_embedding: str = ""
    metric: str = setting(
        "cosine_avg_tokens",
        one_of=(
            *similarity.METRICS,
            *similarity.INPUT_METRICS,
            *views.VIEW_METRICS,
            "zero_shot",
            "zero_shot_loss",
        ),
    )
    # SHARED_START: the start every library prompt and the target embedding trained from (.npy,
    # wide form), for the trained_ metrics, which compare what training added
    start: str = setting("", macro="SHARED_START")
    top_k: int = setting(3, least=1, macro="TOP_K")
    length_fit: str = setting("error", one_of=LENGTH_FITS)
    candidate_steps: int = setting(100, least=1)  # best_of_top_k: steps of each short run
    mixture_steps: int = setting(1000, least=1)  # top_k_mixture: steps on the sources' mixture
    # race: how many sources race (the first by `metric`; 0: every eligible one), the steps of
    # each rung, the runs per source whose mean score decides, and what that score is
    race_sources: int = setting(0, least=0, macro="RACE_SOURCES")
    race_steps: int = setting(20, least=1, macro="RACE_STEPS")
    race_seeds: int = setting(1, least=1, macro="RACE_SEEDS")
    race_score: str = setting("metric", one_of=RACE_SCORES, macro="RACE_SCORE")
    # attention (ATTEMPT): the module's down-projection width, and the softmax temperature
    # (0: the paper's e x the model width); its sources are the top k retrieved
    attention_hidden: int = setting(64, least=1, macro="ATTENTION_HIDDEN")
    attention_temperature: float = setting(0.0, least=0, macro="ATTENTION_TEMPERATURE")
    # compose: the sub-tasks' prompts (library entry ids or task names), and how they combine
    compose_sources: tuple[str, ...] = setting((), macro="COMPOSE_SOURCES")
    compose_how: str = setting("concat", one_of=COMPOSE_HOW, macro="COMPOSE_HOW")
    compose_weights: tuple[float, ...] = setting((), macro="COMPOSE_WEIGHTS")  # () = equal
    # multitask: a finished multi-task run's MODEL_DIR, which of MPT's starts, and the task
    # exact_source_task takes
    multitask_run: str = setting("", macro="MULTITASK_RUN")
    multitask_init: str = setting(
        "average_source_tasks", one_of=from_multitask.TRANSFER_INITS, macro="MULTITASK_INIT"
    )
    multitask_task: str = setting("", macro="MULTITASK_SOURCE_TASK")

    @property
    def mixes_per_input(self) -> bool:
        """Whether the run keeps its sources beside the prompt (prompt/attention.py)."""
        return self.strategy == "attention" or (
            self.strategy == "compose" and self.compose_how == "attention"
        )

    def __post_init__(self):
        settings.check(self)


def fit_length(prompt: np.ndarray, length: int, how: str = "error") -> np.ndarray:
    """A [P, E] prompt made [length, E]: `truncate` keeps the first rows, `pad` appends rows of
    the prompt's mean token, `interpolate` resamples the rows linearly; `error` refuses."""
    prompt = np.asarray(prompt, np.float32)
    p = prompt.shape[0]
    if p == length:
        return prompt
    if how not in LENGTH_FITS:
        raise TransferError(
            f"length fit {how!r} is unknown; choose one of {', '.join(LENGTH_FITS)}"
        )
    if how == "error":
        raise TransferError(
            f"source prompt has length {p} but the target uses {length}; choose "
            "a length fit: truncate, pad or interpolate"
        )
    if how == "truncate":
        if p < length:
            raise TransferError(f"cannot truncate a length-{p} prompt to {length}; use pad")
        return prompt[:length]
    if how == "pad":
        if p > length:
            raise TransferError(f"cannot pad a length-{p} prompt to {length}; use truncate")
        return np.concatenate([prompt, np.repeat(prompt.mean(0, keepdims=True), length - p, 0)])
    positions = np.linspace(0, p - 1, length)
    lower = np.floor(positions).astype(int)
    upper = np.minimum(lower + 1, p - 1)
    frac = (positions - lower)[:, None].astype(np.float32)
    return (1 - frac) * prompt[lower] + frac * prompt[upper]


def weighted_average(prompts: Sequence[np.ndarray], scores: Sequence[float]) -> np.ndarray:
    """SPoT's top-k weighted average: sum_i w_i P_i with w_i = s_i / sum_j s_j.

    Similarities must be positive (every metric here is, except cosines of unrelated prompts,
    which are clipped at 0 so a dissimilar source cannot enter with a negative weight).
    """
    scores = np.clip(np.asarray(scores, np.float64), 0.0, None)
    if scores.sum() <= 0:
        raise TransferError("every top-k similarity is <= 0; no weighted average to take")
    weights = scores / scores.sum()
    return np.tensordot(weights, np.stack(prompts).astype(np.float64), axes=1).astype(np.float32)


def _load_prompt(lib: Library | None, ref: str, deep: bool = False) -> np.ndarray:
    if ref.endswith(".npy") or paths.path(ref).is_dir():
        return read_t5x_prompt(ref)
    if lib is None:
        raise TransferError(f"{ref!r} is not a .npy file and no library is configured")
    return np.asarray(lib.prompt(ref, deep=deep))


def _by_task_or_id(init: TransferInit, ref: str, setting: str, eligible, deep: bool) -> np.ndarray:
    """A prompt named by a .npy file, a library entry id, or a task whose trained prompt the
    library holds for this model (its newest `eligible(lib)` entry of that task)."""
    lib = Library(init.library) if init.library else None
    named = lambda: any(e.id == ref for e in lib.entries())  # noqa: E731
    if ref.endswith(".npy") or lib is None or not lib.root.exists() or named():
        return _load_prompt(lib, ref, deep)  # its own refusals: no such file, entry, library
    if not lib.entries(task=ref, kind="trained"):
        if setting == "SOURCE_PROMPT":
            return _load_prompt(lib, ref, deep)  # says what an entry id must be
        raise TransferError(
            f"{setting}: {ref!r} is neither a .npy file, nor an entry id, nor a task with a "
            f"trained prompt in {lib.root}; see `prompt-transfer library list`"
        )
    held = [e for e in eligible(lib) if e.task == ref and e.kind == "trained"]
    if not held:
        raise TransferError(
            f"{setting}: the library's prompts of task {ref!r} are of another model or form "
            f"than this run's; train {ref} with this model (and this DEEP_PROMPT)"
        )
    return np.asarray(lib.prompt(max(held, key=lambda e: e.created), deep=deep))


def _compose(init: TransferInit, length: int, fit, find):
    """(prompt, report) of the compose strategy: the sub-tasks' prompts joined along the
    sequence (their lengths must add up to PROMPT_LENGTH), or each fitted to it and summed with
    COMPOSE_WEIGHTS, or kept for attention (the first starts the target)."""
    if len(init.compose_sources) < 2:
        raise TransferError(
            f"strategy compose needs COMPOSE_SOURCES of two sub-tasks or more; got "
            f"{list(init.compose_sources)}"
        )
    parts = [find(r, "COMPOSE_SOURCES") for r in init.compose_sources]
    report = {"sources": list(init.compose_sources), "how": init.compose_how}
    if init.compose_how == "concat":
        lengths = [p.shape[0] for p in parts]
        if sum(lengths) != length:
            raise TransferError(
                f"COMPOSE_HOW='concat' joins prompts of lengths {lengths} into one of "
                f"{sum(lengths)} positions; set PROMPT_LENGTH={sum(lengths)}"
            )
        return np.concatenate(parts, axis=0), report
    fitted = [fit(p) for p in parts]
    if init.compose_how == "attention":
        return fitted[0], dict(report, source_prompts=np.stack(fitted))
    weights = init.compose_weights or (1.0,) * len(parts)
    if len(weights) != len(parts):
        raise TransferError(
            f"COMPOSE_WEIGHTS has {len(weights)} weights for {len(parts)} COMPOSE_SOURCES; "
            "give one per source, or none for equal weights"
        )
    if sum(weights) <= 0:
        raise TransferError(f"COMPOSE_WEIGHTS={list(weights)} must sum to more than 0")
    w = np.asarray(weights, np.float64) / sum(weights)
    composed = np.tensordot(w, np.stack(fitted).astype(np.float64), axes=1).astype(np.float32)
    return composed, dict(report, weights=w.tolist())


def _viewer(init: TransferInit, model_config):
    """What a metric of views.VIEW_METRICS compares, as a function of prompts (None for the
    other metrics)."""
    name = views.view_of(init.metric)
    if name is None:
        return None
    if model_config is None:
        raise TransferError(f"metric {init.metric} needs the model's config to see its layers")
    start = None
    if views.needs_start(init.metric):
        if not init.start:
            raise TransferError(
                f"SIMILARITY_METRIC={init.metric!r} compares what training added to each prompt "
                "and needs the start they shared: SHARED_START='/path/start.npy' (the SPoT flow "
                "writes it), or use 'input_cosine_avg_tokens'"
            )
        start = _load_prompt(None, init.start)
    return lambda prompts: views.view(name, prompts, model_config, start)


def _ranked_sources(
    init: TransferInit,
    dim: int,
    model_fingerprint: str,
    target_task: str,
    model_scores=None,
    deep_width: int = 0,
    model_config=None,
):
    """(library, ranked top-k sources, prior) for a target, from its task embedding; `prior`
    is each ranked source's activation overlap with it for race_and_overlap, else None."""
    if not init.library:
        raise TransferError(f"strategy {init.strategy} retrieves from a library; set LIBRARY")
    if not init.target_embedding:
        raise TransferError(
            f"strategy {init.strategy} needs the target's task embedding; set "
            "TARGET_EMBEDDING (see `prompt-transfer task-embedding`)"
        )
    lib = Library(init.library)
    target = _load_prompt(lib, init.target_embedding, deep=bool(deep_width))
    eligible = retrieval.eligible_sources(lib, model_fingerprint, dim, [target_task], deep_width)
    entries = [e for e in eligible if e.kind != "task_embedding"]
    if not entries:
        raise TransferError(f"no eligible source prompt in {lib.root} (only task embeddings)")
    viewer = _viewer(init, model_config)
    top_k = init.top_k
    if init.strategy in RACES:
        top_k = init.race_sources or len(entries)
    found = retrieval.retrieve(lib, target, entries, init.metric, top_k, model_scores, viewer)
    prior = None
    if init.strategy == "race_and_overlap":
        overlap = retrieval.retrieve(
            lib, target, [r.entry for r in found], "activation_overlap", 0, model_scores
        )
        prior = {r.entry.id: r.score for r in overlap}
    return lib, found, prior


def initial_prompt(
    init: TransferInit,
    length: int,
    dim: int,
    model_fingerprint: str,
    target_task: str,
    run_candidate=None,
    run_mixture=None,
    model_scores=None,
    deep_width: int = 0,
    model_config=None,
    run_race=None,
):
    """(prompt [length, dim + deep_width], report) for a transfer strategy.

    A deep-prompt target (`deep_width` > 0) moves its sources' deep prompts whole, in their
    wide form (prompts.widen): retrieval, averages and length fits see every layer's keys and
    values beside the input prompt. `run_candidate(prompt, name) -> validation score` trains
    briefly from a prompt (best_of_top_k); `run_mixture(task names) -> prompt` trains one
    prompt on a mixture of source tasks (top_k_mixture); `model_scores` see
    `retrieval.retrieve`. The report names the sources used and their similarities.
    """
    fit = lambda p: fit_length(p, length, init.length_fit)
    retrieve = functools.partial(
        _ranked_sources,
        init,
        dim,
        model_fingerprint,
        target_task,
        model_scores,
        deep_width,
        model_config,
    )
    eligible = lambda lib: retrieval.eligible_sources(  # noqa: E731
        lib, model_fingerprint, dim, [target_task], deep_width
    )
    find = lambda ref, setting: _by_task_or_id(  # noqa: E731
        init, ref, setting, eligible, bool(deep_width)
    )
    runners = (run_candidate, run_mixture, run_race)
    prompt, report = _by_strategy(init, length, fit, retrieve, bool(deep_width), runners, find)
    if prompt.shape[1] != dim + deep_width:
        kind = f"a deep prompt's {dim} + {deep_width}" if deep_width else f"{dim}"
        raise TransferError(
            f"the transferred prompt has width {prompt.shape[1]}; this run needs {kind}; "
            "transfer from a prompt trained with this model and the same DEEP_PROMPT setting"
        )
    return prompt, report


def _by_strategy(init, length, fit, ranked_sources, deep, runners, find):
    """(prompt, report) of `init.strategy`; `ranked_sources()` retrieves (library, top k);
    `runners` train what best_of_top_k, top_k_mixture and race need (see `initial_prompt`)."""
    run_candidate, run_mixture, run_race = runners
    if init.strategy == "single_source":
        if not init.source:
            raise TransferError("strategy single_source needs SOURCE_PROMPT (entry id or .npy)")
        return fit(find(init.source, "SOURCE_PROMPT")), {"sources": [init.source]}
    if init.strategy == "compose":
        return _compose(init, length, fit, find)
    if init.strategy == "multitask":
        if not init.multitask_run:
            raise TransferError("strategy multitask needs MULTITASK_RUN (a multi-task run's dir)")
        prompt, report = from_multitask.transfer_start(
            init.multitask_run, init.multitask_init, init.multitask_task
        )
        return fit(prompt), report
    lib, ranked, prior = ranked_sources()
    report = {
        "sources": [r.entry.task for r in ranked],
        "similarities": [r.score for r in ranked],
        "metric": init.metric,
    }
    candidates = [fit(lib.prompt(r.entry, deep=deep)) for r in ranked]
    if init.strategy == "top_1":
        return candidates[0], dict(report, chosen=ranked[0].entry.task)
    if init.strategy == "top_k_average":
        return weighted_average(candidates, [r.score for r in ranked]), report
    if init.strategy == "attention":  # the caller keeps the sources (report's source_prompts)
        return candidates[0], dict(report, source_prompts=np.stack(candidates))
    if init.strategy == "best_of_top_k":
        scores = [run_candidate(p, r.entry.task) for p, r in zip(candidates, ranked, strict=True)]
        best = int(np.argmax(scores))
        return candidates[best], dict(
            report, candidate_scores=scores, chosen=ranked[best].entry.task
        )
    if init.strategy in RACES:
        names = [r.entry.task for r in ranked]
        if len(set(names)) < len(names):  # two prompts of one task: tell them apart
            names = [f"{r.entry.task}_{r.entry.id}" for r in ranked]
        if prior is not None:
            prior = {name: prior[r.entry.id] for name, r in zip(names, ranked, strict=True)}
        prompt, race = run_race(list(zip(names, candidates, strict=True)), prior)
        return prompt, dict(report, chosen=race["chosen"], race=race)
    mixture_prompt = run_mixture([r.entry.task for r in ranked])
    return fit(mixture_prompt), report
