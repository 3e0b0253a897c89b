"""Cross-model prompt projection (Su et al. 2022, Sec. 6): a small network trained on paired
prompts (the same task's prompt on a source model and on a target model) maps source-model
prompts into the target model's embedding space, token by token.

The projector is a two-layer perceptron `x -> W2 tanh(W1 x + b1) + b2` ([E_src] -> [E_tgt]),
trained with Adam to minimise the mean squared error over the paired prompts' tokens
(Su et al.'s distance-minimising objective). Saved as one `.npz` with its widths.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_transfer.base import files, paths
from prompt_transfer.base.errors import UserError


class ProjectorError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class Projector:
    params: dict  # w1 [E_src, H], b1 [H], w2 [H, E_tgt], b2 [E_tgt]

    @property
    def source_dim(self) -> int:
        return int(self.params["w1"].shape[0])

    @property
    def target_dim(self) -> int:
        return int(self.params["w2"].shape[1])

    def __call__(self, prompt: np.ndarray) -> np.ndarray:
        """[P, E_src] -> [P, E_tgt]."""
        prompt = np.asarray(prompt, np.float32)
        if prompt.shape[-1] != self.source_dim:
            raise ProjectorError(
                f"projector maps width {self.source_dim} prompts; got width {prompt.shape[-1]}"
            )
        return np.asarray(_apply(self.params, jnp.asarray(prompt)))

    def save(self, path: str | os.PathLike):
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in self.params.items()})
        files.atomic_write_bytes(path, buffer.getvalue())
        return paths.path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Projector:
        if not paths.path(path).exists():
            raise ProjectorError(f"projector file not found: {path}")
        with np.load(io.BytesIO(paths.path(path).read_bytes())) as z:
            return cls({k: jnp.asarray(z[k]) for k in ("w1", "b1", "w2", "b2")})


def _apply(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def train_projector(
    sources: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    hidden: int = 256,
    steps: int = 2000,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> tuple[Projector, float]:
    """(projector, final mean squared error) from paired prompts [P, E_src] / [P, E_tgt]."""
    if len(sources) != len(targets) or not sources:
        raise ProjectorError("a projector needs one or more pairs of prompts (same tasks)")
    x = jnp.concatenate([jnp.asarray(s, jnp.float32) for s in sources])  # [sum P, E_src]
    y = jnp.concatenate([jnp.asarray(t, jnp.float32) for t in targets])  # [sum P, E_tgt]
    if x.shape[0] != y.shape[0]:
        raise ProjectorError("paired prompts must have the same lengths")
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {
        "w1": jax.random.normal(k1, (x.shape[1], hidden)) / np.sqrt(x.shape[1]),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, y.shape[1])) / np.sqrt(hidden),
        "b2": jnp.zeros(y.shape[1]),
    }
    tx = optax.adam(learning_rate)
    loss = lambda p: jnp.mean(jnp.square(_apply(p, x) - y))

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return params, losses[-1]

    params, final = run(params)
    return Projector(params), float(final)


def paired_prompts(lib, source_model: str, target_model: str):
    """(tasks, source prompts, target prompts): tasks with a prompt on both models."""

    def by_task(model):
        return {e.task: e for e in lib.entries(model=model) if e.kind != "task_embedding"}

    src, tgt = by_task(source_model), by_task(target_model)
    tasks = sorted(set(src) & set(tgt))
    if not tasks:
        raise ProjectorError(
            f"no task has prompts for both {source_model!r} and "
            f"{target_model!r} in {lib.root}; a projector needs paired prompts"
        )
    return (
        tasks,
        [np.asarray(lib.prompt(src[t])) for t in tasks],
        [np.asarray(lib.prompt(tgt[t])) for t in tasks],
    )


def project_entry(lib, entry_id: str, proj: Projector, model: str, model_fingerprint: str):
    """Add the projection of a library prompt as a new entry for `model`."""
    entry = lib.get(entry_id)
    return lib.add(
        proj(lib.prompt(entry)),
        task=entry.task,
        model=model,
        model_fingerprint=model_fingerprint,
        steps=entry.steps,
        seed=entry.seed,
        kind="projected",
        note=f"projected from {entry.id} ({entry.model})",
    )
