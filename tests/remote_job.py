"""One job whose every path is under a bucket, shared by test_remote_paths' two buckets (a
mounted folder, and the fake GCS server in a subprocess: `python remote_job.py gs://bucket`).

A run whose checkpoint, task files, MODEL_DIR and library live under the bucket trains, joins
its library, is resumed for two more steps, evaluates its best checkpoint, answers a file of
inputs and exports a PEFT adapter that a second library imports; then a SPoT flow runs with
its WORK_DIR there.
`python remote_job.py BUCKET --resume STEPS` runs only the run's resume, to STEPS."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from synthetic_tasks import keyword_examples, register_keyword_task  # noqa: E402

from conftest import CUT_DOWN_FLOW, T5_VOCAB, TINY_CHECKPOINT, tiny_run_args  # noqa: E402

# What `fill` puts in the bucket (relative names) and what `run` leaves there.
CHECKPOINT = "models/tiny/checkpoint_3"
WRITTEN = [
    "runs/keyword/config.gin",
    "runs/keyword/model.json",
    "runs/keyword/log.txt",
    "runs/keyword/eval_history.jsonl",
    "runs/keyword/best/best.json",
    "runs/keyword/prompts/checkpoint_6.npy",
    "runs/keyword/eval_validation_best.json",
    "runs/keyword/predictions_inputs_step6.jsonl",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
]
FLOW_WRITTEN = ["spot/report.json", "spot/report.md", "spot/zero_shot.png"]


def _tsv(examples) -> bytes:
    rows = [f"{i}\t{t}\n" for i, t in zip(examples["inputs"], examples["targets"], strict=True)]
    return ("sentence\tlabel\n" + "".join(rows)).encode()


def fill(put: Callable[[str, bytes], None]) -> None:
    """The job's inputs, through `put(relative name, bytes)`: a T5X checkpoint and a task."""
    for file in sorted(TINY_CHECKPOINT.rglob("*")):
        if file.is_file():
            put(f"{CHECKPOINT}/{file.relative_to(TINY_CHECKPOINT).as_posix()}", file.read_bytes())
    put("data/train.tsv", _tsv(keyword_examples(64, 0)))
    put("data/validation.tsv", _tsv(keyword_examples(16, 1)))
    put("data/inputs.txt", b"topic: apple lemon mango\ntopic: river ocean desert\n")


def _train(bucket: str) -> list[str]:
    run = tiny_run_args(
        f"{bucket}/runs/keyword",
        "--gin_file=tasks/file_task.gin",
        "--gin.FILE_TASK_NAME='gs_keyword'",
        f"--gin.FILE_TASK_TRAIN='{bucket}/data/train.tsv'",
        f"--gin.FILE_TASK_VALIDATION='{bucket}/data/validation.tsv'",
        "--gin.FILE_TASK_INPUTS=('sentence',)",
        "--gin.FILE_TASK_LABELS=('yes', 'no')",
        f"--gin.LIBRARY_DIR='{bucket}/library'",
        "--gin.SAVE_PERIOD=2",
        "--gin.EVAL_PERIOD=2",
        task=None,  # file_task.gin names it: FILE_TASK_NAME
        checkpoint=f"{bucket}/{CHECKPOINT}",
    )
    return ["train", *run]


def run(bucket: str, resume: int | None = None, flow: bool = True) -> None:
    """Every command of the job (or only the resume to step `resume`; without the SPoT flow
    unless `flow`), in this process, as `prompt-transfer` would run them."""
    from prompt_transfer import cli

    if resume:
        steps = [[*_train(bucket), "--resume", f"--gin.TRAIN_STEPS={resume}"]]
    else:
        steps = _job(bucket, flow)
        for name in ("kw_source_a", "kw_source_b", "kw_target"):
            register_keyword_task(T5_VOCAB, name=name, n_train=64, n_validation=16)
    for argv in steps:
        status = cli.main(argv)
        if status:
            raise SystemExit(f"prompt-transfer {argv[0]} ... exited {status}")


def _job(bucket: str, flow: bool) -> list[list[str]]:
    library = f"--library={bucket}/library"
    train = _train(bucket)
    commands = [
        [*train, "--gin.TRAIN_STEPS=4"],
        [*train, "--resume", "--gin.TRAIN_STEPS=6"],  # from 4 in the bucket, data iterator too
        ["eval", *train[1:], "--gin.CHECKPOINT='best'"],
        ["infer", *train[1:], f"--gin.INFER_INPUT_FILE='{bucket}/data/inputs.txt'"],
        [
            "library",
            "export",
            "--run",
            f"{bucket}/runs/keyword",
            "--checkpoint=best",
            f"--output={bucket}/adapter",
            "--format=peft",
            "--base-model=test/tiny-t5",
        ],
        ["library", "import", f"{bucket}/adapter", f"--library={bucket}/library2"],
        ["library", "list", library],
    ]
    flow_command = [
        "spot",
        "--gin_file=experiments/spot_tiny",
        f"--gin.WORK_DIR='{bucket}/spot'",
        "--gin.SOURCES=['kw_source_a', 'kw_source_b']",
        "--gin.TARGETS=['kw_target']",
        f"--gin.INITIAL_CHECKPOINT_PATH='{bucket}/{CHECKPOINT}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}",
        *CUT_DOWN_FLOW,
        "--gin.STRATEGIES=['top_k_average']",
        "--gin.BASELINES=['random_uniform']",
    ]
    return commands + [flow_command] if flow else commands


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[3]) if sys.argv[2:3] == ["--resume"] else None)
