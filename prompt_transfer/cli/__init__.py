"""`prompt-transfer`: one console script; each subcommand calls library functions.

  models     checkpoint-info, convert, score, export             (cli/model.py)
  data       prepare-offline, cache-examples, cache-tasks, add-task, build-vocab  (cli/data.py)
  library    library add|import|list|show|remove|export|rank|...  (cli/library.py)
  jobs       train, eval, infer, task-embedding, spot, study, demo  (cli/jobs.py)

Exit statuses: 0 done, 2 bad input, 3 the loss diverged, 4 pre-empted (see base/errors.py).

May import: every folder but t5x.
"""

from __future__ import annotations

import argparse
import sys

from prompt_transfer.base import runtime
from prompt_transfer.cli import data, jobs, library, model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prompt-transfer",
        description="Soft prompt transfer on frozen T5 models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (model, data, library, jobs):
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_gin", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.gin_args = rest
    multihost = runtime.MultiHost(
        getattr(args, "multiprocess_gpu", False),
        getattr(args, "coordinator_address", None),
        getattr(args, "process_count", None),
        getattr(args, "process_index", None),
        getattr(args, "initialization_timeout", None),
    )
    return runtime.run_entry(args.command, lambda: _run(args), multihost)


def _run(args):
    if getattr(args, "tfds_data_dir", None):  # before any task reads its data
        from prompt_transfer.data import batches

        batches.set_tfds_data_dir(args.tfds_data_dir)
    if getattr(args, "seqio_additional_cache_dirs", None):
        from prompt_transfer.data import seqio_cache

        seqio_cache.add_dirs(args.seqio_additional_cache_dirs.split(","))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
