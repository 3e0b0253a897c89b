"""Related prompts trained together: one run on a mixture of K tasks, each example with its
task's prompt, composed from a shared prompt and a part of the task's own (the `Multitask` kind,
prompt/kinds.py).

    add       P_k = P_shared + D_k                    D_k [P, W] ('deltas'), starts at 0
    concat    P_k = [P_shared; O_k]                   O_k [P_task, W] ('own'), the prompt is
                                                      P + P_task long
    mpt       P_k = P_shared * (U_k V_k^T)            U_k [P, r], V_k [W, r] (MPT, Wang et al.
                                                      2023, arXiv 2303.02861; PEFT's
                                                      MultitaskPromptTuning)

Every task's prompt starts as the run's starting prompt: D_k = 0 for add, and for mpt
U_k = 1, V_k = 1 / r, so that U_k V_k^T is all ones (PEFT draws both from N(0, 0.02), which
scales the prompt to nearly 0 at the start). For concat each O_k starts the way the run's
initialiser starts a prompt, seeded by the task. W is the prompt's wide width (prompts.widen):
a deep prompt's keys and values are composed with its input embeddings, so each example of a
batch carries its own deep prompt.

Distillation (MPT's first stage): with MULTITASK_DISTILL or MULTITASK_DISTILL_HIDDEN > 0 each
task's prompt also learns from a frozen teacher, the task's own single-task prompt from the
library MULTITASK_TEACHERS names: the loss adds KL(teacher || student) of the output
distributions over the target tokens, and the squared error between the encoder's hidden states
under the two prompts, each with its weight (the teacher's forward pass is a second one,
without gradient or dropout). The teachers live at `encoder/prompt/teachers/...`, fixed.

The shared prompt is the run's own (`encoder/prompt/prompt`, a deep prompt's keys and values
where they always are); the task parts train beside it at `encoder/prompt/tasks/...`. A run
keeps its layout (how, the task names, the starting parts) in MODEL_DIR/transfer/multitask.npz,
written once at its start, so that `eval` scores each task with its own prompt. The verbs of
an EncoderDecoderModel whose kind is `Multitask` compose the prompt per example from a batch's
`task_index` [B] (the position of the example's task in the mixture,
batches.BatchStream(task_index=True)).
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_transfer.base import paths, runtime, settings
from prompt_transfer.base.errors import UserError
from prompt_transfer.base.settings import setting
from prompt_transfer.data import batches
from prompt_transfer.network import partitioning as pt
from prompt_transfer.prompt import pieces as pieces_file
from prompt_transfer.prompt import prompts

TASKS_PATH = "encoder/prompt/tasks"
TEACHERS_PATH = "encoder/prompt/teachers"
HOWS = ("add", "concat", "mpt")
# TRAINABLE of a multi-task run (gin/runs/multitask_prompt.gin): the shared prompt, a deep
# prompt's keys and values when it has them, and every task's part.
TRAINABLE = f"{prompts.PROMPT_PATH}|{TASKS_PATH}/.*|{prompts.DEEP_REGEX}"
FILE = "multitask.npz"  # under MODEL_DIR/transfer/


class MultitaskError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class MultitaskPrompt:
    """How a multi-task run composes its tasks' prompts (gin/runs/multitask_prompt.gin); `how`
    empty: the run is not one."""

    how: str = setting("", one_of=("", *HOWS), macro="MULTITASK_HOW")
    rank: int = setting(1, least=1, macro="MULTITASK_RANK")  # mpt's r
    task_length: int = setting(0, least=0, macro="MULTITASK_TASK_LENGTH")  # concat's P_task
    # MPT's distillation from single-task teachers: the KL term's and the hidden states'
    # squared error's weights, and the library holding each task's teacher prompt
    distill: float = setting(0.0, least=0, macro="MULTITASK_DISTILL")
    distill_hidden: float = setting(0.0, least=0, macro="MULTITASK_DISTILL_HIDDEN")
    teachers: str = setting("", macro="MULTITASK_TEACHERS")

    @property
    def distills(self) -> bool:
        return self.distill > 0 or self.distill_hidden > 0

    def __post_init__(self):
        settings.check(self)

    def composed_length(self, shared_length: int) -> int:
        """P of every task's prompt: the shared length, plus P_task for concat."""
        return shared_length + (self.task_length if self.how == "concat" else 0)


@dataclasses.dataclass(frozen=True)
class Pieces:
    """What a multi-task run adds beside its shared prompt: `parts` {'deltas': [K, P, W]} for
    add, {'own': [K, P_task, W]} for concat, {'u': [K, P, r], 'v': [K, W, r]} for mpt;
    `names` the K tasks in mixture order (task_index k is names[k])."""

    how: str
    names: tuple[str, ...]
    parts: dict[str, np.ndarray]
    # distillation: the teachers [K, P', W] and the weights (KL, hidden states); fixed
    teachers: np.ndarray | None = None
    distill: tuple[float, float] = (0.0, 0.0)

    def flat(self) -> dict[str, np.ndarray]:
        out = {f"{TASKS_PATH}/{k}": v for k, v in self.parts.items()}
        if self.teachers is not None:
            out[f"{TEACHERS_PATH}/prompts"] = self.teachers
            out[f"{TEACHERS_PATH}/weights"] = np.asarray(self.distill, np.float32)
        return out

    def abstract(self) -> dict[str, nn.LogicallyPartitioned]:
        """{path: shape, dtype and logical axes}: small, replicated on every device."""
        box = lambda x: nn.LogicallyPartitioned(  # noqa: E731
            jax.ShapeDtypeStruct(x.shape, jnp.float32), (None,) * x.ndim
        )
        return {k: box(v) for k, v in self.flat().items()}


def start(
    layout: MultitaskPrompt, names, shared: np.ndarray, own_start=None, teachers=None
) -> Pieces:
    """The parts of a fresh run whose shared prompt starts at `shared` [P, W]; concat's parts
    come from `own_start(k)` -> [P_task, W], the k-th task's own start; `teachers` [K, P', W]
    when the run distills."""
    k, (length, width) = len(names), shared.shape
    if layout.how == "add":
        parts = {"deltas": np.zeros((k, length, width), np.float32)}
    elif layout.how == "concat":
        parts = {"own": np.stack([own_start(j) for j in range(k)]).astype(np.float32)}
    else:
        r = layout.rank
        parts = {
            "u": np.ones((k, length, r), np.float32),
            "v": np.full((k, width, r), 1.0 / r, np.float32),
        }
    if teachers is None:
        return Pieces(layout.how, tuple(names), parts)
    teachers = np.asarray(teachers, np.float32)
    distill = (float(layout.distill), float(layout.distill_hidden))
    return Pieces(layout.how, tuple(names), parts, teachers, distill)


def _arrays(pieces: Pieces, **more) -> dict[str, np.ndarray]:
    arrays = {"how": np.asarray(pieces.how), "names": np.asarray(pieces.names, dtype=str), **more}
    return {**arrays, **{f"part/{k}": v for k, v in pieces.parts.items()}}


def save(model_dir, pieces: Pieces) -> None:
    extra = {}
    if pieces.teachers is not None:
        extra = {"teachers": pieces.teachers, "distill": np.asarray(pieces.distill, np.float32)}
    pieces_file.write(model_dir, FILE, _arrays(pieces, **extra))


def _pieces(saved: dict) -> Pieces:
    parts = pieces_file.prefixed(saved, "part/")
    names = tuple(str(n) for n in saved["names"])
    if "teachers" not in saved:
        return Pieces(str(saved["how"]), names, parts)
    distill = tuple(float(w) for w in saved["distill"])
    return Pieces(str(saved["how"]), names, parts, saved["teachers"], distill)


def load(model_dir) -> Pieces | None:
    """The layout a run in `model_dir` was started with (None: not a multi-task run)."""
    saved = pieces_file.read(model_dir, FILE)
    return None if saved is None else _pieces(saved)


def check(spec, layout: MultitaskPrompt) -> None:
    """Refuse, before any work, a run `spec` whose multi-task `layout` cannot train."""
    seqio = batches.import_seqio()
    task = batches.get_task(spec.task)
    if not isinstance(task, seqio.Mixture) or len(task.tasks) < 2:
        raise MultitaskError(
            f"MULTITASK_HOW={layout.how!r} trains the prompts of several tasks together, but "
            f"MIXTURE_OR_TASK_NAME={spec.task!r} is one task; give a SeqIO mixture of them"
        )
    lacking = [t.name for t in task.tasks if "train" not in t.splits]
    if lacking:
        raise MultitaskError(f"multi-task mixture {spec.task!r}: {lacking[0]} has no train split")
    if not spec.prompt_length:
        raise MultitaskError("MULTITASK_HOW needs PROMPT_LENGTH > 0 (the shared prompt's length)")
    if (layout.how == "concat") != bool(layout.task_length):
        raise MultitaskError(
            "MULTITASK_TASK_LENGTH is concat's: each task's own positions after the shared "
            f"prompt; MULTITASK_HOW={layout.how!r} takes "
            + ("MULTITASK_TASK_LENGTH >= 1" if layout.how == "concat" else "0")
        )
    if layout.distills and not layout.teachers:
        raise MultitaskError(
            "MULTITASK_DISTILL / MULTITASK_DISTILL_HIDDEN distill each task's prompt from its "
            "single-task prompt: set MULTITASK_TEACHERS to the library that holds them"
        )
    if layout.distills and paths.folder_problem(layout.teachers):
        raise MultitaskError(
            f"MULTITASK_TEACHERS={layout.teachers!r} {paths.folder_problem(layout.teachers)}"
        )
    if layout.distills and re.fullmatch(spec.trainable_regex, f"{TEACHERS_PATH}/prompts"):
        raise MultitaskError(
            f"TRAINABLE={spec.trainable_regex!r} would train the teachers a multi-task run "
            f"distills from ({TEACHERS_PATH}/...); use TRAINABLE='{TRAINABLE}'"
        )
    part = f"{TASKS_PATH}/" + {"mpt": "u", "add": "deltas", "concat": "own"}[layout.how]
    if not re.fullmatch(spec.trainable_regex, part):
        raise MultitaskError(
            f"MULTITASK_HOW={layout.how!r} trains each task's part ({TASKS_PATH}/...) "
            f"but TRAINABLE={spec.trainable_regex!r} leaves it frozen; use "
            f"TRAINABLE='{TRAINABLE}' (gin/runs/multitask_prompt.gin sets it)"
        )


# ---------------------------------------------------------------------------------------------
# Inside the model (jitted).


def combine(shared: jax.Array, parts: dict) -> jax.Array:
    """[K, P', W]: every task's wide prompt from the shared one [P, W] and the parts."""
    if "u" in parts:
        factor = jnp.einsum("kpr,kwr->kpw", parts["u"], parts["v"])  # [K, P, W], rank r
        return shared[None] * factor
    if "deltas" in parts:
        return shared[None] + parts["deltas"]
    own = parts["own"]  # [K, P_task, W]
    return jnp.concatenate([jnp.broadcast_to(shared, (own.shape[0], *shared.shape)), own], 1)


def task_prompts(params: dict, config) -> jax.Array:
    """[K, P', W]: every task's prompt in the wide form."""
    held = params["encoder"]["prompt"]
    flat = traverse_util.flatten_dict(params, sep="/")
    deep = [flat[p] for p in prompts.deep_prefix_paths(config) if p in flat]
    shared = prompts.widen_traced(held["prompt"], deep)
    return combine(shared, held["tasks"])


def compose(params: dict, network: dict, task_index: jax.Array, config):
    """(network with each example's deep prompt, prompt [B, P', E]) for examples of tasks
    `task_index` [B]; `network` is `params` without its prompt."""
    if task_index is None:
        raise MultitaskError(
            "a multi-task run's prompt depends on the example's task: give the batch its "
            "task_index, or take one task's parameters (multitask.params_for)"
        )
    every = task_prompts(params, config)
    return prompts.per_input(network, every[task_index], config)


def distillation(student_logits, teacher_logits, student_states, teacher_states, weights, mask):
    """(KL(teacher || student) per target token, the hidden states' squared error per encoder
    position and width), token-weighted means: logits [B, T, V] with `weights` [B, T]; encoder
    states [B, P' + L, E] with `mask` [B, P' + L]. The teacher's side carries no gradient."""
    teacher_logits, teacher_states = jax.lax.stop_gradient((teacher_logits, teacher_states))
    log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32))
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32))
    kl = (jnp.exp(log_t) * (log_t - log_s)).sum(-1)
    kl = (kl * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    diff = jnp.square(student_states.astype(jnp.float32) - teacher_states.astype(jnp.float32))
    m = mask.astype(jnp.float32)
    hidden = (diff.mean(-1) * m).sum() / jnp.maximum(m.sum(), 1.0)
    return kl, hidden


def params_for(params: dict, k: int, config) -> dict:
    """`params` as a plain run of the k-th task: its composed prompt (and deep prompt) in the
    places a single-task run keeps them, the parts gone. What evaluation scores a task with."""
    wide = task_prompts(params, config)[k]
    network, _ = prompts.split_prompt(params)  # the parts and the teachers go with the prompt
    network, prompt = prompts.per_input(network, wide[None], config)
    flat = traverse_util.flatten_dict(network, sep="/")
    for path in prompts.deep_prefix_paths(config):
        if path in flat and flat[path].ndim == 4:
            flat[path] = flat[path][0]
    return prompts.with_prompt(traverse_util.unflatten_dict(flat, sep="/"), prompt[0])


def host_task_prompts(params: dict, config) -> np.ndarray:
    """`task_prompts` on the host, float32 [K, P', W] (the library's entries)."""
    held = jax.tree.map(pt.host_array, params)
    return np.asarray(task_prompts(held, config), np.float32)


# ---------------------------------------------------------------------------------------------
# The run's last step, for a new task to start from (transfer/from_multitask.py).

TRAINED = "multitask_trained.npz"  # under MODEL_DIR/transfer/


def save_trained(model_dir, params: dict, config) -> None:
    """The run's shared prompt (wide form) and parts at its last step, for a new task to start
    from (transfer/from_multitask.py)."""
    held = jax.tree.map(pt.host_array, params)
    flat = traverse_util.flatten_dict(held, sep="/")
    deep = [flat[p] for p in prompts.deep_prefix_paths(config) if p in flat]
    shared = np.asarray(prompts.widen_traced(held["encoder"]["prompt"]["prompt"], deep))
    pieces = load(model_dir)
    trained = dataclasses.replace(
        pieces,
        parts={k: np.asarray(v, np.float32) for k, v in held["encoder"]["prompt"]["tasks"].items()},
    )
    pieces_file.write(model_dir, TRAINED, _arrays(trained, shared=shared.astype(np.float32)))


def read_trained(model_dir) -> tuple[np.ndarray, Pieces] | None:
    """(shared prompt [P, W], the trained parts) of a finished multi-task run (None: none)."""
    saved = pieces_file.read(model_dir, TRAINED)
    return None if saved is None else (saved["shared"], _pieces(saved))


# ---------------------------------------------------------------------------------------------
# The kind (prompt/kinds.py).


@dataclasses.dataclass(frozen=True)
class Multitask(prompts.Single):
    """Each example's prompt composed for its task from the shared prompt and the task's part;
    the layout is kept in MODEL_DIR/transfer/multitask.npz. `distills`: each task's prompt also
    learns from its frozen teacher (MPT)."""

    name: str = "multitask"
    task_index: bool = True  # each batch says each example's task
    distills: bool = False

    def load(self, model_dir) -> Pieces | None:
        return load(model_dir)

    def found(self, model_dir) -> Multitask | None:
        pieces = load(model_dir)
        return None if pieces is None else Multitask(distills=pieces.teachers is not None)

    def check(self, spec, config) -> None:
        check(spec, config.multitask)

    def begin(self, context: prompts.Start) -> None:
        """Every task's part: each task's prompt starts as the run's prompt (concat's own
        positions as the initialiser starts them), with the teachers when the run distills."""
        layout = context.config.multitask
        teachers = context.teachers() if layout.distills else None
        pieces = start(layout, context.tasks, context.prompt, context.own_start, teachers)
        runtime.chief_first("multitask parts", lambda: save(context.model_dir, pieces))
        context.log(
            f"multi-task prompt ({layout.how}) for {len(context.tasks)} tasks: "
            f"{', '.join(context.tasks)}; each task's prompt is "
            f"{layout.composed_length(len(context.prompt))} positions"
            + (
                f"; distilled from their prompts in {layout.teachers} (KL x {layout.distill}, "
                f"hidden states x {layout.distill_hidden})"
                if layout.distills
                else ""
            )
        )

    def compose(self, params, network, own, tokens, task_index, config):
        return compose(params, network, task_index, config)

    def repeat(self, network: dict, times: int) -> dict:
        return prompts.repeat_per_input(network, times)

    def teacher(self, params, network, task_index, config):
        """(network with each example's teacher deep prompt, teacher prompts [B, P', E], the
        weights of the KL and hidden-state terms) when the run distills, else None."""
        if not self.distills:
            return None
        teachers = params["encoder"]["prompt"]["teachers"]
        network, prompt = prompts.per_input(
            network, teachers["prompts"].astype(jnp.float32)[task_index], config
        )
        return network, prompt, teachers["weights"]

    def for_task(self, params: dict, k: int, config):
        """(the kind, parameters) that score the k-th task alone: a single prompt."""
        return prompts.SINGLE, params_for(params, k, config)

    def tasks(self, model_dir) -> tuple[str, ...]:
        return load(model_dir).names

    def exported(self, spec, config, params, log) -> dict[str, np.ndarray]:
        """{task: its composed prompt} (the library's entries); the run's last step is kept
        for a new task to start from (transfer/from_multitask.py)."""
        save_trained(spec.model_dir, params, spec.model_config)
        every = host_task_prompts(params, spec.model_config)
        return dict(zip(load(spec.model_dir).names, every, strict=True))

    def refusal(self, model_dir) -> str:
        return (
            f"{model_dir} is a multi-task run: each of its {len(load(model_dir).names)} tasks has "
            "its own prompt, composed from the shared one and the task's part; its library "
            "entries (LIBRARY_DIR; score --prompt-entry) hold them, one per task, and eval "
            "scores each task with its own"
        )
