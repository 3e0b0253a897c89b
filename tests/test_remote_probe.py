"""A gs:// path a run cannot use is refused before any work, in one line naming the setting, the
path, the reason (no network, no credentials, not found) and the local setting to use instead
(prompt_transfer/trainer/remote.py, issue 27).

The reasons come from TensorFlow's real gs:// client talking to the Cloud Storage stand-in
(tests/fake_gcs.py), in this process: no network is a proxy whose host does not resolve, no
credentials a bucket the fake answers 401 or 403, not found an object it does not hold."""

import threading
import time

import pytest
import tensorflow as tf
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.base import paths
from prompt_transfer.base.tf_import import import_seqio
from prompt_transfer.data import batches, vocab
from prompt_transfer.trainer import evaluate, remote, train

CHECKPOINT = "gs://bucket/models/tiny/checkpoint_3"


@pytest.fixture
def gcs(anchors, fake_gcs, monkeypatch):
    """TensorFlow's gs:// client sent to the fake (what remote_job.py's subprocess gets), no
    answer remembered from another test, and any model built an error: a refusal must come
    first. The model's vocabulary and the TFDS folder a test sets are undone after it."""
    register_keyword_task(T5_VOCAB)
    batches.load_registrations()  # tasks/ take the local vocabulary of conftest, not a test's
    for name, value in {**fake_gcs.env(), "PROMPT_TRANSFER_MOUNTS": ""}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(remote, "_answers", {})
    monkeypatch.setattr(batches, "_tfds_data_dir", None)
    seqio_utils = import_seqio().utils
    monkeypatch.setattr(seqio_utils, "_TFDS_DATA_DIR_OVERRIDE", seqio_utils._TFDS_DATA_DIR_OVERRIDE)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the refusal")

    monkeypatch.setattr(train, "network_of", no_model)
    monkeypatch.setattr(evaluate, "network_of", no_model)
    yield fake_gcs
    vocab.follow_model(None)


def _no_network(monkeypatch) -> None:
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://no-such-proxy.invalid:3128")


def refusal(capfd, argv: list[str]) -> str:
    """The one stderr line of `prompt-transfer argv`, which must exit 2 and print nothing else."""
    capfd.readouterr()
    started = time.monotonic()
    assert cli.main(argv) == 2
    assert time.monotonic() - started < 60
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prompt-transfer {argv[0]}: error: "), err
    return lines[0]


def test_no_network_is_one_line_before_any_model(gcs, tmp_path, capfd, monkeypatch):
    _no_network(monkeypatch)
    run = tmp_path / "run"
    argv = ["train", *tiny_run_args(run, "--gin.VOCABULARY='gs://bucket/spm.model'")]
    line = refusal(capfd, argv)
    assert "VOCABULARY='gs://bucket/spm.model' cannot be read: no network (" in line, line
    assert "Could not resolve proxy" in line, line
    assert line.endswith("use VOCABULARY='/path/sentencepiece.model' (a local copy)"), line
    assert not run.exists()


@pytest.mark.parametrize("status", [401, 403])
def test_no_credentials_names_the_checkpoint(gcs, tmp_path, capfd, status):
    gcs.put(f"{CHECKPOINT}/checkpoint", b"index")
    gcs.refused["bucket"] = status
    run = tmp_path / "run"
    line = refusal(capfd, ["train", *tiny_run_args(run, checkpoint=CHECKPOINT)])
    assert f"INITIAL_CHECKPOINT_PATH='{CHECKPOINT}' cannot be read: no credentials " in line
    assert f"(HTTP response code {status}); use INITIAL_CHECKPOINT_PATH=" in line, line
    assert not run.exists()


def test_an_output_bucket_without_credentials_is_refused(gcs, capfd):
    gcs.refused["locked"] = 403
    argv = ["train", *tiny_run_args("gs://locked/run")]
    line = refusal(capfd, argv)
    assert "MODEL_DIR='gs://locked/run' cannot be written: no credentials" in line, line
    assert line.endswith("use MODEL_DIR='/path/folder' (a local folder)"), line


def test_eval_probes_too(gcs, capfd, monkeypatch):
    _no_network(monkeypatch)
    line = refusal(capfd, ["eval", *tiny_run_args("gs://bucket/run")])
    assert "MODEL_DIR='gs://bucket/run' cannot be written: no network" in line, line


def test_a_missing_checkpoint_is_not_found(gcs, capfd):
    line = refusal(capfd, ["train", *tiny_run_args("gs://bucket/run", checkpoint=CHECKPOINT)])
    assert f"INITIAL_CHECKPOINT_PATH='{CHECKPOINT}' cannot be read: not found" in line, line
    assert gcs.names("gs://bucket") == []  # MODEL_DIR untouched


def test_a_missing_tfds_folder_names_the_flag(gcs, tmp_path, capfd):
    """Only a task that reads TFDS needs the TFDS folder (GLUE's RTE does)."""
    argv = ["train", "--tfds_data_dir=gs://bucket/tfds", *tiny_run_args(tmp_path / "run")]
    argv.append("--gin.MIXTURE_OR_TASK_NAME='glue_rte'")
    line = refusal(capfd, argv)
    assert "--tfds_data_dir=gs://bucket/tfds cannot be read: not found" in line, line
    assert line.endswith("use --tfds_data_dir=/path/tensorflow_datasets (a local copy)"), line


def test_the_tasks_vocabulary_names_its_variable(gcs, tmp_path, capfd, monkeypatch):
    """A file task takes the tasks' vocabulary: without $PROMPT_TRANSFER_VOCAB, T5's in
    gs://t5-data (which the fake does not hold)."""
    monkeypatch.delenv("PROMPT_TRANSFER_VOCAB")
    (tmp_path / "train.tsv").write_text("text\tlabel\na\tyes\n")
    task = [
        "--gin_file=tasks/file_task.gin",
        "--gin.FILE_TASK_NAME='probe_task'",
        f"--gin.FILE_TASK_TRAIN='{tmp_path / 'train.tsv'}'",
        f"--gin.FILE_TASK_VALIDATION='{tmp_path / 'train.tsv'}'",
    ]
    line = refusal(capfd, ["train", *tiny_run_args(tmp_path / "run", *task, task=None)])
    assert (
        f"the tasks' vocabulary '{vocab.DEFAULT_VOCAB_PATH}' ($PROMPT_TRANSFER_VOCAB unset)" in line
    )
    assert "cannot be read: not found" in line, line
    assert (
        "use PROMPT_TRANSFER_VOCAB=/path/sentencepiece.model (a local copy) or VOCABULARY=" in line
    )


def test_an_output_folder_needs_only_its_bucket(gcs):
    gcs.put("gs://bucket/inputs/spm.model", b"model")
    answers = remote.probe(
        [
            ("gs://bucket/new_run", True),
            ("gs://bucket/new_run", False),
            ("gs://bucket/inputs", False),
        ]
    )
    assert answers[("gs://bucket/new_run", True)] is None  # a folder the run will make
    assert answers[("gs://bucket/new_run", False)][0] == remote.NOT_FOUND  # an input
    assert answers[("gs://bucket/inputs", False)] is None  # a folder that holds objects


def test_each_path_is_asked_once(gcs):
    remote.probe([("gs://bucket/x", False)])
    asked = gcs.requests
    assert remote.probe([("gs://bucket/x", False)]) == {
        ("gs://bucket/x", False): ("not found", "no such object or folder")
    }
    assert gcs.requests == asked


def test_local_and_mounted_paths_are_not_probed(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "_ask", lambda *item: pytest.fail(f"probed {item}"))
    monkeypatch.setattr(remote, "_answers", {})
    with paths.mounted("gs://bucket", tmp_path):
        remote.check(
            [
                remote.Need("MODEL_DIR='gs://bucket/run'", "gs://bucket/run", "-"),
                remote.Need(f"MODEL_DIR='{tmp_path}'", str(tmp_path / "missing"), "-"),
            ]
        )


def test_a_silent_server_is_no_network_within_the_deadline(monkeypatch):
    """TensorFlow tries a refused connection 10 times (195 s here) and waits on a silent one
    longer: the probe does not wait for it."""
    released = threading.Event()
    monkeypatch.setattr(remote, "_ask", lambda *item: released.wait(30))
    monkeypatch.setattr(remote, "_answers", {})
    monkeypatch.setattr(remote, "PROBE_SECONDS", 0.3)
    started = time.monotonic()
    answers = remote.probe([("gs://a/x", False), ("gs://b/y", True)])
    released.set()
    assert time.monotonic() - started < 1.0  # one deadline for all, not one each
    assert set(answers.values()) == {(remote.NO_NETWORK, "no answer in 0.3 s")}


def test_loading_the_client_is_not_counted_against_the_network(monkeypatch):
    """TensorFlow's import (what epath's gs:// client is) took 5.7 s on a busy 2-core machine and
    a pod's two processes were told "no network" by a bucket that answers at once (CI, stop 29)."""
    loaded = []
    monkeypatch.setattr(remote, "import_tensorflow", lambda: (time.sleep(0.6), loaded.append(1)))
    monkeypatch.setattr(remote, "_ask", lambda *item: None if loaded else ("early", "-"))
    monkeypatch.setattr(remote, "_answers", {})
    monkeypatch.setattr(remote, "PROBE_SECONDS", 0.3)
    assert remote.probe([("gs://a/x", False)]) == {("gs://a/x", False): None}
    assert remote.probe([("gs://a/x", False)]) and loaded == [1]  # asked once, loaded once


@pytest.mark.parametrize(
    "error, reason",
    [
        (tf.errors.FailedPreconditionError(None, None, "Error executing an HTTP request: libcurl "
         "code 6 meaning 'Could not resolve hostname', error details: Could not resolve host: "
         "www.googleapis.com\n\t when reading metadata of gs://b/x"), remote.NO_NETWORK),
        (tf.errors.AbortedError(None, None, "All 10 retry attempts failed. The last failure: "
         "Error executing an HTTP request: libcurl code 7 meaning 'Could not connect to server'"),
         remote.NO_NETWORK),
        (ConnectionRefusedError(111, "Connection refused"), remote.NO_NETWORK),
        (OSError(-2, "Name or service not known"), remote.NO_NETWORK),
        (tf.errors.PermissionDeniedError(None, None, "HTTP response code 401 with body ''"),
         remote.NO_CREDENTIALS),
        (PermissionError(13, "Forbidden"), remote.NO_CREDENTIALS),
        (type("DefaultCredentialsError", (Exception,), {})("Could not automatically determine "
         "credentials"), remote.NO_CREDENTIALS),
        (tf.errors.NotFoundError(None, None, "gs://b/x"), remote.NOT_FOUND),
        (FileNotFoundError(2, "No such file", "gs://b/x"), remote.NOT_FOUND),
    ],
)  # fmt: skip
def test_classify(error, reason):
    assert remote.classify(error)[0] == reason
