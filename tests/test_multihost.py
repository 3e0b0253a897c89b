"""A prompt-tuning run as 2 processes x 2 CPU devices (jax.distributed with a local coordinator,
gloo collectives), launched with T5X's flags as a user would, against 1 process x 4 devices
with the same global batches (DATA_SHARDS=2): it is pre-empted (SIGTERM to one process), then
killed (SIGKILL to both), each time relaunched with the same command, and it ends with the
prompt and the evaluations of the uninterrupted single-process run, its side files written
once. As on a pod, its MODEL_DIR and library are in a bucket (tests/fake_gcs.py)."""

import signal

import multihost_runs as mh
import numpy as np
import pytest

from prompt_transfer.base.errors import EXIT_PREEMPTED

STEPS = mh.STEPS


@pytest.fixture(scope="module")
def task_files(anchors, tmp_path_factory):
    return mh.task_files(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def one_process(task_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    [(code, err)] = mh.finish(mh.launch(mh.argv(task_files, root / "run"), 1, 4, root / "jax"))
    assert code == 0, err
    return root / "run"


def test_two_processes_preempted_and_killed_end_where_one_process_does(
    one_process, task_files, tmp_path, fake_gcs
):
    bucket, uri = fake_gcs, "gs://bucket/run"
    read = lambda name: bucket.get(f"{uri}/{name}")
    reference = lambda name: (one_process / name).read_bytes()
    argv = mh.argv(task_files, uri)
    cache = tmp_path / "jax"

    # Pre-emption reaches one process; both stop at one step, save it and exit 4.
    procs = mh.launch(argv, 2, 2, cache, bucket)
    mh.when_logged(read, f"step 2/{STEPS}", procs)
    procs[1].send_signal(signal.SIGTERM)
    ended = mh.finish(procs)
    assert [code for code, _ in ended] == [EXIT_PREEMPTED] * 2, ended
    stopped = {int(err.split("SIGTERM at step ")[1].split(":")[0]) for _, err in ended}
    assert len(stopped) == 1, ended  # the same step on both
    (stop,) = stopped
    assert 2 <= stop < STEPS and f"checkpoint_{stop}/commit_success.txt" in bucket.names(uri)

    # Relaunched, then both killed outright past the next periodic checkpoint.
    procs = mh.launch(argv, 2, 2, cache, bucket)
    after = (stop // 4 + 1) * 4 + 1
    mh.when_logged(read, f"step {after}/{STEPS}", procs)
    for p in procs:
        p.kill()
    mh.finish(procs)

    # The same command again finishes the run.
    ended = mh.finish(mh.launch(argv, 2, 2, cache, bucket))
    assert [code for code, _ in ended] == [0, 0], ended
    assert not bucket.unhandled, bucket.unhandled

    # The prompt of every checkpoint kept, and the evaluations, are the single process's.
    kept = sorted(
        int(n.split("/")[0].split("_")[1])
        for n in bucket.names(uri)
        if n.startswith("checkpoint_") and n.endswith("/commit_success.txt")
    )
    assert kept[-1] == STEPS and len(kept) >= 2
    assert not np.allclose(mh.prompt(reference, 4), mh.prompt(reference, STEPS), atol=1e-2)
    for step in kept:
        np.testing.assert_allclose(
            mh.prompt(read, step), mh.prompt(reference, step), atol=1e-5, rtol=0
        )
    # Each evaluation once; each process read its share of the 15 examples, and all were seen.
    two, one = mh.evaluations(read), mh.evaluations(reference)
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
