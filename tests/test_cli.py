"""The console script end to end: checkpoint-info, convert (HF -> T5X + gin), score, errors."""

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ANCHOR_TINY_CHECKPOINT, T5_VOCAB, TINY_CHECKPOINT, small_hf_t5
from prompt_transfer import cli
from prompt_transfer.configure import gin_files
from prompt_transfer.network import checkpoints, t5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small flan-t5-like HF checkpoint (gated-GELU, untied) in a local directory."""
    d = tmp_path_factory.mktemp("hf")
    return d, small_hf_t5(d, d_model=8, d_ff=12, num_heads=2, num_decoder_layers=1)


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    """`convert` of that checkpoint, run once for the tests that read its output."""
    out = tmp_path_factory.mktemp("convert") / "converted"
    assert cli.main(["convert", "--hf", str(hf_dir[0]), "--output", str(out)]) == 0
    return out


def test_checkpoint_info_prints_tree_and_count(anchors, capsys):
    assert cli.main(["checkpoint-info", str(ANCHOR_TINY_CHECKPOINT)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("token_embedder/embedding") and "(32128, 4)" in line for line in out)
    assert out[-1] == "52 parameters, 257,856 values, step 3"


def test_convert_writes_t5x_checkpoint_and_size_gin(hf_dir, converted):
    _, model = hf_dir
    assert sorted(p.name for p in converted.iterdir()) == ["checkpoint_0", "model.gin"]
    config = gin_files.read_model_config(str(converted / "model.gin"))
    assert (config.num_encoder_layers, config.num_decoder_layers, config.emb_dim) == (2, 1, 8)
    module = t5.T5(config)
    params = checkpoints.restore_params(converted, t5.abstract_params(module))
    inputs, targets = np.array([[5, 9, 44, 1]]), np.array([[0, 17, 3]])
    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor(inputs), decoder_input_ids=torch.tensor(targets)
        ).logits.numpy()
    ours = module.apply({"params": params}, jnp.asarray(inputs), jnp.asarray(targets))
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-5)


def test_score_reads_model_gin_beside_checkpoint(anchors, converted, capsys):
    capsys.readouterr()
    assert (
        cli.main(
            [
                "score",
                "--checkpoint",
                str(converted / "checkpoint_0"),
                "--vocab",
                str(T5_VOCAB),
                "--inputs",
                "is this good?",
                "--targets",
                "yes",
                "no",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and sum("*" in line for line in lines) == 1
    assert all(float(line.split()[0]) < 0 for line in lines)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["checkpoint-info", "/definitely/missing"], r"checkpoint not found: /definitely/missing"),
        (
            [
                "score",
                "--checkpoint",
                str(TINY_CHECKPOINT),
                "--size",
                "huge",
                "--inputs",
                "a",
                "--targets",
                "b",
            ],
            r"unknown model size 'huge'; choose one of: base, large, offline_small, small, "
            r"tiny, xl, xxl",
        ),
        (
            [
                "score",
                "--checkpoint",
                str(TINY_CHECKPOINT),
                "--size",
                "base",
                "--inputs",
                "a",
                "--targets",
                "b",
            ],
            r"decoder/decoder_norm/scale in \S+ has shape \(4,\) "
            r"but the configured model expects \(768,\)",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(anchors, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err)
    assert err.count("\n") == 1


def test_convert_failure_writes_nothing(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert (
        cli.main(["convert", "--hf", str(tmp_path / "hf"), "--output", str(tmp_path / "out")]) == 2
    )
    assert "no model.safetensors or pytorch_model.bin" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_runs_folder_in_the_working_directory_does_not_break_gin_includes(tmp_path, monkeypatch):
    """gin looks 'runs/x.gin' up as a file of a Python package `runs`; a plain runs/ folder on
    sys.path is a namespace package without a file, on which gin itself raises TypeError."""
    import sys

    from prompt_transfer.configure import gin_files, gin_utils

    (tmp_path / "runs" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("runs", None)
    text = gin_utils.configure([str(gin_files.find("experiments/demo"))], [])
    assert "FlowConfig" in text and "WORK_DIR = 'runs/demo'" in text


def test_gin_search_paths_are_searched_first_as_in_t5x(anchors, tmp_path, capsys):
    """--gin_search_paths (T5X's flag): a user's own gin files beside their jobs, found by name,
    an include of theirs before the project's file of the same name; a missing folder is one
    line."""
    from synthetic_tasks import register_keyword_task

    from conftest import tiny_run_args

    register_keyword_task(T5_VOCAB)
    mine = tmp_path / "configs"
    (mine / "models").mkdir(parents=True)
    # A models/tiny.gin of the user's own: the project's, with another dropout rate.
    project = (Path(gin_files.GIN_DIR) / "models" / "tiny.gin").read_text()
    (mine / "models" / "tiny.gin").write_text(project + "\nDROPOUT_RATE = 0.25\n")
    # The project's experiment includes models/tiny.gin: the user's is found first.
    (mine / "my_run.gin").write_text(
        "include 'experiments/prompt_tuning_tiny.gin'\n"
        "TRAIN_STEPS = 2\nSAVE_PERIOD = 2\nEVAL_PERIOD = 0\n"
    )
    model_dir = tmp_path / "run"
    args = tiny_run_args(model_dir)[1:]  # without the project's experiment file
    argv = ["train", f"--gin_search_paths={tmp_path / 'nowhere'},{mine}", "--gin_file=my_run"]
    capsys.readouterr()
    assert cli.main([*argv, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gin_search_paths" in err[0] and "nowhere" in err[0], err
    assert cli.main(["train", f"--gin_search_paths={mine}", "--gin_file=my_run", *args]) == 0
    config = (model_dir / "config.gin").read_text()
    assert "DROPOUT_RATE = 0.25" in config and "TRAIN_STEPS = 2" in config


def test_a_task_module_of_the_users_registers_its_tasks(anchors, tmp_path, monkeypatch, capsys):
    """MIXTURE_OR_TASK_MODULE (T5X's): the user's module is imported before the task is looked
    up, for train and for reading the run back; one that cannot be imported is one line."""
    from conftest import tiny_run_args

    (tmp_path / "my_tasks.py").write_text(
        "from synthetic_tasks import register_keyword_task\n"
        "from conftest import T5_VOCAB\n"
        "register_keyword_task(T5_VOCAB, name='users_own_task')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model_dir = tmp_path / "run"
    steps = ["--gin.TRAIN_STEPS=2", "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=2"]
    args = tiny_run_args(model_dir, *steps, task="users_own_task")
    capsys.readouterr()
    assert cli.main(["train", *args, "--gin.MIXTURE_OR_TASK_MODULE='no_such_tasks'"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MIXTURE_OR_TASK_MODULE='no_such_tasks' cannot be imported" in err[0]
    assert not model_dir.exists()
    assert cli.main(["train", *args, "--gin.MIXTURE_OR_TASK_MODULE='my_tasks'"]) == 0
    assert json.loads((model_dir / "run.json").read_text())["spec"]["task_module"] == "my_tasks"
    assert cli.main(["eval", f"--gin.MODEL_DIR={model_dir}"]) == 0
