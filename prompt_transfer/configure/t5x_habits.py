"""What each T5X configurable's parameter becomes here, and the fold that applies it.

`HABITS` maps a T5X binding (`utils.SaveCheckpointConfig.period`, scoped ones such as
`train/utils.DatasetConfig.batch_size` apart) to a `Habit`: the project setting it sets (a macro,
or a field of t5.T5Config), the values kept as they are because the project does that anyway
(`pack = False`), or the one line that refuses it. `fold()` runs after gin has parsed a launch
(gin_utils.configure): every value bound to a configurable of this package is moved into its
setting, where the schema checks it (settings.check_bound names the T5X binding in a refusal).
A binding to the same setting's macro (`utils.SaveCheckpointConfig.period = %SAVE_PERIOD`, as the
gin files under gin/t5x/ and gin/prompt_tuning/ write) is already that setting.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from collections.abc import Callable

from prompt_transfer.base import settings
from prompt_transfer.base.errors import UserError
from prompt_transfer.network.decoding import METHODS

PACKAGE = "prompt_transfer.t5x"


class HabitError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class Habit:
    """A T5X binding here. `to`: the settings it sets (the first one this launch's gin files
    bind), its value through `convert`; `keeps`: the values that are what the project does
    anyway; `why`: the refusal of any other value (or of every value, with neither)."""

    to: tuple[str, ...] = ()
    convert: Callable[[object], object] | None = None
    keeps: Callable[[object], bool] | None = None
    why: str = ""
    none_leaves: bool = False  # None leaves the setting as the gin files bind it
    reference: bool = False  # the value is `@fn`: the function's name is what is set


def _is(*values) -> Callable[[object], bool]:
    return lambda v: v in values


_anything = lambda v: True  # noqa: E731  what the project does whatever the value says
_TRAIN = ("train",)
_EVAL = ("", "train_eval", "infer_eval")


def _microbatches(value):
    return 1 if value is None else value


def _submesh_ways(value):
    """T5X's model_parallel_submesh (x, y, z, cores): that many devices hold one model."""
    return math.prod(value) if isinstance(value, list | tuple) else value


def _constant_schedule(value) -> bool:
    return str(value).replace(" ", "") == "constant"


# (configurable, parameter, scopes (None: any)) -> Habit.
HABITS: dict[tuple[str, str, tuple[str, ...] | None], Habit] = {
    ("utils.SaveCheckpointConfig", "period", None): Habit(("SAVE_PERIOD",)),
    ("utils.SaveCheckpointConfig", "keep", None): Habit(("KEEP_CHECKPOINTS",)),
    ("utils.SaveCheckpointConfig", "dtype", None): Habit(
        keeps=_is("float32"),
        why="a checkpoint here holds what trains, in float32; FROZEN_DTYPE stores the frozen "
        "network in bfloat16",
    ),
    ("utils.SaveCheckpointConfig", "save_dataset", None): Habit(keeps=_anything),
    ("utils.SaveCheckpointConfig", "keep_dataset_checkpoints", None): Habit(keeps=_anything),
    ("utils.SaveCheckpointConfig", "checkpointer_cls", None): Habit(keeps=_anything),
    ("utils.SaveCheckpointConfig", "checkpoint_steps", None): Habit(
        keeps=_is(None), why="checkpoints are saved every SAVE_PERIOD steps and at the end"
    ),
    ("utils.RestoreCheckpointConfig", "path", None): Habit(
        ("INITIAL_CHECKPOINT_PATH", "CHECKPOINT_PATH")
    ),
    ("utils.RestoreCheckpointConfig", "mode", None): Habit(
        keeps=_is("specific", "latest"),
        why="the path is one checkpoint_N, or a folder whose newest checkpoint is read",
    ),
    ("utils.RestoreCheckpointConfig", "dtype", None): Habit(
        ("FROZEN_DTYPE",), keeps=_is(None, "float32", "bfloat16"), why="use float32 or bfloat16"
    ),
    ("utils.RestoreCheckpointConfig", "assignment_map", None): Habit(keeps=_anything),
    ("utils.RestoreCheckpointConfig", "fallback_to_scratch", None): Habit(keeps=_anything),
    ("utils.RestoreCheckpointConfig", "strict", None): Habit(keeps=_anything),
    ("utils.RestoreCheckpointConfig", "restore_dataset", None): Habit(keeps=_anything),
    ("utils.RestoreCheckpointConfig", "checkpointer_cls", None): Habit(keeps=_anything),
    ("utils.CheckpointConfig", "save", None): Habit(keeps=_anything),
    ("utils.CheckpointConfig", "restore", None): Habit(keeps=_anything),
    ("utils.DatasetConfig", "mixture_or_task_name", None): Habit(("MIXTURE_OR_TASK_NAME",)),
    ("utils.DatasetConfig", "task_feature_lengths", None): Habit(
        ("TASK_FEATURE_LENGTHS",), none_leaves=True
    ),
    ("utils.DatasetConfig", "module", None): Habit(("MIXTURE_OR_TASK_MODULE",)),
    ("utils.DatasetConfig", "split", _TRAIN): Habit(
        keeps=_is("train"), why="training reads the task's 'train' split"
    ),
    ("utils.DatasetConfig", "split", _EVAL): Habit(("EVAL_SPLIT",)),
    ("utils.DatasetConfig", "batch_size", _TRAIN): Habit(("BATCH_SIZE",)),
    ("utils.DatasetConfig", "batch_size", _EVAL): Habit(("EVAL_BATCH_SIZE",)),
    ("utils.DatasetConfig", "shuffle", _TRAIN): Habit(
        keeps=_is(True), why="training data is shuffled, in an order RANDOM_SEED fixes"
    ),
    ("utils.DatasetConfig", "shuffle", _EVAL): Habit(
        keeps=_is(False), why="evaluation reads its split in order"
    ),
    ("utils.DatasetConfig", "seed", _TRAIN): Habit(
        keeps=_is(None),
        why="the data order follows RANDOM_SEED here (one seed for data and prompt); set "
        "--gin.RANDOM_SEED=",
    ),
    ("utils.DatasetConfig", "seed", _EVAL): Habit(keeps=_anything),
    ("utils.DatasetConfig", "use_cached", None): Habit(("USE_CACHED_TASKS",)),
    ("utils.DatasetConfig", "pack", None): Habit(
        keeps=_is(False), why="examples are padded to TASK_FEATURE_LENGTHS here, never packed"
    ),
    ("utils.DatasetConfig", "use_custom_packing_ops", None): Habit(keeps=_anything),
    ("utils.DatasetConfig", "use_memory_cache", None): Habit(keeps=_anything),
    ("utils.DatasetConfig", "trim_output_features", None): Habit(keeps=_anything),
    ("utils.create_learning_rate_scheduler", "factors", None): Habit(
        keeps=_constant_schedule,
        why="prompt tuning's schedule is 'constant' (LEARNING_RATE); warm-up and rsqrt decay "
        "are train_state.OptimizerConfig's warmup_steps and schedule='rsqrt'",
    ),
    ("utils.create_learning_rate_scheduler", "base_learning_rate", None): Habit(("LEARNING_RATE",)),
    ("utils.create_learning_rate_scheduler", "warmup_steps", None): Habit(keeps=_anything),
    ("partitioning.PjitPartitioner", "num_partitions", None): Habit(
        ("NUM_PARTITIONS",), convert=lambda v: 1 if v is None else v
    ),
    ("partitioning.PjitPartitioner", "model_parallel_submesh", None): Habit(
        ("NUM_PARTITIONS",), convert=_submesh_ways, none_leaves=True
    ),
    ("partitioning.PjitPartitioner", "logical_axis_rules", None): Habit(keeps=_anything),
    ("partitioning.PjitPartitioner", "params_on_devices", None): Habit(keeps=_is(True)),
    ("partitioning.PjitPartitioner", "backend", None): Habit(keeps=_anything),
    ("partitioning.PjitPartitioner", "use_cpu_pjit", None): Habit(keeps=_anything),
    ("partitioning.standard_logical_axis_rules", "activation_partitioning_dims", None): Habit(
        keeps=_is(1), why="activations are partitioned over one mesh axis (the batch)"
    ),
    ("partitioning.standard_logical_axis_rules", "parameter_partitioning_dims", None): Habit(
        keeps=_is(1), why="parameters are partitioned over one mesh axis (NUM_PARTITIONS)"
    ),
    ("partitioning.standard_logical_axis_rules", "additional_rules", None): Habit(keeps=_anything),
    ("trainer.Trainer", "num_microbatches", None): Habit(
        ("NUM_MICROBATCHES",), convert=_microbatches
    ),
    ("trainer.Trainer", "learning_rate_fn", None): Habit(keeps=_anything),
    ("adafactor.Adafactor", "decay_rate", None): Habit(("OptimizerConfig.decay_rate",)),
    ("adafactor.Adafactor", "multiply_by_parameter_scale", None): Habit(
        ("OptimizerConfig.multiply_by_parameter_scale",)
    ),
    ("adafactor.Adafactor", "weight_decay_rate", None): Habit(
        ("OptimizerConfig.weight_decay",), convert=lambda v: 0.0 if v is None else v
    ),
    ("adafactor.Adafactor", "clipping_threshold", None): Habit(
        ("OptimizerConfig.clipping_threshold",)
    ),
    ("adafactor.Adafactor", "step_offset", None): Habit(keeps=_is(0)),
    ("adafactor.Adafactor", "logical_factor_rules", None): Habit(keeps=_anything),
    ("train", "total_steps", None): Habit(("TRAIN_STEPS",)),
    ("train", "relative_steps", None): Habit(("TRAIN_STEPS_RELATIVE",)),
    ("train", "eval_period", None): Habit(("EVAL_PERIOD",)),
    ("train", "random_seed", None): Habit(
        ("RANDOM_SEED",), convert=lambda v: 0 if v is None else v
    ),
    ("train", "model_dir", None): Habit(("MODEL_DIR",)),
    ("train", "eval_steps", None): Habit(keeps=_anything),
    ("train", "use_hardware_rng", None): Habit(keeps=_anything),
    ("models.EncoderDecoderModel", "decode_fn", None): Habit(
        ("Decoding.method",),
        reference=True,
        keeps=_is(*METHODS[1:]),
        why="decode_fn is @decoding.beam_search or @decoding.temperature_sample",
    ),
    ("models.EncoderDecoderModel.predict_batch_with_aux", "num_decodes", None): Habit(
        ("Decoding.num_decodes",)
    ),
    ("decoding.beam_search", "alpha", None): Habit(("Decoding.alpha",)),
    ("decoding.temperature_sample", "temperature", None): Habit(("Decoding.temperature",)),
    ("decoding.temperature_sample", "topk", None): Habit(("Decoding.topk",)),
    ("decoding.temperature_sample", "topp", None): Habit(("Decoding.topp",)),
    ("relative_position_biases.RelativePositionBiases", "num_buckets", None): Habit(
        ("T5Config.relative_attention_num_buckets",)
    ),
    ("relative_position_biases.RelativePositionBiases", "max_distance", None): Habit(
        ("T5Config.relative_attention_max_distance",)
    ),
}


def habit(name: str, param: str, scope: str) -> Habit:
    for (configurable, parameter, scopes), found in HABITS.items():
        if configurable == name and parameter == param and (scopes is None or scope in scopes):
            return found
    return Habit(why="this project has no counterpart for it (docs/t5x_users.md lists them)")


def stand_in() -> None:
    """Where T5X is not installed, `t5x.utils` and its siblings are this package's modules, so
    a user's gin file that imports them (`from t5x import utils`) parses."""
    if "t5x" in sys.modules or importlib.util.find_spec("t5x") is not None:
        return
    package = importlib.import_module(PACKAGE)
    sys.modules["t5x"] = package
    for module in ("utils", "partitioning", "trainer", "adafactor", "train"):
        sys.modules[f"t5x.{module}"] = importlib.import_module(f"{PACKAGE}.{module}")


def _short(gin, selector: str) -> str | None:
    """'utils.SaveCheckpointConfig' of a registered selector of this package, whatever alias a
    gin file imported its module as; 'train' for its entry point (T5X users bind
    `train.eval_period`); None for other configurables."""
    try:
        found = gin.config._REGISTRY.get_match(selector)
    except (KeyError, ValueError):
        return None
    wrapped = getattr(found, "wrapped", None)
    module = getattr(wrapped, "__module__", "")
    if not module.startswith(f"{PACKAGE}."):
        return None
    short = f"{module.rpartition('.')[2]}.{wrapped.__qualname__}"
    return "train" if short == "train.train" else short


def fold() -> None:
    """Move what gin binds to this package's configurables into the project's settings (see
    the module's docstring); a binding that cannot be honoured is refused in one line."""
    import gin

    settings.SAID_AS.clear()
    config = gin.config._CONFIG
    for (scope, selector), params in list(config.items()):
        name = _short(gin, selector)
        if name is None:
            continue
        for param, raw in params.items():
            shown = f"{scope + '/' if scope else ''}{name}.{param}"
            macro, value = settings._resolve(gin, raw, [])
            found = habit(name, param, scope)
            if found.reference:  # `decode_fn = @decoding.beam_search`: which function
                wrapped = getattr(getattr(raw, "configurable", None), "wrapped", None)
                value = getattr(wrapped, "__name__", repr(raw))
            if macro and macro in found.to:
                continue  # bound to the setting's own macro: already that setting
            if isinstance(value, settings._Built) and (found.to or found.keeps):
                continue  # a reference (gin.REQUIRED, a factory) sets nothing here
            said = macro or shown  # what the user set: the macro the binding reads, or it
            if found.to:
                if value is None and found.none_leaves:
                    continue
                if found.keeps and not found.keeps(value):
                    raise HabitError(f"{said}={value!r}: {found.why}")
                _assign(gin, found.to, found.convert(value) if found.convert else value, said)
            elif not (found.keeps and found.keeps(value)):
                raise HabitError(f"{said}={_shown(value)} is not supported here: {found.why}")


def _shown(value) -> str:
    return f"@{value.cls.__name__}()" if isinstance(value, settings._Built) else repr(value)


def _assign(gin, targets: tuple[str, ...], value, shown: str) -> None:
    """Set the first of `targets` the parsed config binds: a macro (`SAVE_PERIOD`) or a field
    of one of the project's configurables (`T5Config.relative_attention_num_buckets`)."""
    config = gin.config._CONFIG
    for target in targets:
        if "." not in target:
            if (target, "gin.macro") in config:
                config[(target, "gin.macro")]["value"] = value
                settings.SAID_AS[target] = shown
                return
            continue
        cls_name, field = target.split(".")
        for (scope, selector), params in config.items():
            if not scope and selector.rpartition(".")[2] == cls_name and not _short(gin, selector):
                params[field] = value
                settings.SAID_AS[target] = shown
                return
