"""The gin-bound entry points: `train`, `evaluate` and `infer`, over one `RunSpec`.

    python -m prompt_transfer train --gin_file=experiments/prompt_tuning_tiny \\
        --gin.MODEL_DIR=/tmp/run --gin.MIXTURE_OR_TASK_NAME=my_task

A `RunSpec` says what a run is (model, data, what trains, where it lives); gin binds it once
(gin/runs/prompt_tuning.gin) and all three entry points read it, so `evaluate` and `infer`
rebuild exactly the model that `train` trained. `TrainConfig` says how it trains.

A transfer run computes its initial prompt first (retrieval, and for best_of_top_k and
top_k_mixture the short runs under MODEL_DIR/transfer/), then trains once from that array.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from prompt_transfer import (
    data,
    evaluation,
    gin_files,
    inference,
    partitioning,
    paths,
    prompts,
    registry,
    runtime,
    t5,
    vocab,
)
from prompt_transfer import file_tasks as file_task_lib
from prompt_transfer.errors import UserError
from prompt_transfer.models import EncoderDecoderModel
from prompt_transfer.trainer import loop, run_dir, weights
from prompt_transfer.trainer.state import (
    LazyStep,
    OptimizerConfig,
    TrainError,
    create_state,
    learning_rate_schedule,
    make_optimizer,
    merge,
)
from prompt_transfer.transfer import initial, library, retrieval


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run is. Fields follow T5X's macros (gin/runs/prompt_tuning.gin binds them)."""

    model_dir: str  # MODEL_DIR, local or gs://
    task: str  # MIXTURE_OR_TASK_NAME
    feature_lengths: Mapping[str, int]  # TASK_FEATURE_LENGTHS
    model_config: t5.T5Config
    initial_checkpoint: str | None = None  # INITIAL_CHECKPOINT_PATH (None: random init)
    trainable_regex: str = prompts.PROMPT_PATH  # TRAINABLE: '.*' is model tuning
    prompt_length: int = 100  # 0: no soft prompt
    seed: int = 0
    num_partitions: int = 1  # model-parallel ways; the rest of the devices split the batch
    file_tasks: Sequence[file_task_lib.FileTask] = ()  # user tasks from TSV/JSONL
    model_name: str = "unnamed"  # the frozen model's name in library metadata
    vocabulary: str | None = None  # VOCABULARY of the size gin file: the model's own tokens
    # DEEP_PROMPT: besides the input prompt, PROMPT_LENGTH keys and values of its own in every
    # self-attention (prefix tuning / P-tuning v2); TRAINABLE must cover prompts.DEEP_REGEX.
    deep_prompt: bool = False
    # FROZEN_DTYPE: how the frozen network is stored ('bfloat16' halves its memory); what trains
    # (the prompt, or every weight in model tuning) and its optimizer state stay float32.
    frozen_dtype: str = "float32"

    def prepare_tasks(self):
        """Tasks take the model's vocabulary, the run's own tasks are registered, and the task
        is checked against the model; returns the SeqIO task or mixture."""
        vocab.follow_model(self.vocabulary)
        for file_task in self.file_tasks:  # validated before any work
            file_task_lib.register_file_task(file_task)
        task = data.get_task(self.task)
        for sub in registry.subtasks(task):
            vocab.check_model_reads(sub, self.model_config.vocab_size, self.vocabulary)
        return task


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a run trains."""

    steps: int  # TRAIN_STEPS
    batch_size: int
    prompt_init: prompts.PromptInit = prompts.PromptInit()
    optimizer: OptimizerConfig = OptimizerConfig()
    num_microbatches: int = 1
    # DATA_SHARDS: SeqIO shards of the training data, read by the processes in equal parts
    # (0: one per process). Runs with the same count see the same global batches however many
    # processes they run on.
    data_shards: int = 0
    eval_period: int = 0  # 0: never evaluate
    eval_split: str = "validation"
    eval_batch_size: int = 32
    early_stopping_patience: int = 0  # evaluations without a new best; 0: never stop
    save_period: int = 1000
    keep_checkpoints: int = 3
    log_period: int = 50
    library_dir: str | None = None  # when set, the final prompt joins this library
    library_kind: str = "trained"  # or "task_embedding"


# ---------------------------------------------------------------------------------------------
# Training.


def train(
    spec: RunSpec,
    config: TrainConfig,
    *,
    config_text: str = "",
    overwrite: bool = False,
    resume: bool = False,
) -> dict:
    """Train the TRAINABLE parameters on the task; returns a summary dict.

    A MODEL_DIR that holds a run with the same config resumes from its latest checkpoint; one
    with a different config is refused unless `overwrite` (start over) or `resume` (continue
    anyway). Everything is checked before the first compilation.
    """
    check_numbers(spec, config)
    mesh = partitioning.make_mesh(spec.num_partitions)
    check_run(spec, config, mesh)
    with run_dir.lock(spec.model_dir):
        run_dir.check_model_dir(spec.model_dir, config_text, overwrite=overwrite, resume=resume)
        runtime.barrier("model_dir checked")  # process 0 cleared it when told to
        network = network_of(spec, mesh)
        fresh = not run_dir.holds_run(spec.model_dir)
        run_dir.check_model(spec.model_dir, model_record(spec, network), create=True)
        try:
            return _train_locked(spec, config, config_text, mesh, network)
        except UserError:
            # Refused before its first checkpoint (a transfer source that does not fit, say):
            # a new run leaves nothing behind that a corrected launch would trip over.
            if fresh and not run_dir.holds_checkpoint(spec.model_dir):
                run_dir.clear_run(spec.model_dir)
            raise


FROZEN_DTYPES = ("float32", "bfloat16")


def network_of(spec: RunSpec, mesh):
    """The run's frozen network on `mesh`, stored in FROZEN_DTYPE (shared within a process)."""
    return weights.frozen_network(
        spec.model_config, spec.initial_checkpoint, mesh, spec.seed, spec.frozen_dtype
    )


def model_record(spec: RunSpec, network) -> dict:
    return {
        "fingerprint": library.model_fingerprint(network.params),
        "checkpoint": spec.initial_checkpoint,
        "vocabulary": spec.vocabulary,
    }


def _train_locked(spec, config, config_text, mesh, network) -> dict:
    with run_dir.ProgressLog(spec.model_dir, config.steps) as log:
        warn_random_network(spec, log)
        if run_dir.holds_checkpoint(spec.model_dir):  # the prompt comes from there
            prompt = _blank_prompt(spec)
        else:
            prompt = initial_prompt_of(spec, config, network, mesh, log)
        summary, final_prompt = fit(spec, config, network, mesh, prompt, log, config_text)
        if config.library_dir and final_prompt is not None:
            entry = add_to_library(spec, config, network, final_prompt, summary, config_text)
            log.info(f"added the prompt to the library {config.library_dir} as {entry.id}")
            summary["library_entry"] = entry.id
    return summary


def warn_random_network(spec: RunSpec, log) -> None:
    """Prompt tuning against a random initialisation is a baseline, rarely what was meant."""
    if not spec.initial_checkpoint and spec.trainable_regex != ".*":
        log.info(
            "warning: INITIAL_CHECKPOINT_PATH is None, so the frozen network is a random "
            "initialisation and the prompt learns against it (intended for a baseline; "
            "otherwise set INITIAL_CHECKPOINT_PATH)"
        )


# (field, its macro, the least value it may take): whole numbers only.
_COUNTS = (
    ("steps", "TRAIN_STEPS", 1),
    ("batch_size", "BATCH_SIZE", 1),
    ("num_microbatches", "NUM_MICROBATCHES", 1),
    ("data_shards", "DATA_SHARDS", 0),
    ("eval_period", "EVAL_PERIOD", 0),
    ("eval_batch_size", "EVAL_BATCH_SIZE", 1),
    ("early_stopping_patience", "EARLY_STOPPING_PATIENCE", 0),
    ("save_period", "SAVE_PERIOD", 1),
    ("keep_checkpoints", "KEEP_CHECKPOINTS", 1),
    ("log_period", "LOG_PERIOD", 1),
    ("prompt_length", "PROMPT_LENGTH", 0),
    ("seed", "RANDOM_SEED", 0),
    ("num_partitions", "NUM_PARTITIONS", 1),
)


def check_numbers(spec: RunSpec, config: TrainConfig | None = None) -> None:
    """Counts are whole numbers in range and TRAINABLE is a regular expression, or one line
    names the macro (`TRAIN_STEPS=3e4`, `SAVE_PERIOD=0`, `TRAINABLE='['`)."""
    for field, macro, least in _COUNTS:
        holder = spec if hasattr(spec, field) else config
        if holder is None:
            continue
        value = getattr(holder, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            whole = (
                f" (write {int(value)})"
                if isinstance(value, float) and value.is_integer() and value >= least
                else ""
            )
            raise TrainError(f"{macro}={value!r} must be a whole number >= {least}{whole}")
    if getattr(spec, "frozen_dtype", "float32") not in FROZEN_DTYPES:
        raise TrainError(
            f"FROZEN_DTYPE={spec.frozen_dtype!r} is not one of {', '.join(FROZEN_DTYPES)}"
        )
    try:
        re.compile(spec.trainable_regex)
    except re.error as e:
        raise TrainError(
            f"TRAINABLE={spec.trainable_regex!r} is not a regular expression ({e}); it selects "
            f"parameter paths, e.g. '{prompts.PROMPT_PATH}' or '.*'"
        ) from e


def check_run(spec: RunSpec, config: TrainConfig, mesh) -> None:
    """Refuse bad input before any work: unknown task, labels too long, a bad prompt file, a
    batch that does not split over the devices."""
    spec.prepare_tasks()
    evaluation.check_labels_fit(spec.task, spec.feature_lengths)
    init = config.prompt_init
    if spec.prompt_length and init.method == "file":
        prompts.from_file(init.file, spec.prompt_length, spec.model_config.emb_dim)
    if spec.deep_prompt:
        _check_deep_prompt(spec)
    shards, processes = data_shards(config), jax.process_count()
    if shards % processes or config.batch_size % shards:
        raise TrainError(
            f"DATA_SHARDS={shards} must be a multiple of the {processes} process(es) and "
            f"divide BATCH_SIZE={config.batch_size}; e.g. DATA_SHARDS={processes}"
        )
    devices = data_devices(mesh)
    if devices % processes:
        raise TrainError(
            f"NUM_PARTITIONS={spec.num_partitions} spreads one model over several of the "
            f"{processes} processes, whose rows of a batch must differ; use at most "
            f"{jax.local_device_count()} (the devices of one process)"
        )
    if processes > 1 and config.eval_period and config.eval_batch_size % devices:
        raise TrainError(
            f"EVAL_BATCH_SIZE={config.eval_batch_size} does not split over the {devices} "
            f"data-parallel devices of a {processes}-process job; use a multiple of {devices}"
        )
    data_ways = devices * config.num_microbatches
    if config.batch_size % data_ways:
        raise TrainError(
            f"BATCH_SIZE={config.batch_size} does not split over {config.num_microbatches} "
            f"microbatch(es) x {devices} data-parallel devices; use a multiple of {data_ways}"
        )


def fit(spec, config, network, mesh, prompt, log, config_text: str = ""):
    """Train from `prompt` (None: no prompt; a deep prompt in its wide form, see
    prompts.widen), resuming from MODEL_DIR's latest checkpoint when there is one; returns
    (summary, final prompt in the same form, or None)."""
    optimizer = make_optimizer(config.optimizer)
    deep = None
    if prompt is not None:
        prompt, deep = prompts.narrow(prompt, spec.model_config)
    trainable, fixed, fixed_shardings = weights.place(
        network, prompt, spec.trainable_regex, mesh, deep
    )
    log.info(
        f"trainable {t5.param_count(trainable):,} parameters ({len(jax.tree.leaves(trainable))} "
        f"arrays), fixed {t5.param_count(fixed):,}"
    )
    state = create_state(trainable, optimizer, mesh)
    store = run_dir.CheckpointStore(spec.model_dir, config.keep_checkpoints)
    best, position = run_dir.BestTracker.load(spec.model_dir), 0
    if store.latest_step() is not None:
        state, position = store.restore(state)
        log.info(f"resumed from checkpoint_{int(state.step)} (data position {position})")
    stream = open_stream(
        spec, config, position, store.data_state(int(state.step)) if position else None
    )
    if stream.restored:
        log.info(f"data iterator restored at batch {position} (no replay)")
    model = EncoderDecoderModel(network.module)
    step_fn = LazyStep(
        model,
        optimizer,
        learning_rate_schedule(config.optimizer),
        config.num_microbatches,
        mesh,
        state,
        fixed_shardings,
    )
    run_dir.write_config(spec.model_dir, config_text)
    schedule = loop.Schedule(
        config.steps, config.log_period, config.save_period, config.eval_period
    )
    hooks = run_hooks(spec, config, model, fixed, store, best, log, stream)
    try:
        state, stopped_early = loop.run(
            state, fixed, step_fn, stream, jax.random.PRNGKey(spec.seed), schedule, hooks
        )
    finally:
        store.close()
    summary = {
        "step": int(state.step),
        "best": dataclasses.asdict(best),
        "stopped_early": stopped_early,
    }
    return summary, prompts.wide_of(merge(fixed, state.trainable), spec.model_config)


def open_stream(
    spec: RunSpec, config: TrainConfig, position: int = 0, state_file: str | None = None
) -> data.BatchStream:
    """The run's batches from data `position` (its saved iterator in `state_file`, if any):
    this process's rows of each global batch, read from its own data shards."""
    shards, processes, me = data_shards(config), jax.process_count(), jax.process_index()
    mine = shards // processes
    return data.BatchStream(
        spec.task,
        spec.feature_lengths,
        config.batch_size // processes,
        spec.seed,
        position,
        num_shards=shards,
        shards=tuple(range(me * mine, (me + 1) * mine)),
        state_file=state_file,
    )


def data_devices(mesh) -> int:
    return mesh.shape[partitioning.DATA_AXIS]


def data_shards(config: TrainConfig) -> int:
    return config.data_shards or jax.process_count()


def run_hooks(spec, config, model, fixed, store, best, log, stream) -> loop.Hooks:
    """What the loop does at log, save and evaluation points."""
    evaluator = (
        evaluation.TaskEvaluator(
            model, spec.task, config.eval_split, spec.feature_lengths, config.eval_batch_size
        )
        if config.eval_period
        else None
    )

    def log_window(step: int, means: dict, steps_in_window: int) -> None:
        log.train_metrics(step, means, config.batch_size, spec.feature_lengths, steps_in_window)

    def save(state, position: int) -> None:
        store.save(state, position, weights.prompt_of(state, fixed), stream)

    def evaluate(state, step: int) -> bool:
        results = evaluator.evaluate(merge(fixed, state.trainable), step)
        name, value = evaluation.main_metric(results)
        log.eval_metrics(step, results, name, value, evaluator.predictions, evaluator.labels)
        if best.update(step, name, value):
            store.save_best(state, weights.prompt_of(state, fixed), best)
        patience = config.early_stopping_patience
        if patience and best.evals_since_best >= patience:
            log.info(
                f"early stopping at step {step}: no better {name} for "
                f"{best.evals_since_best} evaluations"
            )
            return True
        return False

    def evaluated(step: int) -> bool:
        return not evaluator or any(
            h["step"] == step for h in run_dir.read_eval_history(spec.model_dir)
        )

    return loop.Hooks(log_window, save, evaluate, evaluated)


# ---------------------------------------------------------------------------------------------
# The initial prompt, computed before training.


def _blank_prompt(spec: RunSpec) -> np.ndarray | None:
    """Zeros in the run's prompt form (None without a prompt), for a checkpoint to overwrite."""
    if not spec.prompt_length:
        return None
    width = spec.model_config.emb_dim
    if spec.deep_prompt:
        width += prompts.deep_width(spec.model_config)
    return np.zeros((spec.prompt_length, width), np.float32)


def _check_deep_prompt(spec: RunSpec) -> None:
    first = prompts.deep_prefix_paths(spec.model_config)[0]
    if not spec.prompt_length:
        raise TrainError("DEEP_PROMPT=True needs PROMPT_LENGTH > 0 (its length per layer)")
    if not re.fullmatch(spec.trainable_regex, first):
        raise TrainError(
            f"DEEP_PROMPT=True but TRAINABLE={spec.trainable_regex!r} leaves the deep prompt "
            f"({first}, ...) frozen; use TRAINABLE='{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}'"
        )


def initial_prompt_of(spec, config, network, mesh, log) -> np.ndarray | None:
    """The prompt [P, E] a fresh run starts from (None without a prompt)."""
    init = config.prompt_init
    if not spec.prompt_length:
        return None
    if init.method == "transfer":
        return _transfer_prompt(spec, config, network, mesh, log)
    labels = init.labels or registry.class_labels(spec.task) or ()
    vocabulary = data.get_task(spec.task).output_features["targets"].vocabulary
    prompt = prompts.initial_prompt(
        dataclasses.replace(init, labels=tuple(labels)),
        spec.prompt_length,
        partitioning.host_array(network.params["token_embedder"]["embedding"]),
        seed=spec.seed,
        encode=vocabulary.encode,
    )
    deep = None
    if spec.deep_prompt:  # each layer's keys and values of sampled tokens
        deep = prompts.initial_deep_prompt(
            network.params, spec.model_config, spec.prompt_length, seed=spec.seed + 1
        )
    return prompts.widen(prompt, deep, spec.model_config)


def _short_run(spec, config, network, mesh, name, task, steps, prompt, eval_period):
    """A nested run under MODEL_DIR/transfer/<name> (a best_of_top_k candidate or the
    top_k_mixture run); returns (summary, final prompt). It never transfers itself."""
    sub_spec = dataclasses.replace(
        spec, model_dir=str(run_dir.subdir(spec.model_dir, "transfer", name)), task=task
    )
    sub_config = dataclasses.replace(
        config,
        steps=steps,
        eval_period=eval_period,
        save_period=steps,
        early_stopping_patience=0,
        keep_checkpoints=1,
        library_dir=None,
    )
    run_dir.check_model_dir(sub_spec.model_dir, "", overwrite=True, resume=False)
    with run_dir.ProgressLog(sub_spec.model_dir, steps) as log:
        return fit(sub_spec, sub_config, network, mesh, prompt, log)


def _transfer_prompt(spec, config, network, mesh, log) -> np.ndarray:
    """The initial prompt of a transfer strategy, with its report in MODEL_DIR/transfer/."""
    init = config.prompt_init.transfer
    short_run = functools.partial(_short_run, spec, config, network, mesh)

    def run_candidate(prompt, name):
        summary, _ = short_run(
            f"candidate_{name}", spec.task, init.candidate_steps, prompt, init.candidate_steps
        )
        log.info(f"best_of_top_k: starting from {name} reaches {summary['best']['value']:.2f}")
        return summary["best"]["value"]

    def run_mixture(source_tasks):
        mixture = data.register_mixture(f"transfer_mixture_{spec.task}", source_tasks)
        sampled = dataclasses.replace(config, prompt_init=prompts.PromptInit("sampled_vocab"))
        on_mixture = dataclasses.replace(spec, task=mixture)
        start = initial_prompt_of(on_mixture, sampled, network, mesh, log)
        return short_run("mixture", mixture, init.mixture_steps, start, 0)[1]

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
        prompts.deep_width(spec.model_config) if spec.deep_prompt else 0,
    )
    folder = run_dir.subdir(spec.model_dir, "transfer")
    paths.save_npy(folder / "initial_prompt.npy", prompt)
    report = dict(report, strategy=init.strategy)
    paths.atomic_write_text(folder / "report.json", json.dumps(report, indent=1))
    log.info(f"transfer ({init.strategy}): sources {report['sources']}")
    return prompt


def add_to_library(spec, config, network, prompt, summary, config_text):
    """The run's final prompt as a library entry (a trained source, or a task embedding), with
    its deep part when the run had one."""
    best = summary["best"]
    prompt, width = np.asarray(prompt), spec.model_config.emb_dim
    store = library.Library(config.library_dir)
    add = functools.partial(
        store.add,
        prompt[:, :width],
        deep=prompt[:, width:] if spec.deep_prompt else None,
        task=spec.task,
        model=spec.model_name or "unnamed",
        model_fingerprint=library.model_fingerprint(network.params),
        steps=summary["step"],
        seed=spec.seed,
        score=best["value"] if best["step"] >= 0 else None,
        metric=best["metric"],
        kind=config.library_kind,
        config_hash=hashlib.sha256(config_text.encode()).hexdigest()[:16],
    )
    return runtime.chief_first("library entry", add)  # the others find it stored


# ---------------------------------------------------------------------------------------------
# Evaluation and inference of a trained run.


CHECKPOINTS = ("latest", "best")


def _trained(spec: RunSpec, checkpoint: str):
    """(model, parameters, step) of the run's `checkpoint` ("latest" or "best")."""
    if checkpoint not in CHECKPOINTS:
        raise TrainError(f"CHECKPOINT={checkpoint!r} is unknown; choose 'latest' or 'best'")
    check_numbers(spec)
    spec.prepare_tasks()
    mesh = partitioning.make_mesh(spec.num_partitions)
    network = network_of(spec, mesh)
    run_dir.check_model(spec.model_dir, model_record(spec, network), create=False)
    trained, step = weights.restore_trained(
        spec.model_dir, network, spec.trainable_regex, _blank_prompt(spec), mesh, checkpoint
    )
    return EncoderDecoderModel(network.module), trained, step


def evaluate(
    spec: RunSpec, *, split: str = "validation", checkpoint: str = "latest", batch_size: int = 32
) -> dict:
    """{task: {metric: value}} of the run's `checkpoint` on `split`, also written to
    MODEL_DIR/eval_<split>_<checkpoint>.json."""
    model, trained, step = _trained(spec, checkpoint)
    evaluator = evaluation.TaskEvaluator(model, spec.task, split, spec.feature_lengths, batch_size)
    results = evaluator.evaluate(trained, step)
    name, value = evaluation.main_metric(results)
    report = {
        "step": step,
        "split": split,
        "checkpoint": checkpoint,
        "results": results,
        "main_metric": {name: value},
    }
    target = run_dir.subdir(spec.model_dir, f"eval_{split}_{checkpoint}.json")
    paths.atomic_write_text(target, json.dumps(report, indent=1))
    return report


def infer(
    spec: RunSpec,
    *,
    split: str = "validation",
    input_file: str | None = None,
    output_file: str | None = None,
    checkpoint: str = "latest",
    batch_size: int = 32,
) -> str:
    """Write the run's predictions (JSONL) for a task split or a text file (one input per
    line); returns the output path."""
    model, trained, step = _trained(spec, checkpoint)
    if input_file:
        task, rows = inference.rows_from_file(spec.task, input_file, spec.feature_lengths)
    else:
        task, rows = inference.rows_from_task(spec.task, split, spec.feature_lengths)
    records = inference.predict(model, trained, task, rows, spec.feature_lengths, batch_size)
    source = paths.path(input_file).stem if input_file else split
    out = output_file or run_dir.subdir(spec.model_dir, f"predictions_{source}_step{step}.jsonl")
    paths.atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    return str(out)


# ---------------------------------------------------------------------------------------------
# Command lines (T5X style: --gin_file=..., --gin.MACRO=...).


def train_main(argv: list[str]) -> dict:
    """`prompt-transfer train --gin_file=... --gin.MODEL_DIR=... [--overwrite | --resume]`."""
    launch = gin_files.parse_command_line(argv, flags=("overwrite", "resume"))
    config_text = gin_files.configure(launch.files, launch.bindings)
    spec, config = gin_files.build(RunSpec), gin_files.build(TrainConfig)
    return train(spec, config, config_text=config_text, **launch.flags)


def evaluate_main(argv: list[str]) -> dict:
    launch = gin_files.parse_command_line(argv)
    gin_files.configure(launch.files, launch.bindings)
    return gin_files.configured(evaluate)(gin_files.build(RunSpec))


def infer_main(argv: list[str]) -> str:
    launch = gin_files.parse_command_line(argv)
    gin_files.configure(launch.files, launch.bindings)
    return gin_files.configured(infer)(gin_files.build(RunSpec))
