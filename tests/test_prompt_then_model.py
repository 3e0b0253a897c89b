"""Prompt, then model (trainer/phases.py): one run in two phases, the prompt first on the frozen
network, then the network with that prompt attached; and what a changed network forgets."""

import dataclasses
import json
import types

import numpy as np
import pytest
from flax import traverse_util
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, WITH_DROPOUT, killed_at_batch, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.cli.jobs import evaluate_main, train_main
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import phases, run_dir

# Phase 1: steps 1-6 (saves at 3 and 6); phase 2: steps 7-12 (saves at 9 and 12).
STEPS = [
    "--gin.TRAIN_STEPS=6",
    "--gin.MODEL_STEPS=6",
    "--gin.SAVE_PERIOD=3",
    "--gin.EVAL_PERIOD=3",
    "--gin.LOG_PERIOD=3",
    "--gin.MODEL_LEARNING_RATE=0.01",
]
DEEP = [
    "--gin.DEEP_PROMPT=True",
    f"--gin.TRAINABLE='{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}'",
]


@pytest.fixture(scope="module")
def task(anchors):
    return register_keyword_task(T5_VOCAB)


def two_phase_args(model_dir, *overrides):
    return ["--gin_file=runs/prompt_then_model", *tiny_run_args(model_dir, *STEPS, *overrides)]


def _restored(model_dir, checkpoint="latest", config_of=None):
    """The parameters of the run in `model_dir` as eval restores them, flattened, and its model
    config; `config_of`: the folder whose config.gin to read (default `model_dir`)."""
    import gin

    from prompt_transfer.configure import gin_utils
    from prompt_transfer.trainer import config, evaluate

    gin.clear_config()
    config_file = (config_of or model_dir) / "config.gin"
    launch = gin_utils.parse_command_line(
        [f"--gin_file={config_file}", f"--gin.MODEL_DIR='{model_dir}'"]
    )
    gin_utils.configure(launch.files, launch.bindings)
    spec = gin_utils.build(config.RunSpec)
    _, params, _ = evaluate.trained(spec, checkpoint)
    return traverse_util.flatten_dict(params, sep="/"), spec.model_config


def _network(model_dir):
    """The frozen network the run started from, flattened (a 0-step view of phase 1's run)."""
    flat, _ = _restored(model_dir / run_dir.PHASE1, config_of=model_dir)
    prompt = lambda k: k.startswith("encoder/prompt") or k.endswith(prompts.DEEP_PREFIX)
    return {k: v for k, v in flat.items() if not prompt(k)}


@pytest.mark.parametrize(
    "mode,deep", [("frozen", False), ("frozen", True), ("trains", True)], ids=str
)
def test_two_phases_in_one_model_dir(task, tmp_path, capsys, mode, deep):
    run = tmp_path / "run"
    args = two_phase_args(run, f"--gin.MODEL_PROMPT='{mode}'", *(DEEP if deep else []))
    summary = train_main(args)
    assert summary["step"] == 12 and summary["phase1"]["step"] == 6
    err = capsys.readouterr().err
    assert "phase 2: the network trains ('.*'" in err and "steps 7-12" in err
    assert "phase 2:" in (run / "log.txt").read_text()

    # Phase 1 is a run of its own in phase1/; MODEL_DIR's checkpoints are phase 2's, and its
    # steps count on from phase 1's.
    assert sorted(p.name for p in (run / "phase1").glob("checkpoint_*")) == [
        "checkpoint_3",
        "checkpoint_6",
    ]
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_12", "checkpoint_9"]
    boundary = json.loads((run / "phases.json").read_text())
    assert boundary["phase1_step"] == 6 and boundary["prompt"] == mode

    before, (after, _) = _network(run), _restored(run)
    changed = [k for k, v in before.items() if not np.array_equal(v, after[k])]
    assert len(changed) == len(before)  # MODEL_TRAINABLE '.*': every weight of the network

    # The prompt (input and deep parts) as phase 1 left it: bit for bit when frozen (ProMoT).
    phase1 = _restored(run / run_dir.PHASE1, config_of=run)[0]
    prompt_paths = [k for k in phase1 if k not in before]
    assert (len(prompt_paths) > 1) == deep
    same = [np.array_equal(after[k], phase1[k]) for k in prompt_paths]
    assert all(same) if mode == "frozen" else not any(same)
    exported = np.load(run / "prompts" / "checkpoint_12.npy")  # the input prompt, as ever
    assert np.array_equal(exported, phase1[prompts.PROMPT_PATH]) == (mode == "frozen")

    # Evaluations: phase 1's in phase1/, phase 2's from the boundary step on; at the boundary
    # the network is still the frozen one, so the scores are phase 1's last.
    firsts = run_dir.RunDir(run / "phase1").read_eval_history()
    seconds = run_dir.RunDir(run).read_eval_history()
    assert [h["step"] for h in firsts] == [3, 6] and [h["step"] for h in seconds] == [6, 9, 12]
    assert seconds[0]["results"] == firsts[-1]["results"]

    # eval loads the run as it loads a model-tuning run.
    report = evaluate_main(["--gin_file=" + str(run / "config.gin")])
    assert report["step"] == 12 and report["results"] == seconds[-1]["results"]


def test_a_kill_on_either_side_of_the_boundary_resumes_in_its_phase_bit_for_bit(
    task, tmp_path, monkeypatch, capsys
):
    """Killed after phase 1's last checkpoint but before the boundary is written, the run
    resumes in phase 1 (which only writes the boundary); killed after the boundary, before
    phase 2's first checkpoint, it starts phase 2 from the boundary's prompt. Both end with the
    uninterrupted run's parameters and evaluations, bit for bit (dropout on in both phases)."""
    args = lambda model_dir: two_phase_args(model_dir, WITH_DROPOUT)
    train_main(args(tmp_path / "straight"))
    straight, _ = _restored(tmp_path / "straight")

    # Before the boundary: phase 1 finished, no phases.json, nothing of phase 2.
    before = tmp_path / "before"
    real_write = phases.write_boundary

    def killed(*args):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(phases, "write_boundary", killed)
    with pytest.raises(KeyboardInterrupt):
        train_main(args(before))
    monkeypatch.setattr(phases, "write_boundary", real_write)
    assert (before / "phase1" / "checkpoint_6").exists()
    assert not (before / "phases.json").exists() and not list(before.glob("checkpoint_*"))
    # Until the boundary the run is phase 1's: eval says where its prompt is.
    assert cli.main(["eval", f"--gin_file={before / 'phase1' / 'config.gin'}"]) == 2
    assert "still in phase 1; evaluate that phase's prompt with MODEL_DIR=" in (
        capsys.readouterr().err
    )

    # After the boundary: phase 2 dies at its second batch (data position 7), unsaved.
    after = tmp_path / "after"
    killed_at_batch(monkeypatch, 7, lambda: train_main(args(after)))
    assert (after / "phases.json").exists() and not list(after.glob("checkpoint_*"))

    for run in (before, after):
        train_main(args(run))
        resumed, _ = _restored(run)
        assert sorted(resumed) == sorted(straight)
        for path, value in straight.items():
            np.testing.assert_array_equal(resumed[path], value, err_msg=f"{run.name}: {path}")
        for phase in ("", "phase1"):
            assert (
                run_dir.RunDir(run / phase).read_eval_history()
                == run_dir.RunDir(tmp_path / "straight" / phase).read_eval_history()
            )
    assert "resumed from checkpoint_6" in (before / "phase1" / "log.txt").read_text()


def test_phase_two_at_a_zero_learning_rate_keeps_phase_ones_scores(task, tmp_path):
    run = tmp_path / "run"
    train_main(two_phase_args(run, "--gin.MODEL_LEARNING_RATE=0"))
    last = run_dir.RunDir(run / "phase1").read_eval_history()[-1]
    seconds = run_dir.RunDir(run).read_eval_history()
    assert [h["step"] for h in seconds] == [6, 9, 12]
    assert all(h["results"] == last["results"] for h in seconds)
    assert seconds[-1]["predictions"] == last["predictions"]
    network, after = _network(run), _restored(run)[0]
    assert all(np.array_equal(after[k], v) for k, v in network.items())

    # More MODEL_STEPS extend phase 2, as more TRAIN_STEPS extend a run.
    train_main(two_phase_args(run, "--gin.MODEL_LEARNING_RATE=0", "--gin.MODEL_STEPS=9"))
    assert "resumed from checkpoint_12" in (run / "log.txt").read_text()
    assert [h["step"] for h in run_dir.RunDir(run).read_eval_history()] == [6, 9, 12, 15]


@pytest.mark.parametrize(
    "override,message",
    [
        ("--gin.TRAINABLE='.*'", "TRAINABLE='.*' is phase 1's and trains the network"),
        ("--gin.PROMPT_LENGTH=0", "MODEL_STEPS > 0 tunes the prompt first"),
        ("--gin.MODEL_TRAINABLE='nothing/.*'", "MODEL_TRAINABLE='nothing/.*' matches none"),
        ("--gin.MODEL_PROMPT='thawed'", "MODEL_PROMPT"),
        ("--gin.MODEL_LEARNING_RATE=-1.0", "MODEL_LEARNING_RATE"),
    ],
)
def test_a_bad_two_phase_run_is_refused_before_any_work(task, tmp_path, capsys, override, message):
    run = tmp_path / "run"
    assert cli.main(["train", *two_phase_args(run, override)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not run.exists()


def test_forget_scores_other_tasks_before_and_after_a_run_changed_the_network(
    task, tmp_path, capsys
):
    register_keyword_task(T5_VOCAB, name="test_keyword_other", labels=("fruit", "place"))
    lib = tmp_path / "library"
    quick = ["--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=4", "--gin.SAVE_PERIOD=4"]
    train_main(
        tiny_run_args(
            tmp_path / "other", *quick, f"--gin.LIBRARY_DIR='{lib}'", task="test_keyword_other"
        )  # fmt: skip
    )
    prompt_run = tmp_path / "prompt"
    train_main(tiny_run_args(prompt_run, *quick, f"--gin.LIBRARY_DIR='{lib}'"))

    # A run that left the network alone keeps everything, exactly; its own task is not scored.
    assert cli.main(["forget", "--run", str(prompt_run), "--library", str(lib)]) == 0
    assert "| mean | | | | 100.0% |" in capsys.readouterr().out
    report = json.loads((prompt_run / "forget_validation_latest.json").read_text())
    assert [r["task"] for r in report["tasks"]] == ["test_keyword_other"]
    row = report["tasks"][0]
    assert row["after"] == row["before"] and row["kept"] == 100.0

    # After a prompt-then-model run the same prompt meets a changed network: the frozen
    # network's score is the same, and what is kept is measured against it.
    run = tmp_path / "two_phase"
    train_main(two_phase_args(run, "--gin.MODEL_LEARNING_RATE=0.05"))
    assert cli.main(["forget", "--run", str(run), "--library", str(lib)]) == 0
    changed = json.loads((run / "forget_validation_latest.json").read_text())["tasks"][0]
    assert changed["before"] == row["before"]
    assert changed["kept"] == pytest.approx(100 * changed["after"] / changed["before"])

    # Bad input: a folder with no run, a task the library does not hold.
    assert cli.main(["forget", "--run", str(tmp_path), "--library", str(lib)]) == 2
    assert "holds no run (no config.gin)" in capsys.readouterr().err
    args = ["forget", "--run", str(run), "--library", str(lib), "--tasks", "test_keyword"]
    assert cli.main(args) == 2
    assert "--tasks 'test_keyword': the library" in capsys.readouterr().err


def test_then_model_rows_split_the_target_steps_and_train_as_model_tuning(tmp_path):
    from prompt_transfer.spot import config, flow
    from prompt_transfer.spot import strategies as target_rows
    from prompt_transfer.trainer.train_state import OptimizerConfig

    settings = config.FlowConfig(
        work_dir=str(tmp_path),
        sources=("a", "b"),
        targets=("t",),
        target_steps=300,
        then_model_steps=100,
        strategies=("top_1", "best_of_top_k_then_model", "compose_concat_then_model"),
        baselines=("random_uniform", "model_tuning", "prompt_then_model"),
        compose_sources=("a", "b"),
        model_tuning_optimizer=OptimizerConfig(learning_rate=2e-3),
    )
    rows = target_rows.target_inits(settings, tmp_path / "library", "t-embedding", prompt_length=20)
    two_phase = {n: r for n, r in rows.items() if "then_model" in r}
    assert set(two_phase) == {
        "prompt_then_model", "best_of_top_k_then_model", "compose_concat_then_model"
    }  # fmt: skip
    for name, changes in two_phase.items():
        assert changes["steps"] == 200 and changes["then_model"].steps == 100, name
        phase = changes["then_model"]
        assert (phase.trainable, phase.prompt, phase.learning_rate) == (".*", "frozen", 2e-3)
        assert phase.optimizer == settings.model_tuning_optimizer
    assert rows["prompt_then_model"]["prompt_init"].method == "random_uniform"
    assert rows["best_of_top_k_then_model"]["prompt_init"].transfer.strategy == "best_of_top_k"
    assert rows["compose_concat_then_model"]["prompt_length"] == 40
    assert "steps" not in rows["top_1"] and "then_model" not in rows["model_tuning"]
    half = dataclasses.replace(settings, then_model_steps=0)
    assert target_rows.target_inits(half, tmp_path, "e", 20)["prompt_then_model"]["steps"] == 150

    spec = types.SimpleNamespace(prompt_length=20)
    with pytest.raises(flow.FlowError, match="THEN_MODEL_STEPS=300 leaves the prompt of"):
        flow.check_flow(dataclasses.replace(settings, then_model_steps=300), spec)
    with pytest.raises(flow.FlowError, match="PROMPT_LENGTH=0 leaves none"):
        flow.check_flow(settings, types.SimpleNamespace(prompt_length=0))


def test_forget_reports_balanced_accuracy_and_the_report_weighs_the_gap(tmp_path):
    """A network that drifts to the majority class keeps most of an imbalanced task's accuracy
    and little of its balanced accuracy: the kept table shows both, and the verdict compares
    prompt-then-model with model tuning within the seeds' spread."""
    from prompt_transfer.spot import report
    from prompt_transfer.trainer import forget

    def seed(kept, balanced):
        task = {"task": "s", "metric": "accuracy", "before": 80.0, "after": 0.8 * kept}
        task.update(kept=kept, balanced_before=60.0, balanced_kept=balanced)
        return {"tasks": [task], "mean_kept": kept, "mean_kept_balanced": balanced}

    curves = {
        ("t", "model_tuning"): [([2, 4], [50.0, 70.0]), ([2, 4], [50.0, 74.0])],
        ("t", "prompt_then_model"): [([2, 4], [40.0, 73.0]), ([2, 4], [40.0, 75.0])],
    }
    kept = {
        ("t", "model_tuning"): [seed(90.0, 50.0), seed(80.0, 40.0)],
        ("t", "prompt_then_model"): [seed(100.0, 95.0), seed(96.0, 85.0)],
    }
    runs = report.TargetRuns(curves=curves, kept=kept)
    built = report.write_report(
        tmp_path,
        report.Results(["t"], ["s"], runs, {}, np.zeros((1, 1)), eval_period=2, target_steps=4),
    )
    (line,) = [v for v in built["verdict"] if "prompt, then model" in v]
    assert line == (
        "t: prompt, then model (prompt_then_model, 74.0; model tuning 72.0) is level with model "
        "tuning (+2.0 points, within the seeds' spread 2.8) at step 4; of the sources' scores it "
        "keeps 98.0% ± 2.8 (balanced accuracy 90.0% ± 7.1), model tuning 85.0% ± 7.1 (balanced "
        "accuracy 45.0% ± 7.1)"
    )
    markdown = (tmp_path / "report.md").read_text()
    assert "| t | model_tuning | 85.0% ± 7.1 (45.0% ± 7.1) | 85.0% ± 7.1 (45.0% ± 7.1) |" in (
        markdown
    )
    # the console table of one run: balanced accuracy beside the main metric
    one = dict(seed(90.0, 50.0), run="r", step=4, split="validation", checkpoint="latest")
    one["tasks"][0]["balanced_after"] = 30.0
    assert "| s | accuracy | 80.00 | 72.00 | 90.0% | 60.00 | 30.00 | 50.0% |" in forget.table(one)


def test_the_offline_experiment_trains_phase_2_as_the_demo_model_tunes():
    """experiments/prompt_then_model_flow_offline: the demo's flow with two targets; phase 2 of
    its two-phase rows is model tuning's Adafactor at 1e-3 (not the prompts' Adam), half of the
    300 steps."""
    from prompt_transfer.configure import gin_files, gin_utils
    from prompt_transfer.spot import config
    from prompt_transfer.spot import strategies as target_rows
    from prompt_transfer.trainer.train_state import OptimizerConfig

    gin_utils.configure([str(gin_files.find("experiments/prompt_then_model_flow_offline"))], [])
    flow = gin_utils.build(config.FlowConfig)
    assert flow.targets == ["offline_bbc_topic_32shot", "offline_bbc_topic"]
    rows = target_rows.target_inits(flow, "library", "embedding", prompt_length=20)
    assert set(rows) == {
        "sampled_vocab", "model_tuning", "prompt_then_model",
        "top_k_average", "top_k_average_then_model",
    }  # fmt: skip
    phase = rows["prompt_then_model"]["then_model"]
    assert rows["prompt_then_model"]["steps"] == phase.steps == 150
    assert (
        phase.optimizer == rows["model_tuning"]["optimizer"] == OptimizerConfig(learning_rate=1e-3)
    )
