"""K prompts trained in one step on one frozen network, against K separate steps.

Not a test: it measures, prints one JSON line per K, and appends them to
benchmarks/many_prompts.jsonl with the device they ran on. A flow trains dozens of prompts on
one frozen model (a target's baselines and strategies, every seed); `stacked_train_step` takes
one step of K of them at once, each on its own batch with its own optimizer state.

    .venv/bin/python benchmarks/many_prompts.py --size offline_small --batch 8 --ks 1 4 8
    python benchmarks/many_prompts.py --size base --batch 8 --inputs 256 --dtype bfloat16  # GPU

The figure that matters is `prompt_steps_per_second` (K x stacked steps per second) against
K = 1's, the speed-up a flow gains by training K prompts together.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import train_step

from prompt_transfer.trainer import train_state

RESULTS = Path(__file__).with_name("many_prompts.jsonl")


def measure(args, k: int) -> dict:
    opt = train_state.OptimizerConfig()
    built = train_step.build_prompt_step(args, opt)
    state, frozen = built["state"], built["frozen"]
    single = jax.tree.map(lambda x: x.sharding, state)
    step = train_state.compile_stacked_step(
        built["model"],
        train_state.make_optimizer(opt),
        train_state.learning_rate_schedule(opt),
        1,
        jax.tree.leaves(single)[0].mesh,
        single,
        jax.tree.map(lambda x: x.sharding, frozen),
    )
    states = train_state.stack_states([state] * k)
    batch = {key: jnp.stack([v] * k) for key, v in built["batch"].items()}
    rngs = jnp.stack([jax.random.PRNGKey(i) for i in range(k)])
    seconds, _ = train_step.seconds_per_step(
        step, states, (frozen, batch, rngs), args.steps, args.warmup
    )
    return {
        "size": args.size,
        "k": k,
        "batch_per_prompt": args.batch,
        "lengths": [args.inputs, args.targets],
        "prompt_length": args.prompt_length,
        "dtype": args.dtype,
        "dropout_rate": built["config"].dropout_rate,
        "stacked_steps_per_second": round(1 / seconds, 3),
        "prompt_steps_per_second": round(k / seconds, 3),
        "device": jax.devices()[0].device_kind,
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    train_step.shape_arguments(parser, batch=8)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with open(RESULTS, "a") as f:
        for k in args.ks:
            row = measure(args, k)
            row["speedup"] = (
                round(row["prompt_steps_per_second"] / rows[0]["prompt_steps_per_second"], 2)
                if rows
                else 1.0
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
    print(f"\n{args.size}, {args.batch} examples per prompt, {rows[0]['device']}\n")
    print("| K | stacked steps/s | prompt-steps/s | against K = 1 |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['k']} | {row['stacked_steps_per_second']} | "
            f"{row['prompt_steps_per_second']} | {row['speedup']}x |"
        )


if __name__ == "__main__":
    main()
