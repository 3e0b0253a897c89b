"""SIGKILL at seeded points of a run (inside steps, file writes, checkpoints, evaluations and
the library write), then the same command again: the run ends with the prompt an uninterrupted
run ends with, bit for bit, and no file is left corrupt.

Each kill runs in its own process (kill_at.py); the resumes run in this one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.trainer import run_dir
from prompt_transfer.transfer import library

KILL_AT = Path(__file__).with_name("kill_at.py")
STEPS = 8


def _argv(model_dir, lib):
    steps = [f"--gin.TRAIN_STEPS={STEPS}", "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=4"]
    return ["train", *tiny_run_args(model_dir, *steps, f"--gin.LIBRARY_DIR='{lib}'")]


def _kill_points():
    """(point, n): where and at which visit the process dies, drawn with a fixed seed; 8 in the
    default suite (about 10 s each), more with PROMPT_TRANSFER_KILL_POINTS (up to 21)."""
    rng = np.random.default_rng(20)
    visits = {"step": STEPS, "write": 6, "checkpoint": STEPS // 2, "eval": 2, "library": 1}
    count = min(int(os.environ.get("PROMPT_TRANSFER_KILL_POINTS", 8)), sum(visits.values()))
    points = [("library", 1), ("eval", 1)]  # always: the end of a run, a torn history line
    while len(points) < count:
        point = str(rng.choice(sorted(visits)))
        n = int(rng.integers(1, visits[point] + 1))
        if (point, n) not in points:
            points.append((point, n))
    return points


@pytest.fixture(scope="module")
def uninterrupted(anchors, tmp_path_factory):
    register_keyword_task(T5_VOCAB)
    root = tmp_path_factory.mktemp("whole")
    assert cli.main(_argv(root / "run", root / "library")) == 0
    return np.load(root / "run" / "prompts" / f"checkpoint_{STEPS}.npy")


@pytest.mark.parametrize("point, n", _kill_points())
def test_a_killed_run_resumes_to_the_uninterrupted_prompt(uninterrupted, tmp_path, point, n):
    model_dir, lib = tmp_path / "run", tmp_path / "library"
    argv = _argv(model_dir, lib)
    killed = subprocess.run(
        [sys.executable, str(KILL_AT), point, str(n), "--", *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]  # it died where it was told to
    assert cli.main(argv) == 0  # the same command again (a stale lock is taken over)

    final = np.load(model_dir / "prompts" / f"checkpoint_{STEPS}.npy")
    np.testing.assert_array_equal(final, uninterrupted)
    history = run_dir.RunDir(model_dir).read_eval_history()
    assert [h["step"] for h in history] == [4, 8]
    assert all(json.loads(line) for line in (model_dir / "eval_history.jsonl").open())
    (entry,) = library.Library(lib).entries()  # one entry, whole, with the final prompt
    np.testing.assert_array_equal(library.Library(lib).prompt(entry), uninterrupted)
    assert not list(model_dir.rglob(".*.tmp*")) and not (model_dir / run_dir.LOCK_FILE).exists()
