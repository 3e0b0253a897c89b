"""`prompt-transfer library ...`: the prompt library, retrieval and cross-model projection."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from prompt_transfer.base import environment, files, paths
from prompt_transfer.stages.figures import significant
from prompt_transfer.transfer import library, peft_io

# What reads an existing library: a missing one is refused ("0 entries" would hide a typo).
# `add` and `import` create it; `export --run` reads a run, not the library.
READS = ("list", "show", "remove", "export", "rank", "train-projector", "project", "verify")


def _library(args) -> library.Library:
    """The library of `--library` (or the default), refused when it cannot be one."""
    given_as = "--library" if args.library else environment.library_dir_set_by()
    lib = library.Library(args.library or environment.library_dir())
    if getattr(args, "run", None):  # `export --run` reads a run, not the library
        return lib
    if args.action in READS:
        lib.require(given_as)
    else:
        lib.check_folder(given_as)  # `add` and `import` create it, but not over a file
    return lib


def _add(lib, args) -> None:
    """A prompt file, or a run's trained prompt (a deep prompt with its layers), as an entry;
    a run gives its own task, model, seed, step, score and fingerprint unless told."""
    from prompt_transfer.trainer import run_dir

    deep, known = None, {}
    if paths.path(args.path).is_dir() and run_dir.RunDir(args.path).holds_run():
        prompt, deep = _run_prompt(args.path, "latest")
        known = _run_facts(args.path)
    else:
        prompt = library.read_t5x_prompt(args.path)
    task, model = args.task or known.get("task"), args.model or known.get("model")
    if not task or not model:
        raise library.LibraryError(
            "library add needs --task and --model (the frozen model's name) for a prompt file"
        )
    entry = lib.add(
        prompt,
        deep=deep,
        task=task,
        model=model,
        model_fingerprint=args.fingerprint or known.get("fingerprint", ""),
        score=args.score if args.score is not None else known.get("score"),
        metric=args.metric or known.get("metric", ""),
        steps=args.steps or known.get("steps", 0),
        seed=args.seed if args.seed is not None else known.get("seed", 0),
    )
    print(f"added {entry.id}")


def _run_facts(model_dir: str) -> dict:
    """What a run says of itself for its library entry: task, model name, fingerprint, seed,
    and its last evaluation (step, main metric)."""
    from prompt_transfer.trainer import run_dir, run_record

    record = run_record.read(model_dir) or {}
    spec = record.get("spec", {})
    folder = run_dir.RunDir(model_dir)
    model_file = folder.file(run_dir.MODEL_FILE)
    model = json.loads(model_file.read_text()) if model_file.exists() else {}
    last = (folder.read_eval_history(trained=True) or [None])[-1]  # steps trained
    facts = {"task": spec.get("task"), "model": spec.get("model_name"),
             "fingerprint": model.get("fingerprint", ""), "seed": spec.get("seed", 0)}  # fmt: skip
    if last:
        facts.update(score=last["value"], metric=last["metric"], steps=last["step"])
    return {k: v for k, v in facts.items() if v is not None}


def _import(lib, args) -> None:
    path = paths.path(args.path)
    if peft_io.is_adapter(path):
        _import_adapter(lib, args, path)
        return
    if not args.model:
        raise library.LibraryError("library import needs --model (the frozen model's name)")
    arrays = sorted(path.glob("*.npy")) if path.is_dir() and any(path.glob("*.npy")) else [path]
    meta = (
        library.released_prompt_metadata(path / "README.md")
        if path.is_dir() and (path / "README.md").exists()
        else {}
    )
    for f in arrays:
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


def _import_adapter(lib, args, path: Path) -> None:
    prompt, config = peft_io.read_adapter(path)
    base = config.get("base_model_name_or_path")
    model = args.model or base
    if not model:
        raise library.LibraryError(
            f"{path} names no base_model_name_or_path; pass --model (the frozen model's name)"
        )
    entry = lib.add(
        prompt,
        task=args.task or path.name,
        model=model,
        model_fingerprint=args.fingerprint,
        kind="peft",
        note=f"PEFT prompt-tuning adapter {path.resolve()}, base model {base or 'not named'}",
    )
    shape = f"{entry.prompt_length}x{entry.embed_dim}"
    print(f"imported the PEFT adapter {path} as {entry.id} ({shape})")


def _list(lib, args) -> None:
    entries = lib.entries(**({"task": args.task} if args.task else {}))
    damaged = 0
    for e in entries:
        score = "" if e.score is None else f"{e.score:.2f} {e.metric}"
        shape = f"{e.prompt_length}x{e.embed_dim}" + (f"+{e.deep_width}" if e.deep_width else "")
        mark = "  DAMAGED" if lib.problem(e) else ""
        damaged += bool(mark)
        print(f"{e.id:<32} {e.task:<24} {e.model:<22} {shape:<14} {score}{mark}")
    note = f" ({damaged} damaged: `prompt-transfer library verify` says how)" if damaged else ""
    print(f"{len(entries)} entries in {lib.root}{note}")


def _verify(lib, args) -> int:
    """Every entry's files against its meta.json's hashes; exit 1 when one is damaged."""
    entries, bad = lib.entries(), 0
    for entry in entries:
        problem = lib.problem(entry)
        bad += problem is not None
        print(f"damaged  {problem}" if problem else f"ok       {entry.id}")
    print(f"{len(entries) - bad} of {len(entries)} entries intact in {lib.root}")
    return 1 if bad else 0


def _show(lib, args) -> None:
    entry = lib.get(args.entry)
    prompt = lib.prompt(entry)
    if entry.deep_width:  # its deep part is checked too
        lib.prompt(entry, deep=True)
    print(json.dumps(dict(dataclasses.asdict(entry), norm=float(np.linalg.norm(prompt))), indent=1))


def _remove(lib, args) -> None:
    lib.remove(args.entry)
    print(f"removed {args.entry}")


def _export(lib, args) -> None:
    """An entry's prompt, or a run's best or latest one, as .npy, T5X numpy or a PEFT adapter."""
    if bool(args.entry) == bool(args.run):
        raise library.LibraryError("library export takes an ENTRY or --run MODEL_DIR (one of them)")
    if args.run:
        (prompt, deep), model, name = _run_prompt(args.run, args.checkpoint), "unnamed", args.run
        is_deep = deep is not None
    else:
        entry = lib.get(args.entry)
        problem = lib.problem(entry)
        if problem:  # its deep part too, though a .npy holds the input prompt only
            raise library.LibraryError(problem)
        prompt, model, name = np.asarray(lib.prompt(entry)), entry.model, entry.id
        is_deep = bool(entry.deep_width)
    if is_deep and args.format != "npy":
        raise library.LibraryError(
            f"{name} is a deep prompt; a {args.format} prompt holds the input prompt "
            "only and its layers' keys and values would be lost (--format npy writes the "
            "input prompt alone, on purpose)"
        )
    if is_deep:
        print(f"note: {name} is a deep prompt; the .npy holds its input prompt only")
    output = paths.path(args.output)
    wrong = (
        paths.file_problem(args.output, "prompt.npy")
        if args.format == "npy"
        else paths.folder_problem(args.output)
    )
    if wrong:
        raise library.LibraryError(f"--output={args.output} {wrong}")
    if args.format == "peft":
        base = args.base_model or (None if model == "unnamed" else model)
        peft_io.write_adapter(prompt, output, base)
        print(f"wrote the PEFT prompt-tuning adapter {output} (base model {base or 'not named'})")
    elif args.format == "t5x":
        print(f"wrote the T5X numpy prompt {library.write_t5x_prompt(prompt, output)}")
    else:
        files.save_npy(output, np.asarray(prompt, np.float32))
        print(f"wrote {output}")


def _run_prompt(model_dir: str, which: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(input prompt, deep columns or None) of a run's best or latest checkpoint: the arrays the
    checkpoint holds (trainer/weights.run_prompt), a deep prompt's layers with them."""
    from prompt_transfer.trainer import weights

    wrong = paths.folder_problem(model_dir)
    if wrong:
        raise library.LibraryError(f"--run={model_dir} {wrong} (a run's MODEL_DIR)")
    if not paths.path(model_dir).exists():
        raise library.LibraryError(
            f"--run={model_dir}: no run there (no such folder); give a run's MODEL_DIR"
        )
    prompt, deep, _ = weights.run_prompt(model_dir, which)
    return prompt, deep


def _train_projector(lib, args) -> None:
    from prompt_transfer.transfer import projector

    tasks, sources, targets = projector.paired_prompts(lib, args.source_model, args.target_model)
    proj, mse = projector.train_projector(sources, targets, steps=args.steps)
    print(
        f"trained on {len(tasks)} paired prompts ({', '.join(tasks)}); final mse {mse:.4g}; "
        f"wrote {proj.save(args.output)}"
    )


def _project(lib, args) -> None:
    from prompt_transfer.transfer import projector

    entry = projector.project_entry(
        lib, args.entry, projector.Projector.load(args.projector), args.model, args.fingerprint
    )
    print(f"added {entry.id} ({entry.prompt_length}x{entry.embed_dim} for {entry.model})")


def _rank(lib, args) -> None:
    from prompt_transfer.transfer import retrieval

    target = lib.get(args.target)
    entries = retrieval.eligible_sources(  # a deep target is compared in its wide form
        lib, target.model_fingerprint, target.embed_dim, [target.task], target.deep_width
    )
    deep = bool(target.deep_width)
    ranked = retrieval.rank_sources(
        lib, lib.prompt(target, deep=deep), args.metric, entries, args.top_k
    )
    for r, score in zip(ranked, significant([r.score for r in ranked], least=4), strict=True):
        print(f"{score:>12}  {r.entry.task:<28} {r.entry.id}")


ACTIONS = {
    "add": _add,
    "import": _import,
    "list": _list,
    "show": _show,
    "remove": _remove,
    "export": _export,
    "train-projector": _train_projector,
    "project": _project,
    "rank": _rank,
    "verify": _verify,
}


def cmd_library(args) -> int | None:
    return ACTIONS[args.action](_library(args), args)


def add_commands(sub) -> None:
    p = sub.add_parser(
        "library",
        help="the prompt library: add, list, show, remove, export, import, rank, verify",
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
        "verify",
    ):
        q = lib_sub.add_parser(action)
        q.add_argument("--library", help="default: $PROMPT_TRANSFER_LIBRARY or ~/.cache/...")
        if action in ("add", "import"):
            q.add_argument(
                "path",
                help=".npy, T5X numpy checkpoint dir, released-prompt dir"
                + (", or a run's MODEL_DIR (its trained prompt)" if action == "add" else "")
                + (", or PEFT prompt-tuning adapter dir" if action == "import" else ""),
            )
            q.add_argument("--task", help="add: default, a run's own task")
            q.add_argument(
                "--model",
                help="e.g. t5_1_1_lm100k_base (import: default, a PEFT adapter's base model)",
            )
            q.add_argument("--fingerprint", default="", help="frozen checkpoint fingerprint")
        if action == "add":
            q.add_argument("--score", type=float)
            q.add_argument("--metric")
            q.add_argument("--steps", type=int, default=0)
            q.add_argument("--seed", type=int)
        if action == "list":
            q.add_argument("--task")
        if action in ("show", "remove"):
            q.add_argument("entry")
        if action == "export":
            q.add_argument("entry", nargs="?", help="library entry id (or --run)")
            q.add_argument("--run", help="a run's MODEL_DIR instead of an entry")
            q.add_argument("--checkpoint", choices=("best", "latest"), default="best")
            q.add_argument("--format", choices=("npy", "t5x", "peft"), default="npy")
            q.add_argument("--base-model", help="PEFT base_model_name_or_path (default: entry's)")
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
