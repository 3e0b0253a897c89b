"""Run a `prompt-transfer` command and SIGKILL it at a chosen point (for tests/faults).

    python tests/faults/kill_at.py POINT N -- train --gin_file=... ...

POINT names where the process dies, at the N-th time it gets there (1-based):
  step        before a training step runs
  write       inside an atomic file write: the temporary file is complete, not yet renamed
  checkpoint  right after orbax finished a checkpoint (or one was linked to best/'s), before
              the prompt export beside it
  eval        half-way through appending an evaluation to eval_history.jsonl
  library     inside a library write: the entry's temporary folder is complete, not renamed
"""

import contextlib
import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]  # synthetic_tasks, conftest's paths

from synthetic_tasks import register_keyword_task  # noqa: E402

from conftest import T5_VOCAB  # noqa: E402
from prompt_transfer import cli  # noqa: E402
from prompt_transfer.base import files, paths  # noqa: E402
from prompt_transfer.trainer import run_dir, saving, train_state  # noqa: E402
from prompt_transfer.transfer import library  # noqa: E402


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(point: str, n: int, argv: list[str]) -> int:
    calls = {"count": 0}

    def due() -> bool:
        calls["count"] += 1
        return calls["count"] == n

    if point == "step":
        real_step = train_state.LazyStep.__call__

        def step(self, *args):
            if due():
                die()
            return real_step(self, *args)

        train_state.LazyStep.__call__ = step
    elif point == "write":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(os.fspath(src)).name.startswith(".") and due():
                die()  # the temporary sibling is written and fsync'ed; the rename never comes
            return real_replace(src, dst, *args, **kwargs)

        paths.os.replace = replace
    elif point == "checkpoint":
        real_save = saving.CheckpointStore._save

        def save(self, *args):
            real_save(self, *args)
            if due():
                die()

        real_link = saving.CheckpointStore._linked_to_best

        def link(self, *args):
            linked = real_link(self, *args)
            if linked and due():
                die()
            return linked

        saving.CheckpointStore._save = save
        saving.CheckpointStore._linked_to_best = link
    elif point == "eval":
        real_open = run_dir.ProgressLog.eval_metrics

        def eval_metrics(self, step, results, name, value, *rest):
            if due():
                with (self.model_dir / run_dir.EVAL_HISTORY).open("a") as f:
                    f.write(f'{{"step": {step}, "metric": "acc')  # torn mid-line
                die()
            return real_open(self, step, results, name, value, *rest)

        run_dir.ProgressLog.eval_metrics = eval_metrics
    elif point == "library":
        real_directory = files.atomic_directory

        @contextlib.contextmanager
        def atomic_directory(target, *args, **kwargs):
            with real_directory(target, *args, **kwargs) as tmp:
                yield tmp
                if "library" in Path(target).parts and due():  # a library entry, no other
                    die()

        library.files.atomic_directory = atomic_directory
    else:
        raise SystemExit(f"unknown point {point!r}")
    register_keyword_task(T5_VOCAB)
    return cli.main(argv)


if __name__ == "__main__":
    point, n, sep, *rest = sys.argv[1:]
    assert sep == "--"
    sys.exit(main(point, int(n), rest))
