"""How long a resumed run waits for its first batch: replaying the input pipeline to the saved
position against restoring the data iterator's saved state (batches.BatchStream.save_state).

    .venv/bin/python benchmarks/resume_data.py [--task offline_tweet_domain] [--steps 10000]

Both resumes must yield the same next batch (checked). Writes benchmarks/resume_data.{md,json}.
Not a test: replaying 10,000 batches takes minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from prompt_transfer.base import runtime
from prompt_transfer.data import batches, offline_data

HERE = Path(__file__).resolve().parent


def _first_batch(**kwargs) -> tuple[float, dict]:
    start = time.perf_counter()
    stream = batches.BatchStream(**kwargs)
    batch = next(stream)
    return time.perf_counter() - start, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="offline_tweet_domain")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=64)
    args = parser.parse_args()
    runtime.start()  # quiet logs, as the console script
    offline_data.prepare()
    common = dict(
        name=args.task,
        feature_lengths={"inputs": args.inputs, "targets": 8},
        batch_size=args.batch_size,
        seed=0,
    )
    # The run being resumed: read to the saved position, then save the iterator there.
    stream = batches.BatchStream(**common)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(stream)
    first_pass = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "iterator")
        start = time.perf_counter()
        stream.save_state(state)
        save = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        expected = next(stream)
        replay, replayed = _first_batch(**common, position=args.steps)
        restore, restored = _first_batch(**common, position=args.steps, state_file=state)
    for name, batch in (("replay", replayed), ("restore", restored)):
        for key, value in expected.items():
            np.testing.assert_array_equal(batch[key], value, err_msg=f"{name}: {key}")
    results = {
        "task": args.task,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "inputs": args.inputs,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "first_pass_s": first_pass,
        "replay_s": replay,
        "restore_s": restore,
        "save_s": save,
        "state_bytes": size,
    }
    (HERE / "resume_data.json").write_text(json.dumps(results, indent=1))
    (HERE / "resume_data.md").write_text(
        f"Resume at step {args.steps} of `{args.task}` (batch {args.batch_size}, inputs "
        f"{args.inputs}), {results['machine']}; time to the first batch after the resume, the "
        "same batch both ways (checked).\n\n"
        "| resume by | seconds |\n|---|---|\n"
        f"| replaying the pipeline to batch {args.steps} | {replay:.1f} |\n"
        f"| restoring the saved iterator | {restore:.2f} |\n\n"
        f"Saving the iterator took {save:.3f} s and {size / 1024:.0f} KiB.\n"
    )
    print((HERE / "resume_data.md").read_text())


if __name__ == "__main__":
    main()
