"""`prompt-transfer`: one console script; each subcommand calls library functions.

prompt-transfer checkpoint-info PATH
prompt-transfer convert --hf DIR --output DIR
prompt-transfer score --checkpoint PATH --inputs TEXT... --targets TEXT...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_BAD_INPUT = 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input or a run that must stop: one line, exit status 2."""
    from prompt_transfer import (
        assets,
        checkpoints,
        data,
        file_tasks,
        gin_files,
        hf_t5,
        library,
        offline_data,
        projector,
        prompts,
        similarity,
        train,
        train_io,
        transfer,
        vocab,
    )

    return (
        assets.AssetError,
        checkpoints.CheckpointError,
        gin_files.GinFileError,
        hf_t5.HFCheckpointError,
        vocab.VocabularyError,
        prompts.PromptError,
        data.TaskError,
        train.TrainError,
        train_io.RunDirError,
        train_io.NonFiniteLoss,
        offline_data.OfflineSourceError,
        file_tasks.FileTaskError,
        library.LibraryError,
        similarity.SimilarityError,
        transfer.TransferError,
        projector.ProjectorError,
        FileNotFoundError,
    )


def _size_for(checkpoint: str, size: str | None) -> str:
    """An explicit --size, else the `model.gin` that `convert` writes beside the checkpoints."""
    if size:
        return size
    from prompt_transfer import checkpoints

    ckpt_dir, _ = checkpoints.resolve_checkpoint(checkpoint)
    for folder in (Path(ckpt_dir), Path(ckpt_dir).parent, Path(ckpt_dir).parent.parent):
        if (folder / "model.gin").is_file():
            return str(folder / "model.gin")
    raise FileNotFoundError(
        f"no --size given and no model.gin beside {ckpt_dir}; "
        "pass --size tiny|small|base|large|xl|xxl or a size gin file"
    )


def cmd_checkpoint_info(args) -> None:
    from prompt_transfer import checkpoints

    rows, step = checkpoints.describe(args.path)
    width = max(len(name) for name, _, _ in rows)
    for name, shape, dtype in rows:
        print(f"{name:<{width}}  {str(tuple(shape)):<16} {dtype}")
    total = sum(math.prod(shape) for _, shape, _ in rows)
    print(
        f"{len(rows)} parameters, {total:,} values" + (f", step {step}" if step is not None else "")
    )


def cmd_convert(args) -> None:
    from prompt_transfer import checkpoints, gin_files, hf_t5, t5

    output = Path(args.output)
    if output.exists():
        raise FileNotFoundError(f"{output} already exists; choose a new --output or remove it")
    config, params = hf_t5.load_hf_t5(args.hf)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        checkpoints.save_legacy_checkpoint(params, tmp / "checkpoint_0", step=0)
        (tmp / "model.gin").write_text(
            gin_files.model_gin_text(config, f"converted from {Path(args.hf).resolve()}")
        )
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"wrote {output}/checkpoint_0 ({t5.param_count(params):,} parameters) "
        f"and {output}/model.gin"
    )


def cmd_score(args) -> None:
    import jax.numpy as jnp
    import numpy as np

    from prompt_transfer import checkpoints, gin_files, t5, vocab
    from prompt_transfer.models import EncoderDecoderModel, pad_token_rows

    config = gin_files.read_model_config(_size_for(args.checkpoint, args.size))
    module = t5.T5(config)
    params = checkpoints.restore_params(args.checkpoint, t5.abstract_params(module))
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


def cmd_train(args) -> None:
    from prompt_transfer import train

    summary = train.main(args.gin_args)
    print(json.dumps(summary))


def cmd_task_embedding(args) -> None:
    from prompt_transfer import train

    overrides = [
        f"--gin.LIBRARY_DIR='{args.library}'",
        "--gin.LIBRARY_KIND='task_embedding'",
        f"--gin.TRAIN_STEPS={args.steps}",
        "--gin.EVAL_PERIOD=0",
        f"--gin.SAVE_PERIOD={args.steps}",
    ]
    summary = train.main([*args.gin_args, *overrides])
    print(f"task embedding of {args.steps} steps stored as {summary['library_entry']}")


def cmd_spot(args) -> None:
    from prompt_transfer import spot

    report = spot.main(args.gin_args)
    print(f"SPoT flow done: {len(report['rows'])} target runs; see report.md in WORK_DIR")


def cmd_demo(args) -> None:
    from prompt_transfer import assets, offline_data

    for name in ("offline_spm.model", "offline_t5"):  # fail before any work on a bad artifact
        assets.verify(name)
    if os.environ.pop("PROMPT_TRANSFER_VOCAB", None):  # the shipped model needs its own vocab
        print("demo: ignoring $PROMPT_TRANSFER_VOCAB (the shipped model has its own vocabulary)")
    offline_data.prepare(offline_data.cache_dir())  # a no-op once prepared
    from prompt_transfer import spot

    report = spot.main(
        [
            "--gin_file=experiments/demo",
            f"--gin.WORK_DIR='{args.work_dir}'",
            f"--gin.RANDOM_SEED={args.seed}",
            *args.gin_args,
        ]
    )
    print("\n".join(report["verdict"]))
    print(f"demo done: {args.work_dir}/report.md (and its PNG figures beside it)")


def cmd_eval(args) -> None:
    from prompt_transfer import eval as eval_lib

    print(json.dumps(eval_lib.main(args.gin_args), indent=1))


def cmd_infer(args) -> None:
    from prompt_transfer import infer

    print(f"wrote {infer.main(args.gin_args)}")


def cmd_prepare_offline(args) -> None:
    from prompt_transfer import offline_data

    root = Path(args.data_dir) if args.data_dir else offline_data.cache_dir()
    manifest = offline_data.prepare(root, force=args.force)
    width = max(len(n) for n in manifest["tasks"])
    for name, info in manifest["tasks"].items():
        sizes = "/".join(str(info["sizes"][s]) for s in ("train", "validation", "test"))
        print(f"{name:<{width}}  {sizes:>17}  {', '.join(info['labels'])}")
    if not manifest["wordnet"]:
        print("WordNet tasks skipped: install Debian's wordnet-base to add them")
    print(f"offline suite ready in {root}")


def cmd_cache_examples(args) -> None:
    from prompt_transfer import data

    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    counts = data.write_example_cache(args.task, args.output, lengths, args.passes, args.seed)
    size = Path(args.output).stat().st_size
    sizes = ", ".join(f"{split} {n:,}" for split, n in counts.items())
    print(f"wrote {args.output} ({size / 2**20:.1f} MiB): {sizes} examples")


def cmd_add_task(args) -> None:
    from prompt_transfer import file_tasks

    task = file_tasks.FileTask(
        name=args.name,
        train=args.train,
        validation=args.validation,
        test=args.test or "",
        inputs=tuple(args.inputs),
        target=args.target,
        labels=tuple(args.labels or ()),
    )
    path = file_tasks.save_file_task(task)
    kind = f"classification over {', '.join(task.labels)}" if task.labels else "generation"
    print(f"registered {task.name} ({kind}); recorded in {path}")


def _library(args):
    from prompt_transfer import library

    root = (
        args.library
        or os.environ.get("PROMPT_TRANSFER_LIBRARY")
        or str(Path.home() / ".cache" / "prompt_transfer" / "library")
    )
    return library.Library(root)


def cmd_library(args) -> None:
    import numpy as np

    from prompt_transfer import library

    lib = _library(args)
    if args.action == "add":
        entry = lib.add(
            library.read_t5x_prompt(args.path),
            task=args.task,
            model=args.model,
            model_fingerprint=args.fingerprint,
            score=args.score,
            metric=args.metric or "",
            steps=args.steps,
            seed=args.seed,
        )
        print(f"added {entry.id}")
    elif args.action == "import":
        path = Path(args.path)
        files = sorted(path.glob("*.npy")) if path.is_dir() and any(path.glob("*.npy")) else [path]
        meta = (
            library.released_prompt_metadata(path / "README.md")
            if path.is_dir() and (path / "README.md").exists()
            else {}
        )
        for f in files:
            info = meta.get(f.name, {})
            score = info.get("score_text", "").split("/")[0] or None
            entry = lib.add(
                library.read_t5x_prompt(f),
                task=args.task or info.get("task") or f.stem,
                model=args.model,
                model_fingerprint=args.fingerprint,
                score=float(score) if score else None,
                metric=info.get("metric", ""),
                kind="released" if info else "imported",
                note=info.get("note", ""),
            )
            print(f"imported {f.name} as {entry.id}")
    elif args.action == "list":
        entries = lib.entries(**({"task": args.task} if args.task else {}))
        for e in entries:
            score = "" if e.score is None else f"{e.score:.2f} {e.metric}"
            print(
                f"{e.id:<32} {e.task:<24} {e.model:<22} {e.prompt_length}x{e.embed_dim:<6} {score}"
            )
        print(f"{len(entries)} entries in {lib.root}")
    elif args.action == "show":
        entry = lib.get(args.entry)
        prompt = lib.prompt(entry)
        print(
            json.dumps(
                dict(dataclasses.asdict(entry), norm=float(np.linalg.norm(prompt))), indent=1
            )
        )
    elif args.action == "remove":
        lib.remove(args.entry)
        print(f"removed {args.entry}")
    elif args.action == "export":
        print(f"wrote {lib.export(args.entry, args.output)}")
    elif args.action == "train-projector":
        from prompt_transfer import projector

        tasks, sources, targets = projector.paired_prompts(
            lib, args.source_model, args.target_model
        )
        proj, mse = projector.train_projector(sources, targets, steps=args.steps)
        print(
            f"trained on {len(tasks)} paired prompts ({', '.join(tasks)}); final mse {mse:.4g}; "
            f"wrote {proj.save(args.output)}"
        )
    elif args.action == "project":
        from prompt_transfer import projector

        entry = projector.project_entry(
            lib, args.entry, projector.Projector.load(args.projector), args.model, args.fingerprint
        )
        print(f"added {entry.id} ({entry.prompt_length}x{entry.embed_dim} for {entry.model})")
    elif args.action == "rank":
        from prompt_transfer import transfer

        target = lib.get(args.target)
        entries = transfer.eligible_sources(
            lib, target.model_fingerprint, target.embed_dim, [target.task]
        )
        for r in transfer.rank_sources(lib, lib.prompt(target), args.metric, entries, args.top_k):
            print(f"{r.score:10.4f}  {r.entry.task:<28} {r.entry.id}")


def cmd_build_vocab(args) -> None:
    from prompt_transfer import offline_data, vocab

    texts = offline_data.corpus_texts()
    path = vocab.train_vocabulary(texts, args.output or vocab.OFFLINE_VOCAB_PATH, args.size)
    v = vocab.get_vocabulary(path)
    print(
        f"wrote {path}: {v.vocab_size} ids ({args.size} pieces + 100 sentinels) from "
        f"{len(texts):,} texts"
    )


def cmd_export(args) -> None:
    import jax.numpy as jnp

    from prompt_transfer import checkpoints, gin_files, t5

    output = Path(args.output)
    if output.exists():
        raise FileNotFoundError(f"{output} already exists; choose a new --output or remove it")
    config = gin_files.read_model_config(args.size)
    abstract = t5.abstract_params(t5.T5(config))
    checkpoints.export_run(args.run, abstract, output / "checkpoint", jnp.dtype(args.dtype))
    shutil.copyfile(gin_files.size_file(args.size), output / "model.gin")
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    print(f"wrote {output} ({size / 2**20:.1f} MiB, {args.dtype})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prompt-transfer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("add-task", help="register a task from local TSV/JSONL files")
    p.add_argument("--name", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--test")
    p.add_argument("--inputs", nargs="+", default=["text"], help="columns joined into the input")
    p.add_argument("--target", default="label")
    p.add_argument("--labels", nargs="*", help="class labels (omit for a generation task)")
    p.set_defaults(func=cmd_add_task)

    p = sub.add_parser(
        "library", help="the prompt library: add, list, show, remove, export, import"
    )
    lib_sub = p.add_subparsers(dest="action", required=True)
    for action in (
        "add",
        "import",
        "list",
        "show",
        "remove",
        "export",
        "train-projector",
        "project",
        "rank",
    ):
        q = lib_sub.add_parser(action)
        q.add_argument("--library", help="default: $PROMPT_TRANSFER_LIBRARY or ~/.cache/...")
        if action in ("add", "import"):
            q.add_argument("path", help=".npy, T5X numpy checkpoint dir, or released-prompt dir")
            q.add_argument("--task", required=action == "add")
            q.add_argument("--model", required=True, help="e.g. t5_1_1_lm100k_base")
            q.add_argument("--fingerprint", default="", help="frozen checkpoint fingerprint")
        if action == "add":
            q.add_argument("--score", type=float)
            q.add_argument("--metric")
            q.add_argument("--steps", type=int, default=0)
            q.add_argument("--seed", type=int, default=0)
        if action == "list":
            q.add_argument("--task")
        if action in ("show", "remove", "export"):
            q.add_argument("entry")
        if action in ("export", "train-projector"):
            q.add_argument("--output", required=True)
        if action == "train-projector":
            q.add_argument("--source-model", required=True)
            q.add_argument("--target-model", required=True)
            q.add_argument("--steps", type=int, default=2000)
        if action == "project":
            q.add_argument("entry")
            q.add_argument("--projector", required=True)
            q.add_argument("--model", required=True)
            q.add_argument("--fingerprint", default="")
        if action == "rank":
            q.add_argument("target", help="the target's task embedding (entry id)")
            q.add_argument("--metric", default="cosine_avg_tokens")
            q.add_argument("--top-k", type=int)
    p.set_defaults(func=cmd_library)

    p = sub.add_parser(
        "export",
        help="write a trained network (model tuning, pre-training) as "
        "a T5X checkpoint plus its size gin",
    )
    p.add_argument("run", help="the run's MODEL_DIR (or one checkpoint_N in it)")
    p.add_argument("--size", required=True, help="size name or gin file of the run's model")
    p.add_argument("--output", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "build-vocab",
        help="train the project's SentencePiece vocabulary on the offline corpus (T5's id layout)",
    )
    p.add_argument("--output", default=None, help="default: the shipped assets/offline_spm.model")
    p.add_argument("--size", type=int, default=8000)
    p.set_defaults(func=cmd_build_vocab)

    p = sub.add_parser(
        "cache-examples",
        help="write a task's preprocessed examples to one .npz (train without TensorFlow)",
    )
    p.add_argument("task", help="SeqIO task or mixture")
    p.add_argument("--output", required=True, help="the .npz to write")
    p.add_argument("--inputs-length", type=int, default=128)
    p.add_argument("--targets-length", type=int, default=32)
    p.add_argument("--passes", type=int, default=1, help="shuffled passes over train, each seeded")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_cache_examples)

    p = sub.add_parser("prepare-offline", help="build the offline task suite's splits")
    p.add_argument("--data-dir", help="default: $PROMPT_TRANSFER_DATA or ~/.cache/...")
    p.add_argument("--force", action="store_true", help="rebuild even if prepared")
    p.set_defaults(func=cmd_prepare_offline)

    p = sub.add_parser(
        "train",
        help="train (prompt tuning, model tuning) from gin files",
        description="Arguments as T5X's: --gin_file=NAME (found in gin/), "
        "--gin.MACRO=VALUE, --gin_bindings=..., plus --overwrite / --resume.",
    )
    p.set_defaults(func=cmd_train, takes_gin=True)

    p = sub.add_parser(
        "task-embedding",
        help="SPoT's task embedding: a short prompt-tuning run, its prompt stored in a library",
        description="The run's gin files and overrides as for train, plus --library and --steps.",
    )
    p.add_argument("--library", required=True)
    p.add_argument("--steps", type=int, default=10_000, help="SPoT used 10K")
    p.set_defaults(func=cmd_task_embedding, takes_gin=True)

    p = sub.add_parser(
        "demo",
        help="the offline demo: the SPoT flow on the shipped small T5 (about 10 min on 2 CPUs)",
        description="Runs gin/experiments/demo.gin; --gin.X=... overrides its macros "
        "(step counts, SOURCES, TARGETS). A re-run reuses every finished run.",
    )
    p.add_argument("--work-dir", default="runs/demo", help="where runs and the report go")
    p.add_argument("--seed", type=int, default=0, help="seeds data order and prompt inits")
    p.set_defaults(func=cmd_demo, takes_gin=True)

    p = sub.add_parser(
        "spot",
        help="the whole SPoT flow: sources, library, task embeddings, retrieval, transfer, report",
        description="Gin files as for train (e.g. --gin_file=experiments/spot_tiny) and "
        "--gin.WORK_DIR, --gin.SOURCES, --gin.TARGETS.",
    )
    p.set_defaults(func=cmd_spot, takes_gin=True)

    for name, func, text in (
        ("eval", cmd_eval, "evaluate a trained run on a task split"),
        ("infer", cmd_infer, "write a trained run's predictions (JSONL)"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description="Same gin files as the run, plus "
            "--gin.EVAL_SPLIT, --gin.CHECKPOINT ('latest'/'best'), "
            "--gin.INFER_INPUT_FILE.",
        )
        p.set_defaults(func=func, takes_gin=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_gin", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.gin_args = rest
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # SeqIO's advisory warnings drown progress
    if os.environ.get("PROMPT_TRANSFER_DISTRIBUTED"):  # multi-host (TPU pod): join the others
        import jax

        jax.distributed.initialize()
    from prompt_transfer import train

    train.enable_compilation_cache()
    try:
        args.func(args)
    except _user_errors() as e:
        # First line only: gin appends "In call to configurable ..." on the next.
        print(f"prompt-transfer {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
