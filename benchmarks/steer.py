"""Does a prompt steer the model? Issue 13's goal, measured on one checkpoint in one command.

For each judged task, prompt tuning (gin/experiments/prompt_tuning_offline.gin, or the file
--experiment names) runs once per seed; the table gives the best validation accuracy (mean and
spread over seeds), the majority class's share (what a constant predictor scores), and how much
of the validation split the run's most predicted class took at its best evaluation. The goal,
per the issue:

- the best prompt beats the majority class by at least 10 points on each demo target, on BBC
  topic, and on a task the project has never seen;
- on full-data topic classification (BBC topic) a prompt reaches at least 80% of model tuning.

The never-seen task is a 5-way WordNet gloss category (animal, artifact, food, person, plant)
that this script writes as TSV files and brings in with `prompt-transfer add-task`, as a user
would. Its record goes to WORK_DIR/user_tasks ($PROMPT_TRANSFER_TASKS, only so the benchmark
leaves the user's own records alone). Without WordNet (Debian's wordnet-base) it is skipped.

Not a test: it trains (about a minute per run on 2 CPU cores at 400 steps) and writes
benchmarks/steer.{md,json}. Finished runs under --work-dir are reused.

    .venv/bin/python benchmarks/steer.py --seeds 3                  # the shipped model
    .venv/bin/python benchmarks/steer.py --seeds 3 --steps 600 --tag deep \
        --experiment deep_prompt_tuning_offline            # deep prompts
    .venv/bin/python benchmarks/steer.py --checkpoint DIR/export/checkpoint --tag mine
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from prompt_transfer.model import seqio_eval
from prompt_transfer.trainer import run_dir

HERE = Path(__file__).resolve().parent
DEMO_TARGETS = ("offline_sentiment_apple_32shot", "offline_sentiment_coachella")
TOPIC = "offline_bbc_topic"
UNSEEN = "steer_gloss_category"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
GLOSS_CATEGORIES = {"05": "animal", "06": "artifact", "13": "food", "18": "person", "20": "plant"}
MARGIN = 10.0  # points over the majority class
TOPIC_SHARE = 0.8  # of model tuning's accuracy


def write_gloss_task(folder: Path, per_class: int = 600, seed: int = 0) -> dict[str, Path]:
    """TSV splits (train 2,100 / validation 450 / test 450) of WordNet noun glosses labelled
    with their lexicographer category; the first clause of each gloss, at least four words, and
    no text twice (a gloss shared by two synsets is dropped)."""
    glosses = {c: [] for c in GLOSS_CATEGORIES.values()}
    for line in WORDNET_NOUNS.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # licence header
            continue
        head, _, gloss = line.partition(" | ")
        category = GLOSS_CATEGORIES.get(head.split()[1])
        text = gloss.split(";")[0].strip()
        if category and len(text.split()) >= 4:
            glosses[category].append(text)
    rng = np.random.default_rng(seed)
    seen = collections.Counter(t for texts in glosses.values() for t in set(texts))
    glosses = {c: sorted(t for t in set(texts) if seen[t] == 1) for c, texts in glosses.items()}
    rows = [
        (texts[i], c)
        for c, texts in glosses.items()
        for i in rng.permutation(len(texts))[:per_class]
    ]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    n = len(rows)
    parts = {"train": rows[: n * 7 // 10], "validation": rows[n * 7 // 10 : n * 17 // 20]}
    parts["test"] = rows[n * 17 // 20 :]
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, part in parts.items():
        files[split] = folder / f"{split}.tsv"
        with open(files[split], "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return files


def _cli(args: list[str], env: dict) -> None:
    done = subprocess.run([sys.executable, "-m", "prompt_transfer", *args], env=env)
    if done.returncode:
        sys.exit(f"error: `prompt-transfer {' '.join(args[:2])} ...` exited {done.returncode}")


def run(work: Path, env: dict, task: str, tuning: str, seed: int, args) -> list[dict]:
    """The evaluations of one run (trained now unless a finished one is there)."""
    model_dir = work / tuning / task / f"seed{seed}"
    history = run_dir.read_eval_history(model_dir)
    if not history or history[-1]["step"] < args.steps:
        if tuning == "model":  # as gin/runs/model_tuning.gin sets it (it would reset the lengths)
            experiment = "prompt_tuning_offline"
            extra = ["--gin.TRAINABLE='.*'", "--gin.PROMPT_LENGTH=0", "--gin.LEARNING_RATE=1e-3"]
        else:
            experiment, extra = args.experiment, [f"--gin.{g}" for g in args.gin]
        _cli(
            [
                "train",
                f"--gin_file=experiments/{experiment}",
                f"--gin.MODEL_DIR='{model_dir}'",
                f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
                f"--gin.INITIAL_CHECKPOINT_PATH='{args.checkpoint}'",
                f"--gin.TRAIN_STEPS_RELATIVE={args.steps}",
                f"--gin.EVAL_PERIOD={args.eval_period}",
                f"--gin.RANDOM_SEED={seed}",
                *extra,
                "--resume",
            ],
            env,
        )
        history = run_dir.read_eval_history(model_dir)
    return history


def summarize(histories: list[list[dict]]) -> dict:
    """One task's runs (one per seed) -> best accuracy per seed, the majority class's share,
    and the share of the split the most predicted class took at each run's best evaluation."""
    best, top_share, majority = [], [], 0.0
    for history in histories:
        record = max(history, key=lambda r: r["value"])
        best.append(record["value"])
        (labels,) = record["labels"].values()
        (predicted,) = record["predictions"].values()
        _, majority = seqio_eval.majority_share(labels)
        top_share.append(100.0 * max(predicted.values()) / max(sum(labels.values()), 1))
    return {
        "best": best,
        "mean": float(np.mean(best)),
        "std": float(np.std(best, ddof=1)) if len(best) > 1 else 0.0,
        "majority": majority,
        "top_class_share": top_share,
    }


def verdicts(prompt: dict[str, dict], model_topic: dict | None) -> dict[str, bool]:
    """Each part of the goal: task -> met. A task meets it when every seed's best clears the
    majority class by MARGIN points; the topic share compares seed means."""
    out = {
        f"{task}: +{MARGIN:g} over majority": min(s["best"]) >= s["majority"] + MARGIN
        for task, s in prompt.items()
    }
    if model_topic is not None and TOPIC in prompt:
        key = f"{TOPIC}: prompt >= {TOPIC_SHARE:.0%} of model tuning"
        out[key] = prompt[TOPIC]["mean"] >= TOPIC_SHARE * model_topic["mean"]
    return out


def table(prompt: dict[str, dict], model_topic: dict | None, goal: dict[str, bool], args) -> str:
    lines = [
        f"Checkpoint `{args.checkpoint}` ({args.tag}); prompt tuning "
        f"`{args.experiment}.gin`{''.join(' ' + g for g in args.gin)}, {args.steps} steps, "
        f"best validation accuracy over evaluations every {args.eval_period}; seeds "
        f"{args.first_seed}..{args.first_seed + args.seeds - 1}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs.",
        "",
        "| task | majority | prompt best, mean ± std | per seed | top class's share at best |",
        "|---|---|---|---|---|",
    ]
    rows = dict(prompt, **({f"{TOPIC} (model tuning)": model_topic} if model_topic else {}))
    for task, s in rows.items():
        lines.append(
            f"| {task} | {s['majority']:.1f} | {s['mean']:.1f} ± {s['std']:.1f} | "
            + ", ".join(f"{b:.1f}" for b in s["best"])
            + " | "
            + ", ".join(f"{t:.0f}%" for t in s["top_class_share"])
            + " |"
        )
    lines += ["", *(f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in goal.items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="shipped:offline_t5")
    p.add_argument("--tag", default="shipped", help="names the results files steer_TAG.*")
    p.add_argument("--work-dir", default="runs/steer")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-period", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument(
        "--experiment",
        default="prompt_tuning_offline",
        help="the prompt runs' gin file under gin/experiments (deep_prompt_tuning_offline: deep "
        "prompts); model tuning always starts from prompt_tuning_offline",
    )
    p.add_argument("--gin", nargs="*", default=[], help="prompt-run overrides, X=value")
    p.add_argument("--no-model-tuning", action="store_true")
    args = p.parse_args(argv)
    work = Path(args.work_dir) / args.tag
    env = dict(os.environ, PROMPT_TRANSFER_TASKS=str(work / "user_tasks"), TF_CPP_MIN_LOG_LEVEL="3")
    tasks = [*DEMO_TARGETS, TOPIC]
    if WORDNET_NOUNS.exists():
        files = write_gloss_task(work / "gloss_task")
        _cli(["add-task", "--name", UNSEEN, *(f"--{s}={f}" for s, f in files.items()),
              "--labels", *GLOSS_CATEGORIES.values()], env)  # fmt: skip
        tasks.append(UNSEEN)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    prompt = {t: summarize([run(work, env, t, "prompt", s, args) for s in seeds]) for t in tasks}
    model_topic = None
    if not args.no_model_tuning:
        model_topic = summarize([run(work, env, TOPIC, "model", s, args) for s in seeds])
    goal = verdicts(prompt, model_topic)
    text = table(prompt, model_topic, goal, args)
    print(text)
    (HERE / f"steer_{args.tag}.md").write_text(text)
    results = {"args": vars(args), "prompt": prompt, "model_topic": model_topic, "goal": goal}
    (HERE / f"steer_{args.tag}.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
