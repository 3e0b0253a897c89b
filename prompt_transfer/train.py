"""Training: a pure, jitted train step and the gin-bound `train` entry point.

One code path serves prompt tuning (TRAINABLE = the prompt), model tuning (TRAINABLE = '.*')
and pretraining. Gradients are taken only for the trainable subtree; the frozen parameters are
a separate argument that never meets the optimizer.

    python -m prompt_transfer.train --gin_file=experiments/prompt_tuning_tiny \\
        --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'my_task'"
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util
from jax.sharding import Mesh

from prompt_transfer import (
    checkpoints,
    data,
    evaluation,
    gin_files,
    partitioning,
    prompts,
    registry,
    t5,
    train_io,
)
from prompt_transfer import file_tasks as file_task_lib
from prompt_transfer.models import EncoderDecoderModel


class TrainError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Optimisation.


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SPoT's prompt-tuning recipe by default: Adafactor, constant 0.3, decay rate 0.8, weight
    decay 1e-5, no parameter scaling (Vu et al. 2022, Sec. 2.1). `name="adam"` for AdamW."""

    name: str = "adafactor"
    learning_rate: float = 0.3
    weight_decay: float = 1e-5
    decay_rate: float = 0.8
    clipping_threshold: float = 1.0
    multiply_by_parameter_scale: bool = False
    warmup_steps: int = 0
    schedule: str = "constant"  # or "rsqrt": T5 pre-training's plateau then 1/sqrt(step)


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    if cfg.schedule == "rsqrt":
        # T5: constant for the first `warmup_steps`, then decaying as 1/sqrt(step).
        plateau = max(cfg.warmup_steps, 1)
        return lambda step: (
            cfg.learning_rate
            * jnp.sqrt(plateau / jnp.maximum(jnp.asarray(step, jnp.float32), plateau))
        )
    if cfg.schedule != "constant":
        raise TrainError(
            f"learning-rate schedule {cfg.schedule!r} is unknown; choose constant or rsqrt"
        )
    if cfg.warmup_steps:
        return optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.constant_schedule(cfg.learning_rate)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg)
    if cfg.name == "adafactor":
        return optax.adafactor(
            schedule,
            decay_rate=cfg.decay_rate,
            multiply_by_parameter_scale=cfg.multiply_by_parameter_scale,
            clipping_threshold=cfg.clipping_threshold,
            weight_decay_rate=cfg.weight_decay or None,
        )
    if cfg.name == "adam":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)
    raise TrainError(f"optimizer {cfg.name!r} is unknown; choose adafactor or adam")


# ---------------------------------------------------------------------------------------------
# What trains.


def split_trainable(params: dict, pattern: str) -> tuple[dict, dict]:
    """(trainable, frozen) subtrees: a parameter trains when `pattern` fully matches its path."""
    flat = traverse_util.flatten_dict(params, sep="/")
    regex = re.compile(pattern)
    trainable = {k: v for k, v in flat.items() if regex.fullmatch(k)}
    if not trainable:
        examples = ", ".join(sorted(flat)[:3])
        raise TrainError(
            f"TRAINABLE={pattern!r} matches no parameter (paths look like "
            f"{examples}, ...); use '{prompts.PROMPT_PATH}' or '.*'"
        )
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    return (
        traverse_util.unflatten_dict(trainable, sep="/"),
        traverse_util.unflatten_dict(frozen, sep="/"),
    )


def merge(frozen: dict, trainable: dict) -> dict:
    flat = traverse_util.flatten_dict(frozen, sep="/")
    flat.update(traverse_util.flatten_dict(trainable, sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")


@struct.dataclass
class TrainState:
    step: jax.Array
    trainable: dict
    opt_state: optax.OptState


def init_state(trainable: dict, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable))


def create_state(
    trainable: dict, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """The initial state on `mesh`: optimizer slots follow their parameters' shardings (jit
    propagates them); scalars and anything left on one device are replicated."""
    state = jax.jit(lambda tr: init_state(tr, optimizer))(trainable)
    on_mesh = lambda x: len(x.sharding.device_set) == mesh.size
    return jax.tree.map(
        lambda x: x if on_mesh(x) else jax.device_put(x, partitioning.replicated(mesh)), state
    )


# ---------------------------------------------------------------------------------------------
# The step.


def train_step(
    model: EncoderDecoderModel,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    num_microbatches: int,
    state: TrainState,
    frozen: dict,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
) -> tuple[TrainState, dict]:
    """One optimizer update; gradients flow only into `state.trainable`.

    With `num_microbatches > 1` the batch [A*B, ...] is split into A microbatches whose
    gradients are averaged (gradient accumulation without extra optimizer steps).
    """
    rng = jax.random.fold_in(rng, state.step)  # resumable: the step, not history, picks dropout

    def loss_fn(trainable, micro, key):
        return model.loss(merge(frozen, trainable), micro, key)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches == 1:
        (loss, aux), grads = grad_fn(state.trainable, batch, rng)
    else:
        micro = jax.tree.map(lambda x: x.reshape(num_microbatches, -1, *x.shape[1:]), batch)

        def accumulate(carry, inputs):
            i, mb = inputs
            (loss, aux), grads = grad_fn(state.trainable, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

        zeros = jax.tree.map(
            jnp.zeros_like,
            jax.eval_shape(
                lambda: grad_fn(state.trainable, jax.tree.map(lambda x: x[0], micro), rng)
            ),
        )
        zeros = (zeros[0][0], zeros[0][1], zeros[1])
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_microbatches), micro))
        loss, aux, grads = jax.tree.map(lambda x: x / num_microbatches, total)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
        "learning_rate": schedule(state.step),
        **aux,
    }
    return TrainState(state.step + 1, trainable, opt_state), metrics


def compile_train_step(
    model,
    optimizer,
    schedule,
    num_microbatches,
    mesh: Mesh,
    state_shardings,
    frozen_shardings,
    batch_example: Mapping,
):
    batch_shardings = {
        k: partitioning.data_sharding(mesh, np.ndim(v)) for k, v in batch_example.items()
    }
    step = jax.jit(
        lambda state, frozen, batch, rng: train_step(
            model, optimizer, schedule, num_microbatches, state, frozen, batch, rng
        ),
        in_shardings=(
            state_shardings,
            frozen_shardings,
            batch_shardings,
            partitioning.replicated(mesh),
        ),
        out_shardings=(state_shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,),
    )
    return step, batch_shardings


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Keep compiled steps on disk (JAX's persistent cache), keyed by their HLO.

    Each run jits its own step function, so a flow of many runs with the same shapes (the SPoT
    flow, a sweep) would compile the same program again and again; with the cache only the
    first compiles (measured: a 2-step offline_small run 16.5 s -> 5.5 s). JAX's own
    JAX_COMPILATION_CACHE_DIR wins; else `directory`, $PROMPT_TRANSFER_JAX_CACHE or
    ~/.cache/prompt_transfer/jax. Returns the directory in use.
    """
    if jax.config.jax_compilation_cache_dir is None:
        directory = (
            directory
            or os.environ.get("PROMPT_TRANSFER_JAX_CACHE")
            or str(Path.home() / ".cache" / "prompt_transfer" / "jax")
        )
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_compilation_cache_max_size", 2**30)  # oldest entries go first
    return jax.config.jax_compilation_cache_dir


# ---------------------------------------------------------------------------------------------
# Building the model and its parameters.


def frozen_network(
    config: t5.T5Config, checkpoint: str | None, mesh: Mesh, seed: int, dtype=jnp.float32
):
    """(module, boxed abstract tree, parameters) of the network, placed on `mesh`.

    From `checkpoint` when given (sharded restore), else a fresh initialisation created
    already sharded (eval_shape, shardings from the logical rules, jitted init).
    """
    module = t5.T5(config)
    abstract = t5.abstract_params(module)
    if checkpoint:
        return module, abstract, checkpoints.restore_params(checkpoint, abstract, mesh, dtype=dtype)
    shardings = partitioning.param_shardings(abstract, mesh)
    tokens = jnp.ones((1, 8), jnp.int32)
    init = jax.jit(
        lambda rng: nn.unbox(module.init(rng, tokens, tokens)["params"]), out_shardings=shardings
    )
    return module, abstract, init(jax.random.PRNGKey(seed))


def _abstract_with_prompt(abstract: dict, length: int, dim: int) -> dict:
    return prompts.with_prompt(abstract, prompts.abstract_prompt(length, dim))


# ---------------------------------------------------------------------------------------------
# The entry point.


def train(
    *,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int,
    model_config: t5.T5Config,
    initial_checkpoint_path: str | None = None,
    trainable: str = prompts.PROMPT_PATH,
    prompt_length: int = 100,
    prompt_init: prompts.PromptInit = prompts.PromptInit(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    num_microbatches: int = 1,
    eval_period: int = 0,
    eval_split: str = "validation",
    eval_batch_size: int = 32,
    early_stopping_patience: int = 0,
    save_period: int = 1000,
    keep_checkpoints: int = 3,
    log_period: int = 50,
    random_seed: int = 0,
    num_partitions: int = 1,
    file_tasks: Sequence[file_task_lib.FileTask] = (),
    library_dir: str | None = None,
    library_kind: str = "trained",
    model_name: str = "",
    config_text: str = "",
    overwrite: bool = False,
    resume: bool = False,
) -> dict:
    """Train the TRAINABLE parameters on a SeqIO task or mixture; returns a summary dict.

    `prompt_length=0` trains without a soft prompt (model tuning, pretraining). A MODEL_DIR that
    holds a run with the same config resumes from its latest checkpoint; one with a different
    config is refused unless `overwrite` (start over) or `resume` (continue anyway).
    """
    # -- Set-up: the run directory, the task, the mesh. --------------------------------------
    model_dir_path = Path(model_dir)
    for file_task in file_tasks:  # user tasks from TSV/JSONL, validated before any work
        file_task_lib.register_file_task(file_task)
    task = data.get_task(mixture_or_task_name)
    evaluation.check_labels_fit(mixture_or_task_name, task_feature_lengths)
    if prompt_length and prompt_init.method == "file":  # fail on a bad file before any work
        prompts.from_file(prompt_init.file, prompt_length, model_config.emb_dim)
    train_io.check_model_dir(model_dir_path, config_text, overwrite=overwrite, resume=resume)
    vocabulary = task.output_features["targets"].vocabulary
    mesh = partitioning.make_mesh(num_partitions)
    data_ways = mesh.shape[partitioning.DATA_AXIS] * num_microbatches
    if batch_size % data_ways:
        raise TrainError(
            f"BATCH_SIZE={batch_size} does not split over {num_microbatches} "
            f"microbatch(es) x {mesh.shape[partitioning.DATA_AXIS]} data-parallel "
            f"devices; use a multiple of {data_ways}"
        )
    log = train_io.ProgressLog(model_dir_path, train_steps)

    # -- Parameters: the frozen network, the prompt, what trains. ----------------------------
    module, abstract, network = frozen_network(
        model_config, initial_checkpoint_path, mesh, random_seed
    )
    params = network
    resuming = any(model_dir_path.glob("checkpoint_*"))
    if prompt_length:
        abstract = _abstract_with_prompt(abstract, prompt_length, model_config.emb_dim)
        if resuming:  # the prompt comes from the checkpoint; do not redo a transfer init
            prompt = np.zeros((prompt_length, model_config.emb_dim), np.float32)
        elif prompt_init.method == "transfer":
            rerun = functools.partial(train, **locals_for_rerun(locals()))
            scorer = functools.partial(
                _model_scores,
                module,
                network,
                mixture_or_task_name,
                task_feature_lengths,
                eval_split,
                eval_batch_size,
            )
            prompt = _transfer_prompt(
                prompt_init.transfer,
                prompt_length,
                model_config.emb_dim,
                network,
                mixture_or_task_name,
                model_dir_path,
                rerun,
                log,
                scorer,
            )
        else:
            labels = prompt_init.labels or registry.class_labels(mixture_or_task_name) or ()
            init = dataclasses.replace(prompt_init, labels=tuple(labels))
            prompt = prompts.initial_prompt(
                init,
                prompt_length,
                np.asarray(network["token_embedder"]["embedding"]),
                seed=random_seed,
                encode=vocabulary.encode,
            )
        params = prompts.with_prompt(network, jnp.asarray(prompt))
    shardings = partitioning.param_shardings(abstract, mesh)
    params = jax.device_put(params, shardings)
    trainable, frozen = split_trainable(params, trainable)
    trainable_shardings, frozen_shardings = split_trainable(shardings, trainable_pattern(trainable))
    log.info(
        f"trainable {t5.param_count(trainable):,} parameters "
        f"({len(traverse_util.flatten_dict(trainable))} arrays), frozen "
        f"{t5.param_count(frozen):,}"
    )

    opt_cfg = optimizer
    tx, schedule = make_optimizer(opt_cfg), learning_rate_schedule(opt_cfg)
    state = create_state(trainable, tx, mesh)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    model = EncoderDecoderModel(module)

    # -- Resume. -----------------------------------------------------------------------------
    store = train_io.CheckpointStore(model_dir_path, keep_checkpoints)
    position, best = 0, train_io.BestTracker.load(model_dir_path)
    if store.latest_step() is not None:
        state, position = store.restore(state)
        log.info(f"resumed from checkpoint_{int(state.step)} (data position {position})")
    start = int(state.step)

    stream = data.BatchStream(
        mixture_or_task_name,
        task_feature_lengths,
        batch_size,
        random_seed,
        position,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
    )
    evaluator = (
        evaluation.TaskEvaluator(
            model, mixture_or_task_name, eval_split, task_feature_lengths, eval_batch_size
        )
        if eval_period
        else None
    )
    step_fn = None
    rng = jax.random.PRNGKey(random_seed)
    train_io.write_config(model_dir_path, config_text)

    # -- The loop: no host sync except at log, save and eval points. -------------------------
    window, window_start, stopped_early = [], start, False
    for step in range(start, train_steps):
        batch = next(stream)
        if step_fn is None:
            step_fn, batch_shardings = compile_train_step(
                model,
                tx,
                schedule,
                num_microbatches,
                mesh,
                state_shardings,
                frozen_shardings,
                batch,
            )
        batch = jax.device_put(batch, batch_shardings)
        state, metrics = step_fn(state, frozen, batch, rng)
        window.append(metrics)
        done = step + 1
        last = done == train_steps
        if (
            done % log_period == 0
            or done % save_period == 0
            or last
            or (eval_period and done % eval_period == 0)
        ):
            summary = train_io.check_finite(window, window_start + 1, done)
            log.train_metrics(done, summary, batch_size, task_feature_lengths, len(window))
            window, window_start = [], done
        if done % save_period == 0 or last:
            store.save(state, stream.position, prompt_of(state, frozen))
        if eval_period and (done % eval_period == 0 or last):
            results = evaluator.evaluate(merge(frozen, state.trainable), done)
            name, value = evaluation.main_metric(results)
            log.eval_metrics(done, results, name, value)
            if best.update(done, name, value):
                store.save_best(state, prompt_of(state, frozen), best)
            if early_stopping_patience and best.evals_since_best >= early_stopping_patience:
                log.info(
                    f"early stopping at step {done}: no better {name} for "
                    f"{best.evals_since_best} evaluations"
                )
                store.save(state, stream.position, prompt_of(state, frozen))
                stopped_early = True
                break
    store.close()
    summary = {
        "step": int(state.step),
        "best": dataclasses.asdict(best),
        "stopped_early": stopped_early,
    }
    if library_dir and prompt_length:
        entry = _add_to_library(
            library_dir,
            library_kind,
            prompt_of(state, frozen),
            mixture_or_task_name,
            model_name,
            network,
            int(state.step),
            random_seed,
            best,
            config_text,
        )
        log.info(f"added the prompt to the library {library_dir} as {entry.id}")
        summary["library_entry"] = entry.id
    log.close()
    return summary


_RERUN_ARGS = (
    "mixture_or_task_name",
    "task_feature_lengths",
    "batch_size",
    "model_config",
    "initial_checkpoint_path",
    "trainable",
    "prompt_length",
    "optimizer",
    "num_microbatches",
    "eval_split",
    "eval_batch_size",
    "log_period",
    "random_seed",
    "num_partitions",
    "file_tasks",
    "model_name",
    "config_text",
)


def locals_for_rerun(scope: dict) -> dict:
    """The arguments of this `train` call that nested runs (transfer candidates) share."""
    return {k: scope[k] for k in _RERUN_ARGS}


def _model_scores(
    module, network, task_name, feature_lengths, split, batch_size, metric, target, sources
):
    """Scores of source prompts that need the frozen model: activation overlap with the
    target's embedding, or each source's zero-shot score on the target's validation split."""
    from prompt_transfer import similarity, transfer

    if metric == "activation_overlap":
        signature = lambda p: similarity.activation_signature(module, network, np.asarray(p))
        return similarity.score_library(
            metric, signature(target), np.stack([signature(p) for p in sources])
        )
    return transfer.zero_shot_matrix(
        EncoderDecoderModel(module),
        network,
        sources,
        [task_name],
        feature_lengths,
        split,
        batch_size,
    )[:, 0]


def _transfer_prompt(
    init, length, dim, network, task_name, model_dir, rerun, log, model_scores=None
):
    """The initial prompt of a transfer strategy; nested runs go under MODEL_DIR/transfer/."""
    from prompt_transfer import library, transfer

    fingerprint = library.model_fingerprint(network)
    runs = model_dir / "transfer"

    def run_candidate(prompt, name):
        path = runs / f"candidate_{name}"
        train_io.save_npy(path / "init.npy", prompt)
        summary = rerun(
            model_dir=str(path),
            train_steps=init.candidate_steps,
            eval_period=init.candidate_steps,
            save_period=init.candidate_steps,
            prompt_init=prompts.PromptInit("file", file=str(path / "init.npy")),
            early_stopping_patience=0,
            keep_checkpoints=1,
            overwrite=True,
        )
        log.info(f"best_of_top_k: starting from {name} reaches {summary['best']['value']:.2f}")
        return summary["best"]["value"]

    def run_mixture(source_tasks):
        name = data.register_mixture(f"transfer_mixture_{task_name}", source_tasks)
        path = runs / "mixture"
        rerun(
            model_dir=str(path),
            mixture_or_task_name=name,
            train_steps=init.mixture_steps,
            eval_period=0,
            save_period=init.mixture_steps,
            keep_checkpoints=1,
            overwrite=True,
            prompt_init=prompts.PromptInit("sampled_vocab"),
        )
        return np.load(path / "prompts" / f"checkpoint_{init.mixture_steps}.npy")

    prompt, report = transfer.initial_prompt(
        init, length, dim, fingerprint, task_name, run_candidate, run_mixture, model_scores
    )
    train_io.save_npy(model_dir / "transfer" / "initial_prompt.npy", prompt)
    train_io.atomic_write_bytes(
        model_dir / "transfer" / "report.json",
        json.dumps(dict(report, strategy=init.strategy), indent=1).encode(),
    )
    log.info(f"transfer ({init.strategy}): sources {report['sources']}")
    return prompt


def _add_to_library(
    library_dir, kind, prompt, task, model_name, network, steps, seed, best, config_text
):
    """The run's final prompt as a library entry (a trained source, or a task embedding)."""
    import hashlib

    from prompt_transfer import library

    return library.Library(library_dir).add(
        np.asarray(prompt),
        task=task,
        model=model_name or "unnamed",
        model_fingerprint=library.model_fingerprint(network),
        steps=steps,
        seed=seed,
        score=best.value if best.step >= 0 else None,
        metric=best.metric,
        kind=kind,
        config_hash=hashlib.sha256(config_text.encode()).hexdigest()[:16],
    )


def load_trained_params(
    model_dir: str,
    model_config: t5.T5Config,
    initial_checkpoint_path: str | None,
    trainable: str,
    prompt_length: int,
    random_seed: int,
    mesh: Mesh,
    which: str = "latest",
    file_tasks: Sequence[file_task_lib.FileTask] = (),
):
    """(module, parameters) of a run: its frozen network plus the trained subtree restored from
    MODEL_DIR (`which` is "latest" or "best")."""
    for file_task in file_tasks:  # the run's own tasks, if it brought any
        file_task_lib.register_file_task(file_task)
    module, abstract, params = frozen_network(
        model_config, initial_checkpoint_path, mesh, random_seed
    )
    if prompt_length:
        abstract = _abstract_with_prompt(abstract, prompt_length, model_config.emb_dim)
        params = prompts.with_prompt(params, jnp.zeros((prompt_length, model_config.emb_dim)))
    params = jax.device_put(params, partitioning.param_shardings(abstract, mesh))
    trained, frozen = split_trainable(params, trainable)
    directory = Path(model_dir) / ("best" if which == "best" else "")
    store = train_io.CheckpointStore(directory, keep=1_000_000, create=False)
    if store.latest_step() is None:
        raise TrainError(f"no {which} checkpoint in {directory}; train first or check MODEL_DIR")
    template = init_state(trained, optax.identity())
    state, _ = store.restore(template, only_trainable=True)
    store.close()
    return module, merge(frozen, state.trainable), int(state.step)


def trainable_pattern(trainable: dict) -> str:
    """A regex matching exactly the paths of `trainable` (to split other trees the same way)."""
    return "|".join(re.escape(p) for p in traverse_util.flatten_dict(trainable, sep="/"))


def prompt_of(state: TrainState, frozen: dict):
    """The current prompt [P, E] (trainable or frozen), or None when the run has none."""
    _, prompt = prompts.split_prompt(merge(frozen, state.trainable))
    return prompt


def main(argv: list[str]) -> dict:
    """`python -m prompt_transfer.train --gin_file=... --gin.MODEL_DIR=... [--overwrite]`."""
    launch = gin_files.parse_command_line(argv, flags=("overwrite", "resume"))
    config_text = gin_files.configure(launch.files, launch.bindings)
    return gin_files.configured(train)(config_text=config_text, **launch.flags)


if __name__ == "__main__":
    from prompt_transfer import cli

    sys.exit(cli.main(["train", *sys.argv[1:]]))
