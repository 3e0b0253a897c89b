#!/usr/bin/env bash
# Related prompts trained together, measured on the shipped model: tweet sentiment about Apple
# and about Coachella (32 per class each) in one multi-task run ('mpt' and 'add'), against a
# deep prompt trained on each task alone, with the same seeds, steps and optimizer.
#   launch/multitask_offline.sh [WORK] [SEEDS]      (defaults: runs/multitask_offline, 0 1 2)
# Finished runs are reused; the table (each task's validation accuracy at steps 100/200/300,
# mean ± std over seeds) is printed and written to WORK/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-runs/multitask_offline}; shift || true
seeds=${*:-0 1 2}
export TF_CPP_MIN_LOG_LEVEL=3
pt=.venv/bin/prompt-transfer
$pt prepare-offline
start=$SECONDS
train() {  # train DIR ARGS...: a run, unless DIR holds a finished one
  local dir=$1
  shift
  [ -e "$dir/prompts" ] && return 0
  $pt train --gin.MODEL_DIR="'$dir'" --gin.TRAIN_STEPS_RELATIVE=300 --gin.EVAL_PERIOD=100 \
    --gin.SAVE_PERIOD=300 "$@" --overwrite
}
for seed in $seeds; do
  for how in mpt add; do
    train "$work/$how/seed_$seed" --gin_file=experiments/multitask_prompt_offline \
      --gin.MULTITASK_HOW="'$how'" --gin.RANDOM_SEED="$seed"
  done
  for task in offline_sentiment_apple_32shot offline_sentiment_coachella_32shot; do
    train "$work/alone/$task/seed_$seed" --gin_file=experiments/deep_prompt_tuning_offline \
      --gin.MIXTURE_OR_TASK_NAME="'$task'" --gin.RANDOM_SEED="$seed"
  done
done
echo "[multitask_offline] runs took $((SECONDS - start)) s"
.venv/bin/python - "$work" $seeds <<'PY'
import json, pathlib, sys
import numpy as np
work, seeds = pathlib.Path(sys.argv[1]), sys.argv[2:]
tasks = ["offline_sentiment_apple_32shot", "offline_sentiment_coachella_32shot"]
def history(run):
    lines = (run / "eval_history.jsonl").read_text().splitlines()
    return {r["step"]: r["results"] for r in map(json.loads, lines)}
def cell(runs, task, step, metric="accuracy"):
    v = [history(r)[step][task][metric] for r in runs]
    return f"{np.mean(v):.1f} ± {np.std(v):.1f}"
rows = ["| run | task | step 100 | step 200 | step 300 | balanced acc. 300 |", "|---|---|---|---|---|---|"]
for name in ["alone", "mpt", "add"]:
    for task in tasks:
        runs = [work / (f"alone/{task}" if name == "alone" else name) / f"seed_{s}" for s in seeds]
        cells = [cell(runs, task, step) for step in (100, 200, 300)]
        cells.append(cell(runs, task, 300, "balanced_accuracy"))
        rows.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
table = "\n".join(rows)
print(table)
(work / "table.md").write_text(table + "\n")
PY
