"""Rank classification against greedy decoding on one trained run: accuracy and seconds.

Not a test: it restores a finished run's best checkpoint, named by the same gin arguments as
`prompt-transfer eval` takes, then evaluates the validation split twice with the same model:
scoring each label and taking the best (rank classification, how the project evaluates
classification tasks), and decoding greedily up to the target length (T5X's default
`predict`), the decoded text judged by the task's own metric. Each is timed on its second
pass, after compilation. One JSON line, appended to benchmarks/rank_vs_decode.jsonl.

    .venv/bin/python benchmarks/rank_vs_decode.py \
        --gin_file=experiments/deep_prompt_tuning_offline --gin.PROMPT_LENGTH=20 \
        --gin.MODEL_DIR="'runs/demo/targets/offline_bbc_topic_32shot/best_of_top_k/seed_0'" \
        --gin.MIXTURE_OR_TASK_NAME="'offline_bbc_topic_32shot'" \
        --gin.TASK_FEATURE_LENGTHS="{'inputs': 48, 'targets': 8}"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prompt_transfer.configure import gin_utils
from prompt_transfer.model import seqio_eval
from prompt_transfer.trainer import config, evaluate

RESULTS = Path(__file__).with_name("rank_vs_decode.jsonl")


def timed_evaluation(evaluator, params) -> tuple[dict, float]:
    evaluator.evaluate(params)  # compiles
    start = time.perf_counter()
    results = evaluator.evaluate(params)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batch-size", type=int, default=32)
    args, gin_args = parser.parse_known_args()
    launch = gin_utils.parse_command_line(gin_args)
    gin_utils.configure(launch.files, launch.bindings)
    spec = gin_utils.build(config.RunSpec)
    model, params, step = evaluate.trained(spec, "best")
    evaluator = seqio_eval.TaskEvaluator(
        model, spec.task, args.split, spec.feature_lengths, args.batch_size
    )
    ranked, rank_seconds = timed_evaluation(evaluator, params)
    evaluator.candidates, evaluator.label_names = {}, {}  # no label list: every task is decoded
    decoded, decode_seconds = timed_evaluation(evaluator, params)
    row = {
        "run": spec.model_dir,
        "task": spec.task,
        "step": step,
        "target_length": spec.feature_lengths["targets"],
        "rank_classification": seqio_eval.main_metric(ranked),
        "rank_seconds": round(rank_seconds, 2),
        "greedy_decoding": seqio_eval.main_metric(decoded),
        "decode_seconds": round(decode_seconds, 2),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(row))
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
