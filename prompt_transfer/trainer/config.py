"""What a run is (`RunSpec`) and how it trains (`TrainConfig`), and their checks.

Gin binds both once (gin/runs/prompt_tuning.gin) and train, evaluate and infer all read them,
so evaluation rebuilds exactly the model that training trained. Every check here runs before
the first compilation: bad input is refused in one line that names the macro.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import jax

from prompt_transfer import data, evaluation, partitioning, prompts, registry, t5, vocab
from prompt_transfer import file_tasks as file_task_lib
from prompt_transfer.trainer.train_state import OptimizerConfig, TrainError


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

    @property
    def deep_width(self) -> int:
        """Columns the run's deep prompt adds to its prompt's wide form (0 without one)."""
        return prompts.deep_width(self.model_config) if self.deep_prompt else 0


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


FROZEN_DTYPES = ("float32", "bfloat16")

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


def _check_deep_prompt(spec: RunSpec) -> None:
    first = prompts.deep_prefix_paths(spec.model_config)[0]
    if not spec.prompt_length:
        raise TrainError("DEEP_PROMPT=True needs PROMPT_LENGTH > 0 (its length per layer)")
    if not re.fullmatch(spec.trainable_regex, first):
        raise TrainError(
            f"DEEP_PROMPT=True but TRAINABLE={spec.trainable_regex!r} leaves the deep prompt "
            f"({first}, ...) frozen; use TRAINABLE='{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}'"
        )


def data_devices(mesh) -> int:
    return mesh.shape[partitioning.DATA_AXIS]


def data_shards(config: TrainConfig) -> int:
    return config.data_shards or jax.process_count()
