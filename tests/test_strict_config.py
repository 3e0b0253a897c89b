"""Configuration mistakes are refused before any work: one line naming the macro and what to
write instead, exit 2, and nothing written."""

import pytest
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, tiny_run_args
from prompt_transfer import cli

RUN = tiny_run_args(None, "--gin.TRAIN_STEPS=4")  # MODEL_DIR: each test's own

CASES = {
    "a misspelled macro": (
        ["train", "--gin.TRAIN_STEP=100"],
        "--gin.TRAIN_STEP=... sets a macro that no gin file of the project knows, so it would "
        "be ignored; did you mean TRAIN_STEPS",
    ),
    "steps written as a float": (
        ["train", "--gin.TRAIN_STEPS=3e4"],
        "TRAIN_STEPS=30000.0 must be a whole number >= 1 (write 30000)",
    ),
    "no steps": (["train", "--gin.TRAIN_STEPS=0"], "TRAIN_STEPS=0 must be a whole number >= 1"),
    "a save period of 0": (
        ["train", "--gin.SAVE_PERIOD=0"],
        "SAVE_PERIOD=0 must be a whole number >= 1",
    ),
    "a negative batch": (["train", "--gin.BATCH_SIZE=-8"], "BATCH_SIZE=-8 must be a whole number"),
    "a fractional prompt length": (
        ["train", "--gin.PROMPT_LENGTH=2.5"],
        "PROMPT_LENGTH=2.5 must be a whole number >= 0",
    ),
    "a period given as text": (
        ["train", "--gin.EVAL_PERIOD=often"],
        "EVAL_PERIOD='often' must be a whole number >= 0",
    ),
    "a broken TRAINABLE regex": (
        ["train", "--gin.TRAINABLE='['"],
        "TRAINABLE='[' is not a regular expression (unterminated character set",
    ),
    "partitions that do not divide the devices": (
        ["train", "--gin.NUM_PARTITIONS=3"],
        "NUM_PARTITIONS=3 does not divide the 8 devices",
    ),
    "a misspelled checkpoint": (
        ["eval", "--gin.CHECKPOINT='bset'"],
        "CHECKPOINT='bset' is unknown; choose 'latest', 'best' or a step",
    ),
    "a misspelled optimizer parameter": (
        ["train", "--gin.train_state.OptimizerConfig.learning_rte=0.1"],
        "learning_rte",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_mistake_is_one_line_before_any_work(anchors, tmp_path, capsys, case):
    register_keyword_task(T5_VOCAB)
    (command, *extra), message = CASES[case]
    model_dir = tmp_path / "run"
    capsys.readouterr()
    assert cli.main([command, *RUN, f"--gin.MODEL_DIR='{model_dir}'", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not model_dir.exists()  # nothing written


def test_a_spot_flow_typo_is_refused_with_the_macro_it_meant(capsys, tmp_path):
    argv = [
        "spot",
        "--gin_file=experiments/demo",
        f"--gin.WORK_DIR='{tmp_path / 'work'}'",
        "--gin.SEEDS_PER_RUNS=3",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "did you mean SEEDS_PER_RUN" in err and err.count("\n") == 1
    assert not (tmp_path / "work").exists()


def test_a_macro_of_other_gin_files_is_noted_not_refused(anchors, tmp_path, capsys):
    """A launch script may pass one set of macros to several experiments: a macro the project
    knows but this launch does not use gets a note, and the launch goes on (here to a refusal
    of its own, so that nothing trains)."""
    register_keyword_task(T5_VOCAB)
    argv = ["train", *RUN, f"--gin.MODEL_DIR='{tmp_path}/run'", "--gin.SOURCE_STEPS=100"]
    assert cli.main([*argv, "--gin.SAVE_PERIOD=0"]) == 2
    note, error = capsys.readouterr().err.strip().splitlines()
    assert "--gin.SOURCE_STEPS=... is not used by these gin files and is ignored" in note
    assert "SAVE_PERIOD=0 must be a whole number" in error
