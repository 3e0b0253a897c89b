"""Launching a run as several processes (jax.distributed with a local coordinator, gloo
collectives) with T5X's flags, as a user would, on a file task of keyword examples: shared by
test_multihost.py and test_multihost_phases.py."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
from fake_gcs import FakeGcs
from synthetic_tasks import keyword_examples

from conftest import T5_VOCAB, WITH_DROPOUT, tiny_run_args

STEPS = 24


def write_tsv(path, examples):
    rows = [f"{i}\t{t}\n" for i, t in zip(examples["inputs"], examples["targets"], strict=True)]
    path.write_text("sentence\tlabel\n" + "".join(rows))
    return path


def task_files(root):
    """train.tsv (128 examples) and validation.tsv (15: padded batches) in `root`."""
    return (
        write_tsv(root / "train.tsv", keyword_examples(128, 0)),
        write_tsv(root / "validation.tsv", keyword_examples(15, 1)),  # odd: padded batches
    )


def argv(task_files, model_dir):
    train, validation = task_files
    run = tiny_run_args(
        model_dir,
        "--gin_file=tasks/file_task.gin",
        "--gin.FILE_TASK_NAME='mh_keyword'",
        f"--gin.FILE_TASK_TRAIN='{train}'",
        f"--gin.FILE_TASK_VALIDATION='{validation}'",
        "--gin.FILE_TASK_INPUTS=('sentence',)",
        "--gin.FILE_TASK_LABELS=('yes', 'no')",
        f"--gin.TRAIN_STEPS={STEPS}",
        "--gin.LEARNING_RATE=0.03",
        "--gin.BATCH_SIZE=8",
        "--gin.DATA_SHARDS=2",
        "--gin.SAVE_PERIOD=4",
        "--gin.EVAL_PERIOD=12",
        "--gin.EVAL_BATCH_SIZE=8",
        "--gin.LOG_PERIOD=1",
        f"--gin.LIBRARY_DIR='{model_dir}-library'",
        WITH_DROPOUT,  # each process draws its rows' bits as the single process does
        task=None,  # file_task.gin names it: FILE_TASK_NAME
    )
    return ["train", *run]


def launch(
    argv, processes: int, devices: int, jax_cache, bucket: FakeGcs | None = None
) -> list[subprocess.Popen]:
    env = dict(
        os.environ,
        **(bucket.env() if bucket else {}),
        XLA_FLAGS=" ".join(  # the session's flags (conftest.py), with this run's devices
            f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f
        )
        + f" --xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PROMPT_TRANSFER_VOCAB=str(T5_VOCAB),
        PROMPT_TRANSFER_JAX_CACHE=str(jax_cache),
    )
    command = [sys.executable, "-m", "prompt_transfer", *argv]
    if processes == 1:
        return [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    flags = [f"--coordinator_address=localhost:{port}", f"--process_count={processes}"]
    return [
        subprocess.Popen(
            [*command, *flags, f"--process_index={i}"], env=env, stderr=subprocess.PIPE, text=True
        )
        for i in range(processes)
    ]


def finish(procs, timeout: float = 300) -> list[tuple[int, str]]:
    return [(p.wait(timeout), p.stderr.read()) for p in procs]


def when_logged(read, text: str, procs, timeout: float = 300) -> None:
    """Wait until process 0's log.txt (`read(name)`: a file's bytes) holds `text`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if text in read("log.txt").decode():
                return
        except (KeyError, FileNotFoundError):  # not written yet
            pass
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process ended before {text!r}: {finish(procs)}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in log.txt")


def prompt(read, step: int) -> np.ndarray:
    return np.load(io.BytesIO(read(f"prompts/checkpoint_{step}.npy")))


def evaluations(read) -> list[dict]:
    return [json.loads(line) for line in read("eval_history.jsonl").decode().splitlines()]
