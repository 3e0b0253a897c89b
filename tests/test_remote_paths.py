"""Every path a user gives goes through the one path layer, and a job whose every file lives in
a bucket runs (tests/remote_job.py: train, resume, eval, infer, library export and import, and
a SPoT flow, which only the Cloud Storage bucket runs).

Two buckets: a local folder standing for `gs://bucket` (`paths.mounted`, what a gcsfuse mount
or $PROMPT_TRANSFER_MOUNTS gives), and a fake Google Cloud Storage server (tests/fake_gcs.py)
that TensorFlow's gs:// filesystem, tensorstore's gcs driver and orbax talk to as they would to
the real one: there the project's object-store branches run (no renames, no local locks, one
object at a time). Either way every file lands in the bucket and none in a `./gs:` folder of the
working directory (where `pathlib.Path('gs://bucket/run')` would put it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import remote_job

from prompt_transfer.base import paths

TESTS = Path(__file__).parent


def _check_bucket(names: set[str], read, flow: bool = True) -> None:
    for name in remote_job.WRITTEN + (remote_job.FLOW_WRITTEN if flow else []):
        assert name in names, name
    assert any(n.startswith("runs/keyword/checkpoint_6/") for n in names)
    log = read("runs/keyword/log.txt").decode()
    assert "resumed from checkpoint_4" in log and "data iterator restored at batch 4" in log, log
    assert json.loads(read("runs/keyword/eval_validation_best.json"))["checkpoint"] == "best"
    answers = read("runs/keyword/predictions_inputs_step6.jsonl").decode().splitlines()
    assert [json.loads(a)["prediction"] in ("yes", "no") for a in answers] == [True, True]
    # One entry for each time the run finished (4 steps, then 6): the library keeps both.
    assert len([n for n in names if n.startswith("library/") and n.endswith("/meta.json")]) == 2
    assert len([n for n in names if n.startswith("library2/") and n.endswith("/meta.json")]) == 1
    if not flow:
        return
    report = json.loads(read("spot/report.json"))
    assert {r["run"] for r in report["rows"]} == {"random_uniform", "top_k_average"}
    assert read("spot/zero_shot.png")[:4] == b"\x89PNG"


def test_a_job_lives_under_a_mounted_bucket(anchors, tmp_path, monkeypatch):
    bucket, cwd = tmp_path / "bucket", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def put(name, data):
        (bucket / name).parent.mkdir(parents=True, exist_ok=True)
        (bucket / name).write_bytes(data)

    remote_job.fill(put)
    with paths.mounted("gs://bucket", bucket):
        remote_job.run("gs://bucket", flow=False)  # the bucket test below runs the flow too

    assert list(cwd.iterdir()) == []  # nothing under ./gs: (or anywhere else here)
    names = {p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file()}
    _check_bucket(names, lambda name: (bucket / name).read_bytes(), flow=False)


def test_a_job_lives_in_a_cloud_storage_bucket(anchors, tmp_path, fake_gcs):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    remote_job.fill(lambda name, data: fake_gcs.put(f"gs://bucket/{name}", data))
    env = {**os.environ, **fake_gcs.env(), "PROMPT_TRANSFER_MOUNTS": ""}
    job = subprocess.run(
        [sys.executable, str(TESTS / "remote_job.py"), "gs://bucket"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert not fake_gcs.unhandled, fake_gcs.unhandled
    assert job.returncode == 0, job.stderr[-4000:]

    assert list(cwd.iterdir()) == []
    names = set(fake_gcs.names("gs://bucket"))
    _check_bucket(names, lambda name: fake_gcs.get(f"gs://bucket/{name}"))
    # The object-store branches: no lock object, no temporaries, orbax's commit marker instead
    # of a rename, and the data iterator's state saved beside the checkpoint.
    run = [n.removeprefix("runs/keyword/") for n in names if n.startswith("runs/keyword/")]
    assert not [n for n in run if n.startswith(".") or "/." in n or "tmp" in n], run
    assert "checkpoint_6/commit_success.txt" in run
    assert any(n.startswith("data_state/p0/checkpoint_6/") for n in run), run

    # A save cut short by a preemption: orbax writes a bucket's checkpoint in place and marks it
    # committed last, so checkpoint_8 without its marker is no checkpoint: the resume starts
    # from 6 and writes 8 whole.
    for name in run:
        if name.startswith("checkpoint_6/") and not name.endswith("commit_success.txt"):
            data = fake_gcs.get(f"gs://bucket/runs/keyword/{name}")
            fake_gcs.put(f"gs://bucket/runs/keyword/checkpoint_8/{name[13:]}", data)
    argv = [sys.executable, str(TESTS / "remote_job.py"), "gs://bucket", "--resume", "8"]
    job = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-4000:]
    log = fake_gcs.get("gs://bucket/runs/keyword/log.txt").decode()
    assert "resumed from checkpoint_6" in log, log
    run = fake_gcs.names("gs://bucket/runs/keyword")
    assert "checkpoint_8/commit_success.txt" in run and "prompts/checkpoint_8.npy" in run
