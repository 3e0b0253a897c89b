"""Where a prompt enters the network: joined to the encoder's embedded input (`join_prompt`), and
a deep prompt's keys and values in each self-attention's own scope (`DEEP_PREFIX`), put before
that attention's own (`join_prefix`). The network
owns these slots; what fills them (each kind of prompt, its initialisers) is the prompt layer's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prompt_transfer.base.errors import UserError

# A deep prompt (prefix tuning, P-tuning v2): P extra keys and values [2, P, H*D] in every
# self-attention, stored in that attention's own scope under this name.
DEEP_PREFIX = "prompt_prefix"
POSITIONS = ("prefix", "suffix")


def join_prompt(x: jax.Array, mask: jax.Array, prompt: jax.Array, position: str = "prefix"):
    """Join a prompt to embedded inputs.

    Args:
      x: [B, L, E] embedded input tokens (right-padded).
      mask: [B, L] bool, True at real tokens.
      prompt: [P, E] shared by the batch, or [B, P, E] one per example.
      position: "prefix" (before the input) or "suffix" (right after each row's last real token,
        so prompt positions stay contiguous with the text for the relative position biases).

    Returns:
      ([B, P + L, E], [B, P + L]) with the prompt positions unmasked.
    """
    b, length = mask.shape
    if prompt.ndim == 2:
        prompt = jnp.broadcast_to(prompt[None], (b, *prompt.shape))
    p = prompt.shape[1]
    ones = jnp.ones((b, p), bool)
    if position == "prefix":
        return jnp.concatenate([prompt, x], 1), jnp.concatenate([ones, mask], 1)
    if position != "suffix":
        raise UserError(f"prompt position {position!r} is unknown; choose one of {POSITIONS}")
    joined, joined_mask = jnp.concatenate([x, prompt], 1), jnp.concatenate([mask, ones], 1)
    n = mask.sum(1, keepdims=True)  # [B, 1] real tokens per row
    j = jnp.arange(length + p)[None]  # output positions
    src = jnp.where(j < n, j, jnp.where(j < n + p, length + j - n, j - p))  # [B, L + P]
    return (
        jnp.take_along_axis(joined, src[..., None], axis=1),
        jnp.take_along_axis(joined_mask, src, axis=1),
    )


def join_prefix(prefix: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array):
    """Put a deep prompt's P keys and values [2, P, H*D] (or one per input, [B, 2, P, H*D])
    before an attention's own [B, L, H, D].

    The prefix positions are visible from every query (no mask) and carry no position bias, as in
    prefix tuning; the cache of a decoding step keeps only the network's own keys and values.
    """
    b, _, h, d = k.shape
    if prefix.ndim == 4:  # [B, 2, P, H*D]: each input its own (attention over source prompts)
        p = prefix.shape[2]
        pk, pv = (x.reshape(b, p, h, d).astype(k.dtype) for x in (prefix[:, 0], prefix[:, 1]))
    else:
        p = prefix.shape[1]
        pk, pv = (
            jnp.broadcast_to(x.reshape(1, p, h, d).astype(k.dtype), (b, p, h, d)) for x in prefix
        )
    bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(p, 0)])
    return jnp.concatenate([pk, k], 1), jnp.concatenate([pv, v], 1), bias
