"""Loss, scoring and prediction around the T5 network (the verbs of T5X's EncoderDecoderModel).

Batches use SeqIO's encoder-decoder feature names: `encoder_input_tokens` [B, L],
`decoder_input_tokens` [B, T] (targets shifted right, starting with 0),
`decoder_target_tokens` [B, T] and optionally `decoder_loss_weights` [B, T].
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_transfer.network import decoding
from prompt_transfer.network.t5 import T5
from prompt_transfer.prompt import kinds, multitask, prompts


def shift_right(targets: jax.Array) -> jax.Array:
    """Decoder inputs from targets [B, T]: prepend the start token 0, drop the last position."""
    return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


def token_log_likelihoods(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [B, T, V] float32, targets [B, T] -> log p(target_t) [B, T]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
    """The T5 module plus the functions training, evaluation and inference call.

    `params` is the whole tree: the network's, plus the soft prompt at `encoder/prompt/prompt`
    when there is one, and what the run's `kind` of prompt keeps beside it (prompt/kinds.py:
    an attention run's module and sources, each input's prompt mixed from them; a multi-task
    run's task parts, each example's prompt composed for its task). Every verb also takes
    `prompt`, a per-example [B, P, E] override that lets one batch carry examples of several
    tasks, each with its own prompt.
    """

    module: T5
    eos_id: int = 1
    kind: kinds.PromptKind = kinds.SINGLE

    def _encode(
        self,
        params,
        encoder_input_tokens,
        prompt=None,
        enable_dropout=False,
        rngs=None,
        task_index=None,
    ):
        network, own = prompts.split_prompt(params)
        if prompt is None:
            network, prompt = self.kind.compose(
                params, network, own, encoder_input_tokens, task_index, self.module.config
            )
        encoded, mask = self.module.apply(
            {"params": network},
            encoder_input_tokens,
            enable_dropout,
            prompt,
            method=T5.encode,
            rngs=rngs or {},
        )
        return network, encoded, mask

    def _logits(
        self,
        params,
        encoder_input_tokens,
        decoder_input_tokens,
        prompt=None,
        enable_dropout=False,
        rngs=None,
        task_index=None,
    ):
        network, encoded, mask = self._encode(
            params, encoder_input_tokens, prompt, enable_dropout, rngs, task_index
        )
        return self.module.apply(
            {"params": network},
            encoded,
            mask,
            decoder_input_tokens,
            enable_dropout,
            method=T5.decode,
            rngs=rngs or {},
        )

    # -- training ------------------------------------------------------------------------------
    def loss(
        self, params, batch: dict, dropout_rng: jax.Array | None = None, z_loss: float = 1e-4
    ) -> tuple[jax.Array, dict]:
        """Token-mean cross entropy (plus T5X's z-loss) and metrics for one batch."""
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        tokens_in, task_index = batch["encoder_input_tokens"], batch.get("task_index")
        network, encoded, mask = self._encode(
            params, tokens_in, batch.get("prompt"), dropout_rng is not None, rngs, task_index
        )
        logits = self._decode(network, encoded, mask, batch["decoder_input_tokens"], rngs)
        targets = batch["decoder_target_tokens"]
        weights = batch.get("decoder_loss_weights", (targets > 0).astype(jnp.float32))
        nll = -token_log_likelihoods(logits, targets)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        per_token = nll + z_loss * jnp.square(log_z)
        tokens = jnp.maximum(weights.sum(), 1.0)
        loss = (per_token * weights).sum() / tokens
        correct = (jnp.argmax(logits, -1) == targets) * weights
        metrics = {
            "cross_entropy": (nll * weights).sum() / tokens,
            "token_accuracy": correct.sum() / tokens,
            "tokens": weights.sum(),
        }
        frozen = prompts.split_prompt(params)[0]
        if taught := self.kind.teacher(params, frozen, task_index, self.module.config):
            teacher_net, teacher, w = taught  # MPT: each task's prompt learns from it too
            t_encoded, _ = self.module.apply(
                {"params": teacher_net}, tokens_in, False, teacher, method=T5.encode
            )
            t_logits = self._decode(teacher_net, t_encoded, mask, batch["decoder_input_tokens"])
            kl, hidden = multitask.distillation(logits, t_logits, encoded, t_encoded, weights, mask)
            loss = loss + w[0] * kl + w[1] * hidden
            metrics.update(distill_kl=kl, distill_hidden=hidden)
        return loss, metrics

    def _decode(self, network, encoded, mask, decoder_input_tokens, rngs=None):
        return self.module.apply(
            {"params": network},
            encoded,
            mask,
            decoder_input_tokens,
            rngs is not None and "dropout" in rngs,
            method=T5.decode,
            rngs=rngs or {},
        )

    # -- scoring -------------------------------------------------------------------------------
    def score(self, params, encoder_input_tokens, decoder_target_tokens, prompt=None):
        """Log-likelihood of each target sequence given its input: [B, L], [B, T] -> [B]."""
        logits = self._logits(
            params, encoder_input_tokens, shift_right(decoder_target_tokens), prompt
        )
        ll = token_log_likelihoods(logits, decoder_target_tokens)
        return (ll * (decoder_target_tokens > 0)).sum(-1)

    def rank_classify(self, params, encoder_input_tokens, candidates, prompt=None):
        """Log-likelihood of every candidate target for every input: [B, L], [C, T] -> [B, C].

        The encoder runs once per input; the candidates are scored against the shared encoding.
        """
        network, encoded, mask = self._encode(params, encoder_input_tokens, prompt)
        b, c = encoder_input_tokens.shape[0], candidates.shape[0]
        rep = lambda x: jnp.repeat(x, c, axis=0)  # [B*C, ...], candidate-major within an input
        targets = jnp.tile(candidates, (b, 1))
        logits = self.module.apply(
            {"params": self.kind.repeat(network, c)},
            rep(encoded),
            rep(mask),
            shift_right(targets),
            method=T5.decode,
        )
        ll = (token_log_likelihoods(logits, targets) * (targets > 0)).sum(-1)
        return ll.reshape(b, c)

    # -- decoding ------------------------------------------------------------------------------
    def _init_cache(self, network, encoded, mask, max_length):
        decoder_inputs = jnp.zeros((encoded.shape[0], max_length), jnp.int32)
        shapes = jax.eval_shape(
            lambda: self.module.apply(
                {"params": network},
                encoded,
                mask,
                decoder_inputs,
                decode=True,
                method=T5.decode,
                mutable=["cache"],
            )[1]
        )
        flat = traverse_util.flatten_dict(shapes["cache"])
        fill = lambda k, v: (
            jnp.arange(v.shape[0], dtype=v.dtype)
            if k[-1] == "slots"
            else jnp.zeros(v.shape, v.dtype)
        )
        return traverse_util.unflatten_dict({k: fill(k, v) for k, v in flat.items()})

    def _step_fn(self, network, encoded, mask):
        def step(tokens, cache):
            logits, variables = self.module.apply(
                {"params": network, "cache": cache},
                encoded,
                mask,
                tokens,
                decode=True,
                method=T5.decode,
                mutable=["cache"],
            )
            return logits[:, -1], variables["cache"]

        return step

    @functools.partial(
        jax.jit, static_argnames=("self", "max_length", "temperature", "topk", "topp")
    )
    def predict(
        self,
        params,
        encoder_input_tokens: jax.Array,
        max_length: int,
        temperature: float = 0.0,
        topk: int = 0,
        rng: jax.Array | None = None,
        prompt=None,
        topp: float = 0.0,
    ):
        """Greedy (temperature 0) or sampled decoding (top-k, nucleus `topp`): [B, L] -> tokens
        [B, max_length]."""
        network, encoded, mask = self._encode(params, encoder_input_tokens, prompt)
        cache = self._init_cache(network, encoded, mask, max_length)
        return decoding.temperature_sample(
            self._step_fn(network, encoded, mask),
            cache,
            encoder_input_tokens.shape[0],
            max_length,
            rng,
            temperature,
            topk,
            self.eos_id,
            topp,
        )

    def decode(
        self, params, encoder_input_tokens, max_length: int, how, rng=None, prompt=None
    ) -> jax.Array:
        """Tokens [B, max_length] as `how` (a decoding.Decoding) decodes: greedy, one sample,
        or the best of beam search's `num_decodes` beams."""
        if how.method == "beam_search":
            seqs, _ = self.predict_beam(
                params, encoder_input_tokens, max_length, how.num_decodes, how.alpha, prompt
            )
            return seqs[:, 0]
        if how.method == "temperature_sample":
            return self.predict(
                params, encoder_input_tokens, max_length, how.temperature, how.topk, rng,
                prompt, how.topp,
            )  # fmt: skip
        return self.predict(params, encoder_input_tokens, max_length, prompt=prompt)

    @functools.partial(jax.jit, static_argnames=("self", "max_length", "beam_size", "alpha"))
    def predict_beam(
        self,
        params,
        encoder_input_tokens: jax.Array,
        max_length: int,
        beam_size: int = 4,
        alpha: float = 0.6,
        prompt=None,
    ):
        """Beam search: [B, L] -> (tokens [B, K, max_length], scores [B, K]), best first."""
        network, encoded, mask = self._encode(params, encoder_input_tokens, prompt)
        encoded, mask = (jnp.repeat(x, beam_size, axis=0) for x in (encoded, mask))
        network = self.kind.repeat(network, beam_size)
        cache = self._init_cache(network, encoded, mask, max_length)
        return decoding.beam_search(
            self._step_fn(network, encoded, mask),
            cache,
            encoder_input_tokens.shape[0],
            beam_size,
            max_length,
            alpha,
            self.eos_id,
        )


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading (batch) axis to `size` rows, so a short last batch reuses the compile."""
    return np.pad(x, [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def strip_after_eos(tokens: np.ndarray, eos_id: int = 1) -> list[list[int]]:
    """Per row, the ids before the first EOS (for detokenisation)."""
    rows = []
    for row in np.asarray(tokens).tolist():
        rows.append(row[: row.index(eos_id)] if eos_id in row else [t for t in row if t])
    return rows
