"""Related prompts trained together: one run on a mixture of K tasks, each example with its
task's prompt, composed from a shared prompt and a part of the task's own.

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
models.EncoderDecoderModel compose the prompt per example from a batch's `task_index` [B] (the
position of the example's task in the mixture, data.BatchStream(task_index=True)).
"""

from __future__ import annotations

import dataclasses
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_transfer.base import paths, settings
from prompt_transfer.base.errors import UserError
from prompt_transfer.base.settings import setting
from prompt_transfer.network import partitioning as pt
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


def save(model_dir, pieces: Pieces) -> None:
    buffer = io.BytesIO()
    extra = {}
    if pieces.teachers is not None:
        extra = {"teachers": pieces.teachers, "distill": np.asarray(pieces.distill, np.float32)}
    np.savez(
        buffer,
        how=np.asarray(pieces.how),
        names=np.asarray(pieces.names, dtype=str),
        **{f"part/{k}": v for k, v in pieces.parts.items()},
        **extra,
    )
    paths.atomic_write_bytes(paths.path(model_dir) / "transfer" / FILE, buffer.getvalue())


def load(model_dir) -> Pieces | None:
    """The layout a run in `model_dir` was started with (None: not a multi-task run)."""
    if not model_dir:
        return None
    file = paths.path(model_dir) / "transfer" / FILE
    if not file.exists():
        return None
    with np.load(io.BytesIO(file.read_bytes())) as saved:
        parts = {k.removeprefix("part/"): saved[k] for k in saved.files if k.startswith("part/")}
        names = tuple(str(n) for n in saved["names"])
        if "teachers" not in saved.files:
            return Pieces(str(saved["how"]), names, parts)
        distill = tuple(float(w) for w in saved["distill"])
        return Pieces(str(saved["how"]), names, parts, saved["teachers"], distill)


# ---------------------------------------------------------------------------------------------
# Inside the model (jitted).


def present(params: dict) -> bool:
    return "tasks" in params.get("encoder", {}).get("prompt", {})


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


def distills(params: dict) -> bool:
    return "teachers" in params.get("encoder", {}).get("prompt", {})


def teacher_inputs(params: dict, network: dict, task_index: jax.Array, config):
    """(network with each example's teacher deep prompt, teacher prompts [B, P', E]); `network`
    is `params` without its prompt."""
    teachers = params["encoder"]["prompt"]["teachers"]["prompts"].astype(jnp.float32)
    return prompts.per_input(network, teachers[task_index], config)


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
# A finished run as a start for a new task (MPT's and PEFT's inits).

TRAINED = "multitask_trained.npz"  # under MODEL_DIR/transfer/: the run's last step
# PEFT's MultitaskPromptTuningInit AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED
TRANSFER_INITS = ("average_source_tasks", "exact_source_task", "only_source_shared")


def save_trained(model_dir, params: dict, config) -> None:
    """The run's shared prompt (wide form) and parts at its last step, for `transfer_start`."""
    held = jax.tree.map(pt.host_array, params)
    flat = traverse_util.flatten_dict(held, sep="/")
    deep = [flat[p] for p in prompts.deep_prefix_paths(config) if p in flat]
    shared = np.asarray(prompts.widen_traced(held["encoder"]["prompt"]["prompt"], deep))
    pieces = load(model_dir)
    trained = dataclasses.replace(
        pieces,
        parts={k: np.asarray(v, np.float32) for k, v in held["encoder"]["prompt"]["tasks"].items()},
    )
    buffer = io.BytesIO()
    np.savez(
        buffer,
        shared=shared.astype(np.float32),
        how=np.asarray(trained.how),
        names=np.asarray(trained.names, dtype=str),
        **{f"part/{k}": v for k, v in trained.parts.items()},
    )
    paths.atomic_write_bytes(paths.path(model_dir) / "transfer" / TRAINED, buffer.getvalue())


def read_trained(model_dir) -> tuple[np.ndarray, Pieces]:
    """(shared prompt [P, W], the trained parts) of a finished multi-task run."""
    file = paths.path(model_dir) / "transfer" / TRAINED
    if not file.exists():
        started = load(model_dir) is not None
        raise MultitaskError(
            f"MULTITASK_RUN={str(model_dir)!r} "
            + (
                "has not finished (no transfer/multitask_trained.npz); train it to its last step"
                if started
                else "is not a multi-task run (gin/runs/multitask_prompt.gin)"
            )
        )
    with np.load(io.BytesIO(file.read_bytes())) as saved:
        parts = {k.removeprefix("part/"): saved[k] for k in saved.files if k.startswith("part/")}
        pieces = Pieces(str(saved["how"]), tuple(str(n) for n in saved["names"]), parts)
        return saved["shared"], pieces


def transfer_start(model_dir, init: str, task: str = "") -> tuple[np.ndarray, dict]:
    """(wide prompt, report) a new task starts from, out of a finished multi-task run:
    `exact_source_task` is `task`'s own prompt; `only_source_shared` the shared prompt alone;
    `average_source_tasks` the shared prompt with the tasks' parts averaged (for mpt, as PEFT
    does: U and V averaged over the tasks, then multiplied)."""
    shared, pieces = read_trained(model_dir)
    report = {"sources": [str(model_dir)], "init": init, "how": pieces.how}
    if init == "only_source_shared":
        return shared, report
    if init == "exact_source_task":
        if task not in pieces.names:
            raise MultitaskError(
                f"MULTITASK_SOURCE_TASK={task!r} is not one of the run's tasks: "
                f"{', '.join(pieces.names)}"
            )
        k = pieces.names.index(task)
        every = np.asarray(combine(jnp.asarray(shared), pieces.parts))
        return every[k], dict(report, task=task)
    mean = {k: v.mean(0, keepdims=True) for k, v in pieces.parts.items()}
    return np.asarray(combine(jnp.asarray(shared), mean))[0], dict(report, tasks=list(pieces.names))
