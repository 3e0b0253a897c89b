"""Damaged files (issue 38): a file the project wrote and reads back, cut short or garbled, is
refused in one line that names it, what is wrong and the way out, exit 2; a resume whose newest
checkpoint is damaged goes on from the newest whole one, and ends where a resume from that one
ends; the library says which entry is damaged.

Damage is done as a partial copy does it: a file truncated to a few bytes.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util
from synthetic_tasks import register_keyword_task

from conftest import DEEP_PROMPT_ARGS, T5_VOCAB, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.base import runtime
from prompt_transfer.transfer import library

STEPS = ["--gin.EVAL_PERIOD=2", "--gin.SAVE_PERIOD=2", "--gin.KEEP_CHECKPOINTS=3"]
DEEP = DEEP_PROMPT_ARGS


@pytest.fixture(scope="module")
def run(anchors, tmp_path_factory):
    """A finished tiny deep-prompt run of 4 steps, saved at 2 and 4, and a library with its
    prompt: each test damages its own copy."""
    register_keyword_task(T5_VOCAB)
    root = tmp_path_factory.mktemp("damaged")
    model_dir = root / "run"
    assert cli.main(["train", *tiny_run_args(model_dir, *STEPS, *DEEP, "--gin.TRAIN_STEPS=4")]) == 0
    assert cli.main(["library", "add", str(model_dir), f"--library={root / 'library'}"]) == 0
    return model_dir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _cut(*files: Path, keep: int = 10) -> None:
    for file in files:
        with open(file, "r+b") as f:
            f.truncate(keep)


def _array_files(step_dir: Path) -> list[Path]:
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def _one_line(capfd, argv, *wanted, status=2) -> str:
    """The command's refusal: one error line, the last it prints (progress lines may come
    before it), holding each of `wanted`."""
    capfd.readouterr()
    assert cli.main(argv) == status
    err = capfd.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert errors == err[-1:] and all(w in err[-1] for w in wanted), err
    return err[-1]


def _arrays(step_dir: Path) -> dict:
    tree = ocp.PyTreeCheckpointer().restore(step_dir / "state")
    return traverse_util.flatten_dict(tree, sep="/")


def test_a_resume_over_a_damaged_newest_checkpoint_goes_on_from_the_whole_one(run, tmp_path, capfd):
    damaged, reference = _copy(run, tmp_path / "damaged"), _copy(run, tmp_path / "reference")
    _cut(*_array_files(damaged / "checkpoint_4"))
    shutil.rmtree(reference / "checkpoint_4")  # what a resume from checkpoint_2 starts from
    resume = [*STEPS, *DEEP, "--gin.TRAIN_STEPS=6"]
    capfd.readouterr()
    for model_dir in (damaged, reference):
        assert cli.main(["train", *tiny_run_args(model_dir, *resume), "--resume"]) == 0
    err = capfd.readouterr().err
    [said] = [line for line in err.splitlines() if "is damaged" in line]
    assert "checkpoint_4" in said and "10 of" in said and "goes on from checkpoint_2" in said
    got, want = _arrays(damaged / "checkpoint_6"), _arrays(reference / "checkpoint_6")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert [p.name.split(".")[0] for p in (damaged / "damaged").iterdir()] == ["checkpoint_4"]


def test_eval_reads_the_newest_whole_checkpoint_and_says_so(run, tmp_path, capfd):
    model_dir = _copy(run, tmp_path / "run")
    _cut(*_array_files(model_dir / "checkpoint_4"))
    capfd.readouterr()
    assert cli.main(["eval", f"--gin.MODEL_DIR={model_dir}"]) == 0
    err = capfd.readouterr().err
    assert "checkpoint_4 in" in err and "is damaged (state/" in err
    assert "reading checkpoint_2, the newest whole one" in err
    assert json.loads((model_dir / "eval_validation_latest.json").read_text())["step"] == 2
    # Every checkpoint damaged: one line, exit 2, nothing written.
    _cut(*_array_files(model_dir / "checkpoint_2"))
    (model_dir / "eval_validation_latest.json").unlink()
    capfd.readouterr()
    assert cli.main(["eval", f"--gin.MODEL_DIR={model_dir}"]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "every checkpoint in" in err[0] and "--overwrite" in err[0], err
    assert not (model_dir / "eval_validation_latest.json").exists()


def test_a_damaged_checkpoint_without_checksums_is_one_line_in_a_fresh_process(run, tmp_path):
    """A run from before checksums were kept: orbax's read fails, and the refusal is the last
    line the process prints (its threads closed first)."""
    model_dir = _copy(run, tmp_path / "old")
    shutil.rmtree(model_dir / "checksums")
    _cut(*_array_files(model_dir / "checkpoint_4"))
    driver = (  # the test task registered, then the console script's main
        "import sys; sys.path.insert(0, 'tests'); import conftest; "
        "from synthetic_tasks import register_keyword_task; "
        "register_keyword_task(conftest.T5_VOCAB); from prompt_transfer import cli; "
        f"sys.exit(cli.main(['eval', '--gin.MODEL_DIR={model_dir}']))"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "checkpoint_4 in" in lines[0] and "could not be read" in lines[0]
    assert "tensorstore" not in done.stderr.lower() and "does not fit" not in done.stderr


@pytest.mark.parametrize(
    "part, command, wanted",
    [
        ("phases.json", "eval", "remove it and launch the run again"),
        ("model.json", "eval", "frozen model"),
        ("run.json", "eval", "describes the run"),
        ("best/best.json", "train", "restore it from a copy"),
        ("prompts/checkpoint_4.npy", "score", "header cut short"),
        ("flow_run.json", "eval", "restore it from a copy"),
    ],
)
def test_each_damaged_run_file_is_named_in_one_line(run, tmp_path, capfd, part, command, wanted):
    model_dir = _copy(run, tmp_path / "run")
    file = model_dir / part
    if part in ("phases.json", "flow_run.json"):  # files of other run kinds, as they would be
        file.write_text(json.dumps({"phase1_step": 2, "trainable": ".*", "prompt": "frozen"}))
    if part == "flow_run.json":  # a flow's run from before run.json
        (model_dir / "run.json").unlink()
    _cut(file, keep=7)
    argv = {
        "eval": ["eval", f"--gin.MODEL_DIR={model_dir}"],
        "train": [
            "train",
            *tiny_run_args(model_dir, *STEPS, *DEEP, "--gin.TRAIN_STEPS=6"),
            "--resume",
        ],
        "score": [
            "score",
            f"--checkpoint={model_dir}",
            "--inputs",
            "a",
            "--targets",
            "b",
            f"--prompt={file}",
            "--size=tiny",
        ],  # fmt: skip
    }[command]
    _one_line(capfd, argv, f"{file} is damaged (", wanted)


def test_a_damaged_eval_history_is_named(run, tmp_path, capfd):
    model_dir = _copy(run, tmp_path / "run")
    (model_dir / "eval_history.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    argv = ["library", "add", str(model_dir), f"--library={tmp_path / 'lib'}"]
    _one_line(capfd, argv, "eval_history.jsonl is damaged (", "not text")


def test_the_library_names_a_damaged_entry_everywhere(run, tmp_path, capfd):
    lib_dir = _copy(run.parent / "library", tmp_path / "library")
    [entry] = library.Library(lib_dir).entries()
    deep = lib_dir / entry.id / "deep.npy"
    size = deep.stat().st_size
    _cut(deep, keep=200)  # its header whole, its numbers cut short
    capfd.readouterr()
    assert cli.main(["library", "list", f"--library={lib_dir}"]) == 0
    out = capfd.readouterr().out
    assert f"{entry.id}" in out and "DAMAGED" in out and "1 damaged" in out
    line = _one_line(capfd, ["library", "show", entry.id, f"--library={lib_dir}"], entry.id)
    assert f"deep.npy is damaged (200 of {size} bytes)" in line
    assert f"library remove {entry.id}" in line
    capfd.readouterr()
    assert cli.main(["library", "verify", f"--library={lib_dir}"]) == 1
    out = capfd.readouterr().out
    assert f"damaged  library entry {entry.id} is damaged" in out and "0 of 1 entries" in out
    out_file = tmp_path / "p.npy"
    argv = ["library", "export", entry.id, f"--library={lib_dir}", f"--output={out_file}"]
    _one_line(capfd, argv, f"library entry {entry.id} is damaged")
    assert not out_file.exists()
    # Removing it, as the line says, leaves an intact library.
    assert cli.main(["library", "remove", entry.id, f"--library={lib_dir}"]) == 0
    assert cli.main(["library", "verify", f"--library={lib_dir}"]) == 0


def test_rank_skips_a_damaged_entry_in_one_line(run, tmp_path, capfd):
    lib_dir = _copy(run.parent / "library", tmp_path / "library")
    lib = library.Library(lib_dir)
    [entry] = lib.entries()
    same = dict(model=entry.model, model_fingerprint=entry.model_fingerprint)
    prompt = np.asarray(lib.prompt(entry))
    healthy = lib.add(prompt + 1, task="other", **same)
    target = lib.add(prompt + 2, task="target", **same)
    _cut(lib_dir / entry.id / "prompt.npy", keep=200)  # its summary was cached while whole
    capfd.readouterr()
    with pytest.warns(
        UserWarning, match=f"{entry.id} is damaged: .* \\(200 of 208 bytes\\)"
    ) as seen:
        assert cli.main(["library", "rank", target.id, f"--library={lib_dir}"]) == 0
    out = capfd.readouterr().out
    assert healthy.id in out and entry.id not in out
    # On the console (the console script's format), that warning is one line.
    shown = runtime.one_line_warning(seen[0].message, UserWarning, "library.py", 1)
    assert shown.startswith("prompt-transfer: warning: library entry") and shown.count("\n") == 1
