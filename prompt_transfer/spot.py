"""The whole SPoT flow in one command (Vu et al. 2022), on real or offline tasks.

1. Source prompts: prompt tuning on each source task; each final prompt joins the library.
2. Task embeddings: a short run on each target; its prompt joins the library.
3. Retrieval: every source ranked for every target by each similarity metric.
4. Targets: training from each transfer strategy and each baseline (random, sampled
   vocabulary, class labels, model tuning), evaluated along the way.
5. A report: score at fixed step budgets, steps to reach the random-init run's final score,
   which sources each strategy used; PNG convergence curves, the similarity heatmap and the
   zero-shot transfer matrix.

Every run lives in its own directory under WORK_DIR and resumes or is reused when the flow runs
again with the same settings, so a re-run only does what is missing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from prompt_transfer import (
    gin_files,
    library,
    partitioning,
    plots,
    prompts,
    similarity,
    t5,
    train,
    train_io,
    transfer,
)
from prompt_transfer.models import EncoderDecoderModel

BASELINES = ("random_uniform", "sampled_vocab", "class_labels", "model_tuning")


def _run(common: dict, model_dir: Path, task: str, steps: int, eval_period: int, **overrides):
    """One training run (resumed, or reused when already complete)."""
    history = train_io.read_eval_history(model_dir)
    done = (model_dir / "prompts").exists() or any(model_dir.glob("checkpoint_*"))
    if done and history and history[-1]["step"] >= steps:
        return {"reused": True}
    return train.train(
        **{
            **common,
            "model_dir": str(model_dir),
            "mixture_or_task_name": task,
            "train_steps": steps,
            "eval_period": eval_period,
            "save_period": steps,
            "resume": True,
            **overrides,
        }
    )


def _network(common: dict):
    """The frozen network every run of the flow shares (module, parameters)."""
    module, _, network = train.frozen_network(
        common["model_config"],
        common.get("initial_checkpoint_path"),
        partitioning.make_mesh(common.get("num_partitions", 1)),
        common.get("random_seed", 0),
    )
    return module, network


def _steps_to_reach(history: list[dict], value: float) -> int | None:
    return next((h["step"] for h in history if h["value"] >= value), None)


def run(
    *,
    work_dir: str,
    sources: Sequence[str],
    targets: Sequence[str],
    model_config: t5.T5Config,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    initial_checkpoint_path: str | None = None,
    model_name: str = "unnamed",
    prompt_length: int = 100,
    source_steps: int = 1000,
    embedding_steps: int = 100,
    target_steps: int = 1000,
    eval_period: int = 100,
    strategies: Sequence[str] = ("top_k_average", "best_of_top_k", "top_k_mixture"),
    baselines: Sequence[str] = BASELINES,
    metrics: Sequence[str] = ("cosine_avg_tokens", "cosine_per_token"),
    retrieval_metric: str = "cosine_avg_tokens",
    top_k: int = 2,
    candidate_steps: int = 50,
    optimizer: train.OptimizerConfig = train.OptimizerConfig(),
    model_tuning_optimizer: train.OptimizerConfig = train.OptimizerConfig(learning_rate=1e-3),
    random_seed: int = 0,
    eval_batch_size: int = 32,
    config_text: str = "",
) -> dict:
    """Run the flow; returns the report dict (also written to WORK_DIR/report.{json,md})."""
    work = Path(work_dir)
    lib = library.Library(work / "library")
    common = dict(
        model_config=model_config,
        task_feature_lengths=task_feature_lengths,
        batch_size=batch_size,
        initial_checkpoint_path=initial_checkpoint_path,
        model_name=model_name,
        prompt_length=prompt_length,
        optimizer=optimizer,
        random_seed=random_seed,
        eval_batch_size=eval_batch_size,
        log_period=max(eval_period // 2, 1),
        config_text=config_text,
    )
    total = len(sources) + len(targets) * (1 + len(baselines) + len(strategies))
    counter = iter(range(1, total + 1))
    log = lambda m: print(f"[spot] {m}", file=sys.stderr, flush=True)
    step_log = lambda m: log(f"run {next(counter)}/{total}: {m}")

    # 1-2. Source prompts and target task embeddings, into the library.
    for task in sources:
        step_log(f"source prompt: {task}")
        _run(
            common,
            work / "sources" / task,
            task,
            source_steps,
            source_steps,
            prompt_init=prompts.PromptInit("sampled_vocab"),
            library_dir=str(lib.root),
        )
    for task in targets:
        step_log(f"task embedding: {task}")
        _run(
            common,
            work / "embeddings" / task,
            task,
            embedding_steps,
            0,
            prompt_init=prompts.PromptInit("sampled_vocab"),
            library_dir=str(lib.root),
            library_kind="task_embedding",
        )
    module, network = _network(common)
    fingerprint = library.model_fingerprint(network)
    source_entries = [
        e for e in lib.entries(kind="trained", model_fingerprint=fingerprint) if e.task in sources
    ]
    embeddings = {
        e.task: e for e in lib.entries(kind="task_embedding", model_fingerprint=fingerprint)
    }
    _, source_prompts = lib.load(source_entries)

    # 3. Retrieval by every metric.
    similarities = {
        m: np.stack(
            [
                similarity.score_library(m, lib.prompt(embeddings[t]), source_prompts)
                for t in targets
            ]
        )
        for m in metrics
    }

    # 4. Targets: strategies and baselines.
    curves, picked = {}, {}
    for task in targets:
        runs = {}
        for name in baselines:
            overrides = {
                "prompt_init": prompts.PromptInit(
                    name if name != "model_tuning" else "random_uniform"
                )
            }
            if name == "model_tuning":
                overrides.update(trainable=".*", prompt_length=0, optimizer=model_tuning_optimizer)
            runs[name] = overrides
        for strategy in strategies:
            init = transfer.TransferInit(
                strategy=strategy,
                library=str(lib.root),
                target_embedding=embeddings[task].id,
                metric=retrieval_metric,
                top_k=top_k,
                candidate_steps=candidate_steps,
                mixture_steps=source_steps,
            )
            runs[strategy] = {"prompt_init": prompts.PromptInit("transfer", transfer=init)}
        for name, overrides in runs.items():
            step_log(f"target {task}: {name}")
            model_dir = work / "targets" / task / name
            _run(common, model_dir, task, target_steps, eval_period, **overrides)
            history = train_io.read_eval_history(model_dir)
            curves[(task, name)] = ([h["step"] for h in history], [h["value"] for h in history])
            report_file = model_dir / "transfer" / "report.json"
            if report_file.exists():
                picked[(task, name)] = json.loads(report_file.read_text())

    # 5. Zero-shot matrix and the report.
    zero_shot = transfer.zero_shot_matrix(
        EncoderDecoderModel(module),
        network,
        source_prompts,
        list(targets),
        task_feature_lengths,
        batch_size=eval_batch_size,
    )
    report = _report(
        work,
        targets,
        [e.task for e in source_entries],
        curves,
        picked,
        similarities,
        zero_shot,
        eval_period,
        target_steps,
    )
    for line in report["verdict"]:
        log(line)
    log(f"report: {work / 'report.md'}")
    return report


def _report(
    work, targets, source_tasks, curves, picked, similarities, zero_shot, eval_period, target_steps
) -> dict:
    # Fixed step budgets at evaluation points: the first, about 1/4, 1/2 and the end.
    on_grid = lambda s: max(eval_period, round(s / eval_period) * eval_period)
    budgets = sorted({eval_period, *(on_grid(target_steps * f) for f in (0.25, 0.5)), target_steps})
    rows = []
    for (task, name), (steps, values) in curves.items():
        at = dict(zip(steps, values, strict=True))
        baseline_steps, baseline_values = curves.get((task, "random_uniform"), ([], []))
        final_random = baseline_values[-1] if baseline_values else None
        history = [{"step": s, "value": v} for s, v in zip(steps, values, strict=True)]
        rows.append(
            {
                "target": task,
                "run": name,
                "scores": {b: at.get(b) for b in budgets},
                "steps_to_random_final": (
                    _steps_to_reach(history, final_random) if final_random is not None else None
                ),
                "sources": picked.get((task, name), {}).get("chosen")
                or picked.get((task, name), {}).get("sources"),
            }
        )
    report = {
        "targets": list(targets),
        "sources": source_tasks,
        "budgets": budgets,
        "rows": rows,
        "verdict": _verdict(rows, targets, target_steps),
        "similarities": {m: v.tolist() for m, v in similarities.items()},
        "zero_shot": zero_shot.tolist(),
    }
    train_io.atomic_write_bytes(work / "report.json", json.dumps(report, indent=1).encode())
    for metric, matrix in similarities.items():
        plots.heatmap(
            matrix,
            list(targets),
            source_tasks,
            work / f"similarity_{metric}.png",
            f"task similarity ({metric}): target embedding vs source prompt",
        )
    plots.heatmap(
        zero_shot,
        source_tasks,
        list(targets),
        work / "zero_shot.png",
        "zero-shot transfer: source prompt used as is on the target",
        "{:.1f}",
    )
    for task in targets:
        plots.curves(
            {name: curves[(t, name)] for (t, name) in curves if t == task},
            work / f"curves_{task}.png",
            f"{task}: validation score",
            "main metric",
        )
    train_io.atomic_write_bytes(work / "report.md", _markdown(report).encode())
    return report


def _verdict(rows: list[dict], targets, target_steps: int) -> list[str]:
    """One plain sentence per target: did the best transfer strategy beat random init?"""
    lines = []
    for task in targets:
        final = {r["run"]: r["scores"].get(target_steps) for r in rows if r["target"] == task}
        random = final.get("random_uniform")
        transfers = {
            r["run"]: r
            for r in rows
            if r["target"] == task and r["run"] not in BASELINES and final[r["run"]] is not None
        }
        if random is None or not transfers:
            lines.append(f"{task}: no random-init run or no transfer run to compare")
            continue
        best = max(transfers, key=lambda n: final[n])
        gain, reach = final[best] - random, transfers[best]["steps_to_random_final"]
        if gain > 0:
            how = f"beats random init by {gain:.1f} points at step {target_steps}"
        elif gain == 0:
            how = f"ties random init at step {target_steps}"
        else:
            how = f"does not help: {-gain:.1f} points below random init at step {target_steps}"
        speed = f"reaches random init's final score at step {reach}" if reach else "never does"
        lines.append(
            f"{task}: the best transfer ({best}, {final[best]:.1f}) {how} "
            f"({random:.1f}); it {speed}"
        )
    return lines


def _markdown(report: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    budgets = report["budgets"]
    lines = [
        "# SPoT flow report",
        "",
        f"Sources: {', '.join(report['sources'])}. Targets: {', '.join(report['targets'])}.",
        "",
        *(f"- {line}" for line in report["verdict"]),
        "",
        "Scores are the validation main metric at each step budget.",
        "",
        "| target | run | "
        + " | ".join(f"step {b}" for b in budgets)
        + " | steps to random-init final | sources used |",
        "|---|---|" + "---|" * len(budgets) + "---|---|",
    ]
    for r in report["rows"]:
        sources = r["sources"] if isinstance(r["sources"], str) else ", ".join(r["sources"] or [])
        reach = r["steps_to_random_final"]
        lines.append(
            f"| {r['target']} | {r['run']} | "
            + " | ".join(fmt(r["scores"][b]) for b in budgets)
            + f" | {reach if reach is not None else 'not reached'} | {sources or '-'} |"
        )
    sources, targets = report["sources"], report["targets"]
    lines += [
        "",
        "## Zero-shot transfer (source prompt used as is on the target)",
        "",
        "| source | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    lines += [
        f"| {s} | " + " | ".join(fmt(v) for v in row) + " |"
        for s, row in zip(sources, report["zero_shot"], strict=True)
    ]
    for metric, matrix in report["similarities"].items():
        lines += [
            "",
            f"## Similarity ({metric}): target task embedding vs source prompt",
            "",
            "| target | " + " | ".join(sources) + " |",
            "|---|" + "---|" * len(sources),
        ]
        lines += [
            f"| {t} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
            for t, row in zip(targets, matrix, strict=True)
        ]
    lines += [
        "",
        "Figures: `curves_<target>.png` (convergence), `similarity_<metric>.png`, `zero_shot.png`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> dict:
    launch = gin_files.parse_command_line(argv)
    config_text = gin_files.configure(launch.files, launch.bindings)
    return gin_files.configured(run)(config_text=config_text)


if __name__ == "__main__":
    from prompt_transfer import cli

    sys.exit(cli.main(["spot", *sys.argv[1:]]))
