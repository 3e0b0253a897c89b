"""Soft prompts: their parameters and how they are initialised (where one enters the network:
network/prompt_slots.py).

A prompt is a [P, E] float32 matrix stored at `encoder/prompt/prompt` of the parameter tree (the
path T5X prompt tuning uses) with logical axes (`prompt`, `prompt_embed`), replicated by
default. The frozen T5 takes it as an input to `encode` (see `t5.Encoder`).
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_transfer.base import files, paths, settings
from prompt_transfer.base.errors import UserError
from prompt_transfer.base.settings import setting
from prompt_transfer.network import partitioning as pt
from prompt_transfer.network import prompt_slots

PROMPT_PATH = "encoder/prompt/prompt"
# T5X prompt tuning's numpy checkpoint of the prompt (the parameter's dotted path, no extension):
# MODEL_DIR/numpy_checkpoints/checkpoint_N/encoder.prompt.prompt.prompt
T5X_PROMPT_FILE = "encoder.prompt.prompt.prompt"
PROMPT_AXES = (pt.PROMPT, pt.PROMPT_EMBED)
DEEP_PREFIX = prompt_slots.DEEP_PREFIX
DEEP_PREFIX_AXES = (None, pt.PROMPT, pt.JOINED_KV)
DEEP_REGEX = f".*/{DEEP_PREFIX}"
INIT_METHODS = ("random_uniform", "sampled_vocab", "class_labels", "text", "file", "transfer")
FIRST_REGULAR_ID = 3  # after pad 0, eos 1, unk 2


class PromptError(UserError):
    pass


def abstract_prompt(length: int, dim: int) -> nn.LogicallyPartitioned:
    """Shape, dtype and logical axes of a [P, E] prompt, for sharding and checkpoint templates."""
    return nn.LogicallyPartitioned(jax.ShapeDtypeStruct((length, dim), jnp.float32), PROMPT_AXES)


# ---------------------------------------------------------------------------------------------
# Initialisers. Each returns a [P, E] float32 NumPy array.


def random_uniform(rng: np.random.Generator, length: int, dim: int, scale: float = 0.5):
    """U(-scale, scale), the SPoT / Lester et al. random baseline (scale 0.5)."""
    return rng.uniform(-scale, scale, (length, dim)).astype(np.float32)


def sampled_vocab(
    rng: np.random.Generator, embedding: np.ndarray, length: int, population: int = 5000
):
    """Embeddings of tokens drawn from the `population` most frequent ones (SPoT: 5,000).

    SentencePiece orders pieces by score, so low ids are the frequent ones; the special ids
    (pad, eos, unk) are skipped.
    """
    population = min(population, embedding.shape[0] - FIRST_REGULAR_ID)
    ids = FIRST_REGULAR_ID + rng.choice(population, size=length, replace=population < length)
    return np.asarray(embedding[ids], np.float32)


def class_labels(
    rng: np.random.Generator,
    embedding: np.ndarray,
    length: int,
    label_ids: list[list[int]],
    population: int = 5000,
):
    """The first positions hold the label strings' embeddings (multi-piece labels averaged);
    the rest are sampled from the vocabulary."""
    if len(label_ids) > length:
        raise PromptError(f"{len(label_ids)} class labels do not fit a prompt of length {length}")
    prompt = sampled_vocab(rng, embedding, length, population)
    for i, ids in enumerate(label_ids):
        prompt[i] = np.asarray(embedding[list(ids)], np.float32).mean(0)
    return prompt


def from_text(
    rng: np.random.Generator,
    embedding: np.ndarray,
    length: int,
    text_ids: list[int],
    population: int = 5000,
):
    """The text's token embeddings first (truncated to P), the rest sampled from the vocabulary."""
    prompt = sampled_vocab(rng, embedding, length, population)
    ids = list(text_ids)[:length]
    prompt[: len(ids)] = np.asarray(embedding[ids], np.float32)
    return prompt


def from_file(path: str | os.PathLike, length: int, dim: int) -> np.ndarray:
    """A prompt saved as `.npy`; its shape must be exactly [P, E]."""
    if paths.path(path).is_dir():
        raise PromptError(f"PROMPT_FILE={str(path)!r} is a folder; give a .npy file [P, E]")
    if not paths.path(path).is_file():
        raise PromptError(f"prompt file not found: {path}")
    try:
        prompt = files.load_npy(path)
    except ValueError as e:
        raise PromptError(f"prompt file {path} is not a readable .npy array: {e}") from e
    if prompt.shape != (length, dim):
        raise PromptError(
            f"prompt file {path} has shape {prompt.shape} but the run expects "
            f"({length}, {dim}) (PROMPT_LENGTH x model width)"
        )
    if not np.isfinite(prompt).all():
        raise PromptError(f"prompt file {path} holds NaN or inf values")
    return prompt.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PromptInit:
    """How a run's prompt starts (bound by gin/prompts/*.gin).

    `method` is one of INIT_METHODS; `labels` are the class label strings (class_labels), `text`
    the string (text), `file` a `.npy` path (file).
    """

    method: str = setting("random_uniform", one_of=INIT_METHODS)
    scale: float = setting(0.5, above=0)
    vocab_population: int = setting(5000, least=1, macro="VOCAB_POPULATION")
    labels: tuple[str, ...] = ()
    text: str = ""
    file: str = ""
    transfer: object = None  # transfer.TransferInit when method == "transfer"
    # EMBEDDING_FILE (prompt-tuning's *_numpy.gin): a [V, E] .npy of token embeddings that
    # sampled_vocab and class_labels read instead of the initial checkpoint's
    embedding_file: str | None = setting(None, macro="EMBEDDING_FILE")

    def __post_init__(self):
        settings.check(self)


def initial_prompt(
    init: PromptInit, length: int, embedding: np.ndarray, seed: int = 0, encode=None
) -> np.ndarray:
    """The starting [P, E] prompt for `init`.

    Args:
      init: the method and its settings.
      length: P.
      embedding: [V, E] the frozen model's token embedding table.
      seed: makes the draw reproducible.
      encode: text -> token ids (the vocabulary's `encode`), needed by class_labels and text.
    """
    rng = np.random.default_rng(seed)
    dim = embedding.shape[1]
    embedding = np.asarray(embedding)
    if init.method == "random_uniform":
        return random_uniform(rng, length, dim, init.scale)
    if init.method == "sampled_vocab":
        return sampled_vocab(rng, embedding, length, init.vocab_population)
    if init.method == "file":
        return from_file(init.file, length, dim)
    if init.method == "transfer":
        raise PromptError("a transfer init needs the library and the run: see transfer.py")
    if encode is None:
        raise PromptError(f"prompt init {init.method!r} needs a vocabulary to tokenize text")
    if init.method == "class_labels":
        if not init.labels:
            raise PromptError("prompt init 'class_labels' needs PromptInit.labels")
        return class_labels(
            rng, embedding, length, [encode(label) for label in init.labels], init.vocab_population
        )
    return from_text(rng, embedding, length, encode(init.text), init.vocab_population)


def split_prompt(params: dict) -> tuple[dict, jax.Array | None]:
    """(the frozen network's tree, the prompt at `encoder/prompt/prompt` or None)."""
    encoder = params.get("encoder", {})
    if "prompt" not in encoder:
        return params, None
    encoder = dict(encoder)
    prompt = encoder.pop("prompt")["prompt"]
    return {**params, "encoder": encoder}, prompt


def with_prompt(params: dict, prompt) -> dict:
    """`params` with `prompt` placed at `encoder/prompt/prompt`."""
    return {**params, "encoder": {**params["encoder"], "prompt": {"prompt": prompt}}}


# ---------------------------------------------------------------------------------------------
# Deep prompts: keys and values of their own in every self-attention layer.


# (stack, its layer count in T5Config, the self-attention's name, the norm before it)
_SELF_ATTENTIONS = (
    ("encoder", "num_encoder_layers", "attention", "pre_attention_layer_norm"),
    ("decoder", "num_decoder_layers", "self_attention", "pre_self_attention_layer_norm"),
)


def _self_attentions(config):
    """(deep-prompt path, layer scope keys, attention name, norm name) of every self-attention,
    encoder first."""
    for stack, count, attention, norm in _SELF_ATTENTIONS:
        for i in range(getattr(config, count)):
            path = f"{stack}/layers_{i}/{attention}/{DEEP_PREFIX}"
            yield path, (stack, f"layers_{i}"), attention, norm


def deep_prefix_paths(config) -> list[str]:
    """Where a T5 of `config` keeps its deep prompt: every encoder and decoder self-attention."""
    return [path for path, *_ in _self_attentions(config)]


def initial_deep_prompt(
    network: dict, config, length: int, seed: int = 0, population: int = 5000
) -> dict[str, np.ndarray]:
    """{path: [2, P, H*D]}: each layer's keys and values of P tokens drawn from the `population`
    most frequent ones, as that layer would compute them from the tokens' embeddings (its RMS
    norm, then its key and value kernels; prefix tuning starts from real activations, random
    ones train unstably)."""
    rng = np.random.default_rng(seed)
    embedding = np.asarray(pt.host_array(network["token_embedder"]["embedding"]), np.float32)
    out = {}
    for path, (stack, layer), attention, norm in _self_attentions(config):
        scope = network[stack][layer]
        x = sampled_vocab(rng, embedding, length, population)
        x = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + config.layer_norm_epsilon)
        x = x * np.asarray(pt.host_array(scope[norm]["scale"]), np.float32)
        kernels = (pt.host_array(scope[attention][name]["kernel"]) for name in ("key", "value"))
        out[path] = np.stack([x @ np.asarray(k, np.float32) for k in kernels]).astype(np.float32)
    return out


def with_deep_prompt(params: dict, deep: dict) -> dict:
    """`params` with each {path: array} of a deep prompt placed at its path."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({**flat, **deep}, sep="/")


def abstract_deep_prompt(config, length: int) -> dict:
    """{path: shape, dtype and logical axes} of a deep prompt, for shardings and templates."""
    shape = (2, length, config.num_heads * config.head_dim)
    leaf = nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32), DEEP_PREFIX_AXES)
    return dict.fromkeys(deep_prefix_paths(config), leaf)


# ---------------------------------------------------------------------------------------------
# The wide form: a deep prompt as one [P, E + deep_width] matrix, so that transfer (retrieval,
# weighted averages, length fits) moves it as a whole without knowing about layers.


def deep_width(config) -> int:
    """Columns a deep prompt adds to each prompt position in its wide form: the position's keys
    and values in every self-attention."""
    return len(deep_prefix_paths(config)) * 2 * config.num_heads * config.head_dim


def widen(prompt, deep: dict | None, config) -> np.ndarray:
    """[P, E + deep_width]: each position's input embedding, then its keys and values in every
    self-attention (deep_prefix_paths order); the prompt itself when `deep` is None."""
    prompt = np.asarray(prompt, np.float32)
    if not deep:
        return prompt
    length = prompt.shape[0]
    columns = [
        np.asarray(deep[path], np.float32).transpose(1, 0, 2).reshape(length, -1)
        for path in deep_prefix_paths(config)
    ]
    return np.concatenate([prompt, *columns], 1)


def widen_traced(prompt: jax.Array, deep: list[jax.Array]) -> jax.Array:
    """`widen` inside the model: [P, E] and each layer's [2, P, H*D] (deep_prefix_paths order)
    as [P, E + deep width], float32."""
    p = prompt.shape[0]
    columns = [x.astype(jnp.float32).transpose(1, 0, 2).reshape(p, -1) for x in deep]
    return jnp.concatenate([prompt.astype(jnp.float32), *columns], axis=1)


def per_input(network: dict, wide: jax.Array, config) -> tuple[dict, jax.Array]:
    """(network with each input's deep prompt [B, 2, P, H*D] in its self-attentions, input
    prompts [B, P, E]) from one wide prompt per input `wide` [B, P, W]; W = E is a plain one."""
    emb = config.emb_dim
    if wide.shape[-1] == emb:
        return network, wide
    flat = traverse_util.flatten_dict(network, sep="/")
    paths_ = deep_prefix_paths(config)
    b, p = wide.shape[:2]
    for path, chunk in zip(paths_, jnp.split(wide[..., emb:], len(paths_), axis=-1), strict=True):
        flat[path] = chunk.reshape(b, p, 2, -1).transpose(0, 2, 1, 3)  # [B, 2, P, H*D]
    return traverse_util.unflatten_dict(flat, sep="/"), wide[..., :emb]


def narrow(wide, config) -> tuple[np.ndarray, dict | None]:
    """(prompt [P, E], deep prompt {path: [2, P, H*D]} or None) of a prompt in either form."""
    wide = np.asarray(wide, np.float32)
    width, extra = config.emb_dim, deep_width(config)
    if wide.shape[1] == width:
        return wide, None
    if wide.shape[1] != width + extra:
        raise PromptError(
            f"a prompt of width {wide.shape[1]} fits neither this model's input prompt "
            f"({width}) nor its deep prompt ({width} + {extra}); use a prompt trained with "
            "this model and the same DEEP_PROMPT setting"
        )
    length, paths = wide.shape[0], deep_prefix_paths(config)
    chunks = np.split(wide[:, width:], len(paths), axis=1)
    deep = {
        path: np.ascontiguousarray(chunk.reshape(length, 2, -1).transpose(1, 0, 2))
        for path, chunk in zip(paths, chunks, strict=True)
    }
    return wide[:, :width], deep


def join(params: dict, config, prompt, as_array=jnp.asarray) -> dict:
    """`params` with a prompt in either form joined: the input prompt, and the deep prompt's
    keys and values in their self-attentions when it has them (each made by `as_array`;
    np.asarray leaves them on the host for a sharded placement)."""
    prompt, deep = narrow(prompt, config)
    params = with_prompt(params, as_array(prompt))
    if deep:
        params = with_deep_prompt(params, {k: as_array(v) for k, v in deep.items()})
    return params


def join_abstract(abstract: dict, config, prompt) -> dict:
    """The network's abstract tree with the shapes and logical axes of `prompt` (either form)
    joined, as `join` joins the prompt itself: for shardings and restore templates."""
    length, wide = np.shape(prompt)
    abstract = with_prompt(abstract, abstract_prompt(length, config.emb_dim))
    if wide != config.emb_dim:
        abstract = with_deep_prompt(abstract, abstract_deep_prompt(config, length))
    return abstract


def blank(length: int, config, deep: bool) -> np.ndarray | None:
    """Zeros [P, E (+ deep_width)] in a run's prompt form (None when `length` is 0): the
    template a checkpoint's prompt is restored into."""
    if not length:
        return None
    return np.zeros((length, config.emb_dim + (deep_width(config) if deep else 0)), np.float32)


def columns(wide, config) -> tuple[np.ndarray, np.ndarray | None]:
    """(input prompt [P, E], deep columns [P, deep_width] or None) of a prompt in either form:
    how the prompt library stores it."""
    wide = np.asarray(wide, np.float32)
    deep = wide[:, config.emb_dim :]
    return wide[:, : config.emb_dim], deep if deep.size else None


def wide_of(params: dict, config) -> np.ndarray | None:
    """The prompt held in `params` in its wide form (None when there is no prompt)."""
    _, prompt = split_prompt(params)
    if prompt is None:
        return None
    flat = traverse_util.flatten_dict(params, sep="/")
    paths = deep_prefix_paths(config)
    deep = {p: pt.host_array(flat[p]) for p in paths} if paths[0] in flat else None
    return widen(pt.host_array(prompt), deep, config)


def repeat_per_input(network: dict, times: int) -> dict:
    """`network` whose per-input deep prompts [B, 2, P, H*D] (per_input's) are repeated
    `times` along the batch, as the caller repeats its encodings (candidates in rank
    classification, beams)."""
    flat = traverse_util.flatten_dict(network, sep="/")
    if not any(k.endswith(DEEP_PREFIX) and v.ndim == 4 for k, v in flat.items()):
        return network
    flat = {
        k: jnp.repeat(v, times, axis=0) if k.endswith(DEEP_PREFIX) and v.ndim == 4 else v
        for k, v in flat.items()
    }
    return traverse_util.unflatten_dict(flat, sep="/")


# ---------------------------------------------------------------------------------------------
# The single prompt as a kind (prompt/kinds.py): one prompt, plain or deep, for every input.


@dataclasses.dataclass(frozen=True)
class Start:
    """What a kind's start (`begin`) may draw on when a fresh run begins; the trainer fills it
    once (trainer/start.py) and the kind keeps what it needs beside the prompt, under
    MODEL_DIR/transfer/. What needs the library or the trainer comes as a function."""

    model_dir: str
    prompt: np.ndarray  # [P, W]: the run's prompt as its initialiser or strategy started it
    seed: int
    width: int  # the model's embedding width
    config: object  # the run's TrainConfig (its prompt_init and multi-task layout)
    tasks: tuple[str, ...] = ()  # the run's tasks: its mixture's parts, in order
    sources: np.ndarray | None = None  # [K, P, W] the prompts a transfer strategy retrieved
    source_names: tuple[str, ...] = ()
    own_start: object = None  # k -> [P_task, W], task k's own part as the initialiser starts it
    teachers: object = None  # () -> [K, P', W], each task's trained prompt (MPT's teachers)
    log: object = print  # str -> None, the run's progress log


@dataclasses.dataclass(frozen=True)
class Single:
    """One prompt [P, W] for every input, in the tree where T5X prompt tuning keeps it; nothing
    beside it in the run folder. The default kind, and what a run without a prompt is; the
    other kinds start from its members (prompt/kinds.py)."""

    name: str = "single"
    task_index: bool = False  # batches need not say each example's task

    def load(self, model_dir) -> None:
        return None

    def found(self, model_dir) -> None:  # the kind of a run no other kind claims
        return None

    def check(self, spec, config) -> None:
        pass

    def begin(self, context: Start) -> None:  # nothing beside the prompt
        pass

    def compose(self, params, network, own, tokens, task_index, config):
        return network, own

    def repeat(self, network: dict, times: int) -> dict:
        return network

    def teacher(self, params, network, task_index, config) -> None:
        return None

    def for_task(self, params: dict, k: int, config):
        return self, params

    def tasks(self, model_dir) -> None:
        return None

    def exported(self, spec, config, params, log) -> np.ndarray | None:
        return wide_of(params, spec.model_config)

    def refusal(self, model_dir) -> None:
        return None


SINGLE = Single()
