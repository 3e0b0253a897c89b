"""`prompt-transfer library ...`: the prompt library, retrieval and cross-model projection."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from prompt_transfer import paths
from prompt_transfer.spot.report import significant
from prompt_transfer.transfer import library


def _library(args) -> library.Library:
    root = args.library or paths.library_dir()
    return library.Library(root)


def _add(lib, args) -> None:
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


def _import(lib, args) -> None:
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


def _list(lib, args) -> None:
    entries = lib.entries(**({"task": args.task} if args.task else {}))
    for e in entries:
        score = "" if e.score is None else f"{e.score:.2f} {e.metric}"
        print(f"{e.id:<32} {e.task:<24} {e.model:<22} {e.prompt_length}x{e.embed_dim:<6} {score}")
    print(f"{len(entries)} entries in {lib.root}")


def _show(lib, args) -> None:
    entry = lib.get(args.entry)
    prompt = lib.prompt(entry)
    print(json.dumps(dict(dataclasses.asdict(entry), norm=float(np.linalg.norm(prompt))), indent=1))


def _remove(lib, args) -> None:
    lib.remove(args.entry)
    print(f"removed {args.entry}")


def _export(lib, args) -> None:
    print(f"wrote {lib.export(args.entry, args.output)}")


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
    entries = retrieval.eligible_sources(
        lib, target.model_fingerprint, target.embed_dim, [target.task]
    )
    ranked = retrieval.rank_sources(lib, lib.prompt(target), args.metric, entries, args.top_k)
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
}


def cmd_library(args) -> None:
    ACTIONS[args.action](_library(args), args)


def add_commands(sub) -> None:
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
