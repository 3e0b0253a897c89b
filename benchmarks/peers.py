"""Prompt tuning side by side: our jitted step against HF PEFT on transformers' PyTorch T5.

Not a test: it measures, prints one JSON line per framework, appends them to
benchmarks/peers.jsonl with the device they ran on, and prints a Markdown table of the run.

Both sides train the same thing on the same machine in one process: a random T5 1.1 of the
size's shape (gated-GELU, untied logits), a prompt of `--prompt-length` input embeddings and
nothing else, Adafactor at a constant 0.3 without parameter scaling, the same synthetic batch
of random token ids. PEFT's prompt sits on the encoder only (`num_transformer_submodules=1`),
as ours does. Each step's FLOPs are counted from the architecture (`model_flops`; XLA's own
count of our compiled step is printed beside it), and a matrix product of the run's dtype is
timed in the same process, so the step's share of that peak reads off directly.

    .venv/bin/python benchmarks/peers.py --size small --batch 8            # 2 CPU cores
    python benchmarks/peers.py --size base --batch 32 --inputs 512 --dtype bfloat16  # a GPU

On a GPU, `--dtype bfloat16` runs ours with bfloat16 activations over float32 parameters and
PEFT twice: under `torch.autocast` (the same arrangement) and with its weights cast to bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import train_step

from prompt_transfer.trainer import train_state

RESULTS = Path(__file__).with_name("peers.jsonl")
# SPoT's prompt-tuning recipe, on both sides (Vu et al. 2022, Sec. 2.1).
LEARNING_RATE = 0.3


def model_flops(config, batch: int, encoder_length: int, decoder_length: int, full: bool) -> int:
    """Matrix-multiply FLOPs of one training step (2 per multiply-add), from the shapes.

    The forward pass, then the gradients with respect to every activation, which cost as much
    again; training every weight (`full`) adds the weight gradients, a third as much. Prompt
    tuning needs no weight gradient, but the activation gradients must reach the encoder's
    input, so it costs two forward passes where model tuning costs three."""
    d, inner, ff = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
    mlp = len(config.mlp_activations) * d * ff + ff * d  # the gated input kernels and wo
    s, t = encoder_length, decoder_length
    encoder_token = 4 * d * inner + mlp + 2 * s * inner  # q, k, v, o; scores and their mix
    decoder_token = (
        4 * d * inner  # self-attention projections
        + 2 * t * inner  # self-attention scores and mix
        + 2 * d * inner  # cross-attention q and o (k and v are per encoder token, below)
        + 2 * s * inner  # cross-attention scores and mix
        + mlp
        + d * config.vocab_size / config.num_decoder_layers  # the logits, spread over layers
    )
    forward = (
        2
        * batch
        * (
            s * config.num_encoder_layers * encoder_token
            + s * config.num_decoder_layers * 2 * d * inner  # cross-attention k and v
            + t * config.num_decoder_layers * decoder_token
        )
    )
    return int(forward * (3 if full else 2))


def matmul_peak(dtype: str, n: int, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matrix product through XLA, the best of `repeats`."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    product = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(product(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(product(a, a))
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def ours(args) -> dict:
    opt = train_state.OptimizerConfig(learning_rate=LEARNING_RATE)
    built = train_step.build_prompt_step(args, opt)
    step, state, frozen = built["step"], built["state"], built["frozen"]
    batch, rng = built["batch"], built["rng"]
    counted = train_step.xla_flops(step, state, frozen, batch, rng)
    seconds, _ = train_step.seconds_per_step(
        step, state, (frozen, batch, rng), args.steps, args.warmup
    )
    return {"framework": "ours (jax)", "seconds": seconds, "xla_flops": counted}, built["config"]


def peft_side(args, config, precision: str) -> dict:
    import peft
    import torch
    import transformers
    from transformers.optimization import Adafactor

    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    torch.manual_seed(0)
    hf = transformers.T5Config(
        vocab_size=config.vocab_size,
        d_model=config.emb_dim,
        d_kv=config.head_dim,
        d_ff=config.mlp_dim,
        num_heads=config.num_heads,
        num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(hf)
    # transformers 5 ties lm_head to the input embedding in memory; T5 1.1 keeps its own.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(hf.vocab_size, hf.d_model) * 0.05)
    if precision == "bf16 weights":
        model = model.to(torch.bfloat16)
    model = peft.get_peft_model(
        model,
        peft.PromptTuningConfig(
            task_type=peft.TaskType.SEQ_2_SEQ_LM,
            num_virtual_tokens=args.prompt_length,
            num_transformer_submodules=1,
        ),
    ).to(device)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = Adafactor(
        trained,
        lr=LEARNING_RATE,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
        decay_rate=-0.8,
        clip_threshold=1.0,
        weight_decay=1e-5,
    )
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(2, config.vocab_size, (args.batch, args.inputs)), device=device)
    labels = torch.tensor(
        rng.integers(2, config.vocab_size, (args.batch, args.targets)), device=device
    )
    mask = torch.ones_like(ids)
    autocast = precision == "autocast bf16"

    def one_step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        one_step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    return {
        "framework": f"PEFT {peft.__version__} (torch {torch.__version__}, {precision})",
        "seconds": seconds,
        "trainable_params": sum(p.numel() for p in trained),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    train_step.shape_arguments(parser, batch=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-size", type=int, help="matrix side for the peak (2048 / 8192)")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--results", default=str(RESULTS), help="the .jsonl to append rows to")
    args = parser.parse_args()

    import torch  # the same threads for both sides

    threads = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    gpu = jax.default_backend() == "gpu"
    peak = matmul_peak(args.dtype, args.peak_size or (8192 if gpu else 2048))
    rows = []
    row, config = ours(args)
    rows.append(row)
    if not args.no_peft:
        precisions = ("autocast bf16", "bf16 weights") if args.dtype == "bfloat16" else ("fp32",)
        rows += [peft_side(args, config, p) for p in precisions]
    flops = model_flops(config, args.batch, args.prompt_length + args.inputs, args.targets, False)
    common = {
        "size": args.size,
        "batch": args.batch,
        "lengths": [args.inputs, args.targets],
        "prompt_length": args.prompt_length,
        "dtype": args.dtype,
        "dropout_rate": config.dropout_rate,
        "device": jax.devices()[0].device_kind,
        "threads": threads,
        "model_flops_per_step": flops,
        "matmul_peak_flops": round(peak),
        "date": time.strftime("%Y-%m-%d"),
    }
    with open(args.results, "a") as f:
        for row in rows:
            row.update(common)
            row["steps_per_second"] = round(1 / row["seconds"], 3)
            row["achieved_flops"] = round(flops / row["seconds"])
            row["fraction_of_peak"] = round(flops / row["seconds"] / peak, 4)
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
    print(
        f"\n{args.size}, batch {args.batch}, inputs {args.inputs} + prompt {args.prompt_length}, "
        f"targets {args.targets}, {args.dtype}, {common['device']}; "
        f"{flops / 1e9:.1f} GFLOP per step; matmul peak {peak / 1e12:.3f} TFLOP/s\n"
    )
    print("| framework | steps/s | TFLOP/s | share of the matmul peak | ours against it |")
    print("|---|---|---|---|---|")
    for row in rows:
        ratio = rows[0]["steps_per_second"] / row["steps_per_second"]
        print(
            f"| {row['framework']} | {row['steps_per_second']} | "
            f"{row['achieved_flops'] / 1e12:.3f} | {100 * row['fraction_of_peak']:.1f}% | "
            f"{ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
