"""The whole SPoT flow, cut down: the tiny model, offline tasks, a few steps per run."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from read_back import eval_equals_log, infer_equals_log, last_logged
from synthetic_tasks import register_keyword_task

from conftest import CUT_DOWN_FLOW, T5_VOCAB, TINY_CHECKPOINT
from prompt_transfer import cli
from prompt_transfer.data import offline_data
from prompt_transfer.prompt import multitask
from prompt_transfer.spot import report
from prompt_transfer.stages import figures
from prompt_transfer.trainer import run_dir, run_record
from prompt_transfer.transfer import library

SOURCES = ["offline_sentiment_coachella", "offline_bbc_topic"]
TARGET = "offline_sentiment_apple_32shot"


def test_spot_flow_end_to_end_and_rerun_reuses(anchors, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROMPT_TRANSFER_DATA", str(tmp_path / "offline"))
    offline_data.prepare(tmp_path / "offline")
    work = tmp_path / "work"
    argv = [
        "spot",
        "--gin_file=experiments/spot_tiny",
        f"--gin.WORK_DIR='{work}'",
        f"--gin.SOURCES={SOURCES}",
        f"--gin.TARGETS=['{TARGET}']",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}",
        *CUT_DOWN_FLOW,
        "--gin.STRATEGIES=['top_k_average', 'best_of_top_k', 'attention', 'multitask_average', "
        "'top_k_average_then_model']",
        "--gin.BASELINES=['random_uniform', 'class_labels', 'model_tuning', 'prompt_then_model']",
        "--gin.MODEL_TUNING_LEARNING_RATE=0.05",
        "--gin.SEEDS_PER_RUN=2",
        f"--gin.STUDY_FILE='{tmp_path / 'study.json'}'",  # not there: the report says so
    ]
    assert cli.main(argv) == 0
    report = json.loads((work / "report.json").read_text())
    runs = {(r["target"], r["run"]) for r in report["rows"]}
    assert runs == {
        (TARGET, n)
        for n in (
            "random_uniform",
            "class_labels",
            "model_tuning",
            "top_k_average",
            "best_of_top_k",
            "attention",
            "multitask_average",
            "prompt_then_model",
            "top_k_average_then_model",
        )
    }
    assert report["sources"] == sorted(SOURCES) and report["budgets"] == [2, 4]
    assert len(report["zero_shot"]) == 2 and len(report["zero_shot"][0]) == 1
    # SIMILARITY_METRICS, and RETRIEVAL_METRIC: what training added, past the shared start
    assert set(report["similarities"]) == {
        "cosine_avg_tokens",
        "cosine_per_token",
        "trained_blocks_cosine_avg_tokens",
    }
    assert (work / "shared_start.npy").exists()
    picked = work / "targets" / TARGET / "top_k_average" / "seed_0" / "transfer" / "report.json"
    assert json.loads(picked.read_text())["metric"] == "trained_blocks_cosine_avg_tokens"
    rows = {r["run"]: r for r in report["rows"]}
    assert all(0 <= v <= 100 for r in rows.values() for v in r["scores"].values())
    assert rows["random_uniform"]["steps_to_random_final"] is not None
    assert set(rows["top_k_average"]["sources"]) == set(SOURCES)
    # Each target run twice (seeds 0 and 1): scores are their mean, with a spread.
    assert (work / "targets" / TARGET / "top_k_average" / "seed_1" / "checkpoint_4").exists()
    assert all(r["seeds"] == 2 and set(r["spread"]) == {"2", "4"} for r in rows.values())
    assert rows["best_of_top_k"]["sources"] in SOURCES
    assert set(rows["attention"]["sources"]) == set(SOURCES)  # both mixed, per input
    assert (
        work / "targets" / TARGET / "attention" / "seed_1" / "transfer" / "attention.npz"
    ).exists()
    # multitask_average starts from one multi-task run over the sources, kept out of the library
    multi = work / "sources" / "multitask"
    assert set(multitask.load(multi).names) == set(SOURCES)
    assert rows["multitask_average"]["sources"] == [str(multi)]
    assert not any(e.task.startswith("spot_") for e in library.Library(work / "library").entries())
    markdown = (work / "report.md").read_text()
    assert f"| {TARGET} | top_k_average |" in markdown
    assert f"- no study at {tmp_path / 'study.json'} yet to judge retrieval by" in markdown
    assert "## Zero-shot transfer" in markdown and "## Similarity (cosine_per_token)" in markdown
    for png in ("zero_shot.png", "similarity_cosine_avg_tokens.png", f"curves_{TARGET}.png"):
        assert (work / png).read_bytes()[:4] == b"\x89PNG"
    _then_model_rows(work / "targets" / TARGET, report)
    _runs_read_back(work, argv[1:], capsys)
    # A second run reuses every trained run and what it kept: no new checkpoints or
    # measurements, the same report.
    mtimes = {p: p.stat().st_mtime for p in (*work.rglob("checkpoint_*"), *work.rglob("forget_*"))}
    assert len([p for p in mtimes if p.name.startswith("forget_")]) == 3 * 2  # 3 rows, 2 seeds
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    again = json.loads((work / "report.json").read_text())
    assert again["rows"] == report["rows"] and again["kept"] == report["kept"]
    # Other settings in the same WORK_DIR are refused before any work, not silently reused.
    capsys.readouterr()
    assert cli.main([*argv, "--gin.LEARNING_RATE=0.1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    wanted = "holds a run with optimizer.learning_rate = 0.3, this flow asks for 0.1"
    assert len(err) == 1 and wanted in err[0] and f"{work}/sources/offline_" in err[0], err
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    assert json.loads((work / "report.json").read_text())["rows"] == report["rows"]


def _runs_read_back(work, flow_args, capsys) -> None:
    """Every kind of run the flow trains (a source, a baseline, model tuning, attention, a
    multi-task run, both phases of prompt then model) is read by eval with no gin, with the
    flow's own command line and with its config.gin, and equals what it logged; infer with no
    gin predicts what it logged (issue 34)."""
    targets = work / "targets" / TARGET
    kinds = [
        work / "sources" / SOURCES[0],
        work / "sources" / "multitask",
        *(targets / name / "seed_1" for name in ("class_labels", "model_tuning", "attention")),
        targets / "prompt_then_model" / "seed_0",
        targets / "prompt_then_model" / "seed_0" / "phase1",
    ]
    for run in kinds:
        for args in ([], flow_args, [f"--gin_file={run / 'config.gin'}"]):
            eval_equals_log(run, *args, capsys=capsys)
        if run.name != "multitask":  # one task's predictions per record: eval reads it above
            infer_equals_log(run, capsys=capsys)
    # A multi-task run asked about one of its tasks: that task's prompt, that task's score.
    multi = work / "sources" / "multitask"
    assert (
        cli.main(["eval", f"--gin.MODEL_DIR={multi}", f"--gin.MIXTURE_OR_TASK_NAME={SOURCES[0]}"])
        == 0
    )
    one = json.loads((multi / "eval_validation_latest.json").read_text())["results"]
    assert one == {SOURCES[0]: last_logged(multi)["results"][SOURCES[0]]}
    # A flow run folder from before run.json: its flow_run.json says what it is.
    older = work / "older_run"
    shutil.copytree(targets / "model_tuning" / "seed_1", older)
    (older / "run.json").unlink()
    eval_equals_log(older, capsys=capsys)
    shutil.rmtree(older)
    # config.gin is the run's operative config: the flow's placeholders are overridden.
    config = (targets / "model_tuning" / "seed_1" / "config.gin").read_text()
    _, own = config.split(run_record.SET_IN_PYTHON)
    for line in (f"MIXTURE_OR_TASK_NAME = '{TARGET}'", "TRAINABLE = '.*'", "PROMPT_LENGTH = 0"):
        assert f"\n{line}\n" in own, own


def _then_model_rows(target_dir, report) -> None:
    """prompt_then_model (from random init) and top_k_average_then_model (from the transfer):
    the prompt for half of the 4 steps, then the network with model tuning's optimizer; one
    curve over both phases, a verdict against model tuning, and the sources' scores kept by
    every run that trained the network, against one frozen score per source."""
    rows = {r["run"]: r for r in report["rows"]}
    for name in ("prompt_then_model", "top_k_average_then_model"):
        run = target_dir / name / "seed_1"
        assert json.loads((run / "phases.json").read_text())["phase1_step"] == 2
        assert (run / "phase1" / "checkpoint_2").exists() and (run / "checkpoint_4").exists()
        assert None not in rows[name]["scores"].values()  # phase 1's step 2, phase 2's step 4
        record = json.loads((run / "flow_run.json").read_text())
        assert record["then_model.steps"] == 2 and record["then_model.learning_rate"] == 0.05
    assert set(rows["top_k_average_then_model"]["sources"]) == set(SOURCES)  # phase 1's start
    record = json.loads((target_dir / "prompt_then_model" / "seed_0" / "flow_run.json").read_text())
    assert record["prompt_init.method"] == "random_uniform"

    kept = {r["run"]: r for r in report["kept"]}
    assert set(kept) == {"model_tuning", "prompt_then_model", "top_k_average_then_model"}
    assert all(row["seeds"] == 2 for row in kept.values())
    befores = [{t: c["before"] for t, c in row["tasks"].items()} for row in kept.values()]
    assert set(befores[0]) == set(SOURCES) and all(b == befores[0] for b in befores)
    forgot = json.loads(
        (target_dir / "model_tuning" / "seed_0" / "forget_validation_latest.json").read_text()
    )
    assert forgot["step"] == 4 and any(r["after"] != r["before"] for r in forgot["tasks"])
    (verdict,) = [line for line in report["verdict"] if "prompt, then model (" in line]
    assert verdict.startswith(f"{TARGET}: prompt, then model (") and "model tuning" in verdict
    assert "of the sources' scores it keeps" in verdict
    markdown = (target_dir.parent.parent / "report.md").read_text()
    assert "## What training the network forgets" in markdown
    assert f"| {TARGET} | prompt_then_model |" in markdown


def _results(curves, sources=("s1",), similarities=None, zero_shot=None, **runs):
    """One target "t", evaluated every 2 steps for 4."""
    return report.Results(
        targets=["t"],
        sources=list(sources),
        runs=report.TargetRuns(curves=curves, **runs),
        similarities=similarities or {"cosine_avg_tokens": np.array([[0.1]])},
        zero_shot=np.array([[30.0]]) if zero_shot is None else zero_shot,
        eval_period=2,
        target_steps=4,
    )


def _small_report(work):
    curves = {
        ("t", "random_uniform"): [([2, 4], [50.0, 60.0])],
        ("t", "model_tuning"): [([2, 4], [70.0, 80.0])],
        ("t", "top_k_average"): [([2, 4], [55.0, 65.0])],
        ("t", "best_of_top_k"): [([2, 4], [61.0, 58.0])],
    }
    return report.write_report(
        work,
        _results(
            curves,
            sources=["s1", "s2"],
            similarities={"cosine_avg_tokens": np.array([[0.1, 0.2]])},
            zero_shot=np.array([[30.0], [40.0]]),
        ),
    )


def test_verdict_compares_the_best_transfer_with_random_init(tmp_path):
    report = _small_report(tmp_path)
    # model tuning is a baseline, not a transfer strategy: top_k_average is the best transfer.
    assert report["verdict"] == [
        "t: the best transfer (top_k_average, 65.0; random init 60.0) helps: beats random init "
        "by 5.0 points at step 4; it reaches random init's final score at step 4; one seed, so "
        "no spread to judge the gap by"
    ]
    rows = {r["run"]: r for r in report["rows"]}
    assert rows["best_of_top_k"]["steps_to_random_final"] == 2
    assert rows["random_uniform"]["steps_to_random_final"] == 4


def test_without_a_random_uniform_run_sampled_vocab_is_random_init(tmp_path):
    curves = {
        ("t", "sampled_vocab"): [([2, 4], [40.0, 50.0]), ([2, 4], [44.0, 54.0])],
        ("t", "top_k_average"): [([2, 4], [53.0, 60.0]), ([2, 4], [55.0, 62.0])],
    }
    built = report.write_report(tmp_path, _results(curves))
    (line,) = built["verdict"]
    assert line.startswith(
        "t: the best transfer (top_k_average, 61.0; random init (sampled_vocab) 52.0) helps"
    )
    assert "reaches random init's final score at step 2" in line
    rows = {r["run"]: r["steps_to_random_final"] for r in built["rows"]}
    assert rows == {"sampled_vocab": 4, "top_k_average": 2}


def test_two_constant_predictors_get_no_verdict_and_the_majority_row_shows(tmp_path):
    """Random init says 'no' for all 20, the best transfer 'yes' for 19 of 20: 60 against 40 is
    the difference between two class frequencies, and the report must say so."""
    curves = {
        ("t", "random_uniform"): [([2, 4], [40.0, 40.0])],
        ("t", "top_k_average"): [([2, 4], [50.0, 60.0])],
    }
    predictions = {
        ("t", "random_uniform"): [{"yes": 0, "no": 20}],
        ("t", "top_k_average"): [{"yes": 19, "no": 1}],  # 95%: near-constant
    }
    built = report.write_report(
        tmp_path, _results(curves, predictions=predictions, labels={"t": {"yes": 6, "no": 4}})
    )
    assert built["verdict"] == [
        "t: no verdict: the best transfer (top_k_average) predicts 'yes' and random init 'no' "
        "for (nearly) every input, so their 60.0 and 40.0 are class frequencies (majority "
        "class 'yes': 60.0)"
    ]
    markdown = (tmp_path / "report.md").read_text()
    assert (
        "| t | majority class (yes) | 60.0 | 60.0 | - | - | true labels: yes 6, no 4 |" in markdown
    )
    assert "| yes 19, no 1 |" in markdown and "| no 20 |" in markdown
    assert report._single_label({"yes": 19, "no": 1}) == "yes"
    assert report._single_label({"yes": 18, "no": 2}) is None  # 90%: it tells inputs apart


def test_with_seeds_the_verdict_weighs_the_gap_by_their_spread(tmp_path):
    """Three seeds each: a 2-point gap inside a 3-point spread is no difference; a 20-point gap
    is help. Scores are means, shown with their standard deviation."""

    def seeds(*finals):
        return [([2, 4], [40.0, f]) for f in finals]

    def build(transfer_finals):
        curves = {
            ("t", "random_uniform"): seeds(47.0, 50.0, 53.0),
            ("t", "top_1"): seeds(*transfer_finals),
        }
        return report.write_report(tmp_path, _results(curves))

    close = build([49.0, 52.0, 55.0])
    assert "top_1, 52.0; random init 50.0) makes no difference: +2.0 points" in close["verdict"][0]
    assert "within the seeds' spread (3.0)" in close["verdict"][0]
    assert "| t | top_1 | 40.0 ± 0.0 | 52.0 ± 3.0 |" in (tmp_path / "report.md").read_text()
    far = build([69.0, 70.0, 71.0])
    assert "top_1, 70.0; random init 50.0) helps: beats random init by 20.0" in far["verdict"][0]


def test_a_full_disk_leaves_the_last_complete_report(tmp_path, monkeypatch):
    import errno
    import os

    _small_report(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        _small_report(tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no partial files


def test_similarities_print_enough_digits_to_tell_sources_apart():
    """1/(1+||A-B||) of prompts with norm ~60 is about 0.007 for every pair: a fixed 3 decimals
    printed 0.007 for all of them. Now: the fewest significant digits (3 or more) that keep
    different values apart."""
    assert figures.significant([0.0071234, 0.0071299, 0.0069]) == ["0.00712", "0.00713", "0.0069"]
    assert figures.significant([0.0071231, 0.0071234]) == ["0.0071231", "0.0071234"]
    assert figures.significant([0.78, 0.34, 0.78]) == ["0.78", "0.34", "0.78"]


def _macros(gin_file) -> set[str]:
    import re

    return set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", gin_file.read_text(), flags=re.M))


def test_spot_and_study_gin_override_only_what_differs_from_prompt_tuning_gin():
    """runs/spot.gin and runs/study.gin include runs/stages.gin, which includes
    runs/prompt_tuning.gin: every run's settings are bound once, there (and in runs/train.gin,
    which it includes); stages.gin sets the few the flow and the study change and the macros
    they share, and neither command's file sets any of those again."""
    from prompt_transfer.configure.gin_files import GIN_DIR

    runs = _macros(GIN_DIR / "runs" / "prompt_tuning.gin") | _macros(GIN_DIR / "runs" / "train.gin")
    stages = _macros(GIN_DIR / "runs" / "stages.gin")
    assert stages & runs == {
        "MODEL_DIR",
        "MIXTURE_OR_TASK_NAME",
        "TASK_FEATURE_LENGTHS",
        "EVAL_PERIOD",
    }
    assert {"WORK_DIR", "SOURCES", "TARGETS", "RETRIEVAL_METRIC"} <= stages
    assert "include 'runs/prompt_tuning.gin'" in (GIN_DIR / "runs" / "stages.gin").read_text()
    for command in ("spot", "study"):
        file = GIN_DIR / "runs" / f"{command}.gin"
        assert not _macros(file) & (runs | stages), command
        assert "include 'runs/stages.gin'" in file.read_text()


def _demo_config(*bindings):
    from prompt_transfer.configure import gin_files, gin_utils
    from prompt_transfer.spot import config
    from prompt_transfer.stages import runs
    from prompt_transfer.trainer.config import RunSpec, TrainConfig

    gin_utils.configure([str(gin_files.find("experiments/demo"))], list(bindings))
    flow = gin_utils.build(config.FlowConfig)
    return flow, runs.base_run(gin_utils.build(RunSpec), gin_utils.build(TrainConfig))


def test_the_demo_flow_runs_with_prompt_tuning_gins_settings():
    from prompt_transfer.prompt import prompts
    from prompt_transfer.trainer.train_state import OptimizerConfig

    flow, (spec, config) = _demo_config()
    assert flow.sources == [
        "offline_sentiment_airline",
        "offline_tweet_domain",
        "offline_bbc_ppt_nsp",
    ]
    assert (flow.target_steps, flow.seeds_per_run, flow.stack_runs) == (300, 3, 3)
    assert spec.feature_lengths == {"inputs": 48, "targets": 8} and spec.prompt_length == 20
    assert spec.trainable_regex == f"{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}"
    assert spec.initial_checkpoint == "shipped:offline_t5" and spec.model_name == "offline_t5"
    assert (config.batch_size, config.eval_period, config.log_period) == (16, 100, 50)
    assert config.optimizer == OptimizerConfig(name="adam", learning_rate=0.03)
    # Model tuning keeps its own optimizer: the demo's unscoped name = 'adam' does not reach it.
    assert flow.model_tuning_optimizer == OptimizerConfig(learning_rate=1e-3)
    flow, _ = _demo_config(
        "MODEL_TUNING_LEARNING_RATE = 1e-4",
        "model_tuning/train_state.OptimizerConfig.name = 'adam'",
    )
    assert flow.model_tuning_optimizer == OptimizerConfig(name="adam", learning_rate=1e-4)


@pytest.mark.parametrize(
    ("macro", "instead"), [("TRAIN_STEPS", "TARGET_STEPS"), ("MODEL_DIR", "WORK_DIR")]
)
def test_a_macro_the_flow_sets_per_run_is_refused_in_one_line(macro, instead, tmp_path, capfd):
    """TRAIN_STEPS (or MODEL_DIR) given to the flow would be ignored: each run has its own."""
    code = cli.main(
        ["spot", "--gin_file=experiments/demo", f"--gin.WORK_DIR={tmp_path}", f"--gin.{macro}=7"]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and f"--gin.{macro}=" in err[-1] and instead in err[-1], err
    assert len(err) == 1 and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("spot", ["--gin_file=experiments/spot_tiny", "--gin.STRATEGIES=['top_1', 'race']"]),
        ("study", ["--gin_file=experiments/study_tiny"]),
    ],
)
def test_a_target_the_race_cannot_score_is_refused_before_any_run(command, extra, tmp_path, capfd):
    """RACE_SCORE='balanced_accuracy' on a target whose task reports only accuracy: the flow
    with a race row, and the study (which always races), refuse in one line naming the target
    and the fix before any source trains."""
    for name in ("source_a", "test_keyword"):
        register_keyword_task(T5_VOCAB, name=name)
    work = tmp_path / "work"
    argv = [
        command,
        *extra,
        f"--gin.WORK_DIR='{work}'",
        "--gin.SOURCES=['source_a']",
        "--gin.TARGETS=['test_keyword']",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'",
        "--gin.RACE_SCORE='balanced_accuracy'",
    ]
    code = cli.main(argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "TARGETS=['test_keyword']" in err[0] and "add data.metrics.balanced_accuracy" in err[0]
    assert not work.exists()  # nothing written


def test_a_run_recorded_before_a_setting_existed_is_reused_only_at_its_default(
    tmp_path, monkeypatch
):
    """A field added to the code since a flow's runs were recorded (ATTENTION_HIDDEN, say) does
    not make every old run "other settings"; asked away from its default, it does."""
    from conftest import tiny_config
    from prompt_transfer.prompt import prompts
    from prompt_transfer.stages import runs
    from prompt_transfer.trainer.config import RunSpec, TrainConfig
    from prompt_transfer.transfer.initial import TransferInit

    def run(**transfer):
        init = prompts.PromptInit("transfer", transfer=TransferInit(strategy="top_1", **transfer))
        spec = RunSpec(str(tmp_path / "run"), "t", {"inputs": 8, "targets": 4}, tiny_config())
        return spec, TrainConfig(steps=4, batch_size=2, prompt_init=init)

    old = runs.settings(*run(), str(tmp_path))
    del old["prompt_init.transfer.attention_hidden"]  # written before the field existed
    record = tmp_path / "run" / runs.SETTINGS_FILE
    record.parent.mkdir()
    record.write_text(json.dumps(old))
    monkeypatch.setattr(run_dir.RunDir, "holds_run", lambda self: True)
    with pytest.raises(runs.FlowError, match="attention_hidden = null, this flow asks for 32"):
        runs.check_settings([run(attention_hidden=32)], str(tmp_path))
    runs.check_settings([run()], str(tmp_path))  # the default: the run is this one
    assert json.loads(record.read_text())["prompt_init.transfer.attention_hidden"] == 64
    with pytest.raises(runs.FlowError, match="top_k = 3, this flow asks for 4"):
        runs.check_settings([run(top_k=4)], str(tmp_path))  # a recorded setting still counts


def test_compose_and_each_source_rows(tmp_path):
    """The compose_ strategies combine COMPOSE_SOURCES (concat: a prompt as long as the parts;
    attention: its module trains too), and each_source is a row per source, from it alone."""
    from prompt_transfer.prompt import attention
    from prompt_transfer.spot import config, flow
    from prompt_transfer.spot import strategies as target_rows

    settings = config.FlowConfig(
        work_dir=str(tmp_path),
        sources=("a", "b", "c"),
        targets=("t",),
        strategies=("compose_concat", "compose_weighted_sum", "compose_attention", "each_source"),
        baselines=("sampled_vocab",),
        compose_sources=("a", "b"),
    )
    rows = target_rows.target_inits(settings, tmp_path / "library", "t-embedding", prompt_length=20)
    assert set(rows) == {
        "sampled_vocab", "compose_concat", "compose_weighted_sum", "compose_attention",
        "from_a", "from_b", "from_c",
    }  # fmt: skip
    assert settings.total_runs == 3 + 1 + 7  # sources, the embedding, each row once
    composed = {n: rows[n]["prompt_init"].transfer for n in rows if n.startswith("compose")}
    assert {t.compose_how for t in composed.values()} == {"concat", "weighted_sum", "attention"}
    assert all(t.compose_sources == ("a", "b") for t in composed.values())
    assert rows["compose_concat"]["prompt_length"] == 40
    assert rows["compose_attention"]["trainable_regex"] == attention.TRAINABLE
    assert rows["from_c"]["prompt_init"].transfer.source == "c"
    with pytest.raises(flow.FlowError, match="COMPOSE_SOURCES=\\['a', 'x'\\] must name two or"):
        flow.check_flow(dataclasses.replace(settings, compose_sources=("a", "x")), None)


def test_multitask_rows_start_from_one_run_over_the_sources(tmp_path):
    """multitask_average and multitask_shared start from the flow's one multi-task run over
    SOURCES (its tasks' parts averaged, its shared prompt alone), counted once."""
    from prompt_transfer.spot import config
    from prompt_transfer.spot import strategies as target_rows

    settings = config.FlowConfig(
        work_dir=str(tmp_path),
        sources=("a", "b"),
        targets=("t",),
        strategies=("multitask_average", "multitask_shared", "top_1"),
        baselines=("sampled_vocab",),
    )
    rows = target_rows.target_inits(settings, tmp_path / "library", "t-embedding", prompt_length=20)
    inits = {n: rows[n]["prompt_init"].transfer for n in ("multitask_average", "multitask_shared")}
    assert {n: t.multitask_init for n, t in inits.items()} == {
        "multitask_average": "average_source_tasks",
        "multitask_shared": "only_source_shared",
    }
    assert {t.multitask_run for t in inits.values()} == {str(tmp_path / "sources" / "multitask")}
    assert settings.total_runs == 2 + 1 + 1 + 4  # sources, the multi-task run, embedding, rows
    assert dataclasses.replace(settings, strategies=("top_1",)).total_runs == 2 + 1 + 2


def test_the_race_row_races_with_its_own_settings_and_the_others_keep_theirs(tmp_path):
    """The race row's TransferInit carries RACE_SOURCES, RACE_STEPS and RACE_SEEDS; every other
    row keeps TransferInit's defaults, so that a run recorded before the race existed is still
    the same run (stages/runs.check_settings). A race row trains alone: it goes on from its
    race's last step."""
    from conftest import tiny_config
    from prompt_transfer.spot import config
    from prompt_transfer.spot import strategies as target_rows
    from prompt_transfer.trainer.config import RunSpec, TrainConfig
    from prompt_transfer.trainer.train import stack_key
    from prompt_transfer.transfer.initial import TransferInit

    settings = config.FlowConfig(
        work_dir=str(tmp_path),
        sources=("a", "b", "c"),
        targets=("t",),
        strategies=("race", "best_of_top_k"),
        baselines=("sampled_vocab",),
        race_sources=2,
        race_steps=7,
        race_seeds=2,
    )
    rows = target_rows.target_inits(settings, tmp_path / "library", "t-embedding", prompt_length=20)
    raced, best = (rows[n]["prompt_init"].transfer for n in ("race", "best_of_top_k"))
    assert (raced.strategy, raced.race_sources, raced.race_steps, raced.race_seeds) == (
        "race",
        2,
        7,
        2,
    )
    default = TransferInit()
    assert (best.race_sources, best.race_steps, best.race_seeds) == (
        default.race_sources,
        default.race_steps,
        default.race_seeds,
    )
    spec = RunSpec(str(tmp_path / "r"), "t", {"inputs": 8, "targets": 4}, tiny_config())
    assert stack_key(spec, TrainConfig(prompt_init=rows["race"]["prompt_init"])) is None
    assert stack_key(spec, TrainConfig(prompt_init=rows["best_of_top_k"]["prompt_init"]))


def test_the_report_says_what_each_race_picked_and_cost(tmp_path):
    """One line per race row: each seed's pick, among how many sources, the cost against one
    target run, and the steps the picked sources' runs went on from (a race_and_overlap row
    may pick a source that left at the first rung); the Markdown has it too."""
    results = _results(
        {
            ("t", "random_uniform"): [([2, 4], [50.0, 60.0])],
            ("t", "race_and_overlap"): [([2, 4], [55.0, 66.0])],
        },
        sources=["s1", "s2", "s3"],
        similarities={"cosine_avg_tokens": np.array([[0.1, 0.2, 0.3]])},
        zero_shot=np.array([[30.0], [40.0], [35.0]]),
    )
    rungs = [
        {"step": 1, "scores": {"s1": 5.0, "s2": 6.0, "s3": 4.0}, "kept": ["s2", "s1"]},
        {"step": 2, "scores": {"s2": 7.0, "s1": 6.0}, "kept": ["s2"]},
    ]
    results.runs.races[("t", "race_and_overlap")] = [
        {"chosen": c, "ranking": ["s2", "s1", "s3"], "rungs": rungs, "steps": 5, "seconds": 3.0}
        for c in ("s2", "s3", "s2")
    ]
    written = report.write_report(tmp_path, results)
    assert written["races"] == [
        "t: the race (race_and_overlap) picked s2 (2 of 3 seeds), s3 (1 of 3 seeds) among 3 "
        "sources in 2 rung(s); it cost 5 prompt steps a seed (1.25x one target run of 4 steps), "
        "3 s, and the picked source's run went on from its step 2 or 1"
    ]
    assert f"- {written['races'][0]}" in (tmp_path / "report.md").read_text()
