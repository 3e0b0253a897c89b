"""The stages a SPoT flow and a study share, on the `Plan` both configs satisfy:

1. Sources: prompt tuning on each source task; each final prompt joins the library.
2. Embeddings: a short run on each target; its prompt joins the library as its task embedding.
3. Retrieval: every target's similarity to every source prompt, by each metric.
4. Zero-shot: each source prompt used as is on each target.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from prompt_transfer.base import files, paths
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning
from prompt_transfer.prompt import prompts
from prompt_transfer.stages.plan import SHARED_START, Plan
from prompt_transfer.stages.runs import Runs
from prompt_transfer.trainer import start as start_lib
from prompt_transfer.trainer.config import RunSpec, TrainConfig
from prompt_transfer.transfer import library, retrieval, similarity, views


def log(message: str, command: str = "spot") -> None:
    print(f"[{command}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Progress:
    """`[spot] runs 3-5/12: ...`: which of the command's runs a stage trains (or reuses)."""

    total: int
    command: str = "spot"  # the log lines' prefix
    done: int = 0

    def stage(self, message: str, runs: int = 1) -> None:
        first, self.done = self.done + 1, self.done + runs
        counted = f"run {first}" if runs == 1 else f"runs {first}-{self.done}"
        log(f"{counted}/{self.total}: {message}", self.command)


@dataclasses.dataclass(frozen=True)
class Retrieved:
    """The library as the targets see it. N healthy source prompts, in the library's order."""

    sources: list[str]  # the N source prompts' tasks
    source_prompts: np.ndarray  # [N, P, E (+ deep width)]
    embeddings: dict[str, library.Entry]  # {target: its task embedding}
    similarities: dict[str, np.ndarray]  # {metric: [targets, N]}


def _tasks(kind: str, tasks) -> str:
    return f"{kind}{'s' if len(tasks) > 1 else ''}: {', '.join(tasks)}"


def train_sources(plan: Plan, runs: Runs, lib: library.Library, progress: Progress) -> None:
    """1. A prompt on each source task, evaluated once at the end; each joins the library."""
    progress.stage(_tasks("source prompt", plan.sources), len(plan.sources))
    steps = plan.source_steps
    _train_each(runs, "sources", plan.sources, lib, steps=steps, eval_period=steps)


def train_embeddings(plan: Plan, runs: Runs, lib: library.Library, progress: Progress) -> None:
    """2. A short run on each target, never evaluated; its prompt joins the library as the
    target's task embedding."""
    progress.stage(_tasks("task embedding", plan.targets), len(plan.targets))
    _train_each(
        runs,
        "embeddings",
        plan.targets,
        lib,
        steps=plan.embedding_steps,
        eval_period=0,
        library_kind="task_embedding",
    )


def _train_each(runs: Runs, folder: str, tasks, lib: library.Library, **changes) -> None:
    """A run per task in WORK_DIR/`folder`/<task>, from sampled vocabulary, into the library."""
    sampled = prompts.PromptInit("sampled_vocab")
    runs.train(
        [
            runs.make(
                runs.work / folder / task,
                task,
                prompt_init=sampled,
                library_dir=str(lib.root),
                **changes,
            )
            for task in tasks
        ]
    )


def shared_start(spec: RunSpec, network, task: str) -> np.ndarray:
    """The prompt every source and task embedding of the flow starts from (wide form): sampled
    vocabulary, and its keys and values in every layer for a deep prompt, of RANDOM_SEED."""
    first = dataclasses.replace(spec, task=task)
    sampled = TrainConfig(
        relative_steps=1, batch_size=1, prompt_init=prompts.PromptInit("sampled_vocab")
    )
    mesh = partitioning.make_mesh(spec.num_partitions)
    return start_lib.initial_prompt(first, sampled, network, mesh, log=None)


def retrieve(plan: Plan, spec: RunSpec, lib: library.Library, network) -> Retrieved:
    """3. The library's prompts of this model, and every target's similarity to every source
    prompt by each metric (and by RETRIEVAL_METRIC when it compares views of the prompts:
    transfer/views.py; its shared start is written to WORK_DIR for the target runs)."""
    ours = dict(
        model_fingerprint=library.model_fingerprint(network.params),
        deep_width=spec.deep_width,
    )
    entries = [e for e in lib.entries(kind="trained", **ours) if e.task in plan.sources]
    embeddings = {e.task: e for e in lib.entries(kind="task_embedding", **ours)}
    entries, source_prompts = lib.load(entries, deep=spec.deep_prompt)  # healthy ones
    width = spec.model_config.emb_dim
    cut = lambda prompts, m: prompts[..., :width] if similarity.input_only(m)[1] else prompts
    similarities = {
        m: np.stack(
            [
                similarity.score_library(
                    m,
                    cut(lib.prompt(embeddings[t], deep=spec.deep_prompt), m),
                    cut(source_prompts, m),
                )
                for t in plan.targets
            ]
        )
        for m in plan.metrics
    }
    view = views.view_of(plan.retrieval_metric)
    if view is not None:
        start = None
        if views.needs_start(plan.retrieval_metric):
            start = shared_start(spec, network, plan.sources[0])
            files.save_npy(paths.path(plan.work_dir) / SHARED_START, start)
        seen = lambda x: views.view(view, x, spec.model_config, start)  # noqa: E731
        targets = [lib.prompt(embeddings[t], deep=spec.deep_prompt) for t in plan.targets]
        similarities[plan.retrieval_metric] = np.stack(
            [
                similarity.score_library(views.VIEWED_METRIC, seen(t), seen(source_prompts))
                for t in targets
            ]
        )
    return Retrieved([e.task for e in entries], source_prompts, embeddings, similarities)


def zero_shot_matrix(
    runs: Runs, network, found: Retrieved, targets, measure: str | None = None
) -> np.ndarray:
    """[sources, targets]: each source prompt used as is on each target's validation split,
    scored by `measure` (default: each target's main metric)."""
    return retrieval.zero_shot_matrix(
        EncoderDecoderModel(network.module),
        network.params,
        found.source_prompts,
        list(targets),
        runs.spec.feature_lengths,
        batch_size=runs.config.eval_batch_size,
        measure=measure,
    )
