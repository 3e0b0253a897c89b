"""The whole SPoT flow, cut down: tiny model, synthetic tasks, a few steps per run."""

import json

from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, TINY_CHECKPOINT
from prompt_transfer import cli


def test_spot_flow_end_to_end_and_rerun_reuses(anchors, tmp_path, capsys):
    for name in ("spot_src_a", "spot_src_b", "spot_tgt"):
        register_keyword_task(T5_VOCAB, name=name, n_train=64, n_validation=16)
    argv = [
        "spot",
        "--gin_file=experiments/spot_tiny",
        f"--gin.WORK_DIR='{tmp_path}'",
        "--gin.SOURCES=['spot_src_a', 'spot_src_b']",
        "--gin.TARGETS=['spot_tgt']",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}",
        "--gin.SOURCE_STEPS=4",
        "--gin.EMBEDDING_STEPS=2",
        "--gin.TARGET_STEPS=4",
        "--gin.EVAL_PERIOD=2",
        "--gin.CANDIDATE_STEPS=2",
        "--gin.STRATEGIES=['top_k_average', 'best_of_top_k']",
        "--gin.BASELINES=['random_uniform', 'model_tuning']",
    ]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    runs = {(r["target"], r["run"]) for r in report["rows"]}
    assert runs == {
        ("spot_tgt", n)
        for n in ("random_uniform", "model_tuning", "top_k_average", "best_of_top_k")
    }
    assert report["sources"] == ["spot_src_a", "spot_src_b"]
    assert len(report["zero_shot"]) == 2 and len(report["zero_shot"][0]) == 1
    assert set(report["similarities"]) == {"cosine_avg_tokens", "cosine_per_token"}
    rows = {r["run"]: r for r in report["rows"]}
    assert rows["random_uniform"]["steps_to_random_final"] is not None
    assert set(rows["top_k_average"]["sources"]) == {"spot_src_a", "spot_src_b"}
    markdown = (tmp_path / "report.md").read_text()
    assert "| spot_tgt | top_k_average |" in markdown
    for png in ("zero_shot.png", "similarity_cosine_avg_tokens.png", "curves_spot_tgt.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    # A second run reuses every trained run: no new checkpoints, the same report.
    mtimes = {p: p.stat().st_mtime for p in tmp_path.rglob("checkpoint_*")}
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime for p in tmp_path.rglob("checkpoint_*")} == mtimes
    assert json.loads((tmp_path / "report.json").read_text())["rows"] == report["rows"]
