"""The one atomic write, the path layer, environment settings, and how a command ends."""

import os

import numpy as np
import pytest

from prompt_transfer.base import environment, errors, files, paths, runtime


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    files.atomic_write_text(target, "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write_text(target, "new, but cut short")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_npy_round_trip_is_float32(tmp_path):
    files.save_npy(tmp_path / "sub" / "p.npy", np.arange(6, dtype=np.float64).reshape(2, 3))
    loaded = files.load_npy(tmp_path / "sub" / "p.npy")
    assert loaded.dtype == np.float32 and loaded.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_directory_appears_only_complete(tmp_path):
    final = tmp_path / "checkpoint"
    with pytest.raises(RuntimeError, match="interrupted"):
        with files.atomic_directory(final) as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # neither the directory nor its temporary sibling
    with files.atomic_directory(final) as tmp:
        (tmp / "a").write_text("whole")
    assert (final / "a").read_text() == "whole"


def test_an_existing_directory_is_replaced_only_when_asked_and_only_once_complete(tmp_path):
    final = tmp_path / "suite"
    with files.atomic_directory(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(OSError):
        with files.atomic_directory(final) as tmp:
            (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "1"
    with pytest.raises(RuntimeError):
        with files.atomic_directory(final, replace=True) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError("build failed")
    assert (final / "v").read_text() == "1"  # the old one stays until the new one is whole
    with files.atomic_directory(final, replace=True) as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2" and len(list(tmp_path.iterdir())) == 1


def test_settings_come_from_the_environment_in_one_place(tmp_path, monkeypatch):
    for name in ("JAX_CACHE", "DATA", "LIBRARY", "TASKS", "VOCAB"):
        monkeypatch.delenv(f"PROMPT_TRANSFER_{name}", raising=False)
    monkeypatch.setenv("PROMPT_TRANSFER_CACHE", str(tmp_path / "cache"))
    assert environment.jax_cache_dir() == str(tmp_path / "cache" / "jax")
    assert environment.offline_data_dir() == tmp_path / "cache" / "offline"
    assert environment.library_dir() == str(tmp_path / "cache" / "library")
    assert environment.vocab_override() is None
    monkeypatch.setenv("PROMPT_TRANSFER_DATA", str(tmp_path / "data"))
    assert environment.offline_data_dir() == tmp_path / "data"
    assert paths.is_remote("gs://bucket/run") and not paths.is_remote(tmp_path)
    assert paths.absolute("gs://bucket/run") == "gs://bucket/run"


class _OwnError(errors.UserError):
    """A module's own error class: no registration anywhere, still a one-line exit 2."""


@pytest.mark.parametrize(
    "error, code",
    [
        (_OwnError("MODEL_DIR x holds another run\nIn call to configurable 'train'"), 2),
        (FileNotFoundError("no such file: x.tsv"), 2),
        (errors.Diverged("loss became NaN at step 13"), 3),
        (errors.Preempted("SIGTERM at step 17"), 4),
    ],
)
def test_each_reason_to_stop_has_its_exit_status_and_one_line(error, code, capsys):
    def body():
        raise error

    assert runtime.run_entry("train", body) == code
    err = capsys.readouterr().err
    assert err.startswith("prompt-transfer train: error: ") and err.count("\n") == 1


def test_a_bug_keeps_its_traceback():
    def body():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        runtime.run_entry("train", body)


def _pci(root, *devices):
    for i, (vendor, device) in enumerate(devices):
        (root / f"0000:00:0{i}.0").mkdir(parents=True)
        (root / f"0000:00:0{i}.0" / "vendor").write_text(vendor + "\n")
        (root / f"0000:00:0{i}.0" / "device").write_text(device + "\n")
    return str(root)


def test_a_cloud_tpu_vm_joins_its_slice_unless_told_not_to(tmp_path, monkeypatch):
    """T5X users launch the same command on every TPU VM worker and expect the slice to form;
    a Google virtual NIC (same vendor id) is no TPU."""
    nic = _pci(tmp_path / "gce", ("0x8086", "0x1234"), ("0x1ae0", "0x0042"))
    tpu = _pci(tmp_path / "tpu", ("0x1ae0", "0x0042"), ("0x1ae0", "0x005e"))
    assert not runtime.on_cloud_tpu(nic) and not runtime.on_cloud_tpu(str(tmp_path / "none"))
    assert runtime.on_cloud_tpu(tpu)

    monkeypatch.delenv("PROMPT_TRANSFER_DISTRIBUTED", raising=False)
    monkeypatch.setattr(runtime, "PCI_DEVICES", tpu)
    assert runtime.MultiHost().wanted
    monkeypatch.setenv("PROMPT_TRANSFER_DISTRIBUTED", "0")
    assert not runtime.MultiHost().wanted
    assert runtime.MultiHost(multiprocess_gpu=True).wanted  # a flag beats the environment
    monkeypatch.setattr(runtime, "PCI_DEVICES", nic)
    monkeypatch.delenv("PROMPT_TRANSFER_DISTRIBUTED")
    assert not runtime.MultiHost().wanted
    monkeypatch.setenv("PROMPT_TRANSFER_DISTRIBUTED", "1")
    assert runtime.MultiHost().wanted


def test_t5xs_initialization_timeout_reaches_jax_distributed(monkeypatch, capsys):
    """--initialization_timeout (T5X's) is how long a process waits for the others: the CLI
    passes it to jax.distributed.initialize; 0 is refused in one line before anything starts."""
    import jax

    from prompt_transfer import cli

    taken = {}
    monkeypatch.setattr(runtime, "run_entry", lambda command, body, multihost: taken.update(
        multihost=multihost) or 0)  # fmt: skip
    flags = ["--coordinator_address=host0:12355", "--process_count=2", "--process_index=1"]
    assert cli.main(["train", *flags, "--initialization_timeout=900"]) == 0
    joined = {}
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: joined.update(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)  # gloo stays unset here
    runtime.join(taken["multihost"])
    assert joined == {
        "coordinator_address": "host0:12355", "num_processes": 2, "process_id": 1,
        "initialization_timeout": 900,
    }  # fmt: skip
    monkeypatch.undo()
    assert cli.main(["train", *flags, "--initialization_timeout=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--initialization_timeout=0 must be" in err, err
