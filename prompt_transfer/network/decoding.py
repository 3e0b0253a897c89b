"""Autoregressive decoding over a key/value cache: greedy, temperature sampling, beam search.

Model-agnostic: each function takes `step_fn(tokens [N, 1], cache) -> (logits [N, V], cache)`
that advances the cache by one position. Decoding starts from token 0 (T5's decoder start) and
writes 0 (padding) after a row's EOS. Everything runs inside one `lax.while_loop`, which stops
early once every row has finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import traverse_util

from prompt_transfer.base.settings import setting

StepFn = Callable[[jax.Array, dict], tuple[jax.Array, dict]]
NEG_INF = -1.0e7
_CACHED = ("cached_key", "cached_value")
METHODS = ("greedy", "beam_search", "temperature_sample")


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How `eval` and `infer` decode a generative task (a task with labels ranks them, whatever
    this says): T5X's decode_fn and its settings, as prompt-tuning's
    configs/models/decoding/{beam_search,nucleus_sampling}.gin bind them. Beam search keeps the
    best of `num_decodes` beams; sampling draws one sequence, seeded by RANDOM_SEED."""

    method: str = setting("greedy", one_of=METHODS)
    num_decodes: int = setting(1, least=1)  # beams of beam search
    alpha: float = setting(0.6, least=0)  # beam search's length penalty ((5 + |Y|) / 6) ** alpha
    temperature: float = setting(1.0, least=0)  # sampling; 0 is greedy
    topk: int = setting(0, least=0)  # sampling among the k most likely tokens (0: all)
    topp: float = setting(0.0, least=0, most=1)  # nucleus: the smallest set of this mass (0: all)

    def __post_init__(self):
        from prompt_transfer.base import settings

        settings.check(self)


def temperature_sample(
    step_fn: StepFn,
    cache: dict,
    batch_size: int,
    max_length: int,
    rng: jax.Array | None = None,
    temperature: float = 0.0,
    topk: int = 0,
    eos_id: int = 1,
    topp: float = 0.0,
) -> jax.Array:
    """Decoded tokens [B, max_length]; `temperature=0` is greedy (argmax) decoding.

    With `topk > 0`, sampling is restricted to the k most likely tokens of each step; with
    `topp > 0`, to the smallest set of most likely tokens whose probability reaches `topp`
    (nucleus sampling, Holtzman et al. 2020).
    """
    rng = jax.random.PRNGKey(0) if rng is None else rng

    def body(state):
        i, prev, cache, out, done, rng = state
        logits, cache = step_fn(prev[:, None], cache)
        logits = logits.astype(jnp.float32)
        if temperature == 0.0:
            token = jnp.argmax(logits, axis=-1)
        else:
            if topk:
                kth = jax.lax.top_k(logits, topk)[0][:, -1:]
                logits = jnp.where(logits < kth, NEG_INF, logits)
            if topp:
                logits = _nucleus(logits / temperature, topp) * temperature
            rng, key = jax.random.split(rng)
            token = jax.random.categorical(key, logits / temperature)
        token = jnp.where(done, 0, token).astype(jnp.int32)
        out = out.at[:, i].set(token)
        return i + 1, token, cache, out, done | (token == eos_id), rng

    def cond(state):
        i, _, _, _, done, _ = state
        return (i < max_length) & ~jnp.all(done)

    init = (
        jnp.int32(0),
        jnp.zeros((batch_size,), jnp.int32),
        cache,
        jnp.zeros((batch_size, max_length), jnp.int32),
        jnp.zeros((batch_size,), bool),
        rng,
    )
    return jax.lax.while_loop(cond, body, init)[3]


def _nucleus(logits: jax.Array, topp: float) -> jax.Array:
    """`logits` [N, V] with every token outside the nucleus (the most likely tokens whose
    probabilities, in order, first reach `topp`; the most likely one always in) set to NEG_INF."""
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    mass = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
    # The cut: the smallest logit still in; a token is in while the mass before it is < topp.
    inside = jnp.concatenate([jnp.ones_like(mass[:, :1], bool), mass[:, :-1] < topp], axis=-1)
    cut = jnp.min(jnp.where(inside, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cut, NEG_INF, logits)


def _gather_beams(cache: dict, beam_index: jax.Array, batch_size: int, beam_size: int) -> dict:
    """Reorder the per-row cached keys/values ([B*K, ...]) after beams were re-ranked."""
    flat = traverse_util.flatten_dict(cache)

    def gather(x):
        x = x.reshape(batch_size, beam_size, *x.shape[1:])
        x = jnp.take_along_axis(
            x, beam_index.reshape(batch_size, beam_size, *([1] * (x.ndim - 2))), axis=1
        )
        return x.reshape(batch_size * beam_size, *x.shape[2:])

    return traverse_util.unflatten_dict(
        {k: gather(v) if k[-1] in _CACHED else v for k, v in flat.items()}
    )


def brevity_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT length normalisation ((5 + |Y|) / 6) ** alpha, as T5X's beam search."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(
    step_fn: StepFn,
    cache: dict,
    batch_size: int,
    beam_size: int,
    max_length: int,
    alpha: float = 0.6,
    eos_id: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, K, max_length], scores [B, K]) sorted best first.

    `cache` and `step_fn` work on B*K rows (each input repeated K times, beam-major within a
    row). A finished beam is extended only by padding at no cost, so it keeps its score and
    competes with live beams; final scores are length-normalised log-probabilities.
    """
    n = batch_size * beam_size

    def body(state):
        i, seqs, log_probs, done, lengths, cache = state
        prev = jnp.where(i == 0, 0, seqs[:, :, jnp.maximum(i - 1, 0)]).reshape(n, 1)
        logits, cache = step_fn(prev, cache)
        vocab = logits.shape[-1]
        lp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch_size, beam_size, vocab)
        pad_only = jnp.full((vocab,), NEG_INF).at[0].set(0.0)
        lp = jnp.where(done[..., None], pad_only, lp)
        scores, flat_index = jax.lax.top_k(
            (log_probs[..., None] + lp).reshape(batch_size, -1), beam_size
        )  # [B, K]
        beam, token = flat_index // vocab, (flat_index % vocab).astype(jnp.int32)
        take = lambda x: jnp.take_along_axis(
            x, beam.reshape(*beam.shape, *([1] * (x.ndim - 2))), axis=1
        )
        seqs = take(seqs).at[:, :, i].set(token)
        was_done = take(done)
        lengths = take(lengths) + (~was_done).astype(jnp.int32)
        done = was_done | (token == eos_id)
        cache = _gather_beams(cache, beam, batch_size, beam_size)
        return i + 1, seqs, scores, done, lengths, cache

    def cond(state):
        i, _, _, done, _, _ = state
        return (i < max_length) & ~jnp.all(done)

    first_only = jnp.full((batch_size, beam_size), NEG_INF).at[:, 0].set(0.0)
    init = (
        jnp.int32(0),
        jnp.zeros((batch_size, beam_size, max_length), jnp.int32),
        first_only,
        jnp.zeros((batch_size, beam_size), bool),
        jnp.zeros((batch_size, beam_size), jnp.int32),
        cache,
    )
    _, seqs, log_probs, _, lengths, _ = jax.lax.while_loop(cond, body, init)
    scores = log_probs / brevity_penalty(lengths, alpha)
    order = jnp.argsort(-scores, axis=1)
    return (
        jnp.take_along_axis(seqs, order[..., None], axis=1),
        jnp.take_along_axis(scores, order, axis=1),
    )
