"""A TFDS task whose data was never prepared fails with the data dir and how to build it."""

import pytest

from prompt_transfer import data


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
        data.TaskError,
        match=r"glue/rte:2.0.0 for 'glue_rte' is not prepared in "
        r"\S*empty; .*tfds build glue/rte",
    ):
        data.batched_dataset("glue_rte", "validation", {"inputs": 16, "targets": 4}, 2, seed=0)
