"""Commands that run gin-configured jobs: train, eval, infer, task-embedding, spot, study, demo.

Arguments as T5X's (--gin_file=..., --gin.MACRO=..., --gin_bindings=...), parsed by gin_utils.
The trainer and the flow are imported when a command runs, so `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

from prompt_transfer.base import environment, paths


def train_main(argv: list[str]) -> dict:
    """`prompt-transfer train --gin_file=... --gin.MODEL_DIR=... [--overwrite | --resume]`."""
    from prompt_transfer.configure import gin_utils
    from prompt_transfer.trainer import config, remote, train

    launch = gin_utils.parse_command_line(argv, flags=("overwrite", "resume", "check"))
    config_text = gin_utils.configure(launch.files, launch.bindings, launch.search_paths)
    spec, train_config = gin_utils.build(config.RunSpec), gin_utils.build(config.TrainConfig)
    explicit = {gin_utils.bound_name(b) for b in launch.bindings}
    if "TRAIN_STEPS" in explicit and "TRAIN_STEPS_RELATIVE" not in explicit:
        # The command line's step count, not a gin file's TRAIN_STEPS_RELATIVE (which would
        # decide otherwise, as in T5X): what the user typed is what the run does.
        train_config = dataclasses.replace(train_config, relative_steps=None)
    remote.check_run(spec, {"MODEL_DIR": spec.model_dir, "LIBRARY_DIR": train_config.library_dir})
    if launch.flags.pop("check"):
        return train.check_only(spec, train_config, config_text, **launch.flags)
    return train.train(spec, train_config, config_text=config_text, **launch.flags)


def evaluate_main(argv: list[str]) -> dict:
    """`prompt-transfer eval --gin.MODEL_DIR=DIR`: the run as its record says, read as the
    command's gin files (if any) ask (`_run_spec`), plus EVAL_SPLIT and CHECKPOINT. With T5X's
    eval.gin (or prompt-tuning's prompt_eval.gin): CHECKPOINT_PATH and PROMPT_FILE instead."""
    from prompt_transfer.trainer import evaluate

    return _configured(evaluate.evaluate, evaluate.evaluate_checkpoint, argv)


def infer_main(argv: list[str]) -> str:
    """`prompt-transfer infer`: as eval, plus INFER_INPUT_FILE and INFER_OUTPUT_FILE (T5X's
    infer.gin, prompt_infer.gin: CHECKPOINT_PATH, PROMPT_FILE, INFER_OUTPUT_DIR)."""
    from prompt_transfer.trainer import evaluate

    return _configured(evaluate.infer, evaluate.infer_checkpoint, argv)


def _configured(job, on_checkpoint, argv: list[str]):
    """`job(spec)` as the gin files of `argv` bind it and the run's RunSpec; gin files that bind
    CHECKPOINT_PATH (T5X's eval.gin and infer.gin) read a checkpoint, not a run:
    `on_checkpoint(spec)` with the RunSpec they bind."""
    from prompt_transfer.configure import gin_utils
    from prompt_transfer.trainer import config, remote

    launch = gin_utils.parse_command_line(argv, need_files=False)
    if launch.files:
        text = gin_utils.configure(launch.files, launch.bindings, launch.search_paths)
        if gin_utils.binds_macro("CHECKPOINT_PATH"):
            from prompt_transfer.trainer import evaluate

            # T5X's eval.gin: TASK_FEATURE_LENGTHS = None measures the split's longest example.
            measure = gin_utils.macro("TASK_FEATURE_LENGTHS") is None
            if measure:
                gin_utils.set_macro("TASK_FEATURE_LENGTHS", {"inputs": 1, "targets": 1})
            spec = gin_utils.build(config.RunSpec)
            remote.check_run(spec)
            if measure:
                spec = evaluate.with_longest_lengths(spec, gin_utils.macro("EVAL_SPLIT"))
            return gin_utils.configured(on_checkpoint)(spec, config_text=text)
    spec = _run_spec(argv)
    return gin_utils.configured(job)(spec)


def _run_spec(argv: list[str]):
    """The RunSpec to read a trained run with, its gs:// reads checked: the run's own record
    (MODEL_DIR/run.json) read as the command asks (trainer/run_record.py). With gin files, what
    they bind must agree with the run where it changes the output; with none, the run's record
    alone, and the command line's --gin.X= of the run's macros read the same way."""
    from prompt_transfer.configure import gin_utils
    from prompt_transfer.trainer import config, remote, run_record

    launch = gin_utils.parse_command_line(argv, need_files=False)
    explicit = {gin_utils.bound_name(b) for b in launch.bindings}
    files = launch.files
    if files:
        with contextlib.redirect_stderr(io.StringIO()):  # its notes are the second parse's
            gin_utils.configure(files, launch.bindings, launch.search_paths)
        if not gin_utils.binds(config.RunSpec):  # how to read only (a decoding file): the run's
            files = ["runs/eval_run", *files]
    if files and files == launch.files:
        asked = gin_utils.build(config.RunSpec)
        remote.check_run(asked)  # its gs:// paths answer before the run's record is read
        spec = run_record.for_command(asked, explicit, per_run=gin_utils.binds_flow())
    else:
        own = [b for b in launch.bindings if gin_utils.bound_name(b) in run_record.macros()]
        rest = [b for b in launch.bindings if b not in own]
        gin_utils.configure(files or ["runs/eval_run"], rest, launch.search_paths)
        overrides = {gin_utils.bound_name(b): gin_utils.literal(b) for b in own}
        model_dir = gin_utils.macro("MODEL_DIR")
        instead = "MODEL_DIR='/path/folder' (a local folder)"
        remote.check([remote.Need(f"MODEL_DIR={model_dir!r}", model_dir, instead, output=True)])
        spec = run_record.for_overrides(model_dir, overrides)
        asked = None
    if spec != asked:
        remote.check_run(spec)  # the run's own reads (its checkpoint, vocabulary, tasks)
    return spec


def forget_main(args) -> dict:
    """`prompt-transfer forget --run MODEL_DIR --library DIR`: the run's own config.gin (and any
    --gin.X=... after it) rebuilds the run."""
    from prompt_transfer.trainer import forget, run_record

    config_file = paths.path(args.run) / "config.gin"
    if not config_file.exists():
        raise forget.TrainError(
            f"--run {args.run!r} holds no run (no config.gin); give a trained run's MODEL_DIR"
        )
    # The run's record says what it is; a run older than records, its own config.gin.
    own = [] if run_record.read(args.run) else [f"--gin_file={config_file}"]
    spec = _run_spec([*own, *args.gin_args, f"--gin.MODEL_DIR='{args.run}'"])
    tasks = [t for t in (args.tasks or "").split(",") if t]
    return forget.forget(
        spec, args.library, split=args.split, checkpoint=args.checkpoint, tasks=tasks
    )


def cmd_forget(args) -> None:
    from prompt_transfer.trainer import forget

    report = forget_main(args)
    print(forget.table(report))
    print(f"wrote {args.run}/forget_{args.split}_{args.checkpoint}.json")


def _said_checked(summary: dict) -> bool:
    """--check's answer, one line a setting; False when the command ran for real."""
    if summary.get("check") != "ok":
        return False
    print("\n".join(f"{k}: {v}" for k, v in summary.items() if k != "check"))
    print("check passed: nothing trained or written")
    return True


def cmd_train(args) -> None:
    summary = train_main(args.gin_args)
    if not _said_checked(summary):
        print(json.dumps(summary))


def cmd_task_embedding(args) -> None:
    overrides = [
        f"--gin.LIBRARY_DIR='{args.library}'",
        "--gin.LIBRARY_KIND='task_embedding'",
        f"--gin.TRAIN_STEPS_RELATIVE={args.steps}",
        "--gin.EVAL_PERIOD=0",
        f"--gin.SAVE_PERIOD={args.steps}",
    ]
    summary = train_main([*args.gin_args, *overrides])
    print(f"task embedding of {args.steps} steps stored as {summary['library_entry']}")


def cmd_spot(args) -> None:
    from prompt_transfer.spot import flow

    report = flow.main(args.gin_args)
    if _said_checked(report):
        return
    print(f"SPoT flow done: {len(report['rows'])} target runs; see report.md in WORK_DIR")


def cmd_study(args) -> None:
    from prompt_transfer.study import run

    study = run.main(args.gin_args)
    if _said_checked(study):
        return
    print(f"study done: {len(study['pairs'])} source-target pairs; see study.md in WORK_DIR")


def cmd_demo(args) -> None:
    from prompt_transfer.base import assets
    from prompt_transfer.data import offline_data

    for name in ("offline_spm.model", "offline_t5"):  # fail before any work on a bad artifact
        assets.verify(name)
    if environment.drop_vocab_override():  # the shipped model needs its own vocabulary
        print("demo: ignoring $PROMPT_TRANSFER_VOCAB (the shipped model has its own vocabulary)")
    offline_data.prepare(offline_data.cache_dir())  # a no-op once prepared
    from prompt_transfer.spot import flow

    report = flow.main(
        [
            "--gin_file=experiments/demo",
            f"--gin.WORK_DIR='{args.work_dir}'",
            f"--gin.RANDOM_SEED={args.seed}",
            *args.gin_args,
        ]
    )
    if _said_checked(report):
        return
    print("\n".join([*report["verdict"], *report.get("races", [])]))
    print(f"demo done: {args.work_dir}/report.md (and its PNG figures beside it)")


def cmd_eval(args) -> None:
    print(json.dumps(evaluate_main(args.gin_args), indent=1))


def cmd_infer(args) -> None:
    print(f"wrote {infer_main(args.gin_args)}")


def launch_flags():
    """T5X's flags for a job of several processes (hosts), where every process runs the same
    command with its own --process_index (docs/pods.md), and for its data."""
    import argparse

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--tfds_data_dir",
        help="where TFDS data sets are prepared (local or gs://), as T5X's flag; "
        "default $TFDS_DATA_DIR or ~/tensorflow_datasets",
    )
    parent.add_argument(
        "--seqio_additional_cache_dirs",
        help="folders (comma-separated, local or gs://) searched for SeqIO's cached tasks, read "
        "with --gin.USE_CACHED_TASKS=True, as T5X's flag",
    )
    group = parent.add_argument_group("multi-host (as T5X)")
    group.add_argument(
        "--multiprocess_gpu",
        action="store_true",
        help="join the job's other processes (found by JAX on Slurm or Open MPI without the "
        "flags below)",
    )
    group.add_argument("--coordinator_address", help="HOST:PORT of process 0")
    group.add_argument("--process_count", type=int, help="how many processes the job has")
    group.add_argument("--process_index", type=int, help="this process, 0..process_count-1")
    group.add_argument(
        "--initialization_timeout",
        type=int,
        help="seconds a process waits for the others to join (default JAX's, 300)",
    )
    return parent


def add_commands(sub) -> None:
    parent = [launch_flags()]
    p = sub.add_parser(
        "train",
        parents=parent,
        help="train (prompt tuning, model tuning) from gin files",
        description="Arguments as T5X's: --gin_file=NAME (found in gin/), "
        "--gin.MACRO=VALUE, --gin_bindings=..., plus --overwrite / --resume, and --check "
        "(validate everything and print the resolved run; nothing trained or written).",
    )
    p.set_defaults(func=cmd_train, takes_gin=True)

    _add_forget(sub, parent)

    p = sub.add_parser(
        "task-embedding",
        parents=parent,
        help="SPoT's task embedding: a short prompt-tuning run, its prompt stored in a library",
        description="The run's gin files and overrides as for train, plus --library and --steps.",
    )
    p.add_argument("--library", required=True)
    p.add_argument("--steps", type=int, default=10_000, help="SPoT used 10K")
    p.set_defaults(func=cmd_task_embedding, takes_gin=True)

    p = sub.add_parser(
        "demo",
        parents=parent,
        help="the offline demo: the SPoT flow on the shipped small T5 (about 10 min on 2 CPUs)",
        description="Runs gin/experiments/demo.gin; --gin.X=... overrides its macros "
        "(step counts, SOURCES, TARGETS). A re-run reuses every finished run. --check: "
        "validate and print the flow, nothing trained.",
    )
    p.add_argument("--work-dir", default="runs/demo", help="where runs and the report go")
    p.add_argument("--seed", type=int, default=0, help="seeds data order and prompt inits")
    p.set_defaults(func=cmd_demo, takes_gin=True)

    p = sub.add_parser(
        "spot",
        parents=parent,
        help="the whole SPoT flow: sources, library, task embeddings, retrieval, transfer, report",
        description="Gin files as for train (e.g. --gin_file=experiments/demo) and "
        "--gin.WORK_DIR, --gin.SOURCES, --gin.TARGETS; --check validates and prints the flow, "
        "nothing trained.",
    )
    p.set_defaults(func=cmd_spot, takes_gin=True)

    p = sub.add_parser(
        "study",
        parents=parent,
        help="which source helps: every source against every target, and which similarity "
        "predicts the gain (study.json, study.md)",
        description="Gin files as for spot (e.g. --gin_file=experiments/study_offline); its "
        "macros are the flow's: WORK_DIR, SOURCES, TARGETS, SEEDS_PER_RUN, the step counts, "
        "SIMILARITY_METRICS, RETRIEVAL_METRIC; --check validates and prints the study.",
    )
    p.set_defaults(func=cmd_study, takes_gin=True)

    for name, func, text in (
        ("eval", cmd_eval, "evaluate a trained run on a task split"),
        ("infer", cmd_infer, "write a trained run's predictions (JSONL)"),
    ):
        p = sub.add_parser(
            name,
            parents=parent,
            help=text,
            description="--gin.MODEL_DIR=DIR alone reads the run as it trained (its run.json); "
            "gin files given too may change how it is read (lengths, split, batch, task), not "
            "what it is. Plus --gin.EVAL_SPLIT, --gin.CHECKPOINT ('latest'/'best'/'checkpoint_N'), "
            "--gin.INFER_INPUT_FILE.",
        )
        p.set_defaults(func=func, takes_gin=True)


def _add_forget(sub, parent) -> None:
    p = sub.add_parser(
        "forget",
        parents=parent,
        help="what a run that changed the network forgets: other tasks' scores with their "
        "library prompts, before and after",
        description="Scores each other task of --library with its newest trained prompt on "
        "the frozen network and on the run's network (model tuning, prompt then model); "
        "prints the share kept and writes MODEL_DIR/forget_<split>_<checkpoint>.json.",
    )
    p.add_argument("--run", required=True, help="the run's MODEL_DIR")
    p.add_argument("--library", required=True, help="the prompt library of the other tasks")
    p.add_argument("--split", default="validation")
    p.add_argument("--checkpoint", default="latest", choices=("latest", "best"))
    p.add_argument("--tasks", help="comma-separated: only these tasks of the library")
    p.set_defaults(func=cmd_forget, takes_gin=True)
