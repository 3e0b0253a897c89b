"""A run reads back exactly as it trained (issue 34): every run folder describes itself
(run.json), every reader takes the run from there, the checkpoint decides what is restored, and
a command's gin that contradicts the run is refused in one line.

Each run kind trained alone here (plain and deep prompt, model tuning, prompt then model) is read
by eval and infer with no gin, with its own gin files and with its own config.gin, and each
equals what the run logged; the flow's and the study's runs are read the same way in
test_spot.py, test_study.py and test_demo.py. score, the library and the exports read a run's
checkpoint arrays (a deep prompt's layers with them).
"""

import json
import shutil

import numpy as np
import pytest
from read_back import eval_equals_log, infer_equals_log, last_logged
from synthetic_tasks import register_keyword_task

from conftest import DEEP_PROMPT_ARGS, T5_VOCAB, TINY_CHECKPOINT, tiny_run_args, trained_arrays
from prompt_transfer import cli
from prompt_transfer.prompt import prompts
from prompt_transfer.transfer import library, peft_io

STEPS = ["--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=4", "--gin.SAVE_PERIOD=4"]
DEEP = DEEP_PROMPT_ARGS
MODEL_TUNING = ["--gin.TRAINABLE='.*'", "--gin.PROMPT_LENGTH=0", "--gin.LEARNING_RATE=0.01"]
TWO_PHASES = ["--gin_file=runs/prompt_then_model", "--gin.MODEL_STEPS=4",
              "--gin.MODEL_LEARNING_RATE=0.01"]  # fmt: skip
# What each kind's own launch adds to the tiny experiment (tiny_run_args).
KINDS = {"plain": [], "deep": DEEP, "model_tuning": MODEL_TUNING, "two_phases": TWO_PHASES}


def own_args(kind: str, model_dir) -> list[str]:
    extra = KINDS[kind]
    files = [a for a in extra if a.startswith("--gin_file")]
    return [*files, *tiny_run_args(model_dir, *STEPS, *[a for a in extra if a not in files])]


@pytest.fixture(scope="module")
def runs(anchors, tmp_path_factory):
    register_keyword_task(T5_VOCAB)
    root = tmp_path_factory.mktemp("read_back")
    for kind in KINDS:
        assert cli.main(["train", *own_args(kind, root / kind)]) == 0, kind
    return root


@pytest.mark.parametrize("gin", ["none", "own", "config.gin"])
@pytest.mark.parametrize("kind", [*KINDS, "two_phases/phase1"])
def test_eval_reads_each_run_as_it_trained(runs, kind, gin, capsys):
    model_dir = runs / kind
    args = {
        "none": [],
        "own": own_args(kind.split("/")[0], model_dir),
        "config.gin": [f"--gin_file={model_dir / 'config.gin'}"],
    }[gin]
    eval_equals_log(model_dir, *args, capsys=capsys)


@pytest.mark.parametrize("kind", [*KINDS, "two_phases/phase1"])
def test_infer_predicts_what_the_run_logged(runs, kind, capsys):
    infer_equals_log(runs / kind, capsys=capsys)


def test_the_record_says_what_trained(runs):
    record = json.loads((runs / "deep" / "run.json").read_text())
    assert record["prompt_kind"] == "deep" and record["spec"]["deep_prompt"] is True
    assert record["spec"]["task"] == "test_keyword" and "model_dir" not in record["spec"]
    held = trained_arrays(runs / "deep" / "checkpoint_4")
    assert {k: list(v.shape) for k, v in held.items()} == record["trainable"]
    assert json.loads((runs / "model_tuning" / "run.json").read_text())["prompt_kind"] == "none"
    phase2 = json.loads((runs / "two_phases" / "run.json").read_text())
    assert phase2["spec"]["phase"] == 2 and prompts.PROMPT_PATH not in phase2["trainable"]


@pytest.mark.parametrize(
    "kind, override, named",
    [
        ("deep", [], "DEEP_PROMPT: the run in"),  # the plain experiment's gin, as typed
        ("plain", ["--gin.PROMPT_LENGTH=7"], "PROMPT_LENGTH: the run in"),
        ("plain", ["--gin.TRAINABLE='.*'"], "TRAINABLE: the run in"),
        ("plain", ["--gin.VOCABULARY='other.model'"], "VOCABULARY: the run in"),
        ("plain", ["--gin.t5.T5Config.num_heads=8"], "the model's num_heads"),
    ],
)
def test_a_gin_that_contradicts_the_run_is_refused_in_one_line(runs, kind, override, named, capsys):
    model_dir = runs / kind
    before = {p.name: p.stat().st_mtime for p in model_dir.iterdir()}
    capsys.readouterr()
    assert cli.main(["eval", *tiny_run_args(model_dir, *override)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "this command's gin says" in err[0], err
    assert {p.name: p.stat().st_mtime for p in model_dir.iterdir()} == before  # nothing written


def test_without_gin_a_macro_override_is_read_the_same_way(runs, capsys):
    capsys.readouterr()
    assert cli.main(["eval", f"--gin.MODEL_DIR={runs / 'deep'}", "--gin.DEEP_PROMPT=False"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DEEP_PROMPT: the run in" in err[0] and "says False" in err[0]


def test_lengths_split_and_batch_are_honoured_and_said(runs, capsys):
    model_dir = runs / "plain"
    capsys.readouterr()
    argv = ["eval", f"--gin.MODEL_DIR={model_dir}", "--gin.EVAL_BATCH_SIZE=8",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 10, 'targets': 4}"]  # fmt: skip
    assert cli.main(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "reading with" in line]
    assert err == [
        "[prompt-transfer] reading with inputs length 10; the run trained with inputs 12, "
        "targets 4",
        "[prompt-transfer] reading with batch size 8; the run evaluated with 32",
    ]
    report = json.loads((model_dir / "eval_validation_latest.json").read_text())
    assert report["step"] == 4 and report["split"] == "validation"


def test_an_old_folder_is_restored_from_its_checkpoint_or_refused(runs, tmp_path, capsys):
    """A run folder from before run.json: the checkpoint decides what is restored, so the demo
    gin's TRAINABLE (the input prompt only) no longer leaves the deep prompt's layers at their
    start, and a plain gin is refused naming the array the checkpoint holds."""
    old = tmp_path / "old"
    shutil.copytree(runs / "deep", old)
    (old / "run.json").unlink()
    as_demo_gin = [a for a in own_args("deep", old) if not a.startswith("--gin.TRAINABLE")]
    eval_equals_log(old, *as_demo_gin, capsys=capsys)
    capsys.readouterr()
    assert cli.main(["eval", *tiny_run_args(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    held = "holds decoder/layers_0/self_attention/prompt_prefix, which this command's model has not"
    assert len(err) == 1 and held in err[0] and "give its own gin" in err[0], err
    capsys.readouterr()
    assert cli.main(["eval", f"--gin.MODEL_DIR={old}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no run.json" in err[0] and "--gin_file" in err[0], err


def test_a_checkpoint_without_an_array_the_run_trained_is_refused(runs, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(runs / "plain", copy)
    record = json.loads((copy / "run.json").read_text())
    record["trainable"]["encoder/layers_0/attention/prompt_prefix"] = [2, 5, 4]
    (copy / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert cli.main(["eval", f"--gin.MODEL_DIR={copy}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks encoder/layers_0/attention/prompt_prefix" in err[0], err


def test_a_damaged_record_is_named_in_one_line(runs, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(runs / "plain", copy)
    (copy / "run.json").write_bytes((copy / "run.json").read_bytes()[:10])
    capsys.readouterr()
    assert cli.main(["eval", f"--gin.MODEL_DIR={copy}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{copy}/run.json is damaged (10 bytes" in err[0], err


def test_score_and_the_library_read_the_deep_prompt_with_its_layers(runs, tmp_path, capsys):
    model_dir, lib = runs / "deep", tmp_path / "lib"
    inputs = ["topic: apple lemon mango", "topic: river ocean desert"]
    score = ["score", f"--checkpoint={TINY_CHECKPOINT}", "--size=tiny", f"--vocab={T5_VOCAB}",
             "--inputs", *inputs, "--targets", "yes", "no"]  # fmt: skip
    capsys.readouterr()
    assert cli.main([*score, f"--prompt={model_dir}"]) == 0
    from_run = capsys.readouterr().out
    assert cli.main(["library", "add", str(model_dir), f"--library={lib}"]) == 0
    [entry] = library.Library(lib).entries()
    logged = last_logged(model_dir)
    assert entry.task == "test_keyword" and entry.deep_width > 0 and entry.steps == 4
    assert entry.score == logged["value"] and entry.model == "test_t5_1_1_tiny"
    capsys.readouterr()
    assert cli.main([*score, f"--prompt-entry={entry.id}", f"--library={lib}"]) == 0
    assert capsys.readouterr().out == from_run
    # infer's scores of the same inputs are the run's (eval's path), and score's agree.
    text = tmp_path / "inputs.txt"
    text.write_text("\n".join(inputs) + "\n")
    assert cli.main(["infer", f"--gin.MODEL_DIR={model_dir}", f"--gin.INFER_INPUT_FILE={text}",
                     f"--gin.INFER_OUTPUT_FILE={tmp_path / 'p.jsonl'}"]) == 0  # fmt: skip
    inferred = [json.loads(line)["scores"] for line in open(tmp_path / "p.jsonl")]
    printed = [float(line.split()[0]) for line in from_run.splitlines()]
    wanted = [row[label] for row in inferred for label in ("yes", "no")]
    assert printed == pytest.approx(wanted, abs=2e-3)


def test_exports_read_the_checkpoint_and_refuse_what_they_would_lose(runs, tmp_path, capsys):
    plain = trained_arrays(runs / "plain" / "checkpoint_4")[prompts.PROMPT_PATH]
    out = tmp_path / "adapter"
    argv = ["library", "export", "--run", str(runs / "plain"), "--checkpoint", "latest"]
    assert cli.main([*argv, "--format", "peft", "--output", str(out)]) == 0
    np.testing.assert_array_equal(peft_io.read_adapter(out)[0], plain)
    capsys.readouterr()
    deep = ["library", "export", "--run", str(runs / "deep"), "--checkpoint", "latest"]
    assert cli.main([*deep, "--format", "peft", "--output", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a deep prompt" in err[0] and not (tmp_path / "d").exists()
    # The network of a model-tuning run, its size from the run's record.
    assert cli.main(["export", str(runs / "model_tuning"), "--output", str(tmp_path / "mt")]) == 0
    from prompt_transfer.network import checkpoints

    rows, _ = checkpoints.describe(tmp_path / "mt" / "checkpoint")
    trained = trained_arrays(runs / "model_tuning" / "checkpoint_4")
    assert {name for name, _, _ in rows} == set(trained)
    assert "  num_heads = 2\n" in (tmp_path / "mt" / "model.gin").read_text()
    capsys.readouterr()
    assert cli.main(["export", str(runs / "plain"), "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained a prompt (plain)" in err[0], err


def test_a_saved_step_is_read_by_its_name(runs, tmp_path, capsys):
    """CHECKPOINT='checkpoint_N' (T5X's own name for a step): that step, or one line naming the
    steps the run keeps."""
    model_dir = runs / "two_phases" / "phase1"
    argv = ["eval", f"--gin.MODEL_DIR={model_dir}", "--gin.CHECKPOINT='checkpoint_4'"]
    assert cli.main(argv) == 0
    report = json.loads((model_dir / "eval_validation_checkpoint_4.json").read_text())
    assert report["step"] == 4 and report["results"] == last_logged(model_dir)["results"]
    capsys.readouterr()
    assert cli.main([*argv[:2], "--gin.CHECKPOINT='checkpoint_3'"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CHECKPOINT='checkpoint_3'" in err[0], err
    assert "keeps checkpoint_4" in err[0]


def test_eval_reads_the_checkpoints_metadata_once(runs, monkeypatch, capsys):
    """orbax's metadata opens every array's store (model tuning's ~100 for the tiny model):
    eval asks it which arrays the checkpoint holds and whether they fit, from one read."""
    import orbax.checkpoint as ocp

    read = []
    real = ocp.PyTreeCheckpointHandler.metadata
    monkeypatch.setattr(
        ocp.PyTreeCheckpointHandler,
        "metadata",
        lambda self, directory: read.append(str(directory)) or real(self, directory),
    )
    eval_equals_log(runs / "model_tuning", capsys=capsys)
    assert read == [str(runs / "model_tuning" / "checkpoint_4" / "state")]


def test_a_best_checkpoint_at_a_saved_step_is_written_once(runs):
    """Model tuning's evaluation at step 4 is its best, and step 4 is saved: checkpoint_4's
    state is best/checkpoint_4's files (hard links, written once), with its own data position,
    and its checksums hold; eval read it above as the run logged."""
    import os

    from prompt_transfer.trainer import saving

    run = runs / "model_tuning"
    best = run / "best" / "checkpoint_4" / "state"
    arrays = [p for p in best.rglob("*") if p.is_file()]
    assert arrays and all(
        os.path.samefile(p, run / "checkpoint_4" / "state" / p.relative_to(best)) for p in arrays
    )
    assert json.loads((run / "checkpoint_4" / "data" / "metadata").read_text()) == {
        "position": 4,
        "step": 4,
    }
    assert saving.damage(run, 4) is None and saving.damage(run / "best", 4) is None
