"""Prompts as Hugging Face PEFT prompt-tuning adapters, out and in.

A PEFT prompt-tuning adapter is a directory with `adapter_config.json` (`peft_type`
PROMPT_TUNING) and `adapter_model.safetensors`, whose one tensor `prompt_embeddings` holds
`num_virtual_tokens * num_transformer_submodules` rows of `token_dim`. For a seq2seq model PEFT
prepends the first `num_virtual_tokens` rows to the encoder's input embeddings, as this project
does with its prompt; with two submodules (PEFT's default for SEQ_2_SEQ_LM) it also prepends the
rest to the decoder's, which this project's model does not do. So adapters are written with
one submodule, and an adapter that prompts the decoder too is refused rather than half-read.
Only safetensors are read: a pickled `adapter_model.bin` can run code when loaded.
"""

from __future__ import annotations

import json
import os

import numpy as np

from prompt_transfer.base import files, paths
from prompt_transfer.base.errors import UserError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
TENSOR = "prompt_embeddings"


class AdapterError(UserError):
    pass


def is_adapter(path: str | os.PathLike) -> bool:
    return (paths.path(path) / CONFIG_FILE).is_file()


def write_adapter(prompt, directory: str | os.PathLike, base_model: str | None = None):
    """Write `prompt` [P, E] as a PEFT prompt-tuning adapter for a seq2seq model (a new
    directory, written whole or not at all); `base_model` goes to base_model_name_or_path."""
    from safetensors.numpy import save

    prompt = np.ascontiguousarray(prompt, np.float32)
    if prompt.ndim != 2:
        raise AdapterError(f"a PEFT prompt adapter holds a [P, E] prompt; got shape {prompt.shape}")
    directory = paths.path(directory)
    if directory.exists():
        raise AdapterError(f"{directory} already exists; choose a new --output or remove it")
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM",
        "num_virtual_tokens": prompt.shape[0],
        "token_dim": prompt.shape[1],
        "num_transformer_submodules": 1,  # the encoder only, as in this project
        "prompt_tuning_init": "RANDOM",
        "base_model_name_or_path": base_model,
        "inference_mode": True,
    }
    weights = save({TENSOR: prompt}, metadata={"format": "pt"})
    if paths.is_remote(directory):  # the weights first: the config makes it an adapter
        files.atomic_write_bytes(directory / WEIGHTS_FILE, weights)
        files.atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2))
        return directory
    with files.atomic_directory(paths.absolute(directory)) as tmp:
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def read_adapter(directory: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(prompt [P, E], adapter config) of a PEFT prompt-tuning adapter directory; other PEFT
    types, pickled weights and adapters that prompt the decoder too are refused."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    directory = paths.path(directory)
    if not is_adapter(directory):
        raise AdapterError(f"{directory} holds no {CONFIG_FILE}; it is not a PEFT adapter")
    config = json.loads((directory / CONFIG_FILE).read_text())
    kind = config.get("peft_type")
    if kind != "PROMPT_TUNING":
        raise AdapterError(
            f"{directory} is a PEFT {kind} adapter; only PROMPT_TUNING adapters carry a soft "
            "prompt that this project can use"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        pickled = " (only a pickled adapter_model.bin, never loaded here)" * (
            (directory / PICKLE_FILE).exists()
        )
        raise AdapterError(
            f"{directory} has no {WEIGHTS_FILE}{pickled}; save the adapter with "
            "save_pretrained(..., safe_serialization=True)"
        )
    try:
        tensors = load(weights.read_bytes())
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{weights} is not a readable safetensors file: {e}") from e
    if TENSOR not in tensors:
        raise AdapterError(f"{weights} holds no {TENSOR!r} tensor (it has {sorted(tensors)})")
    prompt = np.asarray(tensors[TENSOR], np.float32)
    tokens = int(config.get("num_virtual_tokens") or 0)
    submodules = config.get("num_transformer_submodules")
    if submodules is None:  # PEFT's default
        submodules = 2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1
    if submodules != 1:
        raise AdapterError(
            f"{directory} prompts the decoder too (num_transformer_submodules={submodules}); "
            "this project prompts the encoder only: train the adapter with "
            "PromptTuningConfig(num_transformer_submodules=1)"
        )
    if prompt.ndim != 2 or prompt.shape[0] != tokens:
        raise AdapterError(
            f"{weights}: {TENSOR} has shape {prompt.shape}, but the config says "
            f"num_virtual_tokens={tokens}"
        )
    return prompt, config
