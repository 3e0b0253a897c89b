"""T5X's `t5x.decoding` functions, as gin names (t5x_habits.fold): what is bound to them
becomes prompt_transfer.network.decoding.Decoding's settings (`decode_fn =
@decoding.beam_search` its method)."""

from __future__ import annotations


def beam_search(
    inputs=None,
    cache=None,
    tokens_to_logits=None,
    eos_id=1,
    num_decodes=4,
    alpha=0.6,
    max_decode_len=None,
    decode_rng=None,
    cache_offset=0,
    initial_index=None,
):
    """Here only its bindings count (t5x_habits.fold)."""


def temperature_sample(
    inputs=None,
    cache=None,
    tokens_to_logits=None,
    eos_id=1,
    decode_rng=None,
    num_decodes=1,
    temperature=1.0,
    topk=1,
    topp=0.0,
    cache_offset=0,
    initial_index=None,
    max_decode_steps=None,
):
    """Here only its bindings count (t5x_habits.fold)."""
