"""Bring-your-own tasks from TSV/JSONL: registration, bad rows, training and evaluation."""

import json

import pytest
from synthetic_tasks import keyword_examples

from conftest import tiny_run_args
from prompt_transfer import cli
from prompt_transfer.cli.jobs import train_main
from prompt_transfer.data import batches, file_tasks


def _write_tsv(path, examples, header=("sentence", "label")):
    lines = ["\t".join(header)] + [
        f"{i}\t{t}" for i, t in zip(examples["inputs"], examples["targets"], strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path):
    return (
        _write_tsv(tmp_path / "train.tsv", keyword_examples(64, 0)),
        _write_tsv(tmp_path / "validation.tsv", keyword_examples(16, 1)),
    )


def test_file_task_trains_one_step_and_evaluates(anchors, files, tmp_path):
    train_file, validation_file = files
    summary = train_main(
        tiny_run_args(
            tmp_path / "run",
            "--gin_file=tasks/file_task.gin",
            "--gin.FILE_TASK_NAME='my_keyword'",
            f"--gin.FILE_TASK_TRAIN='{train_file}'",
            f"--gin.FILE_TASK_VALIDATION='{validation_file}'",
            "--gin.FILE_TASK_INPUTS=('sentence',)",
            "--gin.FILE_TASK_LABELS=('yes', 'no')",
            "--gin.TRAIN_STEPS_RELATIVE=1",
            "--gin.EVAL_PERIOD=1",
            "--gin.SAVE_PERIOD=1",
            task=None,  # file_task.gin names it: FILE_TASK_NAME
            lengths={"inputs": 16, "targets": 4},
        )
    )
    assert summary["step"] == 1 and summary["best"]["metric"] == "accuracy"
    assert 0 <= summary["best"]["value"] <= 100
    example = next(
        batches.get_task("my_keyword")
        .get_dataset(None, "validation", shuffle=False)
        .as_numpy_iterator()
    )
    assert example["inputs_pretokenized"].decode().startswith("my_keyword sentence: topic: ")


def test_add_task_records_it_for_later_launches(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROMPT_TRANSFER_TASKS", str(tmp_path / "registry"))
    train_file, validation_file = files
    assert (
        cli.main(
            [
                "add-task",
                "--name",
                "recorded_task",
                "--train",
                str(train_file),
                "--validation",
                str(validation_file),
                "--inputs",
                "sentence",
                "--labels",
                "yes",
                "no",
            ]
        )
        == 0
    )
    spec = json.loads((tmp_path / "registry" / "recorded_task.json").read_text())
    assert spec["labels"] == ["yes", "no"] and spec["train"] == str(train_file.resolve())
    assert file_tasks.load_user_tasks() == ["recorded_task"]
    # A record whose files were moved away is skipped with a warning; the others still load.
    moved = dict(spec, name="moved_task", train=str(tmp_path / "gone.tsv"))
    (tmp_path / "registry" / "moved_task.json").write_text(json.dumps(moved))
    with pytest.warns(UserWarning, match=r"moved_task.json skipped .*gone.tsv"):
        assert file_tasks.load_user_tasks() == ["recorded_task"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden"])
def test_a_task_name_that_is_not_one_word_is_refused(name):
    with pytest.raises(file_tasks.FileTaskError, match="may hold letters, digits"):
        file_tasks.FileTask(name=name, train="t.tsv", validation="v.tsv")


@pytest.mark.parametrize(
    "content, message",
    [
        ("sentence\tlabel\nfine\tyes\nbroken row\n", r"train.tsv:3: 1 fields but the header has 2"),
        ("sentence\tlabel\nfine\tmaybe\n", r"train.tsv: example 1 has label 'maybe'"),
        ("text\tlabel\nfine\tyes\n", r"train.tsv:1: header \['text', 'label'\] lacks column"),
    ],
)
def test_malformed_files_name_file_and_line(files, tmp_path, capsys, content, message):
    import re

    bad = tmp_path / "train.tsv"
    bad.write_text(content)
    assert (
        cli.main(
            [
                "add-task",
                "--name",
                "bad_task",
                "--train",
                str(bad),
                "--validation",
                str(files[1]),
                "--inputs",
                "sentence",
                "--labels",
                "yes",
                "no",
            ]
        )
        == 2
    )
    assert re.search(message, capsys.readouterr().err)


def test_jsonl_rows_and_errors(tmp_path):
    good = tmp_path / "x.jsonl"
    good.write_text('{"q": "a", "a": "b"}\n{"q": "c", "a": 1}\n')
    assert file_tasks.read_rows(good, ["q", "a"]) == [{"q": "a", "a": "b"}, {"q": "c", "a": "1"}]
    good.write_text('{"q": "a", "a": "b"}\n{"q": "c"\n')
    with pytest.raises(file_tasks.FileTaskError, match=r"x.jsonl:2: not valid JSON"):
        file_tasks.read_rows(good, ["q", "a"])


def test_a_task_on_the_shipped_model_takes_its_vocabulary_with_no_setting(
    files, tmp_path, monkeypatch
):
    """A user's task on the shipped model: no $PROMPT_TRANSFER_VOCAB, no network; the task is
    tokenized with the vocabulary the model's size gin file names."""
    from prompt_transfer.data import vocab

    monkeypatch.delenv("PROMPT_TRANSFER_VOCAB", raising=False)
    monkeypatch.setattr(vocab, "_model_vocabulary", None)  # restored after the test
    train_file, validation_file = files
    summary = train_main(
        [
            "--gin_file=experiments/prompt_tuning_offline",
            "--gin_file=tasks/file_task.gin",
            f"--gin.MODEL_DIR={tmp_path / 'run'}",
            "--gin.FILE_TASK_NAME='my_offline_keyword'",
            f"--gin.FILE_TASK_TRAIN='{train_file}'",
            f"--gin.FILE_TASK_VALIDATION='{validation_file}'",
            "--gin.FILE_TASK_INPUTS=('sentence',)",
            "--gin.FILE_TASK_LABELS=('yes', 'no')",
            "--gin.TRAIN_STEPS_RELATIVE=1",
            "--gin.EVAL_PERIOD=1",
            "--gin.SAVE_PERIOD=1",
        ]
    )
    assert summary["step"] == 8128 + 1  # one step after the shipped model's own
    task = batches.get_task("my_offline_keyword")
    own = task.output_features["targets"].vocabulary.sentencepiece_model_file
    assert own == vocab.OFFLINE_VOCAB_PATH


def test_a_task_the_model_cannot_read_is_refused_before_any_work(files, tmp_path, capsys):
    """The T5-vocabulary task (32,100 ids) on the shipped model (8,192 embeddings): refused in
    one line; before, the ids past the table were clamped silently."""
    train_file, validation_file = files
    args = [
        "train",
        "--gin_file=experiments/prompt_tuning_offline",
        f"--gin.MODEL_DIR={tmp_path / 'run'}",
        "--gin.MIXTURE_OR_TASK_NAME='my_t5_keyword'",
    ]
    file_tasks.register_file_task(
        file_tasks.FileTask(
            "my_t5_keyword",
            str(train_file),
            str(validation_file),
            "",
            ("sentence",),
            "label",
            ("yes", "no"),
        )
    )
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "tokenized with" in err and "but the model reads" in err
    assert not (tmp_path / "run").exists()
