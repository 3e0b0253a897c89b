"""A TFDS task whose data was never prepared fails with the data dir and how to build it."""

import pytest

from prompt_transfer.data import batches


def test_unprepared_tfds_data_names_dir_and_how_to_build(anchors, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    # No mock_data here: an empty data dir, and no network for seqio's download attempt.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        lambda *a, **k: (_ for _ in ()).throw(OSError("no network")),
    )
    with pytest.raises(
        batches.TaskError,
        match=r"glue/rte:2.0.0 for 'glue_rte' is not prepared in "
        r"\S*empty; .*tfds build glue/rte",
    ):
        batches.batched_dataset("glue_rte", "validation", {"inputs": 16, "targets": 4}, 2, seed=0)


def test_tfds_data_dir_flag_is_where_tfds_looks(anchors, tmp_path, monkeypatch, capsys):
    """T5X's --tfds_data_dir on a run: TFDS reads (here: fails to find) the data there."""
    import tensorflow_datasets as tfds

    from conftest import tiny_run_args
    from prompt_transfer import cli
    from prompt_transfer.base.tf_import import import_seqio

    monkeypatch.setattr(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        lambda *a, **k: (_ for _ in ()).throw(OSError("no network")),
    )
    seqio = import_seqio()
    monkeypatch.setattr(seqio.utils, "_TFDS_DATA_DIR_OVERRIDE", None)  # restored afterwards
    run = tiny_run_args(
        tmp_path / "run",
        "--gin.TRAIN_STEPS=2",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
        task="glue_rte",
        lengths={"inputs": 16, "targets": 8},
    )
    argv = ["train", *run]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"glue/rte:2.0.0 for 'glue_rte' is not prepared in {tmp_path / 'tfds'};" in err, err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
