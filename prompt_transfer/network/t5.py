"""Frozen T5 encoder-decoder in flax.linen with T5X's parameter names and logical axes.

The tree matches T5X's example network (`t5x/examples/t5/network.py`), so T5X checkpoints map
one to one: `token_embedder/embedding`, `encoder/layers_N/attention/{query,key,value,out}/kernel`
(kernels stored 2-D, heads joined), `encoder/relpos_bias/rel_embedding`, `decoder/logits_dense`.

Legend: B batch, L encoder length, T decoder length, E embed, H heads, D head dim, M mlp, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_transfer.base import settings
from prompt_transfer.base.settings import setting
from prompt_transfer.network import partitioning as pt
from prompt_transfer.network import prompt_slots

NEG_INF = -1e10  # T5X's mask value: large but finite so fully-masked rows stay NaN-free.

_ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "gelu": nn.gelu,  # tanh approximation, as T5 1.1 (HF "gelu_new")
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "silu": nn.silu,
    "linear": lambda x: x,
}


_REMAT_POLICIES = {
    "none": None,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def _layer_class(cls, cfg, static_argnums: tuple[int, ...]):
    """`cls`, rematerialised by `cfg.remat_policy` (the parameter tree is unchanged);
    `static_argnums` count `self` as 0."""
    if cfg.remat_policy == "none":
        return cls
    return nn.remat(cls, policy=_REMAT_POLICIES[cfg.remat_policy], static_argnums=static_argnums)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture of a T5 encoder-decoder (T5X `network.T5Config` field names).

    `dtype` is the activation dtype; parameters are always stored in float32.
    `mlp_activations=("gelu", "linear")` is T5 1.1's gated-GELU; `("relu",)` is T5 1.0.
    """

    vocab_size: int = setting(32128, least=1)
    emb_dim: int = setting(512, least=1)
    num_heads: int = setting(6, least=1)
    head_dim: int = setting(64, least=1)
    mlp_dim: int = setting(1024, least=1)
    num_encoder_layers: int = setting(8, least=1)
    num_decoder_layers: int = setting(8, least=1)
    mlp_activations: tuple[str, ...] = setting(("gelu", "linear"), one_of=tuple(_ACTIVATIONS))
    logits_via_embedding: bool = False
    relative_attention_num_buckets: int = setting(32, least=1)
    relative_attention_max_distance: int = setting(128, least=1)
    dropout_rate: float = setting(0.0, least=0, below=1, macro="DROPOUT_RATE")
    dtype: str = setting("float32", one_of=("float32", "bfloat16"), macro="ACTIVATION_DTYPE")
    float32_attention_logits: bool = True
    layer_norm_epsilon: float = setting(1e-6, above=0)
    # REMAT_POLICY (T5X's names): what a training step keeps of each layer for the backward
    # pass. 'none' keeps everything; 'minimal' keeps the weight products and recomputes the
    # rest; 'full' keeps only the layer's input. Less memory for more compute; outputs equal.
    remat_policy: str = setting("none", one_of=tuple(_REMAT_POLICIES), macro="REMAT_POLICY")

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        settings.check(self)


def _param(module: nn.Module, name: str, init, shape, axes):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _constrain(x, axes):
    """Activation sharding hint; a no-op outside `partitioning.activation_rules`."""
    return pt.constrain(x, axes)


class Dense(nn.Module):
    """T5X DenseGeneral over the last axis, kernel [in, out] in float32."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = _param(
            self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.kernel_axes
        )
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class Embed(nn.Module):
    """Token embedding table [V, E], also used to compute tied logits (`attend`)."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = _param(
            self,
            "embedding",
            nn.initializers.normal(stddev=1.0),
            (self.num_embeddings, self.features),
            (pt.VOCAB, pt.EMBED),
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: [B, L] int -> [B, L, E]."""
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, query: jax.Array) -> jax.Array:
        """query: [B, T, E] -> logits [B, T, V] in float32."""
        return jnp.dot(query.astype(jnp.float32), self.embedding.T)


class LayerNorm(nn.Module):
    """T5's RMS norm: no mean subtraction, no bias."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), (pt.EMBED,))
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale).astype(self.dtype)


def relative_position_bucket(
    relative_position, bidirectional: bool, num_buckets: int, max_distance: int
):
    """T5's bucketing of key-minus-query offsets: exact for small ones, log-spaced beyond."""
    n = -relative_position
    ret = jnp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(n.dtype) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(n.dtype)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, q_pos: jax.Array, k_pos: jax.Array, bidirectional: bool) -> jax.Array:
        """q_pos: [Lq], k_pos: [Lk] int positions -> bias [1, H, Lq, Lk]."""
        buckets = relative_position_bucket(
            k_pos[None, :] - q_pos[:, None], bidirectional, self.num_buckets, self.max_distance
        )
        table = _param(
            self,
            "rel_embedding",
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
            (self.num_heads, self.num_buckets),
            (pt.HEADS, pt.RELPOS_BUCKETS),
        )
        return jnp.take(table, buckets, axis=1)[None].astype(self.dtype)  # [1, H, Lq, Lk]


def mask_to_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
    return jnp.where(mask, 0.0, NEG_INF).astype(dtype)


class MultiHeadDotProductAttention(nn.Module):
    """T5 attention: no 1/sqrt(D) on the logits (T5 folds it into the query init)."""

    num_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0
    float32_logits: bool = True

    @nn.compact
    def __call__(
        self,
        inputs_q,
        inputs_kv,
        bias,
        deterministic: bool,
        decode: bool = False,
        decode_position: jax.Array | None = None,
    ):
        """inputs_q: [B, Lq, E], inputs_kv: [B, Lk, E], bias: broadcastable to [B, H, Lq, Lk].

        With `decode` (self-attention while decoding) the keys and values live in the `cache`
        collection: a first full-length call sizes it; a call with `decode_position` (Lq == 1)
        writes the step's key and value there and attends over the whole cache.
        """
        hd = self.num_heads * self.head_dim
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        query_init = lambda *a: init(*a) / math.sqrt(self.head_dim)
        proj = lambda name, kinit, x: Dense(
            hd, (pt.EMBED, pt.JOINED_KV), self.dtype, kinit, name=name
        )(x)
        b = inputs_q.shape[0]
        q = proj("query", query_init, inputs_q).reshape(b, -1, self.num_heads, self.head_dim)
        k = proj("key", init, inputs_kv).reshape(b, -1, self.num_heads, self.head_dim)
        v = proj("value", init, inputs_kv).reshape(b, -1, self.num_heads, self.head_dim)

        if decode:
            cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
            cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
            if decode_position is not None:
                at = (0, decode_position, 0, 0)
                k = cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, at)
                v = cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, at)

        if self.has_variable("params", prompt_slots.DEEP_PREFIX):  # a deep prompt's own keys/values
            k, v, bias = prompt_slots.join_prefix(
                self.get_variable("params", prompt_slots.DEEP_PREFIX), k, v, bias
            )

        if self.float32_logits:
            q, k = q.astype(jnp.float32), k.astype(jnp.float32)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias.astype(q.dtype)  # [B, H, Lq, Lk]
        weights = jax.nn.softmax(logits).astype(self.dtype)
        if not deterministic and self.dropout_rate > 0:
            keep = jax.random.bernoulli(
                self.make_rng("dropout"), 1 - self.dropout_rate, weights.shape
            )
            weights = weights * keep / (1 - self.dropout_rate)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(self.dtype))  # [B, Lq, H, D]
        return Dense(inputs_q.shape[-1], (pt.JOINED_KV, pt.EMBED), self.dtype, init, name="out")(
            out.reshape(b, -1, hd)
        )


class MlpBlock(nn.Module):
    intermediate_dim: int
    activations: tuple[str, ...]
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """x: [B, L, E] -> [B, L, E]; gated when several activations are given (wi_0, wi_1)."""
        h = 1.0
        for i, act in enumerate(self.activations):
            name = f"wi_{i}" if len(self.activations) > 1 else "wi"
            h = h * _ACTIVATIONS[act](
                Dense(self.intermediate_dim, (pt.EMBED, pt.MLP), self.dtype, name=name)(x)
            )
        h = _constrain(h, (pt.BATCH, pt.LENGTH, pt.MLP))
        h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
        return Dense(x.shape[-1], (pt.MLP, pt.EMBED), self.dtype, name="wo")(h)


def _dtype(config: T5Config):
    return jnp.dtype(config.dtype)


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, bias, deterministic):
        cfg, dt = self.config, _dtype(self.config)
        drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        h = LayerNorm(cfg.layer_norm_epsilon, dt, name="pre_attention_layer_norm")(x)
        h = MultiHeadDotProductAttention(
            cfg.num_heads,
            cfg.head_dim,
            dt,
            cfg.dropout_rate,
            cfg.float32_attention_logits,
            name="attention",
        )(h, h, bias, deterministic)
        x = x + drop(h, deterministic=deterministic)
        h = LayerNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(x)
        h = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, dt, cfg.dropout_rate, name="mlp")(
            h, deterministic
        )
        return _constrain(x + drop(h, deterministic=deterministic), (pt.BATCH, pt.LENGTH, pt.EMBED))


class DecoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self, y, encoded, self_bias, cross_bias, deterministic, decode=False, decode_position=None
    ):
        cfg, dt = self.config, _dtype(self.config)
        drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        attention = lambda name: MultiHeadDotProductAttention(
            cfg.num_heads,
            cfg.head_dim,
            dt,
            cfg.dropout_rate,
            cfg.float32_attention_logits,
            name=name,
        )
        h = LayerNorm(cfg.layer_norm_epsilon, dt, name="pre_self_attention_layer_norm")(y)
        h = attention("self_attention")(h, h, self_bias, deterministic, decode, decode_position)
        y = y + drop(h, deterministic=deterministic)
        h = LayerNorm(cfg.layer_norm_epsilon, dt, name="pre_cross_attention_layer_norm")(y)
        h = attention("encoder_decoder_attention")(h, encoded, cross_bias, deterministic)
        y = y + drop(h, deterministic=deterministic)
        h = LayerNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(y)
        h = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, dt, cfg.dropout_rate, name="mlp")(
            h, deterministic
        )
        return _constrain(y + drop(h, deterministic=deterministic), (pt.BATCH, pt.LENGTH, pt.EMBED))


def _relpos(cfg: T5Config) -> RelativePositionBiases:
    return RelativePositionBiases(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        _dtype(cfg),
        name="relpos_bias",
    )


class Encoder(nn.Module):
    """Embeds tokens, joins the soft prompt (if any) to them, runs the stack."""

    config: T5Config
    shared_embedding: Embed

    @nn.compact
    def __call__(self, tokens, deterministic: bool, prompt=None, prompt_position: str = "prefix"):
        """tokens: [B, L], prompt: [P, E] or per-example [B, P, E].

        Returns (encoded [B, L', E], mask [B, L'] bool), L' = P + L: the mask covers the prompt,
        so the encoder self-attention and the encoder-decoder attention both see it.
        """
        cfg = self.config
        x, mask = self.shared_embedding(tokens), tokens > 0
        if prompt is not None:
            x, mask = prompt_slots.join_prompt(x, mask, prompt.astype(x.dtype), prompt_position)
        x = _constrain(x, (pt.BATCH, pt.LENGTH, pt.EMBED))
        pos = jnp.arange(x.shape[1])
        bias = _relpos(cfg)(pos, pos, bidirectional=True) + mask_to_bias(mask[:, None, None, :])
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        layer = _layer_class(EncoderLayer, cfg, static_argnums=(3,))  # deterministic
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, name=f"layers_{i}")(x, bias, deterministic)
        x = LayerNorm(cfg.layer_norm_epsilon, _dtype(cfg), name="encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic), mask


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: Embed

    @nn.compact
    def __call__(
        self, encoded, encoder_mask, decoder_input_tokens, deterministic: bool, decode: bool = False
    ):
        """encoded: [B, L, E], encoder_mask: [B, L], decoder_input_tokens: [B, T] -> [B, T, V].

        With `decode=True` the first call (full length T) sizes the `cache` collection; each later
        call takes one token per row ([B, 1]) and advances the cache by one position.
        """
        cfg = self.config
        decode_position = None
        if decode:
            stepping = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            slots = self.variable(
                "cache", "slots", lambda: jnp.arange(decoder_input_tokens.shape[1])
            )
            if stepping:
                decode_position = position.value
                position.value = decode_position + 1
        if decode_position is None:
            q_pos = k_pos = jnp.arange(decoder_input_tokens.shape[1])
        else:
            q_pos, k_pos = decode_position[None], slots.value
        self_bias = _relpos(cfg)(q_pos, k_pos, bidirectional=False) + mask_to_bias(
            k_pos[None, None, None, :] <= q_pos[None, None, :, None]
        )
        cross_bias = mask_to_bias(encoder_mask[:, None, None, :])

        y = self.shared_embedding(decoder_input_tokens)
        y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        # Decoding keeps a cache and has no backward pass: never rematerialised.
        layer = DecoderLayer if decode else _layer_class(DecoderLayer, cfg, (5, 6))
        for i in range(cfg.num_decoder_layers):
            y = layer(cfg, name=f"layers_{i}")(
                y, encoded, self_bias, cross_bias, deterministic, decode, decode_position
            )
        y = LayerNorm(cfg.layer_norm_epsilon, _dtype(cfg), name="decoder_norm")(y)
        y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        if cfg.logits_via_embedding:
            # T5 1.0 ties the output projection to the embedding and rescales by 1/sqrt(E).
            logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(jnp.float32)
        else:
            logits = Dense(
                cfg.vocab_size,
                (pt.EMBED, pt.VOCAB),
                jnp.float32,
                nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                name="logits_dense",
            )(y)
        return _constrain(logits, (pt.BATCH, pt.LENGTH, pt.VOCAB))


class T5(nn.Module):
    """The encoder-decoder. `encode` and `decode` are usable separately (`apply(method=...)`).

    A soft prompt is an input, not a parameter of this module: the frozen network's tree stays
    exactly T5X's, and a batch may carry one prompt per example (mixed-task inference).
    """

    config: T5Config
    prompt_position: str = "prefix"

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, _dtype(cfg))
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens, enable_dropout: bool = False, prompt=None):
        """[B, L], prompt [P, E] | [B, P, E] | None -> (encoded [B, L', E], mask [B, L'])."""
        return self.encoder(encoder_input_tokens, not enable_dropout, prompt, self.prompt_position)

    def decode(
        self,
        encoded,
        encoder_mask,
        decoder_input_tokens,
        enable_dropout: bool = False,
        decode: bool = False,
    ):
        return self.decoder(encoded, encoder_mask, decoder_input_tokens, not enable_dropout, decode)

    def __call__(
        self, encoder_input_tokens, decoder_input_tokens, enable_dropout: bool = False, prompt=None
    ):
        """[B, L], [B, T] -> logits [B, T, V] (float32)."""
        encoded, mask = self.encode(encoder_input_tokens, enable_dropout, prompt)
        return self.decode(encoded, mask, decoder_input_tokens, enable_dropout)


def abstract_params(module: nn.Module, input_length: int = 8, target_length: int = 8):
    """Boxed (logically annotated) parameter shapes, computed without allocating anything.

    Traced once per module (equal modules are equal Flax dataclasses) and lengths: tracing the
    tiny model's init took 0.3 s, and a run asks several times (its network, its paths, its
    placement plan); each caller gets its own copy of the tree."""
    shapes = _abstract_params(module, input_length, target_length)
    return jax.tree.map(lambda x: x, shapes, is_leaf=lambda x: isinstance(x, nn.Partitioned))


@functools.lru_cache(maxsize=16)
def _abstract_params(module: nn.Module, input_length: int, target_length: int):
    tokens = jnp.ones((1, input_length), jnp.int32)
    targets = jnp.ones((1, target_length), jnp.int32)
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, targets))["params"]


def param_count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
