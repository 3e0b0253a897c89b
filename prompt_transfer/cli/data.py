"""Commands on data: prepare-offline, cache-examples, add-task, build-vocab."""

from __future__ import annotations

from pathlib import Path


def cmd_prepare_offline(args) -> None:
    """Build the suite, or add what became buildable since (WordNet installed); a suite that is
    ready as it is gets one line (`make test` runs this every time)."""
    from prompt_transfer.data import offline_data

    root = Path(args.data_dir) if args.data_dir else offline_data.cache_dir()
    before = None if args.force else offline_data.read_manifest(root)
    manifest = offline_data.prepare(root, force=args.force)
    skipped = offline_data.skipped_sources(manifest)
    notes = [
        f"{offline_data.OPTIONAL_SOURCES[source][0]} skipped: install Debian's {lack} to add them"
        for source, lack in skipped.items()
    ]
    if before is not None and before["tasks"].keys() == manifest["tasks"].keys():
        print("; ".join([f"offline suite ready in {root}", *notes]))
        return
    known = before["tasks"] if before else {}
    new = {n: info for n, info in manifest["tasks"].items() if n not in known}
    width = max(len(n) for n in new)
    for name, info in new.items():
        sizes = "/".join(str(info["sizes"][s]) for s in ("train", "validation", "test"))
        print(f"{name:<{width}}  {sizes:>17}  {', '.join(info['labels'])}")
    if before is not None:
        for source in sorted(offline_data.skipped_sources(before).keys() - skipped.keys()):
            what, package = offline_data.OPTIONAL_SOURCES[source]
            print(f"offline suite: added the {what} ({package} is now installed)")
    print("\n".join([*notes, f"offline suite ready in {root}"]))


def cmd_cache_examples(args) -> None:
    from prompt_transfer.data import batches

    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    counts = batches.write_example_cache(args.task, args.output, lengths, args.passes, args.seed)
    size = Path(args.output).stat().st_size
    sizes = ", ".join(f"{split} {n:,}" for split, n in counts.items())
    print(f"wrote {args.output} ({size / 2**20:.1f} MiB): {sizes} examples")


def cmd_cache_tasks(args) -> None:
    import importlib

    from prompt_transfer.base import errors
    from prompt_transfer.data import batches, registry, seqio_cache

    for module in args.module_import or ():
        try:
            importlib.import_module(module)
        except Exception as e:  # the user's module: any failure, said in one line
            raise batches.TaskError(
                f"--module_import={module} cannot be imported ({errors.one_line(e)})"
            ) from e
    splits = args.splits.split(",") if args.splits else None
    named = [batches.get_task(t) for t in args.tasks.split(",") if t]  # unknown: the closest
    for task in [sub for t in named for sub in registry.subtasks(t)]:  # a mixture: its tasks
        folder, counts = seqio_cache.write(task.name, args.output_cache_dir, splits)
        shown = ", ".join(f"{split} {n:,}" for split, n in counts.items())
        print(f"cached {task.name} in {folder}: {shown} examples")


def cmd_add_task(args) -> None:
    from prompt_transfer.data import file_tasks

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


def cmd_build_vocab(args) -> None:
    from prompt_transfer.base import assets
    from prompt_transfer.data import offline_data, vocab

    shipped = assets.ASSETS_DIR / "offline_spm.model"
    texts = offline_data.corpus_texts()
    path = vocab.train_vocabulary(texts, args.output or shipped, args.size)
    v = vocab.get_vocabulary(path)
    print(
        f"wrote {path}: {v.vocab_size} ids ({args.size} pieces + 100 sentinels) from "
        f"{len(texts):,} texts"
    )
    if Path(path).resolve() == shipped.resolve():  # the shipped file, rebuilt on purpose
        assets.record(shipped.name)
        print(f"recorded its SHA-256 in {assets.ASSETS_DIR / assets.MANIFEST}")


def add_commands(sub) -> None:
    p = sub.add_parser("prepare-offline", help="build the offline task suite's splits")
    p.add_argument("--data-dir", help="default: $PROMPT_TRANSFER_DATA or ~/.cache/...")
    p.add_argument("--force", action="store_true", help="rebuild even if prepared")
    p.set_defaults(func=cmd_prepare_offline)

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

    p = sub.add_parser(
        "cache-tasks",
        help="write SeqIO's cache of tasks as seqio_cache_tasks does (read with "
        "--gin.USE_CACHED_TASKS=True --seqio_additional_cache_dirs=DIR)",
    )
    p.add_argument("--tasks", required=True, help="task names, comma-separated")
    p.add_argument("--output_cache_dir", required=True, help="local or gs://")
    p.add_argument("--module_import", action="append", help="a module that registers tasks")
    p.add_argument("--splits", help="comma-separated (default: every split of the task)")
    p.set_defaults(func=cmd_cache_tasks)

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
        "build-vocab",
        help="train the project's SentencePiece vocabulary on the offline corpus (T5's id layout)",
    )
    p.add_argument("--output", default=None, help="default: the shipped assets/offline_spm.model")
    p.add_argument("--size", type=int, default=8000)
    p.set_defaults(func=cmd_build_vocab)
