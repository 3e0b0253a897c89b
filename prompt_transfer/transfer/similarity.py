"""Task similarity from prompts (SPoT Sec. 3; Su et al. 2022 Sec. 5). Exact definitions.

Prompts are matrices A [P, E] and B [Q, E] (rows are prompt tokens). Every metric compares one
target with a whole library `[N, P, E]` in one batched computation (`score_library`).

- `cosine_avg_tokens` (SPoT): cos(mean_i A_i, mean_j B_j).
- `cosine_per_token` (SPoT, Prompt-Transferability): mean over all P x Q token pairs of
  cos(A_i, B_j).
- `cosine_flat`: cos(vec A, vec B); needs P = Q.
- `euclidean` (Prompt-Transferability): 1 / (1 + ||A - B||_F); needs P = Q.
- `euclidean_per_token`: mean over all P x Q token pairs of 1 / (1 + ||A_i - B_j||_2).
- `activation_overlap` (Prompt-Transferability's ON): the frozen encoder runs on the prompt
  alone; a feed-forward neuron of a layer in the window is "on" when its activation, averaged
  over the prompt positions, is > 0; the score is the cosine of the two binary on/off vectors
  (see `activation_signature`).

All are symmetric; identical prompts score 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from prompt_transfer.base.errors import UserError
from prompt_transfer.prompt import prompts

EPS = 1e-12


class SimilarityError(UserError):
    pass


def _unit(x, axis=-1):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), EPS)


def cosine_avg_tokens(target, library):
    """target [P, E], library [N, Q, E] -> [N]."""
    return _unit(library.mean(1)) @ _unit(target.mean(0))


def cosine_per_token(target, library):
    # The mean of all P x Q cosines is the dot product of the mean unit-length tokens: one
    # product per entry instead of P x Q.
    return _unit(library).mean(1) @ _unit(target).mean(0)


# Metrics that read a prompt only through its mean token and mean unit-length token
# (`summary`): ranking a library by them needs one [2, E] row per entry, not the prompts.
SUMMARY_METRICS = ("cosine_avg_tokens", "cosine_per_token")


def summary(prompt) -> np.ndarray:
    """[2, E] of a prompt [P, E]: its mean token and its mean unit-length token."""
    prompt = jnp.asarray(prompt, jnp.float32)
    return np.asarray(jnp.stack([prompt.mean(0), _unit(prompt).mean(0)]))


def score_summaries(metric: str, target, summaries) -> np.ndarray:
    """`score_library` for a SUMMARY_METRICS metric from the library's summaries [N, 2, E]."""
    if metric not in SUMMARY_METRICS:
        raise SimilarityError(f"{metric} reads whole prompts; use score_library")
    mine, theirs = summary(target), jnp.asarray(summaries)
    if metric == "cosine_avg_tokens":
        return np.asarray(_unit(theirs[:, 0]) @ _unit(jnp.asarray(mine[0])))
    return np.asarray(theirs[:, 1] @ jnp.asarray(mine[1]))


def _same_length(target, library, metric):
    if target.shape[0] != library.shape[1]:
        raise SimilarityError(
            f"{metric} needs prompts of equal length; got {target.shape[0]} and "
            f"{library.shape[1]} (use cosine_avg_tokens or cosine_per_token)"
        )


def cosine_flat(target, library):
    _same_length(target, library, "cosine_flat")
    return _unit(library.reshape(library.shape[0], -1)) @ _unit(target.reshape(-1))


def euclidean(target, library):
    _same_length(target, library, "euclidean")
    return 1.0 / (
        1.0 + jnp.linalg.norm((library - target[None]).reshape(library.shape[0], -1), axis=-1)
    )


def euclidean_per_token(target, library):
    diff = target[None, :, None, :] - library[:, None, :, :]  # [N, P, Q, E]
    return (1.0 / (1.0 + jnp.linalg.norm(diff, axis=-1))).mean((1, 2))


def activation_overlap(target_signature, library_signatures):
    """target [F] bool/0-1, library [N, F] -> cosine of binary activation vectors [N]."""
    t = jnp.asarray(target_signature, jnp.float32)
    lib = jnp.asarray(library_signatures, jnp.float32)
    return _unit(lib) @ _unit(t)


METRICS = {
    "cosine_avg_tokens": cosine_avg_tokens,
    "cosine_per_token": cosine_per_token,
    "cosine_flat": cosine_flat,
    "euclidean": euclidean,
    "euclidean_per_token": euclidean_per_token,
    "activation_overlap": activation_overlap,
}


# `input_<metric>`: the metric on a deep prompt's input prompt alone (the first E columns of its
# wide form), without the keys and values of every layer; for a plain prompt, the metric itself.
# The transferability study on the shipped model found it the best predictor of transfer gain
# among those measured (docs/library_and_transfer.md#the-transferability-study).
INPUT_PREFIX = "input_"
INPUT_METRICS = tuple(INPUT_PREFIX + m for m in METRICS if m != "activation_overlap")
PROMPT_METRICS = (*(m for m in METRICS if m != "activation_overlap"), *INPUT_METRICS)


def input_only(name: str) -> tuple[str, bool]:
    """(the metric to compute, whether it compares input prompts only)."""
    if name in INPUT_METRICS:
        return name.removeprefix(INPUT_PREFIX), True
    return name, False


def get_metric(name: str):
    name = input_only(name)[0]
    if name not in METRICS:
        raise SimilarityError(
            f"similarity metric {name!r} is unknown; choose one of "
            + ", ".join([*METRICS, *INPUT_METRICS])
        )
    return METRICS[name]


def score_library(metric: str, target, library) -> np.ndarray:
    """Similarity of `target` to each library entry, [N] float32 (one batched computation)."""
    return np.asarray(jax.jit(get_metric(metric))(jnp.asarray(target), jnp.asarray(library)))


def pairwise(metric: str, prompts) -> np.ndarray:
    """[N, N] similarity matrix of a stack of prompts (rows: target, columns: library)."""
    prompts = jnp.asarray(prompts)
    fn = jax.jit(jax.vmap(get_metric(metric), in_axes=(0, None)))
    return np.asarray(fn(prompts, prompts))


# ---------------------------------------------------------------------------------------------
# Activation signatures (for activation_overlap).


def activation_signature(module, network_params, prompt, layers: tuple[int, int] | None = None):
    """The on/off vector [L_window * M] of the encoder's feed-forward neurons for a prompt.

    The encoder runs on the prompt alone (followed by EOS). For each encoder layer in the
    window [start, stop) the MLP hidden activation (the input of `wo`) is averaged over the
    prompt positions and binarised at 0.
    """
    import flax.linen as nn

    from prompt_transfer.network.t5 import T5

    start, stop = layers or (0, module.config.num_encoder_layers)
    hidden = {}

    def capture_wo_input(next_fun, args, kwargs, context):
        path = context.module.scope.path if context.module.scope else ()
        if context.module.name == "wo" and path[:1] == ("encoder",):
            hidden[path[1]] = args[0]  # [1, P + 1, M]
        return next_fun(*args, **kwargs)

    prompt, deep = prompts.narrow(prompt, module.config)
    if deep:  # a deep prompt's keys and values take part as in training
        network_params = prompts.with_deep_prompt(network_params, deep)
    with nn.intercept_methods(capture_wo_input):
        module.apply(
            {"params": network_params},
            jnp.asarray([[1]]),
            False,
            jnp.asarray(prompt),
            method=T5.encode,
        )
    p = prompt.shape[0]
    return np.concatenate(
        [np.asarray(hidden[f"layers_{i}"][0, :p].mean(0) > 0) for i in range(start, stop)]
    )
