"""Prompt-only checkpoints against full ones: bytes on disk and seconds to save.

Not a test: it builds a random network of `--size`, then saves through the trainer's own
CheckpointStore (orbax) the state a prompt-tuning run saves (the prompt and its Adafactor
slots) and the state a model-tuning run saves (every parameter and its slots), and prints one
JSON line per kind, appended to benchmarks/checkpoint_size.jsonl.

    .venv/bin/python benchmarks/checkpoint_size.py --size base
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax

from prompt_transfer.configure import gin_files
from prompt_transfer.network import partitioning, t5
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import saving, train_state, weights

RESULTS = Path(__file__).with_name("checkpoint_size.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--prompt-length", type=int, default=100)
    args = parser.parse_args()
    config = gin_files.read_model_config(args.size)
    mesh = partitioning.make_mesh(1)
    network = weights.frozen_network(config, None, mesh, seed=0)
    # Random, as a trained prompt is: zeros would compress to nothing.
    prompt = jax.random.normal(jax.random.PRNGKey(0), (args.prompt_length, config.emb_dim))
    optimizer = train_state.make_optimizer(train_state.OptimizerConfig())
    for kind, pattern in (("prompt only", prompts.PROMPT_PATH), ("full", ".*")):
        trainable, _, _ = weights.place(network, prompt, pattern, mesh)
        state = train_state.create_state(trainable, optimizer, mesh)
        with tempfile.TemporaryDirectory() as folder:
            store = saving.CheckpointStore(folder, keep=1)
            start = time.perf_counter()
            store.save(state, 0)
            seconds = time.perf_counter() - start
            store.close()
            size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        row = {
            "size": args.size,
            "checkpoint": kind,
            "trainable_params": t5.param_count(state.trainable),
            "bytes": size,
            "save_seconds": round(seconds, 3),
            "device": jax.devices()[0].device_kind,
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(row), flush=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")
        del state, trainable


if __name__ == "__main__":
    main()
