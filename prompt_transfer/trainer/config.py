"""What a run is (`RunSpec`) and how it trains (`TrainConfig`), and their checks.

Gin binds both once (gin/runs/prompt_tuning.gin) and train, evaluate and infer all read them,
so evaluation rebuilds exactly the model that training trained. Every check here runs before
the first compilation: bad input is refused in one line that names the macro.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence

import jax

from prompt_transfer.base import errors, paths, settings
from prompt_transfer.base.settings import setting
from prompt_transfer.data import batches, registry, seqio_cache, vocab
from prompt_transfer.data import file_tasks as file_task_lib
from prompt_transfer.model import seqio_eval
from prompt_transfer.network import partitioning, t5
from prompt_transfer.prompt import kinds, multitask, prompts
from prompt_transfer.trainer.run_dir import RunDir
from prompt_transfer.trainer.train_state import OptimizerConfig, TrainError


def _paths_regex(value: str) -> str | None:
    wrong = settings.regex(value)
    return wrong and f"{wrong}; it selects parameter paths, e.g. '{prompts.PROMPT_PATH}' or '.*'"


# Task modules of T5 and prompt-tuning whose GLUE and SuperGLUE tasks this project registers under
# the same names (tasks/glue.py, tasks/super_glue.py): where they are not installed, those stand in.
STOOD_IN_MODULES = (
    "prompt_tuning.data.glue",
    "prompt_tuning.data.super_glue",
    "prompt_tuning.data.tasks",
    "t5.data.tasks",
    "t5.data.mixtures",
)


_SAID_STOOD_IN: set[str] = set()


def import_task_module(name: str) -> None:
    """Import the user's module that registers SeqIO tasks (T5X's MIXTURE_OR_TASK_MODULE);
    one line when it cannot be imported. One of T5's or prompt-tuning's modules
    (STOOD_IN_MODULES) that is not installed is the project's registrations, said in a line."""
    import importlib
    import sys

    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if name not in STOOD_IN_MODULES or not name.startswith(f"{e.name}"):
            raise TrainError(
                f"MIXTURE_OR_TASK_MODULE={name!r} cannot be imported ({errors.one_line(e)}); "
                "put its folder on PYTHONPATH or install it"
            ) from None
        if name not in _SAID_STOOD_IN:
            _SAID_STOOD_IN.add(name)
            print(
                f"prompt-transfer: MIXTURE_OR_TASK_MODULE={name!r} is not installed; its GLUE "
                "and SuperGLUE tasks are this project's, under the same names",
                file=sys.stderr,
            )
    except Exception as e:  # its own import errors too: the user's code, named in one line
        raise TrainError(
            f"MIXTURE_OR_TASK_MODULE={name!r} cannot be imported ({type(e).__name__}: "
            f"{errors.one_line(e)}); put its folder on PYTHONPATH or install it"
        ) from None


def _feature_lengths(value: Mapping[str, int]) -> str | None:
    missing = [k for k in ("inputs", "targets") if k not in value]
    if missing:
        return (
            f"lacks {missing[0]!r}: an encoder-decoder run needs both, e.g. "
            "{'inputs': 256, 'targets': 16}"
        )
    return None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run is. Fields follow T5X's macros (gin/runs/prompt_tuning.gin binds them)."""

    model_dir: str = setting(valid=paths.folder_problem, macro="MODEL_DIR")  # or gs://
    task: str = setting(macro="MIXTURE_OR_TASK_NAME")
    feature_lengths: Mapping[str, int] = setting(
        least=1,
        valid=_feature_lengths,
        macro="TASK_FEATURE_LENGTHS",
        hint="T5X's None (the longest example) is measured only by eval.gin: give both lengths",
    )
    model_config: t5.T5Config = setting()
    # INITIAL_CHECKPOINT_PATH (None: random init)
    initial_checkpoint: str | None = setting(None, macro="INITIAL_CHECKPOINT_PATH")
    # TRAINABLE: '.*' is model tuning
    trainable_regex: str = setting(prompts.PROMPT_PATH, valid=_paths_regex, macro="TRAINABLE")
    prompt_length: int = setting(100, least=0, macro="PROMPT_LENGTH")  # 0: no soft prompt
    seed: int = setting(0, least=0, macro="RANDOM_SEED")
    # model-parallel ways; the rest of the devices split the batch
    num_partitions: int = setting(1, least=1, macro="NUM_PARTITIONS")
    # user tasks from TSV/JSONL
    file_tasks: Sequence[file_task_lib.FileTask] = setting((), macro="FILE_TASKS")
    # MIXTURE_OR_TASK_MODULE (T5X's): a module of the user's that registers SeqIO tasks,
    # imported before MIXTURE_OR_TASK_NAME is looked up
    task_module: str | None = setting(None, macro="MIXTURE_OR_TASK_MODULE")
    # USE_CACHED_TASKS (T5X's): read the tasks from SeqIO's cache (data/seqio_cache.py; the folders
    # of --seqio_additional_cache_dirs) instead of their sources
    use_cached: bool = setting(False, macro="USE_CACHED_TASKS")
    model_name: str = setting("unnamed", macro="MODEL_NAME")  # the frozen model, in the library
    # VOCABULARY of the size gin file: the model's own tokens
    vocabulary: str | None = setting(None, macro="VOCABULARY")
    # DEEP_PROMPT: besides the input prompt, PROMPT_LENGTH keys and values of its own in every
    # self-attention (prefix tuning / P-tuning v2); TRAINABLE must cover prompts.DEEP_REGEX.
    deep_prompt: bool = setting(False, macro="DEEP_PROMPT")
    # FROZEN_DTYPE: how the frozen network is stored ('bfloat16' halves its memory); what trains
    # (the prompt, or every weight in model tuning) and its optimizer state stay float32.
    frozen_dtype: str = setting("float32", one_of=("float32", "bfloat16"), macro="FROZEN_DTYPE")
    # Which phase of a prompt-then-model run this is (trainer/phases.py sets it; never gin):
    # 0 a run of one phase, 1 the prompt phase, 2 the model phase.
    phase: int = setting(0, one_of=(0, 1, 2))

    def register_tasks(self) -> None:
        """Tasks take the model's vocabulary, and the run's own tasks (FILE_TASKS) register."""
        vocab.follow_model(self.vocabulary)
        seqio_cache.read_cached(self.use_cached)
        if self.task_module:
            import_task_module(self.task_module)
        for file_task in self.file_tasks:  # validated before any work
            file_task_lib.register_file_task(file_task)

    def prepare_tasks(self):
        """`register_tasks`, and the task is checked against the model; returns the SeqIO task
        or mixture."""
        self.register_tasks()
        try:
            task = batches.get_task(self.task)
        except batches.TaskError as e:
            raise TrainError(f"MIXTURE_OR_TASK_NAME={self.task!r}: {errors.one_line(e)}") from e
        seqio_cache.check_cached(task)  # before any work; each read checks its split
        for sub in registry.subtasks(task):
            vocab.check_model_reads(sub, self.model_config.vocab_size, self.vocabulary)
        return task

    @functools.cached_property
    def run_dir(self) -> RunDir:
        """MODEL_DIR, resolved once for the whole run."""
        return RunDir(self.model_dir)

    @property
    def deep_width(self) -> int:
        """Columns the run's deep prompt adds to its prompt's wide form (0 without one)."""
        return prompts.deep_width(self.model_config) if self.deep_prompt else 0


@dataclasses.dataclass(frozen=True)
class ModelPhase:
    """Phase 2 of a prompt-then-model run (gin/runs/prompt_then_model.gin; trainer/phases.py):
    after the prompt has trained, the network trains with it attached. None by default."""

    steps: int = setting(0, least=0, macro="MODEL_STEPS")  # 0: no second phase
    # MODEL_TRAINABLE: the network's parameters that train ('.*': all of it); the prompt is
    # MODEL_PROMPT's, whatever this matches
    trainable: str = setting(".*", valid=_paths_regex, macro="MODEL_TRAINABLE")
    # 'frozen': phase 1's prompt stays as it ended (ProMoT); 'trains': it trains on, with the
    # network's optimizer
    prompt: str = setting("frozen", one_of=("frozen", "trains"), macro="MODEL_PROMPT")
    # MODEL_LEARNING_RATE: the network's (T5X fine-tuning's 1e-3); 0 leaves it unchanged (weight
    # decay off too), a check
    learning_rate: float = setting(1e-3, least=0, macro="MODEL_LEARNING_RATE")
    # the rest of phase 2's optimizer (gin scope model_phase/); its learning rate is the above
    optimizer: OptimizerConfig = OptimizerConfig()

    def regex(self) -> str:
        """TRAINABLE of phase 2: MODEL_TRAINABLE without the prompt, or with it ('trains')."""
        prompt = f"{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}"
        if self.prompt == "trains":
            return f"{prompt}|(?:{self.trainable})"
        return f"(?!(?:{prompt})$)(?:{self.trainable})"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a run trains."""

    # TRAIN_STEPS: the step to stop at, counting the initial checkpoint's own steps (T5X's:
    # from the step-1,100,000 checkpoint, 1_150_000 trains 50,000 steps); TRAIN_STEPS_RELATIVE:
    # the steps to train after that step instead (T5X's, and it decides when both are set).
    # `resolved` turns either into the step to stop at before a run starts.
    steps: int | None = setting(None, least=1, macro="TRAIN_STEPS")
    relative_steps: int | None = setting(None, least=1, macro="TRAIN_STEPS_RELATIVE")
    batch_size: int = setting(32, least=1, macro="BATCH_SIZE")
    prompt_init: prompts.PromptInit = prompts.PromptInit()
    optimizer: OptimizerConfig = OptimizerConfig()
    num_microbatches: int = setting(1, least=1, macro="NUM_MICROBATCHES")
    # DATA_SHARDS: SeqIO shards of the training data, read by the processes in equal parts
    # (0: one per process). Runs with the same count see the same global batches however many
    # processes they run on.
    data_shards: int = setting(0, least=0, macro="DATA_SHARDS")
    eval_period: int = setting(0, least=0, macro="EVAL_PERIOD")  # 0: never evaluate
    eval_split: str = setting("validation", macro="EVAL_SPLIT")
    eval_batch_size: int = setting(32, least=1, macro="EVAL_BATCH_SIZE")
    # evaluations without a new best; 0: never stop
    early_stopping_patience: int = setting(0, least=0, macro="EARLY_STOPPING_PATIENCE")
    save_period: int = setting(1000, least=1, macro="SAVE_PERIOD")
    keep_checkpoints: int | None = setting(3, least=1, macro="KEEP_CHECKPOINTS")  # None: all
    log_period: int = setting(50, least=1, macro="LOG_PERIOD")
    # when set, the final prompt joins this library
    library_dir: str | None = setting(None, valid=paths.folder_problem, macro="LIBRARY_DIR")
    library_kind: str = setting(
        "trained", one_of=("trained", "task_embedding"), macro="LIBRARY_KIND"
    )
    # a multi-task run's composition (gin/runs/multitask_prompt.gin); none by default
    multitask: multitask.MultitaskPrompt = multitask.MultitaskPrompt()
    # a prompt-then-model run's second phase (gin/runs/prompt_then_model.gin); none by default
    then_model: ModelPhase = ModelPhase()

    def stop_step(self, start: int) -> int:
        """The step the run (its first phase) stops at, `start` being the initial checkpoint's
        step (T5X's count): start + TRAIN_STEPS_RELATIVE, else TRAIN_STEPS, beyond start."""
        if self.relative_steps is not None:
            return start + self.relative_steps
        if self.steps is None:
            raise TrainError(
                "TRAIN_STEPS (the step to stop at) or TRAIN_STEPS_RELATIVE (the steps to train): "
                "set one"
            )
        if self.steps <= start:
            raise TrainError(
                f"TRAIN_STEPS={self.steps:,} is not beyond INITIAL_CHECKPOINT_PATH's step "
                f"{start:,}: TRAIN_STEPS counts the checkpoint's steps too (as T5X's), so give "
                f"TRAIN_STEPS={start + self.steps} for {self.steps:,} steps more, or "
                f"TRAIN_STEPS_RELATIVE={self.steps}"
            )
        return self.steps

    def resolved(self, start: int) -> TrainConfig:
        """This config with `steps` the step to stop at (`stop_step`), ready to train."""
        return dataclasses.replace(self, steps=self.stop_step(start), relative_steps=None)

    def nested(self, steps: int, eval_period: int, save_period: int) -> TrainConfig:
        """This config for a short run a transfer trains first (a best_of_top_k candidate,
        the top_k_mixture run, a race's runner): `steps` after the initial checkpoint's, no
        early stopping, one checkpoint kept, nothing added to the library."""
        return dataclasses.replace(
            self,
            steps=None,
            relative_steps=steps,
            eval_period=eval_period,
            save_period=save_period,
            early_stopping_patience=0,
            keep_checkpoints=1,
            library_dir=None,
        )

    @property
    def total_steps(self) -> int:
        """The step a resolved run ends at: its stop step, plus MODEL_STEPS of a second phase."""
        if self.steps is None or self.relative_steps is not None:
            raise TrainError("total_steps of a config not resolved (TrainConfig.resolved)")
        return self.steps + self.then_model.steps

    def steps_to_train(self, start: int) -> int:
        """How many steps the run trains from `start`, both phases of a two-phase run."""
        return self.stop_step(start) - start + self.then_model.steps


def resolved(spec: RunSpec, config: TrainConfig) -> TrainConfig:
    """`config` resolved (TrainConfig.resolved) from the step of `spec`'s initial checkpoint."""
    from prompt_transfer.network import checkpoints

    return config.resolved(checkpoints.initial_step(spec.initial_checkpoint))


def check_numbers(spec: RunSpec, config: TrainConfig | None = None) -> None:
    """Every field of a run as its schema declares it (base/settings.py), for runs made in Python
    (the flow's, a test's) as for those gin binds: one line names the macro
    (`TRAIN_STEPS=3e4`, `SAVE_PERIOD=0`, `TRAINABLE='['`)."""
    settings.check(spec)
    if config is not None and spec.phase == 2:
        # Phase 2's optimizer takes MODEL_LEARNING_RATE, checked (>= 0) where the user set it:
        # 0 is allowed there (a check that phase 2 changes nothing).
        config = dataclasses.replace(config, optimizer=OptimizerConfig())
    if config is not None:
        settings.check(config)


def check_run(spec: RunSpec, config: TrainConfig, mesh) -> None:
    """Refuse bad input before any work: unknown task, labels too long, a bad prompt file, a
    batch that does not split over the devices, a split missing from SeqIO's cache."""
    task = spec.prepare_tasks()
    seqio_cache.check_cached(task, "train")
    if config.eval_period:
        seqio_cache.check_cached(task, config.eval_split)
    seqio_eval.check_labels_fit(spec.task, spec.feature_lengths)
    init = config.prompt_init
    if spec.prompt_length and init.method == "file":
        prompts.from_file(init.file, spec.prompt_length, spec.model_config.emb_dim)
    if spec.deep_prompt and spec.phase != 2:  # phase 2 may keep the deep prompt frozen
        _check_deep_prompt(spec)
    if config.then_model.steps:
        _check_then_model(spec, config)
    kinds.of_config(config).check(spec, config)  # attention's, a multi-task run's checks
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


def _check_then_model(spec: RunSpec, config: TrainConfig) -> None:
    """A prompt-then-model run: phase 1 trains a prompt, phase 2 some of the network."""
    if not spec.prompt_length:
        raise TrainError(
            "MODEL_STEPS > 0 tunes the prompt first, then the model with it: it needs "
            "PROMPT_LENGTH > 0 (for model tuning alone use gin/runs/model_tuning.gin)"
        )
    network = network_paths(spec.model_config)
    if any(re.fullmatch(spec.trainable_regex, p) for p in network):
        raise TrainError(
            f"TRAINABLE={spec.trainable_regex!r} is phase 1's and trains the network; in a "
            "prompt-then-model run phase 1 trains the prompt only (TRAINABLE="
            f"'{prompts.PROMPT_PATH}'), and MODEL_TRAINABLE chooses what phase 2 trains"
        )
    phase = config.then_model
    if not any(re.fullmatch(phase.regex(), p) for p in network):
        raise TrainError(
            f"MODEL_TRAINABLE={phase.trainable!r} matches none of the network's parameters "
            f"(paths look like {network[0]}, ...); use '.*' (all of them) or a part of them"
        )
    init = config.prompt_init
    if kinds.of_config(config) is not kinds.SINGLE:
        what = "MULTITASK_HOW" if config.multitask.how else f"strategy {init.transfer.strategy!r}"
        raise TrainError(
            f"{what} gives each input or task a prompt of its own, which phase 2 of a "
            "prompt-then-model run (MODEL_STEPS > 0) does not carry; start phase 1 from one "
            "prompt instead"
        )


def network_paths(model_config: t5.T5Config) -> list[str]:
    """The parameter paths of the network (prompt aside), e.g. 'encoder/layers_0/...'."""
    from flax import traverse_util

    abstract = t5.abstract_params(t5.T5(model_config))
    return sorted(traverse_util.flatten_dict(abstract, sep="/"))


def data_devices(mesh) -> int:
    return mesh.shape[partitioning.DATA_AXIS]


def data_shards(config: TrainConfig) -> int:
    return config.data_shards or jax.process_count()
