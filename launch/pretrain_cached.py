"""Pre-train a T5 size on an example cache, with no TensorFlow on the host.

The same model, optimizer and jitted step as `prompt-transfer train --gin_file=
experiments/pretrain_offline`, fed from a cache that `prompt-transfer cache-examples` wrote on a
host with TensorFlow. The whole cache sits on the accelerator, and each batch is gathered there,
so the loop never waits on the host. Made for accelerator hosts that cannot install TensorFlow:

  prompt-transfer cache-examples offline_span_corruption --passes 12 --output cache.npz
  python launch/pretrain_cached.py --cache cache.npz --output runs/pretrain_gpu --seconds 420

It writes OUTPUT/export (a bfloat16 T5X checkpoint of the network with the lowest validation
loss, plus the size's gin file: what ships in prompt_transfer/assets/offline_t5) and
OUTPUT/log.jsonl (train and validation loss at each log point).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from prompt_transfer.configure import gin_files  # noqa: E402
from prompt_transfer.data import batches
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel  # noqa: E402
from prompt_transfer.network import checkpoints, partitioning
from prompt_transfer.trainer import train_state, weights


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--cache",
        required=True,
        action="append",
        help="from `prompt-transfer cache-examples`; repeat to mix objectives (by example count)",
    )
    p.add_argument("--output", required=True, help="a new directory")
    p.add_argument("--size", default="offline_small")
    p.add_argument("--init", help="a checkpoint to continue from (default: random init)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=100_000, help="at most this many steps")
    p.add_argument("--seconds", type=float, default=0, help="stop after this much training time")
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=2000)
    p.add_argument(
        "--no-parameter-scale",
        action="store_true",
        help="absolute Adafactor steps (default: relative to each parameter's scale, as T5X "
        "pre-trains; absolute steps of 0.01 swamp the small attention kernels)",
    )
    p.add_argument(
        "--dropout-rate",
        type=float,
        default=0.0,
        help="dropout while training (the recipe's 0.0; more when the cache is passed many times)",
    )
    p.add_argument("--log-period", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = Path(args.output)
    if output.exists():
        sys.exit(f"error: {output} already exists; choose a new --output")
    caches = [batches.read_example_cache(c) for c in args.cache]
    splits = {
        s: {k: np.concatenate([c[s][k] for c in caches if s in c]) for k in caches[0][s]}
        for s in caches[0]
    }
    config = gin_files.read_model_config(args.size, {"DROPOUT_RATE": args.dropout_rate})
    mesh = partitioning.make_mesh(1)
    module, _, params = weights.frozen_network(config, args.init, mesh, args.seed)
    opt = train_state.OptimizerConfig(
        learning_rate=args.learning_rate,
        schedule="rsqrt",
        warmup_steps=args.warmup_steps,
        multiply_by_parameter_scale=not args.no_parameter_scale,
    )
    tx, schedule = train_state.make_optimizer(opt), train_state.learning_rate_schedule(opt)
    trainable, frozen = train_state.split_trainable(params, ".*")
    state = train_state.create_state(trainable, tx, mesh)
    model = EncoderDecoderModel(module)

    examples = {k: jnp.asarray(v) for k, v in splits["train"].items()}
    n = len(examples["encoder_input_tokens"])
    if n < args.batch_size:
        sys.exit(f"error: the cache holds {n} training examples, fewer than --batch-size")
    per_epoch = n // args.batch_size
    # The cache is an argument, not a closure: closed-over arrays would be baked into the HLO.
    gather = jax.jit(lambda ex, idx: {k: v[idx] for k, v in ex.items()})
    loss_eval = jax.jit(lambda p, b: model.loss(p, b)[1])

    def validation(params) -> dict:
        val = splits.get("validation")
        if val is None:
            return {}
        rows = len(val["encoder_input_tokens"])
        sums = {"cross_entropy": 0.0, "token_accuracy": 0.0, "tokens": 0.0, "other_input": 0.0}
        for i in range(0, rows - args.batch_size + 1, args.batch_size):
            batch = {k: v[i : i + args.batch_size] for k, v in val.items()}
            m = loss_eval(params, batch)
            # The same targets behind another example's input: a network that ignores its
            # encoder scores both alike, and a soft prompt could never steer it.
            shuffled = {
                **batch,
                "encoder_input_tokens": np.roll(batch["encoder_input_tokens"], 1, 0),
            }
            t = m["tokens"]  # sums stay on the device: one host sync per validation
            sums["cross_entropy"] += m["cross_entropy"] * t
            sums["token_accuracy"] += m["token_accuracy"] * t
            sums["other_input"] += loss_eval(params, shuffled)["cross_entropy"] * t
            sums["tokens"] += t
        sums = {k: float(v) for k, v in sums.items()}
        t = max(sums["tokens"], 1.0)
        return {
            "val_loss": sums["cross_entropy"] / t,
            "val_accuracy": sums["token_accuracy"] / t,
            "val_loss_other_input": sums["other_input"] / t,
        }

    output.mkdir(parents=True)
    log = (output / "log.jsonl").open("w")
    rng = jax.random.PRNGKey(args.seed)
    order = np.random.default_rng(args.seed)
    perm, window, start, step = None, [], time.time(), 0
    best = {"val_loss": np.inf, "step": 0, "params": None}
    print(f"{n:,} cached examples, batch {args.batch_size}, {jax.devices()[0].device_kind}")
    while step < args.steps:
        if step % per_epoch == 0:
            perm = jnp.asarray(order.permutation(n)[: per_epoch * args.batch_size])
        i = step % per_epoch
        batch = gather(examples, perm[i * args.batch_size : (i + 1) * args.batch_size])
        if step == 0:  # the trainer's own jitted step, with shardings and a donated state
            step_fn, _ = train_state.compile_train_step(
                model,
                tx,
                schedule,
                1,
                mesh,
                jax.tree.map(lambda x: x.sharding, state),
                {},
                batch,
            )
        state, metrics = step_fn(state, frozen, batch, rng)
        window.append(metrics)
        step += 1
        out_of_time = args.seconds and time.time() - start > args.seconds
        if step % args.log_period == 0 or step == args.steps or out_of_time:
            means = {k: float(np.mean([m[k] for m in window])) for k in ("loss", "token_accuracy")}
            record = {
                "step": step,
                "seconds": round(time.time() - start, 1),
                **means,
                **validation(train_state.merge(frozen, state.trainable)),
            }
            window = []
            if record.get("val_loss", np.inf) < best["val_loss"]:  # keep the best network
                params = train_state.merge(frozen, state.trainable)
                best.update(val_loss=record["val_loss"], step=step)
                best["params"] = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16)), params)
                record["best"] = True
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if not np.isfinite(means["loss"]):
                sys.exit(f"error: the loss is {means['loss']} at step {step}")
        if out_of_time:
            break
    log.close()
    final, saved_step = best["params"], best["step"]
    if final is None:  # no validation split: the last network
        final = jax.tree.map(
            lambda x: np.asarray(x.astype(jnp.bfloat16)), train_state.merge(frozen, state.trainable)
        )
        saved_step = step
    checkpoints.save_legacy_checkpoint(final, output / "export" / "checkpoint", step=saved_step)
    shutil.copyfile(gin_files.size_file(args.size), output / "export" / "model.gin")
    seconds = time.time() - start
    print(
        f"{step} steps in {seconds:.0f} s ({step / seconds:.1f} steps/s); wrote {output} "
        f"(the network of step {saved_step}, lowest validation loss)"
    )
    return {"steps": step, "seconds": seconds, "saved_step": saved_step}


if __name__ == "__main__":
    main()
