"""What the shipped model is worth: prompt tuning (and model tuning) on offline targets with the
pre-trained offline_small versus the same architecture at random initialisation.

Not a test: it trains, prints a Markdown table and writes it (with the raw numbers) to
benchmarks/pretrained_vs_random.{md,json}. Each run is a `prompt-transfer train` run of
gin/experiments/prompt_tuning_offline.gin; finished runs under --work-dir are reused.

    .venv/bin/python benchmarks/pretrained_vs_random.py --steps 600   # about 10 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prompt_transfer.cli.jobs import train_main
from prompt_transfer.trainer import run_dir

pass

TARGETS = ("offline_sentiment_self_driving", "offline_sentiment_apple_32shot", "offline_bbc_topic")
INITS = {"pre-trained (shipped)": "'shipped:offline_t5'", "random init": "None"}
HERE = Path(__file__).resolve().parent


def run(work: Path, target: str, init: str, tuning: str, steps: int, eval_period: int) -> dict:
    model_dir = work / tuning / ("random" if init == "None" else "pretrained") / target
    history = run_dir.read_eval_history(model_dir)
    if not (history and history[-1]["step"] >= steps):
        # Model tuning as runs/model_tuning.gin sets it (that file would reset the lengths).
        extra = ["--gin.TRAINABLE='.*'", "--gin.PROMPT_LENGTH=0", "--gin.LEARNING_RATE=1e-3"]
        extra = extra if tuning == "model" else []
        train_main(
            [
                "--gin_file=experiments/prompt_tuning_offline",
                f"--gin.MODEL_DIR='{model_dir}'",
                f"--gin.MIXTURE_OR_TASK_NAME='{target}'",
                f"--gin.INITIAL_CHECKPOINT_PATH={init}",
                f"--gin.TRAIN_STEPS_RELATIVE={steps}",
                f"--gin.EVAL_PERIOD={eval_period}",
                *extra,
                "--resume",
            ]
        )
        history = run_dir.read_eval_history(model_dir)
    return {"final": history[-1]["value"], "best": max(h["value"] for h in history)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work-dir", default="runs/pretrained_vs_random")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-period", type=int, default=100)
    p.add_argument("--targets", nargs="+", default=list(TARGETS))
    p.add_argument("--no-model-tuning", action="store_true")
    args = p.parse_args()
    work = Path(args.work_dir)
    tunings = ["prompt"] + ([] if args.no_model_tuning else ["model"])
    results = {
        f"{tuning} tuning, {name}": {
            t: run(work, t, init, tuning, args.steps, args.eval_period) for t in args.targets
        }
        for tuning in tunings
        for name, init in INITS.items()
    }
    lines = [
        f"Validation accuracy after {args.steps} steps (best over evaluations every "
        f"{args.eval_period} in brackets).",
        "",
        "| run | " + " | ".join(args.targets) + " |",
        "|---|" + "---|" * len(args.targets),
    ]
    for name, by_target in results.items():
        cells = [f"{r['final']:.1f} ({r['best']:.1f})" for r in by_target.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    (HERE / "pretrained_vs_random.md").write_text(table)
    (HERE / "pretrained_vs_random.json").write_text(
        json.dumps({"steps": args.steps, "results": results}, indent=1)
    )


if __name__ == "__main__":
    main()
