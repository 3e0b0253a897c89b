"""`prompt-transfer demo`, cut down: the real command in a fresh process, on the shipped model
and vocabulary, with its deep prompts, one seed and a few steps per run."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import CUT_DOWN_FLOW
from prompt_transfer.configure import gin_files
from prompt_transfer.prompt import prompts
from prompt_transfer.transfer import library

SOURCES = ["offline_sentiment_coachella", "offline_sentiment_apple_32shot"]
TARGET = "offline_bbc_topic_32shot"

DEEP_WIDTH = prompts.deep_width(gin_files.read_model_config("offline_small"))


def report_line_for(target: str, text: str) -> bool:
    """The verdict line: a comparison, or "no verdict" between two constant predictors."""
    return f"{target}: the best transfer" in text or f"{target}: no verdict" in text


def test_cut_down_demo_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PROMPT_TRANSFER_VOCAB"}
    env["PROMPT_TRANSFER_DATA"] = str(tmp_path / "offline")
    env["PROMPT_TRANSFER_JAX_CACHE"] = str(tmp_path / "jax")
    work = tmp_path / "demo"
    argv = [
        sys.executable,
        "-m",
        "prompt_transfer",
        "demo",
        "--work-dir",
        str(work),
        "--seed",
        "3",
        f"--gin.SOURCES={SOURCES}",
        f"--gin.TARGETS=['{TARGET}']",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}",
        *CUT_DOWN_FLOW,
        "--gin.BASELINES=['random_uniform', 'model_tuning']",
        "--gin.SEEDS_PER_RUN=1",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runs 1-2/7: source prompts" in done.stderr and "runs 4-7/7: target" in done.stderr
    # The sources train together, and so do the target's prompt runs; model tuning alone.
    targets = work / "targets" / TARGET
    for run_dir in (work / "sources" / SOURCES[0], targets / "best_of_top_k" / "seed_3"):
        assert "trained together with" in (run_dir / "log.txt").read_text()
    assert "trained together" not in (targets / "model_tuning" / "seed_3" / "log.txt").read_text()
    assert report_line_for(TARGET, done.stdout) and "demo done" in done.stdout
    config = (work / "sources" / SOURCES[0] / "config.gin").read_text()
    assert "shipped:offline_t5" in config and "RANDOM_SEED = 3" in config
    report = json.loads((work / "report.json").read_text())
    assert {r["run"] for r in report["rows"]} == {
        "random_uniform",
        "model_tuning",
        "top_k_average",
        "best_of_top_k",
    }
    assert report["budgets"] == [2, 4] and len(report["verdict"]) == 1
    assert set(report["similarities"]) == {
        "trained_blocks_cosine_avg_tokens",  # what retrieval ranks by
        "input_cosine_avg_tokens",
        "cosine_avg_tokens",
        "cosine_per_token",
        "euclidean",
    }
    markdown = (work / "report.md").read_text()
    assert report["verdict"][0] in markdown and f"| {TARGET} | best_of_top_k |" in markdown
    # A constant predictor shows at a glance: the majority row and what each run predicted.
    assert f"| {TARGET} | majority class (" in markdown
    assert all(sum(c.values()) == 211 for r in report["rows"] for c in r["predictions"])
    # The demo's prompts are deep: the library holds every layer's part, and transfer moved it.
    entries = library.Library(work / "library").entries()
    assert len(entries) == 3 and all(e.deep_width == DEEP_WIDTH for e in entries)
    start = np.load(
        work / "targets" / TARGET / "top_k_average" / "seed_3" / "transfer" / "initial_prompt.npy"
    )
    assert start.shape == (20, 128 + DEEP_WIDTH)
    for png in ("zero_shot.png", "similarity_euclidean.png", f"curves_{TARGET}.png"):
        assert (work / png).read_bytes()[:4] == b"\x89PNG"
    _readme_reads_a_flow_run(work, env, tmp_path)


def _readme_reads_a_flow_run(work, env, tmp_path) -> None:
    """The README's commands for reading a flow run, as written (the demo's folder and seed
    for this one's): eval gives what the deep-prompt run logged, infer answers each article."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [
        line
        for line in readme.replace("\\\n", " ").splitlines()
        if line.startswith(".venv/bin/prompt-transfer ") and "MODEL_DIR=runs/demo/" in line
    ]
    assert [c.split()[1] for c in commands] == ["eval", "infer"], commands
    (tmp_path / "articles.txt").write_text("the match ended in a draw\nshares fell sharply\n")
    run = work / "targets" / TARGET / "best_of_top_k" / "seed_3"
    outputs = []
    for command in commands:
        argv = shlex.split(command.replace("runs/demo", str(work)).replace("seed_0", "seed_3"))
        argv = [sys.executable, "-m", "prompt_transfer", *argv[1:]]
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
    logged = json.loads((run / "eval_history.jsonl").read_text().splitlines()[-1])
    shown = json.loads(outputs[0])
    assert (shown["step"], shown["results"]) == (logged["step"], logged["results"])
    written = Path(outputs[1].split()[-1])
    assert len(written.read_text().splitlines()) == 2
