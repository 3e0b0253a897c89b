"""Attention over source prompts (ATTEMPT, Asai et al. 2022, arXiv 2205.11961).

K frozen source prompts and one trainable target prompt; for each input a small module scores
the sources against the input and the input's prompt is

    P(x) = P_target + sum_j a_j(x) P_j,   a(x) = softmax_j(pool(P_j) . h(x) / T),
    h(x) = LayerNorm(W_up SiLU(W_down pool(embed(x)))),

where pool is a max over positions (the input's real tokens, the source's prompt positions),
embed the frozen token embedding, and T a temperature (the paper's e x d by default). Only the
module and the target prompt train. Deep prompts mix whole: the sources are held in their wide
form (prompts.widen) and the weights of an input apply to every layer's keys and values too,
so each example carries its own deep prompt.

Everything lives in the parameter tree, beside the prompt that `prompts.split_prompt` takes out
of the network: `encoder/prompt/attention/...` (trainable) and `encoder/prompt/sources/...` (the
source prompts and T, fixed), so that every verb of an EncoderDecoderModel whose kind is
`Attention` (model/encoder_decoder.py, prompt/kinds.py) mixes the prompt per input. A run keeps
its sources in MODEL_DIR/transfer/attention.npz (written once, at its start): its checkpoints
hold only what trains, and `eval` and `infer` read the sources back from there (`score` and
`library export`, which take one prompt, refuse such a run; its library entry is the prompt at
its mean weights, `typical_prompt`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_transfer.base import files, paths
from prompt_transfer.base.errors import UserError
from prompt_transfer.data import batches, seqio_cache
from prompt_transfer.network import partitioning as pt
from prompt_transfer.prompt import pieces as pieces_file
from prompt_transfer.prompt import prompts

ATTENTION_PATH = "encoder/prompt/attention"
SOURCES_PATH = "encoder/prompt/sources"
# TRAINABLE of an attention run (gin/transfer/attention.gin): the target prompt, a deep prompt's
# keys and values when it has them, and the module; the sources stay fixed.
TRAINABLE = f"{prompts.PROMPT_PATH}|{ATTENTION_PATH}/.*|{prompts.DEEP_REGEX}"
FILE = "attention.npz"  # under MODEL_DIR/transfer/
_REPLICATED = (None, None)


class AttentionError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class Pieces:
    """What an attention run adds to the network beside its target prompt: the frozen sources
    [K, P, E (+ deep width)] in their wide form, the temperature, and the module's parameters
    ({'down/kernel': [E, R], 'up/kernel': [R, E], 'layer_norm/scale', 'layer_norm/bias': [E]})."""

    sources: np.ndarray
    temperature: float
    module: dict[str, np.ndarray]
    names: tuple[str, ...] = ()  # the sources' library ids, for reports

    @property
    def hidden(self) -> int:
        return self.module["down/kernel"].shape[1]

    def flat(self) -> dict[str, np.ndarray]:
        """{path: array} of the pieces in the parameter tree."""
        out = {f"{ATTENTION_PATH}/{k}": v for k, v in self.module.items()}
        out[f"{SOURCES_PATH}/prompts"] = self.sources
        out[f"{SOURCES_PATH}/temperature"] = np.float32(self.temperature)
        return out

    def abstract(self) -> dict[str, nn.LogicallyPartitioned]:
        """{path: shape, dtype and logical axes}: small, replicated on every device."""
        box = (
            lambda x: nn.LogicallyPartitioned(  # noqa: E731
                jax.ShapeDtypeStruct(np.shape(x), jnp.float32), _REPLICATED[: np.ndim(x)]
            )
        )
        return {k: box(v) for k, v in self.flat().items()}


def default_temperature(dim: int) -> float:
    """ATTEMPT's temperature: the embedding width times e."""
    return dim * math.e


def initial_module(dim: int, hidden: int, seed: int) -> dict[str, np.ndarray]:
    """The module's starting parameters: fan-in normal projections, an identity layer norm."""
    rng = np.random.default_rng(seed)
    return {
        "down/kernel": (rng.standard_normal((dim, hidden)) / math.sqrt(dim)).astype(np.float32),
        "up/kernel": (rng.standard_normal((hidden, dim)) / math.sqrt(hidden)).astype(np.float32),
        "layer_norm/scale": np.ones(dim, np.float32),
        "layer_norm/bias": np.zeros(dim, np.float32),
    }


def start(
    sources: np.ndarray, dim: int, hidden: int, temperature: float, seed: int, names=()
) -> Pieces:
    """The pieces of a fresh run over `sources` [K, P, W]; temperature 0 is ATTEMPT's."""
    sources = np.asarray(sources, np.float32)
    if sources.ndim != 3 or not len(sources):
        raise AttentionError(
            f"attention needs K >= 1 source prompts [K, P, W]; got {sources.shape}"
        )
    return Pieces(
        sources,
        float(temperature or default_temperature(dim)),
        initial_module(dim, hidden, seed),
        tuple(names),
    )


# ---------------------------------------------------------------------------------------------
# The run's file: written once at its start, read by every later process and command.


def save(model_dir, pieces: Pieces) -> None:
    arrays = {
        "sources": pieces.sources,
        "temperature": np.float32(pieces.temperature),
        "names": np.asarray(pieces.names, dtype=str),
    }
    module = {f"module/{k}": v for k, v in pieces.module.items()}
    pieces_file.write(model_dir, FILE, {**arrays, **module})


def load(model_dir) -> Pieces | None:
    """The pieces a run in `model_dir` was started with (None: not an attention run)."""
    saved = pieces_file.read(model_dir, FILE)
    if saved is None:
        return None
    return Pieces(
        saved["sources"],
        float(saved["temperature"]),
        pieces_file.prefixed(saved, "module/"),
        tuple(str(n) for n in saved["names"]),
    )


# ---------------------------------------------------------------------------------------------
# Inside the model (jitted): the per-input prompt.


def pooled_inputs(embedding: jax.Array, tokens: jax.Array) -> jax.Array:
    """[B, E]: the max over each input's real tokens of their embeddings (0 for an empty row)."""
    x = jnp.take(embedding, tokens, axis=0).astype(jnp.float32)
    mask = (tokens > 0)[..., None]
    pooled = jnp.max(jnp.where(mask, x, -jnp.inf), axis=1)
    return jnp.where(jnp.any(mask, axis=1), pooled, 0.0)


def attention_weights(module: dict, pooled: jax.Array, sources: jax.Array, temperature):
    """[B, K] softmax weights of the sources [K, P, >= E] for inputs pooled to [B, E]."""
    dim = pooled.shape[-1]
    h = jax.nn.silu(pooled @ module["down"]["kernel"]) @ module["up"]["kernel"]
    mean = h.mean(-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(jnp.var(h, -1, keepdims=True) + 1e-6)
    h = h * module["layer_norm"]["scale"] + module["layer_norm"]["bias"]
    keys = jnp.max(sources[..., :dim], axis=1)  # [K, E]
    return jax.nn.softmax(h @ keys.T / temperature, axis=-1)


def mix(target: jax.Array, sources: jax.Array, weights: jax.Array) -> jax.Array:
    """[B, P, W]: the target prompt [P, W] plus the sources [K, P, W] weighted [B, K]."""
    return target[None] + jnp.einsum("bk,kpw->bpw", weights, sources)


def compose(params: dict, network: dict, tokens: jax.Array, config):
    """(network with each input's deep prompt in its self-attentions, prompt [B, P, E],
    weights [B, K]) for inputs `tokens` [B, L]; `network` is `params` without its prompt."""
    held = params["encoder"]["prompt"]
    sources = held["sources"]["prompts"].astype(jnp.float32)
    flat = traverse_util.flatten_dict(network, sep="/")
    deep_paths = prompts.deep_prefix_paths(config) if sources.shape[-1] > config.emb_dim else []
    target = prompts.widen_traced(held["prompt"], [flat[p] for p in deep_paths])
    pooled = pooled_inputs(network["token_embedder"]["embedding"], tokens)
    weights = attention_weights(held["attention"], pooled, sources, held["sources"]["temperature"])
    network, prompt = prompts.per_input(network, mix(target, sources, weights), config)
    return network, prompt, weights


def mean_weights(params: dict, tokens) -> np.ndarray:
    """[K]: the sources' weights averaged over inputs `tokens` [N, L]."""
    held = jax.tree.map(pt.host_array, params["encoder"]["prompt"])
    embedding = pt.host_array(params["token_embedder"]["embedding"])
    pooled = pooled_inputs(jnp.asarray(embedding), jnp.asarray(tokens))
    sources = held["sources"]
    weights = attention_weights(
        held["attention"], pooled, sources["prompts"], sources["temperature"]
    )
    return np.asarray(weights, np.float64).mean(0)


def typical_prompt(params: dict, config, tokens) -> tuple[np.ndarray, np.ndarray]:
    """(wide prompt [P, W], weights [K]): the target plus the sources at their mean weights over
    `tokens`: one prompt standing for the run where a single prompt is asked for (its library
    entry, retrieval, the other strategies)."""
    weights = mean_weights(params, tokens)
    sources = np.asarray(pt.host_array(params["encoder"]["prompt"]["sources"]["prompts"]))
    target = prompts.wide_of(params, config)
    return target + np.tensordot(weights, sources, axes=1).astype(np.float32), weights


# ---------------------------------------------------------------------------------------------
# The kind (prompt/kinds.py).


@dataclasses.dataclass(frozen=True)
class Attention(prompts.Single):
    """Each input's prompt mixed from frozen sources by a trained module; the sources and the
    module's start are kept in MODEL_DIR/transfer/attention.npz."""

    name: str = "attention"

    def load(self, model_dir) -> Pieces | None:
        return load(model_dir)

    def found(self, model_dir) -> Attention | None:
        return self if pieces_file.exists(model_dir, FILE) else None

    def begin(self, context: prompts.Start) -> None:
        """The sources a transfer strategy retrieved, kept frozen beside the module's start."""
        init = context.config.prompt_init.transfer
        pieces = start(
            context.sources,
            context.width,
            init.attention_hidden,
            init.attention_temperature,
            seed=context.seed,
            names=context.source_names,
        )
        save(context.model_dir, pieces)

    def check(self, spec, config) -> None:
        module = f"{ATTENTION_PATH}/down/kernel"
        if not spec.prompt_length:
            raise AttentionError("attention mixes prompts per input: it needs PROMPT_LENGTH > 0")
        if not re.fullmatch(spec.trainable_regex, module) or re.fullmatch(
            spec.trainable_regex, f"{SOURCES_PATH}/prompts"
        ):
            raise AttentionError(
                f"strategy 'attention' trains its module ({ATTENTION_PATH}/...) and keeps its "
                f"sources fixed, but TRAINABLE={spec.trainable_regex!r} does not; use "
                f"TRAINABLE='{TRAINABLE}' (gin/transfer/attention.gin sets it)"
            )

    def compose(self, params, network, own, tokens, task_index, config):
        network, prompt, _ = compose(params, network, tokens, config)
        return network, prompt

    def repeat(self, network: dict, times: int) -> dict:
        return prompts.repeat_per_input(network, times)

    def exported(self, spec, config, params, log) -> np.ndarray:
        """The run's one prompt: the target plus its sources at their mean weights over the
        evaluation split (what its library entry holds); the weights go to the log and to
        MODEL_DIR/transfer/attention_weights.json."""
        task = batches.get_task(spec.task)
        dataset = task.get_dataset(
            spec.feature_lengths,
            config.eval_split,
            shuffle=False,
            use_cached=seqio_cache.use_for(task, config.eval_split),
        )
        rows = [list(e["inputs"]) for e in dataset.take(4096).as_numpy_iterator()]
        prompt, mean = typical_prompt(params, spec.model_config, batches.pad_token_rows(rows))
        names = load(spec.model_dir).names or [str(j) for j in range(len(mean))]
        weights = dict(zip(names, mean.round(4).tolist(), strict=True))
        record = {"split": config.eval_split, "inputs": len(rows), "mean_weights": weights}
        files.atomic_write_text(
            paths.path(spec.model_dir) / pieces_file.FOLDER / "attention_weights.json",
            json.dumps(record, indent=1),
        )
        shown = ", ".join(f"{name} {w:.2f}" for name, w in weights.items())
        log.info(f"attention: mean weights over {len(rows)} {config.eval_split} inputs: {shown}")
        return prompt

    def refusal(self, model_dir) -> str:
        return (
            f"{model_dir} is an attention run: each input's prompt mixes its own with "
            f"{len(load(model_dir).sources)} frozen sources through a trained module, which no "
            "prompt file holds; eval and infer read the run itself, and its library entry "
            "(LIBRARY_DIR; score --prompt-entry) holds the prompt at its mean weights"
        )


KIND = Attention()
