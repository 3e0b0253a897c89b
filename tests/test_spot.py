"""The whole SPoT flow, cut down: the tiny model, offline tasks, a few steps per run."""

import json

from conftest import TINY_CHECKPOINT
from prompt_transfer import cli, offline_data

SOURCES = ["offline_sentiment_coachella", "offline_bbc_topic"]
TARGET = "offline_sentiment_apple_32shot"


def test_spot_flow_end_to_end_and_rerun_reuses(anchors, tmp_path, monkeypatch):
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
        "--gin.SOURCE_STEPS=4",
        "--gin.EMBEDDING_STEPS=2",
        "--gin.TARGET_STEPS=4",
        "--gin.EVAL_PERIOD=2",
        "--gin.CANDIDATE_STEPS=2",
        "--gin.STRATEGIES=['top_k_average', 'best_of_top_k']",
        "--gin.BASELINES=['random_uniform', 'class_labels', 'model_tuning']",
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
        )
    }
    assert report["sources"] == sorted(SOURCES) and report["budgets"] == [2, 4]
    assert len(report["zero_shot"]) == 2 and len(report["zero_shot"][0]) == 1
    assert set(report["similarities"]) == {"cosine_avg_tokens", "cosine_per_token"}
    rows = {r["run"]: r for r in report["rows"]}
    assert all(0 <= v <= 100 for r in rows.values() for v in r["scores"].values())
    assert rows["random_uniform"]["steps_to_random_final"] is not None
    assert set(rows["top_k_average"]["sources"]) == set(SOURCES)
    assert rows["best_of_top_k"]["sources"] in SOURCES
    markdown = (work / "report.md").read_text()
    assert f"| {TARGET} | top_k_average |" in markdown
    assert "## Zero-shot transfer" in markdown and "## Similarity (cosine_per_token)" in markdown
    for png in ("zero_shot.png", "similarity_cosine_avg_tokens.png", f"curves_{TARGET}.png"):
        assert (work / png).read_bytes()[:4] == b"\x89PNG"
    # A second run reuses every trained run: no new checkpoints, the same report.
    mtimes = {p: p.stat().st_mtime for p in work.rglob("checkpoint_*")}
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime for p in work.rglob("checkpoint_*")} == mtimes
    assert json.loads((work / "report.json").read_text())["rows"] == report["rows"]
