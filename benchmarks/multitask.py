"""A multi-task prompt run (K tasks, each example with its task's composed prompt) against a
single-task prompt run of the same shape: examples per second of the train step and of the
data stream.

Not a test: it measures, prints one JSON line per configuration, and appends them to
benchmarks/multitask.jsonl with the device they ran on. Issue 25's target: a multi-task run of
K tasks trains at >= 0.9x the examples per second of one single-task run.

    .venv/bin/python benchmarks/multitask.py --size offline_small --batch 16 --inputs 64 \\
        --prompt-length 20 --deep --ks 2 4
    python benchmarks/multitask.py --size base --batch 32 --inputs 256 --dtype bfloat16  # GPU

Each row compares with a single-task prompt as long as each task's composed prompt (concat's
is PROMPT_LENGTH + its own positions). The step is the trainer's own (weights.place,
train_state.compile_train_step) on a random network and one batch; the stream is
batches.BatchStream over offline tasks (a SeqIO mixture with `task_index` against one task), which
needs the offline suite (`prompt-transfer prepare-offline`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
import train_step

from prompt_transfer.base.tf_import import import_seqio
from prompt_transfer.configure import gin_files
from prompt_transfer.data import batches
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import partitioning
from prompt_transfer.prompt import multitask, prompts
from prompt_transfer.trainer import train_state, weights

RESULTS = Path(__file__).with_name("multitask.jsonl")
STREAM_TASKS = (
    "offline_sentiment_apple",
    "offline_sentiment_coachella",
    "offline_sentiment_airline",
    "offline_tweet_domain",
)


def step_seconds(args, layout: multitask.MultitaskPrompt | None, k: int) -> float:
    """Seconds per train step of a single-task run (`layout` None) or a K-task one."""
    config = dataclasses.replace(
        gin_files.read_model_config(args.size), dtype=args.dtype, dropout_rate=0.0
    )
    mesh = partitioning.make_mesh(1)
    network = weights.frozen_network(config, None, mesh, seed=0)
    start = (
        np.random.default_rng(0)
        .normal(
            size=(
                args.prompt_length,
                config.emb_dim + (prompts.deep_width(config) if args.deep else 0),
            )
        )
        .astype(np.float32)
    )
    regex, pieces = f"{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}", None
    if layout is not None:
        regex = multitask.TRAINABLE
        own = lambda j: start[: layout.task_length]  # noqa: E731
        pieces = multitask.start(layout, [f"task_{j}" for j in range(k)], start, own)
    trainable, fixed, fixed_shardings = weights.place(network, start, regex, mesh, pieces)
    opt = train_state.OptimizerConfig(name="adam", learning_rate=0.03)
    tx = train_state.make_optimizer(opt)
    state = train_state.create_state(trainable, tx, mesh)
    rng = np.random.default_rng(0)
    targets = rng.integers(2, config.vocab_size, (args.batch, args.targets)).astype(np.int32)
    batch = {
        "encoder_input_tokens": rng.integers(
            2, config.vocab_size, (args.batch, args.inputs)
        ).astype(np.int32),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
    }
    if layout is not None:
        batch["task_index"] = (np.arange(args.batch) % k).astype(np.int32)
    step, batch_shardings = train_state.compile_train_step(
        EncoderDecoderModel(network.module),
        tx,
        train_state.learning_rate_schedule(opt),
        1,
        mesh,
        jax.tree.map(lambda x: x.sharding, state),
        fixed_shardings,
        batch,
    )
    placed = jax.device_put(batch, batch_shardings)
    seconds, _ = train_step.seconds_per_step(
        step, state, (fixed, placed, jax.random.PRNGKey(0)), args.steps, args.warmup
    )
    return seconds


def stream_seconds(args, k: int) -> float:
    """Seconds per batch of the data stream: one offline task (k = 1), or a mixture of k with
    each example's task index."""
    name = STREAM_TASKS[0]
    if k > 1:
        seqio = import_seqio()
        name = f"benchmark_multitask_{k}"
        if name not in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.add(name, [(t, 1.0) for t in STREAM_TASKS[:k]])
    lengths = {"inputs": args.inputs, "targets": args.targets}
    stream = batches.BatchStream(name, lengths, args.batch, seed=0, task_index=k > 1)
    for _ in range(10):
        next(stream)
    start = time.perf_counter()
    for _ in range(args.stream_batches):
        next(stream)
    return (time.perf_counter() - start) / args.stream_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    train_step.shape_arguments(parser, batch=16)
    parser.add_argument("--deep", action="store_true", help="deep prompts (DEEP_PROMPT=True)")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--hows", nargs="+", default=list(multitask.HOWS))
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--task-length", type=int, default=10, help="concat's own positions")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--stream-batches", type=int, default=200)
    parser.add_argument("--no-stream", action="store_true", help="the step only")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    singles = {}  # the single-task step at each prompt length (concat's is longer)

    def single(length: int) -> float:
        if length not in singles:
            singles[length] = step_seconds(
                argparse.Namespace(**{**vars(args), "prompt_length": length}), None, 1
            )
        return singles[length]

    single_stream = None if args.no_stream else stream_seconds(args, 1)
    for k in args.ks:
        mixed_stream = None if args.no_stream else stream_seconds(args, k)
        for how in args.hows:
            length = args.task_length if how == "concat" else 0
            layout = multitask.MultitaskPrompt(how, rank=args.rank, task_length=length)
            seconds = step_seconds(args, layout, k)
            alone = single(layout.composed_length(args.prompt_length))
            row = {
                "size": args.size,
                "k": k,
                "how": how,
                "deep": args.deep,
                "batch": args.batch,
                "lengths": [args.inputs, args.targets],
                "prompt_length": args.prompt_length,
                "task_length": length,
                "dtype": args.dtype,
                # against a single-task prompt as long as each task's composed one
                "single_step_examples_per_second": round(args.batch / alone, 1),
                "multitask_step_examples_per_second": round(args.batch / seconds, 1),
                "step_ratio": round(alone / seconds, 3),
                "device": jax.devices()[0].device_kind,
                "jax": jax.__version__,
            }
            if single_stream is not None:
                row.update(
                    single_stream_examples_per_second=round(args.batch / single_stream),
                    multitask_stream_examples_per_second=round(args.batch / mixed_stream),
                )
            print(json.dumps(row), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
