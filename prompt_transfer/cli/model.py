"""Commands on model checkpoints and sizes: checkpoint-info, convert, score, export, plan."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

from prompt_transfer.base import environment, files, paths
from prompt_transfer.base.errors import UserError


def _size_for(checkpoint: str, size: str | None) -> str:
    """An explicit --size, else the `model.gin` that `convert` writes beside the checkpoints."""
    if size:
        return size
    from prompt_transfer.network import checkpoints

    ckpt_dir, _ = checkpoints.resolve_checkpoint(checkpoint)
    for folder in (Path(ckpt_dir), Path(ckpt_dir).parent, Path(ckpt_dir).parent.parent):
        if (folder / "model.gin").is_file():
            return str(folder / "model.gin")
    raise UserError(
        f"no --size given and no model.gin beside {ckpt_dir}; "
        "pass --size tiny|small|base|large|xl|xxl or a size gin file"
    )


def cmd_checkpoint_info(args) -> None:
    from prompt_transfer.network import checkpoints
    from prompt_transfer.trainer import remote

    remote.check([remote.Need(f"checkpoint {args.path}", args.path, "a local copy of it")])
    rows, step = checkpoints.describe(args.path)
    width = max(len(name) for name, _, _ in rows)
    for name, shape, dtype in rows:
        print(f"{name:<{width}}  {str(tuple(shape)):<16} {dtype}")
    total = sum(math.prod(shape) for _, shape, _ in rows)
    print(
        f"{len(rows)} parameters, {total:,} values" + (f", step {step}" if step is not None else "")
    )


def _local_output(output: str) -> Path:
    """A new local folder for a checkpoint (tensorstore writes it file by file)."""
    if paths.is_remote(output):
        raise UserError(
            f"--output={output}: checkpoints are written to a local folder; copy it to the "
            "bucket afterwards (gsutil -m cp -r)"
        )
    return Path(paths.native(output))


def cmd_convert(args) -> None:
    from prompt_transfer.configure import gin_files
    from prompt_transfer.network import checkpoints, hf_t5, t5

    output = _local_output(args.output)
    if output.exists():
        raise UserError(f"{output} already exists; choose a new --output or remove it")
    config, params = hf_t5.load_hf_t5(args.hf)
    with files.atomic_directory(output.absolute()) as tmp:
        checkpoints.save_legacy_checkpoint(params, tmp / "checkpoint_0", step=0)
        (tmp / "model.gin").write_text(
            gin_files.model_gin_text(config, f"converted from {Path(args.hf).resolve()}")
        )
    print(
        f"wrote {output}/checkpoint_0 ({t5.param_count(params):,} parameters) "
        f"and {output}/model.gin"
    )


def cmd_score(args) -> None:
    import jax.numpy as jnp
    import numpy as np

    from prompt_transfer.configure import gin_files
    from prompt_transfer.data import vocab
    from prompt_transfer.data.batches import pad_token_rows
    from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
    from prompt_transfer.network import checkpoints, t5
    from prompt_transfer.prompt import prompts
    from prompt_transfer.trainer import run_dir
    from prompt_transfer.transfer import library

    config = gin_files.read_model_config(_size_for(args.checkpoint, args.size))
    module = t5.T5(config)
    prompt = _score_prompt(args)  # before the restore: a bad prompt costs nothing
    params = checkpoints.restore_params(args.checkpoint, t5.abstract_params(module))
    folder = run_dir.RunDir(args.prompt) if args.prompt else None
    if folder and folder.holds_run():  # the model the run's prompt trained on
        found = {"fingerprint": library.model_fingerprint(params), "checkpoint": args.checkpoint}
        folder.check_model(found, create=False)
    if prompt is not None:  # joined as in training (a deep prompt's layers too)
        params = prompts.join(params, config, prompt)
    v = vocab.get_vocabulary(args.vocab)
    encode = lambda texts: pad_token_rows([v.encode(t) + [vocab.EOS_ID] for t in texts])
    scores = EncoderDecoderModel(module).rank_classify(
        params, jnp.asarray(encode(args.inputs)), jnp.asarray(encode(args.targets))
    )
    scores = np.asarray(scores)
    for i, text in enumerate(args.inputs):
        best = int(np.argmax(scores[i]))
        for j, target in enumerate(args.targets):
            mark = "*" if j == best and len(args.targets) > 1 else " "
            print(f"{scores[i, j]:10.4f} {mark} {text!r} -> {target!r}")


def _score_prompt(args):
    """The prompt `score` joins: --prompt FILE (.npy, T5X numpy or PEFT adapter dir) or
    --prompt-entry ID of the library; None without either."""
    import numpy as np

    from prompt_transfer.trainer import run_dir, weights
    from prompt_transfer.transfer import library, peft_io

    if args.prompt and args.prompt_entry:
        raise UserError("score takes --prompt or --prompt-entry, not both")
    if args.prompt_entry:
        lib = library.Library(args.library or environment.library_dir())
        entry = lib.get(args.prompt_entry)
        return np.asarray(lib.prompt(entry, deep=bool(entry.deep_width)))
    if args.prompt and peft_io.is_adapter(args.prompt):
        return peft_io.read_adapter(args.prompt)[0]
    if args.prompt and paths.path(args.prompt).is_dir() and run_dir.RunDir(args.prompt).holds_run():
        # A run's folder: its latest checkpoint's prompt, a deep prompt's layers with it.
        prompt, deep, _ = weights.run_prompt(args.prompt, "latest")
        return prompt if deep is None else np.concatenate([prompt, deep], 1)
    return library.read_t5x_prompt(args.prompt) if args.prompt else None


def cmd_export(args) -> None:
    import jax.numpy as jnp

    from prompt_transfer.configure import gin_files
    from prompt_transfer.network import checkpoints, t5
    from prompt_transfer.trainer import run_record

    output = _local_output(args.output)
    if output.exists():
        raise UserError(f"{output} already exists; choose a new --output or remove it")
    folder = args.run.rstrip("/")
    if re.fullmatch(r"checkpoint_\d+", os.path.basename(folder)):  # one checkpoint of the run
        folder = os.path.dirname(folder)
    record = run_record.read(folder)
    if record is not None and record.get("prompt_kind") not in ("none", None):
        raise UserError(
            f"{args.run} trained a prompt ({record['prompt_kind']}) on the frozen network, not "
            "the network: export its prompt with `prompt-transfer library export --run`"
            + (
                " (the network it trained with it is read by eval and infer)"
                if record["spec"].get("phase") == 2
                else ""
            )  # fmt: skip
        )
    if record is None and not args.size:
        raise UserError(
            f"{args.run} holds no run.json to name its model: pass --size (the run's size gin)"
        )
    config = gin_files.read_model_config(args.size) if args.size else None
    if record is not None:
        trained = run_record.spec_of(record, folder).model_config
        differs = config is not None and run_record.model_difference(trained, config)
        if differs:
            field, was, given = differs
            raise UserError(
                f"--size={args.size}: the run's model has {field}={was!r}, that size "
                f"{given!r}; leave --size out (the run names its model)"
            )
        config = trained
    abstract = t5.abstract_params(t5.T5(config))
    checkpoints.export_run(args.run, abstract, output / "checkpoint", jnp.dtype(args.dtype))
    if args.size:
        shutil.copyfile(gin_files.size_file(args.size), output / "model.gin")
    else:
        text = gin_files.model_gin_text(config, f"exported from {folder}")
        vocabulary = record["spec"].get("vocabulary")
        if vocabulary:  # the run's own tokens, not T5's standard ones
            text += f"VOCABULARY = {vocabulary!r}  # the run's (run.json)\n"
        (output / "model.gin").write_text(text)
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    print(f"wrote {output} ({size / 2**20:.1f} MiB, {args.dtype})")


_PLAN_CHILD = "PROMPT_TRANSFER_PLAN_DEVICES"


def cmd_plan(args) -> int:
    """Re-run itself with --devices CPU devices simulated (XLA's flag must be set before JAX
    starts), then print the plan."""
    import dataclasses
    import json
    import os
    import subprocess
    import sys

    from prompt_transfer.trainer import plan

    shape = plan.Shape(
        size=args.size,
        devices=args.devices,
        device_memory_gb=args.device_memory_gb,
        batch=args.batch,
        inputs=args.inputs,
        targets=args.targets,
        prompt_length=args.prompt_length,
        frozen_dtype=args.frozen_dtype,
        activation_dtype=args.dtype,
        remat_policy=args.remat,
    )
    if os.environ.get(_PLAN_CHILD) != str(args.devices):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count="
        env = dict(
            os.environ,
            XLA_FLAGS=f"{flags}{args.devices}",
            JAX_PLATFORMS="cpu",
            **{_PLAN_CHILD: str(args.devices)},
        )
        argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in _PLAN_FLAGS]
        command = [sys.executable, "-m", "prompt_transfer", "plan", *argv]
        return subprocess.run(command + (["--json"] if args.json else []), env=env).returncode
    rows = plan.plan(shape)
    best = plan.smallest_fit(shape, rows)
    if args.json:
        rows_out = [dict(dataclasses.asdict(r), total=r.total) for r in rows]
        fit = best.partitions if best else None
        print(json.dumps({"shape": dataclasses.asdict(shape), "rows": rows_out, "fits": fit}))
        return 0
    print(plan.describe(shape, rows, best))
    return 0


_PLAN_FLAGS = (
    "size",
    "devices",
    "device_memory_gb",
    "batch",
    "inputs",
    "targets",
    "prompt_length",
    "frozen_dtype",
    "dtype",
    "remat",
)


def add_commands(sub) -> None:
    p = sub.add_parser("checkpoint-info", help="print a checkpoint's parameter tree and size")
    p.add_argument("path", help="T5X checkpoint (legacy or orbax), local or gs://")
    p.set_defaults(func=cmd_checkpoint_info)

    p = sub.add_parser("convert", help="write a HF T5 checkpoint as a T5X checkpoint + size gin")
    p.add_argument("--hf", required=True, help="local HF model directory (config.json + weights)")
    p.add_argument("--output", required=True, help="new directory: checkpoint_0/ and model.gin")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("score", help="log-likelihood of each target given each input")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--size", help="size name or gin file (default: model.gin beside checkpoint)")
    p.add_argument("--vocab", help="SentencePiece model (default: T5's standard gs:// one)")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--targets", nargs="+", required=True)
    p.add_argument(
        "--prompt",
        help="a prompt joined as in training: .npy, T5X, PEFT adapter, or a run's MODEL_DIR",
    )
    p.add_argument("--prompt-entry", help="a library entry's prompt (see --library)")
    p.add_argument("--library", help="default: $PROMPT_TRANSFER_LIBRARY or ~/.cache/...")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "export",
        help="write a trained network (model tuning, pre-training) as "
        "a T5X checkpoint plus its size gin",
    )
    p.add_argument("run", help="the run's MODEL_DIR (or one checkpoint_N in it)")
    p.add_argument(
        "--size", help="size name or gin file of the run's model (default: the run's run.json)"
    )
    p.add_argument("--output", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "plan",
        help="per-device memory of a prompt-tuning run on N devices, and the NUM_PARTITIONS "
        "that fits (compiled for N simulated devices on this host's CPU)",
    )
    p.add_argument("--size", required=True, help="small, base, large, xl, xxl or a size gin")
    p.add_argument("--devices", type=int, required=True, help="chips or GPUs in the job")
    p.add_argument("--device-memory-gb", type=float, required=True, help="each device's memory")
    p.add_argument("--batch", type=int, default=32, help="BATCH_SIZE, the global batch")
    p.add_argument("--inputs", type=int, default=512, help="input length, without the prompt")
    p.add_argument("--targets", type=int, default=16)
    p.add_argument("--prompt-length", type=int, default=100)
    p.add_argument("--frozen-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                   help="activation dtype (ACTIVATION_DTYPE)")  # fmt: skip
    p.add_argument("--remat", default="none", choices=["none", "minimal", "full"],
                   help="REMAT_POLICY of the size gin")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(func=cmd_plan)
