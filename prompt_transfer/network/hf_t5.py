"""Import Hugging Face T5 checkpoints (t5, t5-v1_1, t5-base-lm-adapt, flan-t5) as T5X trees.

Reads a local directory holding `config.json` and `model.safetensors` (single or sharded with
`model.safetensors.index.json`) or `pytorch_model.bin` (needs torch). Weight names map one to one:
HF stores Linear weights as [out, in], T5X kernels are [in, out]; HF keeps the relative position
table in block 0 as [buckets, heads], T5X as [heads, buckets].
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from prompt_transfer.base.errors import UserError
from prompt_transfer.network.t5 import T5Config

# HF activation names -> ours. HF's "gelu" is the exact erf form; "gelu_new" is the tanh form
# that T5 1.1 uses (and that HF substitutes for "gated-gelu").
_HF_ACTIVATIONS = {"relu": "relu", "gelu_new": "gelu", "gelu": "gelu_exact", "silu": "silu"}


class HFCheckpointError(UserError):
    pass


def config_from_hf(hf: dict) -> T5Config:
    """T5Config from a HF `config.json` dict."""
    proj = hf.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = proj.split("-")[-1]
    act = "gelu_new" if proj == "gated-gelu" else act
    if act not in _HF_ACTIVATIONS:
        raise HFCheckpointError(
            f"config.json feed_forward_proj={proj!r} is not supported; "
            f"use one of relu, gated-gelu, gated-silu, gelu"
        )
    acts = (_HF_ACTIVATIONS[act], "linear") if gated else (_HF_ACTIVATIONS[act],)
    return T5Config(
        vocab_size=hf["vocab_size"],
        emb_dim=hf["d_model"],
        num_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        mlp_dim=hf["d_ff"],
        num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        mlp_activations=acts,
        logits_via_embedding=False,  # decided by `convert_state`, which sees the weights
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
    )


def _scales_decoder_output(hf: dict) -> bool:
    # transformers < 5 wrote only `tie_word_embeddings` (False for T5 1.1); 5.x writes both.
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def read_hf_state(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a HF checkpoint directory as float32 NumPy arrays, by HF name."""
    d = Path(directory)
    if (d / "model.safetensors").exists() or (d / "model.safetensors.index.json").exists():
        from safetensors.numpy import load_file

        index = d / "model.safetensors.index.json"
        files = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.exists()
            else ["model.safetensors"]
        )
        state = {}
        for f in files:
            if not (d / f).exists():
                raise HFCheckpointError(f"missing weight file {d / f} named by {index}")
            try:
                state.update(load_file(str(d / f)))
            except Exception as e:  # safetensors raises its own error types
                raise HFCheckpointError(f"cannot read {d / f}: {e}") from e
        return {k: np.asarray(v, np.float32) for k, v in state.items()}
    if (d / "pytorch_model.bin").exists():
        try:
            import torch
        except ImportError as e:
            raise HFCheckpointError(
                f"{d / 'pytorch_model.bin'} needs torch to read: pip install -e '.[peers]'"
            ) from e
        try:
            state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise HFCheckpointError(f"cannot read {d / 'pytorch_model.bin'}: {e}") from e
        return {k: v.float().numpy() for k, v in state.items()}
    raise HFCheckpointError(
        f"no model.safetensors or pytorch_model.bin in {d}; point at a HF T5 model directory"
    )


def _linear(state, name):
    try:
        return state[name].T
    except KeyError:
        raise HFCheckpointError(f"HF checkpoint lacks {name}") from None


def _attention(state, prefix):
    return {
        n: {"kernel": _linear(state, f"{prefix}.{hf}.weight")}
        for n, hf in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
    }


def _mlp(state, prefix, gated):
    names = ("wi_0", "wi_1") if gated else ("wi",)
    mlp = {n: {"kernel": _linear(state, f"{prefix}.DenseReluDense.{n}.weight")} for n in names}
    mlp["wo"] = {"kernel": _linear(state, f"{prefix}.DenseReluDense.wo.weight")}
    return mlp


def _scale(state, name):
    if name not in state:
        raise HFCheckpointError(f"HF checkpoint lacks {name}")
    return {"scale": state[name]}


def convert_state(state: dict[str, np.ndarray], hf_config: dict) -> tuple[T5Config, dict]:
    """(T5Config, T5X parameter tree) from HF tensors and config."""
    cfg = config_from_hf(hf_config)
    gated = len(cfg.mlp_activations) > 1
    enc, dec = {}, {}
    for i in range(cfg.num_encoder_layers):
        p = f"encoder.block.{i}.layer"
        enc[f"layers_{i}"] = {
            "pre_attention_layer_norm": _scale(state, f"{p}.0.layer_norm.weight"),
            "attention": _attention(state, f"{p}.0.SelfAttention"),
            "pre_mlp_layer_norm": _scale(state, f"{p}.1.layer_norm.weight"),
            "mlp": _mlp(state, f"{p}.1", gated),
        }
    for i in range(cfg.num_decoder_layers):
        p = f"decoder.block.{i}.layer"
        dec[f"layers_{i}"] = {
            "pre_self_attention_layer_norm": _scale(state, f"{p}.0.layer_norm.weight"),
            "self_attention": _attention(state, f"{p}.0.SelfAttention"),
            "pre_cross_attention_layer_norm": _scale(state, f"{p}.1.layer_norm.weight"),
            "encoder_decoder_attention": _attention(state, f"{p}.1.EncDecAttention"),
            "pre_mlp_layer_norm": _scale(state, f"{p}.2.layer_norm.weight"),
            "mlp": _mlp(state, f"{p}.2", gated),
        }
    bias = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    enc["relpos_bias"] = {"rel_embedding": _linear(state, f"encoder.{bias}")}
    dec["relpos_bias"] = {"rel_embedding": _linear(state, f"decoder.{bias}")}
    enc["encoder_norm"] = _scale(state, "encoder.final_layer_norm.weight")
    dec["decoder_norm"] = _scale(state, "decoder.final_layer_norm.weight")

    shared = state.get("shared.weight")
    if shared is None:
        raise HFCheckpointError("HF checkpoint lacks shared.weight")
    head = state.get("lm_head.weight", shared)
    scaled = _scales_decoder_output(hf_config)
    if scaled and (head is shared or np.array_equal(head, shared)):
        cfg = dataclasses.replace(cfg, logits_via_embedding=True)  # T5 1.0: tied and rescaled
    else:
        kernel = head.T
        if scaled:  # untied yet rescaled: fold the 1/sqrt(E) into the kernel
            kernel = kernel * np.float32(cfg.emb_dim**-0.5)
        dec["logits_dense"] = {"kernel": np.ascontiguousarray(kernel)}
    params = {"token_embedder": {"embedding": shared}, "encoder": enc, "decoder": dec}
    return cfg, params


def load_hf_t5(directory: str | Path) -> tuple[T5Config, dict]:
    """(T5Config, T5X parameter tree of float32 NumPy arrays) from a local HF T5 directory."""
    d = Path(directory)
    if not (d / "config.json").exists():
        raise HFCheckpointError(f"no config.json in {d}; point at a HF T5 model directory")
    hf_config = json.loads((d / "config.json").read_text())
    return convert_state(read_hf_state(d), hf_config)
