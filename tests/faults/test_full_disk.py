"""A disk that fills during a run: one line naming the file, exit 5, the previous checkpoint
intact, and the same command finishes the run once there is room again."""

import errno

import numpy as np
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.trainer import run_dir, saving


def test_a_full_disk_at_a_save_keeps_the_last_checkpoint(anchors, tmp_path, capsys, monkeypatch):
    register_keyword_task(T5_VOCAB)
    steps = ["--gin.TRAIN_STEPS=6", "--gin.SAVE_PERIOD=3", "--gin.EVAL_PERIOD=0"]
    argv = ["train", *tiny_run_args(None, *steps)]  # MODEL_DIR: the interrupted and the whole run
    real_save = saving.CheckpointStore._save

    def full_at_step_6(self, manager, step, state, position):
        if step == 6:  # the disk fills while the second checkpoint is written
            (self.model_dir / "checkpoint_6.orbax-checkpoint-tmp-1").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device", str(self.model_dir))
        return real_save(self, manager, step, state, position)

    monkeypatch.setattr(saving.CheckpointStore, "_save", full_at_step_6)
    run = tmp_path / "run"
    assert cli.main([*argv, f"--gin.MODEL_DIR='{run}'"]) == 5
    lines = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    assert lines[-1] == f"prompt-transfer train: error: [Errno 28] No space left on device: '{run}'"
    assert sum("error" in line for line in lines) == 1
    assert sorted(p.name for p in run.glob("checkpoint_*")) == [
        "checkpoint_3",
        "checkpoint_6.orbax-checkpoint-tmp-1",
    ]
    assert not (run / run_dir.LOCK_FILE).exists()

    monkeypatch.setattr(saving.CheckpointStore, "_save", real_save)  # room again
    assert cli.main([*argv, f"--gin.MODEL_DIR='{run}'"]) == 0
    assert "resumed from checkpoint_3" in (run / "log.txt").read_text()
    whole = tmp_path / "whole"
    assert cli.main([*argv, f"--gin.MODEL_DIR='{whole}'"]) == 0
    np.testing.assert_array_equal(
        np.load(run / "prompts" / "checkpoint_6.npy"),
        np.load(whole / "prompts" / "checkpoint_6.npy"),
    )
