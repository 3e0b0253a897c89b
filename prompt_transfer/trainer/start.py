"""The prompt a run starts from, computed before training (in its wide form, prompts.widen).

An initialiser (random, sampled vocabulary, class labels, text, a file) gives it directly. A
transfer strategy retrieves sources from the library first, and for best_of_top_k, top_k_mixture
and race trains short runs under MODEL_DIR/transfer/ (through the same `fit`); then the run
trains once from that array. Then the run's kind begins (prompt/kinds.py: `begin` with a
`Start`): an attention run keeps its frozen sources under MODEL_DIR/transfer/, a multi-task run
every task's part, which `fit` and every later command read back; a single prompt keeps nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np

from prompt_transfer.base import files
from prompt_transfer.data import batches, registry
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import checkpoints, partitioning
from prompt_transfer.prompt import kinds, prompts
from prompt_transfer.trainer import race, run_dir
from prompt_transfer.trainer.config import RunSpec, TrainConfig, resolved
from prompt_transfer.trainer.fit import fit
from prompt_transfer.trainer.train_state import TrainError
from prompt_transfer.transfer import initial, library, retrieval


def starting_prompt(spec: RunSpec, config: TrainConfig, network, mesh, log) -> np.ndarray | None:
    """What the run starts from: zeros for a checkpoint in MODEL_DIR to overwrite, else its
    initial prompt (None without a prompt); phase 2 of a prompt-then-model run, phase 1's final
    prompt (trainer/phases.py), trained on or kept fixed. A fresh run's kind begins here, the
    same call for every kind (prompt/kinds.py)."""
    if spec.phase == 2:
        return spec.run_dir.phase1_prompt()
    if spec.run_dir.holds_checkpoint():
        return prompts.blank(spec.prompt_length, spec.model_config, spec.deep_prompt)
    prompt, retrieved = _initial(spec, config, network, mesh, log)
    if prompt is not None:
        kinds.of_config(config).begin(_context(spec, config, network, mesh, log, prompt, retrieved))
    return prompt


def _context(spec, config, network, mesh, log, prompt, retrieved) -> kinds.Start:
    """What a kind's start may draw on: the run's tasks, a task's own start as the initialiser
    makes it, the teachers in the library, the sources a transfer strategy retrieved."""
    names = tuple(t.name for t in registry.subtasks(batches.get_task(spec.task)))
    own = dataclasses.replace(spec, prompt_length=config.multitask.task_length)
    own_config = config
    if config.prompt_init.method == "transfer":  # the source fills the shared prompt only
        own_config = dataclasses.replace(config, prompt_init=prompts.PromptInit("sampled_vocab"))
    sources, source_names = retrieved or (None, ())
    return kinds.Start(
        model_dir=spec.model_dir,
        prompt=prompt,
        seed=spec.seed,
        width=spec.model_config.emb_dim,
        config=config,
        tasks=names,
        sources=sources,
        source_names=tuple(source_names),
        own_start=lambda k: initial_prompt(
            dataclasses.replace(own, seed=spec.seed + 1 + k), own_config, network, mesh, log
        ),
        teachers=lambda: _teachers(spec, config.multitask, network, names),
        log=log.info,
    )


def _teachers(spec, layout, network, names) -> np.ndarray:
    """[K, P', W]: each task's newest trained prompt of this model in MULTITASK_TEACHERS, the
    teacher its composed prompt distills from (MPT)."""
    lib = library.Library(layout.teachers)
    eligible = retrieval.eligible_sources(
        lib, library.model_fingerprint(network.params), spec.model_config.emb_dim, (),
        spec.deep_width,
    )  # fmt: skip
    length = layout.composed_length(spec.prompt_length)
    out = []
    for name in names:
        held = [e for e in eligible if e.task == name and e.kind == "trained"]
        if not held:
            raise TrainError(
                f"MULTITASK_TEACHERS={layout.teachers!r} holds no trained prompt of task {name!r} "
                "for this model (and this DEEP_PROMPT); train it alone with LIBRARY_DIR set there"
            )
        prompt = np.asarray(lib.prompt(max(held, key=lambda e: e.created), deep=spec.deep_prompt))
        if prompt.shape[0] != length:
            raise TrainError(
                f"MULTITASK_TEACHERS: the teacher of {name!r} has {prompt.shape[0]} positions "
                f"and this run's prompts {length}; distill from teachers as long as them"
            )
        out.append(prompt)
    return np.stack(out)


def _embeddings(spec: RunSpec, init: prompts.PromptInit, network) -> np.ndarray:
    """[V, E] token embeddings an initialiser samples from: EMBEDDING_FILE's, else the network's."""
    if not init.embedding_file:
        return partitioning.host_array(network.params["token_embedder"]["embedding"])
    table = files.load_npy(init.embedding_file, fix="give a [vocabulary, width] .npy")
    width = spec.model_config.emb_dim
    if table.ndim != 2 or table.shape[1] != width:
        raise TrainError(
            f"EMBEDDING_FILE={init.embedding_file!r} holds an array of shape {table.shape}; "
            f"it must be [vocabulary, {width}] (the model's token embeddings)"
        )
    return np.asarray(table, np.float32)


def initial_prompt(spec: RunSpec, config: TrainConfig, network, mesh, log) -> np.ndarray | None:
    """The prompt [P, E (+ deep width)] a fresh run starts from (None without a prompt)."""
    return _initial(spec, config, network, mesh, log)[0]


def _initial(spec, config, network, mesh, log) -> tuple[np.ndarray | None, tuple | None]:
    """(initial_prompt, (source prompts [K, P, W], their names) when a transfer strategy keeps
    its sources beside the prompt, else None)."""
    init = config.prompt_init
    if not spec.prompt_length:
        return None, None
    if init.method == "transfer":
        return _transfer_prompt(spec, config, network, mesh, log)
    labels = init.labels or registry.class_labels(spec.task) or ()
    vocabulary = batches.get_task(spec.task).output_features["targets"].vocabulary
    prompt = prompts.initial_prompt(
        dataclasses.replace(init, labels=tuple(labels)),
        spec.prompt_length,
        _embeddings(spec, init, network),
        seed=spec.seed,
        encode=vocabulary.encode,
    )
    deep = None
    if spec.deep_prompt:  # each layer's keys and values of sampled tokens
        deep = prompts.initial_deep_prompt(
            network.params, spec.model_config, spec.prompt_length, seed=spec.seed + 1
        )
    return prompts.widen(prompt, deep, spec.model_config), None


def _short_run(spec, config, network, mesh, name, task, steps, prompt, eval_period):
    """A nested run under MODEL_DIR/transfer/<name> (a best_of_top_k candidate or the
    top_k_mixture run); returns (summary, final prompt). It never transfers itself."""
    sub_spec = dataclasses.replace(
        spec, model_dir=str(spec.run_dir.file("transfer", name)), task=task
    )
    sub_config = resolved(sub_spec, config.nested(steps, eval_period, steps))
    sub_spec.run_dir.check_config("", overwrite=True, resume=False)
    with run_dir.ProgressLog(sub_spec.run_dir, sub_config.steps) as log:
        [result] = fit([sub_spec], sub_config, network, mesh, [prompt], [log])
        return result


def _transfer_prompt(spec, config, network, mesh, log) -> tuple[np.ndarray, tuple | None]:
    """The initial prompt of a transfer strategy, with its report in MODEL_DIR/transfer/, and
    the sources it keeps beside the prompt (see `_initial`)."""
    init = config.prompt_init.transfer
    short_run = functools.partial(_short_run, spec, config, network, mesh)

    def run_candidate(prompt, name):
        summary, _ = short_run(
            f"candidate_{name}", spec.task, init.candidate_steps, prompt, init.candidate_steps
        )
        log.info(f"best_of_top_k: starting from {name} reaches {summary['best']['value']:.2f}")
        return summary["best"]["value"]

    def run_mixture(source_tasks):
        mixture = batches.register_mixture(f"transfer_mixture_{spec.task}", source_tasks)
        sampled = dataclasses.replace(config, prompt_init=prompts.PromptInit("sampled_vocab"))
        on_mixture = dataclasses.replace(spec, task=mixture)
        start = initial_prompt(on_mixture, sampled, network, mesh, log)
        return short_run("mixture", mixture, init.mixture_steps, start, 0)[1]

    def run_race(candidates, prior=None):
        folder = spec.run_dir.file("transfer", "race")
        steps, seeds = init.race_steps, init.race_seeds
        start = checkpoints.initial_step(spec.initial_checkpoint)
        raced = steps * len(race.rung_sizes(len(candidates)))
        if raced >= config.steps - start:
            raise initial.TransferError(
                f"the race of {len(candidates)} sources trains its winner {raced} steps "
                f"(RACE_STEPS={steps} a rung), as many as the run's {config.steps - start}: "
                "lower RACE_STEPS or RACE_SOURCES, or train longer"
            )
        found = race.race(
            spec, config, network, mesh, candidates, steps, seeds, folder, log.info,
            init.race_score, prior,
        )  # fmt: skip
        race.adopt(found, spec.run_dir, start)  # the picked source's run goes on as this one
        log.info(found.cost_line(config.steps - start))
        return found.prompt, found.report()

    model_scores = functools.partial(
        retrieval.model_scores,
        EncoderDecoderModel(network.module),
        network.params,
        spec.task,
        spec.feature_lengths,
        config.eval_split,
        config.eval_batch_size,
    )
    prompt, report = initial.initial_prompt(
        init,
        spec.prompt_length,
        spec.model_config.emb_dim,
        library.model_fingerprint(network.params),
        spec.task,
        run_candidate,
        run_mixture,
        model_scores,
        spec.deep_width,
        spec.model_config,
        run_race,
    )
    sources = report.pop("source_prompts", None)  # attention keeps them (its `begin`)
    folder = spec.run_dir.file("transfer")
    files.save_npy(folder / "initial_prompt.npy", prompt)
    report = dict(report, strategy=init.strategy)
    files.atomic_write_text(folder / "report.json", json.dumps(report, indent=1))
    log.info(f"transfer ({init.strategy}): sources {report['sources']}")
    return prompt, None if sources is None else (sources, report["sources"])
