"""Every path a user gives goes through the one path layer. With `gs://bucket` standing for a
local folder (`paths.mounted`: what a gcsfuse mount or $PROMPT_TRANSFER_MOUNTS gives), a run
whose checkpoint, task files, MODEL_DIR and library all live under gs:// trains, evaluates,
joins its library and exports a PEFT adapter, and a SPoT flow runs with its WORK_DIR there:
every file lands in the bucket's folder, none in a `./gs:` folder of the working directory
(where `pathlib.Path('gs://bucket/run')` would put it)."""

import json
import shutil

from synthetic_tasks import keyword_examples, register_keyword_task

from conftest import CUT_DOWN_FLOW, T5_VOCAB, TINY_CHECKPOINT
from prompt_transfer import cli, paths


def _write_tsv(path, examples):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{i}\t{t}\n" for i, t in zip(examples["inputs"], examples["targets"], strict=True)]
    path.write_text("sentence\tlabel\n" + "".join(rows))


def test_runs_libraries_and_a_spot_flow_live_under_gs(anchors, tmp_path, monkeypatch):
    bucket, cwd = tmp_path / "bucket", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    shutil.copytree(TINY_CHECKPOINT, bucket / "models" / "tiny" / "checkpoint_3")
    _write_tsv(bucket / "data" / "train.tsv", keyword_examples(64, 0))
    _write_tsv(bucket / "data" / "validation.tsv", keyword_examples(16, 1))
    for name in ("kw_source_a", "kw_source_b", "kw_target"):
        register_keyword_task(T5_VOCAB, name=name, n_train=64, n_validation=16)
    run = [
        "--gin_file=experiments/prompt_tuning_tiny",
        "--gin_file=tasks/file_task.gin",
        "--gin.FILE_TASK_NAME='gs_keyword'",
        "--gin.FILE_TASK_TRAIN='gs://bucket/data/train.tsv'",
        "--gin.FILE_TASK_VALIDATION='gs://bucket/data/validation.tsv'",
        "--gin.FILE_TASK_INPUTS=('sentence',)",
        "--gin.FILE_TASK_LABELS=('yes', 'no')",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}",
        "--gin.INITIAL_CHECKPOINT_PATH='gs://bucket/models/tiny/checkpoint_3'",
        "--gin.MODEL_DIR='gs://bucket/runs/keyword'",
        "--gin.TRAIN_STEPS=4",
        "--gin.SAVE_PERIOD=2",
        "--gin.EVAL_PERIOD=2",
    ]
    with paths.mounted("gs://bucket", bucket):
        assert cli.main(["train", *run, "--gin.LIBRARY_DIR='gs://bucket/library'"]) == 0
        assert cli.main(["eval", *run, "--gin.CHECKPOINT='best'"]) == 0
        entries = [p.name for p in (bucket / "library").iterdir() if not p.name.startswith(".")]
        assert len(entries) == 1
        export = ["library", "export", entries[0], "--library=gs://bucket/library"]
        assert cli.main([*export, "--output=gs://bucket/adapter", "--format=peft"]) == 0
        argv = ["library", "import", "gs://bucket/adapter", "--library=gs://bucket/library2"]
        assert cli.main(argv) == 0
        flow = [
            "spot",
            "--gin_file=experiments/spot_tiny",
            "--gin.WORK_DIR='gs://bucket/spot'",
            "--gin.SOURCES=['kw_source_a', 'kw_source_b']",
            "--gin.TARGETS=['kw_target']",
            "--gin.INITIAL_CHECKPOINT_PATH='gs://bucket/models/tiny/checkpoint_3'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}",
            *CUT_DOWN_FLOW,
            "--gin.STRATEGIES=['top_k_average']",
            "--gin.BASELINES=['random_uniform']",
        ]
        assert cli.main(flow) == 0

    assert list(cwd.iterdir()) == []  # nothing under ./gs: (or anywhere else here)
    keyword = bucket / "runs" / "keyword"
    for name in ("config.gin", "model.json", "log.txt", "eval_history.jsonl", "best/best.json"):
        assert (keyword / name).is_file(), name
    assert (keyword / "checkpoint_4").is_dir() and (
        keyword / "prompts" / "checkpoint_4.npy"
    ).exists()
    assert json.loads((keyword / "eval_validation_best.json").read_text())["checkpoint"] == "best"
    assert (bucket / "adapter" / "adapter_config.json").exists()
    assert len(list((bucket / "library2").glob("*/meta.json"))) == 1
    report = json.loads((bucket / "spot" / "report.json").read_text())
    assert {r["run"] for r in report["rows"]} == {"random_uniform", "top_k_average"}
    assert (bucket / "spot" / "report.md").exists()
    assert (bucket / "spot" / "zero_shot.png").read_bytes()[:4] == b"\x89PNG"
