"""Train-step throughput: prompt tuning (only the prompt differentiated) versus model tuning.

Not a test: it measures, prints one JSON line per configuration, and appends it to
benchmarks/results.jsonl with the device it ran on. Synthetic batches (random token ids) keep
it independent of data pipelines.

    .venv/bin/python benchmarks/train_step.py --size offline_small --batch 32 --steps 20
    .venv/bin/python benchmarks/train_step.py --size base --batch 32 --dtype bfloat16  # on a GPU

What it shows: the prompt makes the encoder's input P positions longer, so compare prompt
tuning with model tuning at the same encoder length (the third row). There, differentiating only
the prompt should be faster than differentiating everything, and the optimizer state is
O(prompt) instead of O(model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from prompt_transfer.configure import gin_files
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning, t5
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import train_state, weights


def build(
    size: str,
    batch: int,
    lengths: tuple[int, int],
    pattern: str,
    prompt_length: int,
    dtype: str,
    opt: train_state.OptimizerConfig | None = None,
    zeros: bool = False,
) -> dict:
    """The trainer's jitted step on a random network (`zeros`: a network of zeros, for what
    needs its shapes alone, such as XLA's cost analysis: the random init of `small` takes ~50 s
    on 2 CPU cores at the tests' XLA flags) and one synthetic batch on the device.

    Returns the step, its arguments (`state`, `frozen`, `batch`, `rng`), the model and its
    config."""
    # Dropout off: its random bits are work of their own (threefry on a CPU), and the peers'
    # side runs without it.
    config = dataclasses.replace(gin_files.read_model_config(size), dtype=dtype, dropout_rate=0.0)
    mesh = partitioning.make_mesh(1)
    if zeros:
        module = t5.T5(config)
        abstract = t5.abstract_params(module)
        network = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nn.unbox(abstract))
    else:
        module, abstract, network = weights.frozen_network(config, None, mesh, seed=0)
    params = network
    if prompt_length:
        abstract = prompts.with_prompt(
            abstract, prompts.abstract_prompt(prompt_length, config.emb_dim)
        )
        params = prompts.with_prompt(network, jnp.zeros((prompt_length, config.emb_dim)))
    shardings = partitioning.param_shardings(abstract, mesh)
    trainable, frozen = train_state.split_trainable(jax.device_put(params, shardings), pattern)
    opt = opt or train_state.OptimizerConfig()
    tx = train_state.make_optimizer(opt)
    state = train_state.create_state(trainable, tx, mesh)
    rng = np.random.default_rng(0)
    targets = rng.integers(2, config.vocab_size, (batch, lengths[1])).astype(np.int32)
    batch_arrays = {
        "encoder_input_tokens": rng.integers(2, config.vocab_size, (batch, lengths[0])).astype(
            np.int32
        ),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
    }
    model = EncoderDecoderModel(module)
    step, batch_shardings = train_state.compile_train_step(
        model,
        tx,
        train_state.learning_rate_schedule(opt),
        1,
        mesh,
        jax.tree.map(lambda x: x.sharding, state),
        train_state.split_trainable(shardings, train_state.trainable_regex(trainable))[1],
        batch_arrays,
    )
    return {
        "step": step,
        "state": state,
        "frozen": frozen,
        "batch": jax.device_put(batch_arrays, batch_shardings),
        "rng": jax.random.PRNGKey(0),
        "config": config,
        "model": model,
        "trainable": trainable,
    }


def shape_arguments(parser: argparse.ArgumentParser, batch: int = 32) -> None:
    """The flags that pick a prompt-tuning step's shape: --size --batch --inputs --targets
    --prompt-length --dtype."""
    parser.add_argument("--size", default="offline_small")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))


def build_prompt_step(args, opt: train_state.OptimizerConfig) -> dict:
    """`build` for a prompt-tuning run of the shape `shape_arguments` parsed."""
    return build(
        args.size,
        args.batch,
        (args.inputs, args.targets),
        prompts.PROMPT_PATH,
        args.prompt_length,
        args.dtype,
        opt,
    )


def xla_flops(step, *args) -> float:
    """FLOPs of one call of the jitted `step` on `args`, by XLA's cost analysis of the compiled
    HLO (one device's share when the step is sharded)."""
    analysis = step.lower(*args).compile().cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    return (analysis or {}).get("flops", 0.0)


def seconds_per_step(step, state, args: tuple, steps: int, warmup: int = 1):
    """Seconds per call of `step(state, *args) -> (state, metrics)` after `warmup` calls (the
    first compiles), the state threaded through; one host sync at each end."""
    for _ in range(warmup):
        state, metrics = step(state, *args)
    jax.block_until_ready(metrics["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, *args)
    jax.block_until_ready(metrics["loss"])
    return (time.perf_counter() - start) / steps, state


def measure(
    size: str,
    batch: int,
    lengths: tuple[int, int],
    steps: int,
    pattern: str,
    prompt_length: int,
    dtype: str,
) -> dict:
    built = build(size, batch, lengths, pattern, prompt_length, dtype)
    step, state, frozen = built["step"], built["state"], built["frozen"]
    device_batch, key = built["batch"], built["rng"]
    trainable = built["trainable"]
    seconds, state = seconds_per_step(step, state, (frozen, device_batch, key), steps)
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
    return {
        "size": size,
        "trainable": pattern,
        "batch": batch,
        "lengths": list(lengths),
        "dtype": dtype,
        "steps_per_second": round(1 / seconds, 3),
        "tokens_per_second": round(batch * sum(lengths) / seconds),
        "trainable_params": t5.param_count(trainable),
        "optimizer_state_bytes": opt_bytes,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="offline_small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    results = Path(__file__).with_name("results.jsonl")
    runs = (
        (prompts.PROMPT_PATH, args.prompt_length, args.inputs),
        (".*", 0, args.inputs),
        (".*", 0, args.inputs + args.prompt_length),  # same encoder length as the prompt run
    )
    for pattern, prompt_length, inputs in runs:
        row = measure(
            args.size,
            args.batch,
            (inputs, args.targets),
            args.steps,
            pattern,
            prompt_length,
            args.dtype,
        )
        print(json.dumps(row), flush=True)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
