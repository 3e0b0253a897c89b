"""Views of a prompt that may see the task rather than the start (issue 24's question).

A deep prompt's wide form [P, E + W] is mostly keys and values (W is 12x E on the shipped
model), and every prompt of a study starts from the same sampled vocabulary, so a similarity on
the raw wide form may measure the shared start and the key/value columns. Each view maps a
stack of wide prompts [N, P, E + W] to what a metric then compares:

  input           the input prompt's E columns only
  blocks          the input prompt and every layer's keys and values as equal blocks: each
                  block scaled to unit norm per position, so none outweighs another by width
  trained         what training added: the prompt minus its initial value
  trained_blocks  both
"""

from __future__ import annotations

import numpy as np

from prompt_transfer.prompt import prompts

VIEWS = ("input", "blocks", "trained", "trained_blocks")
VIEWED_METRIC = "cosine_avg_tokens"
# Retrieval metrics on a view, `{view}_cosine_avg_tokens` (the input view's is
# similarity.INPUT_METRICS' input_cosine_avg_tokens). The trained views need the start the
# prompts shared (SHARED_START; the SPoT flow and the study write it).
VIEW_METRICS = tuple(f"{v}_{VIEWED_METRIC}" for v in VIEWS if v != "input")


def view_of(metric: str) -> str | None:
    """The view a metric of VIEW_METRICS compares (None for any other metric)."""
    return metric.removesuffix(f"_{VIEWED_METRIC}") if metric in VIEW_METRICS else None


def needs_start(metric: str) -> bool:
    return (view_of(metric) or "").startswith("trained")


def _blocks(wide: np.ndarray, config) -> list[np.ndarray]:
    """[..., P, E + W] -> the input block [..., P, E] and each layer's key and value blocks."""
    emb = config.emb_dim
    deep = wide[..., emb:]
    parts = 2 * len(prompts.deep_prefix_paths(config)) if deep.shape[-1] else 0
    return [wide[..., :emb], *(np.split(deep, parts, axis=-1) if parts else [])]


def _unit(block: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(block, axis=-1, keepdims=True)
    return block / np.maximum(norm, 1e-12)


def view(name: str, wide: np.ndarray, config, initial: np.ndarray | None = None) -> np.ndarray:
    """The view `name` (one of VIEWS) of prompts `wide` [..., P, E + W]; `initial` [P, E + W]
    is the prompts' shared starting value (for the trained views; its first E columns for
    plain prompts)."""
    wide = np.asarray(wide, np.float32)
    if name.startswith("trained"):
        if initial is None:
            raise ValueError(f"the view {name!r} needs the prompts' initial value")
        wide = wide - np.asarray(initial, np.float32)[..., : wide.shape[-1]]
        name = name.removeprefix("trained").lstrip("_") or "all"
    if name == "input":
        return wide[..., : config.emb_dim]
    if name == "blocks":
        return np.concatenate([_unit(b) for b in _blocks(wide, config)], axis=-1)
    if name == "all":
        return wide
    raise ValueError(f"unknown view {name!r}; choose one of {', '.join(VIEWS)}")
