"""A prompt-tuning run as 2 processes x 2 CPU devices (jax.distributed with a local coordinator,
gloo collectives), launched with T5X's flags as a user would, against 1 process x 4 devices
with the same global batches (DATA_SHARDS=2): it is pre-empted (SIGTERM to one process), then
killed (SIGKILL to both), each time relaunched with the same command, and it ends with the
prompt and the evaluations of the uninterrupted single-process run, its side files written
once. As on a pod, its MODEL_DIR and library are in a bucket (tests/fake_gcs.py)."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from fake_gcs import FakeGcs
from synthetic_tasks import keyword_examples

from conftest import T5_VOCAB, tiny_run_args
from prompt_transfer.errors import EXIT_PREEMPTED

STEPS = 24


def _write_tsv(path, examples):
    rows = [f"{i}\t{t}\n" for i, t in zip(examples["inputs"], examples["targets"], strict=True)]
    path.write_text("sentence\tlabel\n" + "".join(rows))
    return path


@pytest.fixture(scope="module")
def task_files(anchors, tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    return (
        _write_tsv(root / "train.tsv", keyword_examples(128, 0)),
        _write_tsv(root / "validation.tsv", keyword_examples(15, 1)),  # odd: padded batches
    )


def _argv(task_files, model_dir):
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
        task=None,  # file_task.gin names it: FILE_TASK_NAME
    )
    return ["train", *run]


def _launch(
    argv, processes: int, devices: int, jax_cache, bucket: FakeGcs | None = None
) -> list[subprocess.Popen]:
    env = dict(
        os.environ,
        **(bucket.env() if bucket else {}),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
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


def _finish(procs, timeout: float = 300) -> list[tuple[int, str]]:
    return [(p.wait(timeout), p.stderr.read()) for p in procs]


def _when_logged(read, text: str, procs, timeout: float = 300) -> None:
    """Wait until process 0's log.txt (`read(name)`: a file's bytes) holds `text`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if text in read("log.txt").decode():
                return
        except (KeyError, FileNotFoundError):  # not written yet
            pass
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process ended before {text!r}: {_finish(procs)}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in log.txt")


def _prompt(read, step: int) -> np.ndarray:
    return np.load(io.BytesIO(read(f"prompts/checkpoint_{step}.npy")))


def _evaluations(read) -> list[dict]:
    return [json.loads(line) for line in read("eval_history.jsonl").decode().splitlines()]


@pytest.fixture(scope="module")
def one_process(task_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    [(code, err)] = _finish(_launch(_argv(task_files, root / "run"), 1, 4, root / "jax"))
    assert code == 0, err
    return root / "run"


def test_two_processes_preempted_and_killed_end_where_one_process_does(
    one_process, task_files, tmp_path, fake_gcs
):
    bucket, uri = fake_gcs, "gs://bucket/run"
    read = lambda name: bucket.get(f"{uri}/{name}")
    reference = lambda name: (one_process / name).read_bytes()
    argv = _argv(task_files, uri)
    cache = tmp_path / "jax"

    # Pre-emption reaches one process; both stop at one step, save it and exit 4.
    procs = _launch(argv, 2, 2, cache, bucket)
    _when_logged(read, f"step 2/{STEPS}", procs)
    procs[1].send_signal(signal.SIGTERM)
    ended = _finish(procs)
    assert [code for code, _ in ended] == [EXIT_PREEMPTED] * 2, ended
    stopped = {int(err.split("SIGTERM at step ")[1].split(":")[0]) for _, err in ended}
    assert len(stopped) == 1, ended  # the same step on both
    (stop,) = stopped
    assert 2 <= stop < STEPS and f"checkpoint_{stop}/commit_success.txt" in bucket.names(uri)

    # Relaunched, then both killed outright past the next periodic checkpoint.
    procs = _launch(argv, 2, 2, cache, bucket)
    after = (stop // 4 + 1) * 4 + 1
    _when_logged(read, f"step {after}/{STEPS}", procs)
    for p in procs:
        p.kill()
    _finish(procs)

    # The same command again finishes the run.
    ended = _finish(_launch(argv, 2, 2, cache, bucket))
    assert [code for code, _ in ended] == [0, 0], ended
    assert not bucket.unhandled, bucket.unhandled

    # The prompt of every checkpoint kept, and the evaluations, are the single process's.
    kept = sorted(
        int(n.split("/")[0].split("_")[1])
        for n in bucket.names(uri)
        if n.startswith("checkpoint_") and n.endswith("/commit_success.txt")
    )
    assert kept[-1] == STEPS and len(kept) >= 2
    assert not np.allclose(_prompt(reference, 4), _prompt(reference, STEPS), atol=1e-2)
    for step in kept:
        np.testing.assert_allclose(_prompt(read, step), _prompt(reference, step), atol=1e-5, rtol=0)
    # Each evaluation once; each process read its share of the 15 examples, and all were seen.
    two, one = _evaluations(read), _evaluations(reference)
    assert [e["step"] for e in two] == [e["step"] for e in one] == [12, 24]
    for a, b in zip(two, one, strict=True):
        assert a["value"] == pytest.approx(b["value"])
        assert a["predictions"] == b["predictions"] and a["labels"] == b["labels"]
        assert sum(a["labels"]["mh_keyword"].values()) == 15

    # Side files once: one library entry, one log line per step and launch, a data iterator
    # state per process.
    assert len([n for n in bucket.names("gs://bucket/run-library") if n.endswith("meta.json")]) == 1
    log = read("log.txt").decode()
    assert log.count(f"step {STEPS}/{STEPS} ") == 1 and log.count("step 1/") == 1
    states = {n.split("/")[1] for n in bucket.names(uri) if n.startswith("data_state/p")}
    assert states == {"p0", "p1"}


def _restored(model_dir):
    """The run's parameters as `eval` restores them (its config.gin), flattened."""
    import gin
    from flax import traverse_util

    from prompt_transfer import gin_utils
    from prompt_transfer.trainer import config, evaluate

    gin.clear_config()
    launch = gin_utils.parse_command_line(
        [f"--gin_file={model_dir / 'config.gin'}", f"--gin.MODEL_DIR='{model_dir}'"]
    )
    gin_utils.configure(launch.files, launch.bindings)
    _, params, step = evaluate.trained(gin_utils.build(config.RunSpec), "latest")
    return step, traverse_util.flatten_dict(params, sep="/")


def test_prompt_then_model_as_two_processes_with_partitions_ends_where_one_process_does(
    task_files, tmp_path
):
    """Both phases of a prompt-then-model run, 2 processes x 2 devices against 1 x 4, each with
    NUM_PARTITIONS=2: the boundary written once, the same evaluations in both phases and the
    same network and prompt at the end."""

    def argv(model_dir):
        return [
            "train",
            "--gin_file=runs/prompt_then_model",
            *_argv(task_files, model_dir)[1:],
            "--gin.TRAIN_STEPS=4",
            "--gin.MODEL_STEPS=4",
            "--gin.SAVE_PERIOD=4",
            "--gin.EVAL_PERIOD=4",
            "--gin.NUM_PARTITIONS=2",
            "--gin.MODEL_LEARNING_RATE=0.01",
        ]

    cache = tmp_path / "jax"
    [(code, err)] = _finish(_launch(argv(tmp_path / "one"), 1, 4, cache))
    assert code == 0, err
    ended = _finish(_launch(argv(tmp_path / "two"), 2, 2, cache))
    assert [code for code, _ in ended] == [0, 0], ended
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "phases.json").read_text() == (one / "phases.json").read_text()
    assert (two / "log.txt").read_text().count("phase 2: the network trains") == 1
    steps = {}
    for sub in ("phase1", ""):
        a = _evaluations(lambda n, s=sub: (two / s / n).read_bytes())
        b = _evaluations(lambda n, s=sub: (one / s / n).read_bytes())
        steps[sub] = [e["step"] for e in a]
        assert steps[sub] == [e["step"] for e in b]
        for x, y in zip(a, b, strict=True):
            assert x["value"] == pytest.approx(y["value"]) and x["predictions"] == y["predictions"]
    assert steps == {"phase1": [4], "": [4, 8]}  # phase 2 evaluates at the boundary too
    (step_two, two_params), (step_one, one_params) = _restored(two), _restored(one)
    assert step_two == step_one == 8 and two_params.keys() == one_params.keys()
    for name, value in one_params.items():
        np.testing.assert_allclose(two_params[name], value, atol=1e-5, rtol=0, err_msg=name)
