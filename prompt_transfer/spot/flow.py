"""The whole SPoT flow in one command (Vu et al. 2022), on real or offline tasks.

1. Source prompts: prompt tuning on each source task; each final prompt joins the library.
2. Task embeddings: a short run on each target; its prompt joins the library.
3. Retrieval: every source ranked for every target by each similarity metric.
4. Targets: training from each transfer strategy and each baseline (random, sampled
   vocabulary, class labels, model tuning), evaluated along the way.
5. A report (report.py): score at fixed step budgets, steps to reach the random-init run's final
   score, which sources each strategy used; convergence curves, the similarity heatmap and the
   zero-shot transfer matrix.

Every run lives in its own directory under WORK_DIR and resumes or is reused when the flow runs
again with the same settings, so a re-run only does what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from prompt_transfer import errors, gin_files, partitioning, paths, prompts, t5
from prompt_transfer.models import EncoderDecoderModel
from prompt_transfer.spot.report import BASELINES, write_report
from prompt_transfer.trainer import run_dir
from prompt_transfer.trainer.entry import RunSpec, TrainConfig, network_of
from prompt_transfer.trainer.state import OptimizerConfig
from prompt_transfer.trainer.together import train_together
from prompt_transfer.transfer import initial, library, retrieval, similarity


def _finished(spec: RunSpec, config: TrainConfig) -> bool:
    """Whether MODEL_DIR already holds this run, trained this long (a rerun reuses it)."""
    history = run_dir.read_eval_history(spec.model_dir)
    done = run_dir.subdir(spec.model_dir, "prompts").exists()
    return bool((done or run_dir.holds_checkpoint(spec.model_dir)) and history) and (
        history[-1]["step"] >= config.steps
    )


# What a run of the flow is, recorded in its directory so that a rerun reuses it only for the
# same settings: everything but where it lives, how long it trains and how it is laid out.
SETTINGS_FILE = "flow_run.json"
_NOT_SETTINGS = frozenset(
    {"model_dir", "steps", "eval_period", "save_period", "log_period", "keep_checkpoints",
     "eval_batch_size", "num_partitions", "library_dir"}
)  # fmt: skip


class FlowError(errors.UserError):
    pass


def _settings(spec: RunSpec, config: TrainConfig, work: str) -> dict:
    """The run's settings as flat JSON values ("optimizer.learning_rate": 0.3)."""
    both = {**dataclasses.asdict(spec), **dataclasses.asdict(config)}
    text = json.dumps(
        {k: v for k, v in both.items() if k not in _NOT_SETTINGS}, default=str, sort_keys=True
    )
    nested = json.loads(text.replace(json.dumps(work)[1:-1], "WORK_DIR"))  # a moved WORK_DIR
    return _flat(nested)


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_settings(planned, work: str) -> None:
    """Refuse, before any training, a run directory of WORK_DIR that was trained with other
    settings (a rerun would reuse or resume it as if it were this run); record new ones."""
    for spec, config in planned:
        record = run_dir.subdir(spec.model_dir, SETTINGS_FILE)
        wanted = _settings(spec, config, work)
        held = json.loads(record.read_text()) if record.exists() else None
        trained = run_dir.holds_run(spec.model_dir)
        if held is None and trained:
            continue  # a run of a flow older than the records
        if held is not None and held != wanted and trained:
            name = next(
                k for k in sorted(held.keys() | wanted.keys()) if held.get(k) != wanted.get(k)
            )
            raise FlowError(
                f"{spec.model_dir} holds a run with {name} = {_short(held.get(name))}, this "
                f"flow asks for {_short(wanted.get(name))}; use another WORK_DIR, or remove "
                "that folder to train it again"
            )
        if held != wanted:  # new here (process 0 writes it)
            paths.atomic_write_text(record, json.dumps(wanted, indent=1, sort_keys=True))


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _train_all(planned, config_text: str, stack_runs: int, work: str) -> None:
    """Train the planned (spec, config) runs that are not finished, up to `stack_runs` of them
    at a time in one stacked step (entry.train_together; 1: one at a time)."""
    _check_settings(planned, work)
    todo = [run for run in planned if not _finished(*run)]
    train_together(todo, config_text=config_text, most=max(stack_runs, 1))


def _target_runs(task, library_root, embedding_id, settings) -> dict[str, dict]:
    """{run name: TrainConfig/RunSpec changes} for the baselines and strategies on `task`."""
    runs = {}
    for name in settings["baselines"]:
        method = name if name != "model_tuning" else "random_uniform"
        runs[name] = {"prompt_init": prompts.PromptInit(method)}
        if name == "model_tuning":
            runs[name].update(
                trainable_regex=".*",
                prompt_length=0,
                deep_prompt=False,
                optimizer=settings["model_tuning_optimizer"],
            )
    for strategy in settings["strategies"]:
        init = initial.TransferInit(
            strategy=strategy,
            library=str(library_root),
            target_embedding=embedding_id,
            metric=settings["retrieval_metric"],
            top_k=settings["top_k"],
            candidate_steps=settings["candidate_steps"],
            mixture_steps=settings["source_steps"],
        )
        runs[strategy] = {"prompt_init": prompts.PromptInit("transfer", transfer=init)}
    return runs


def _train_targets(runs, seeds, work, make_run, train_all, step_log, target_steps, eval_period):
    """Every target run, once per seed; returns (curves, picked, predictions, labels) for the
    report: {(task, run): [(steps, values) per seed]}, {(task, run): transfer report},
    {(task, run): [predicted-label counts per seed]}, {task: true-label counts}."""
    curves, picked, predictions, labels = {}, {}, {}, {}
    for task, by_name in runs.items():
        planned = {
            (name, seed): make_run(
                work / "targets" / task / name / f"seed_{seed}",
                task,
                target_steps,
                eval_period,
                seed=seed,
                **changes,
            )
            for name, changes in by_name.items()
            for seed in seeds
        }
        described = ", ".join(by_name)
        if len(seeds) > 1:
            described += f"; seeds {seeds[0]}-{seeds[-1]}"
        step_log(f"target {task}: {described}", len(planned))
        train_all(list(planned.values()))
        for (name, _), (spec, _) in planned.items():
            model_dir = paths.path(spec.model_dir)
            history = run_dir.read_eval_history(model_dir)
            curves.setdefault((task, name), []).append(
                ([h["step"] for h in history], [h["value"] for h in history])
            )
            if history and history[-1].get("predictions"):  # classification targets
                last = history[-1]
                predictions.setdefault((task, name), []).append(last["predictions"].get(task))
                labels[task] = last["labels"].get(task)
            report_file = model_dir / "transfer" / "report.json"
            if report_file.exists() and (task, name) not in picked:
                picked[(task, name)] = json.loads(report_file.read_text())
    return curves, picked, predictions, labels


def _split_changes(changes: dict) -> tuple[dict, dict]:
    spec_fields = {f.name for f in dataclasses.fields(RunSpec)}
    return (
        {k: v for k, v in changes.items() if k in spec_fields},
        {k: v for k, v in changes.items() if k not in spec_fields},
    )


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
    vocabulary: str | None = None,
    prompt_length: int = 100,
    deep_prompt: bool = False,
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
    optimizer: OptimizerConfig = OptimizerConfig(),
    model_tuning_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3),
    random_seed: int = 0,
    seeds_per_run: int = 1,
    eval_batch_size: int = 32,
    stack_runs: int = 3,
    num_partitions: int = 1,
    frozen_dtype: str = "float32",
    data_shards: int = 0,
    config_text: str = "",
) -> dict:
    """Run the flow; returns the report dict (also written to WORK_DIR/report.{json,md}).

    With `deep_prompt` every prompt run (sources, task embeddings, strategies, baselines) trains
    a deep prompt, and retrieval and transfer move it whole (prompts.widen); model tuning stays
    as it is. Up to `stack_runs` prompt runs of one phase (the sources; a target's baselines,
    strategies and seeds) train together in one stacked step on the shared frozen network
    (entry.train_together), each in its own directory as if alone; 1 trains one at a time."""
    work = paths.path(work_dir)
    lib = library.Library(work / "library")
    base_spec = RunSpec(
        model_dir="",
        task="",
        feature_lengths=task_feature_lengths,
        model_config=model_config,
        initial_checkpoint=initial_checkpoint_path,
        prompt_length=prompt_length,
        seed=random_seed,
        model_name=model_name,
        vocabulary=vocabulary,
        deep_prompt=deep_prompt,
        trainable_regex=f"{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}"
        if deep_prompt
        else prompts.PROMPT_PATH,
        num_partitions=num_partitions,
        frozen_dtype=frozen_dtype,
    )
    base_config = TrainConfig(
        steps=0,
        batch_size=batch_size,
        optimizer=optimizer,
        eval_batch_size=eval_batch_size,
        log_period=max(eval_period // 2, 1),
        data_shards=data_shards,
    )

    def make_run(model_dir, task, steps, period, **changes) -> tuple[RunSpec, TrainConfig]:
        spec_changes, config_changes = _split_changes(changes)
        spec = dataclasses.replace(base_spec, model_dir=str(model_dir), task=task, **spec_changes)
        config = dataclasses.replace(
            base_config, steps=steps, eval_period=period, save_period=steps, **config_changes
        )
        return spec, config

    train_all = lambda planned: _train_all(planned, config_text, stack_runs, str(work))

    seeds = [random_seed + i for i in range(seeds_per_run)]  # each target run, once per seed
    total = len(sources) + len(targets) * (1 + len(seeds) * (len(baselines) + len(strategies)))
    done = 0
    log = lambda m: print(f"[spot] {m}", file=sys.stderr, flush=True)

    def step_log(message: str, runs: int = 1) -> None:
        nonlocal done
        first, done = done + 1, done + runs
        counted = f"run {first}" if runs == 1 else f"runs {first}-{done}"
        log(f"{counted}/{total}: {message}")

    sampled = prompts.PromptInit("sampled_vocab")

    # 1-2. Source prompts and target task embeddings, into the library.
    plural = lambda n: "s" if n > 1 else ""
    step_log(f"source prompt{plural(len(sources))}: {', '.join(sources)}", len(sources))
    train_all(
        [
            make_run(
                work / "sources" / task,
                task,
                source_steps,
                source_steps,
                prompt_init=sampled,
                library_dir=str(lib.root),
            )
            for task in sources
        ]
    )
    step_log(f"task embedding{plural(len(targets))}: {', '.join(targets)}", len(targets))
    train_all(
        [
            make_run(
                work / "embeddings" / task,
                task,
                embedding_steps,
                0,
                prompt_init=sampled,
                library_dir=str(lib.root),
                library_kind="task_embedding",
            )
            for task in targets
        ]
    )
    mesh = partitioning.make_mesh(num_partitions)
    network = network_of(base_spec, mesh)  # the runs' own, shared
    ours = dict(
        model_fingerprint=library.model_fingerprint(network.params),
        deep_width=prompts.deep_width(model_config) if deep_prompt else 0,
    )
    source_entries = [e for e in lib.entries(kind="trained", **ours) if e.task in sources]
    embeddings = {e.task: e for e in lib.entries(kind="task_embedding", **ours)}
    source_entries, source_prompts = lib.load(source_entries, deep=deep_prompt)  # healthy ones

    # 3. Retrieval by every metric.
    similarities = {
        m: np.stack(
            [
                similarity.score_library(
                    m, lib.prompt(embeddings[t], deep=deep_prompt), source_prompts
                )
                for t in targets
            ]
        )
        for m in metrics
    }

    # 4. Targets: strategies and baselines.
    settings = dict(
        baselines=baselines,
        strategies=strategies,
        model_tuning_optimizer=model_tuning_optimizer,
        retrieval_metric=retrieval_metric,
        top_k=top_k,
        candidate_steps=candidate_steps,
        source_steps=source_steps,
    )
    runs = {t: _target_runs(t, lib.root, embeddings[t].id, settings) for t in targets}
    curves, picked, predictions, labels = _train_targets(
        runs, seeds, work, make_run, train_all, step_log, target_steps, eval_period
    )

    # 5. Zero-shot matrix and the report.
    zero_shot = retrieval.zero_shot_matrix(
        EncoderDecoderModel(network.module),
        network.params,
        source_prompts,
        list(targets),
        task_feature_lengths,
        batch_size=eval_batch_size,
    )
    report = write_report(
        work,
        targets,
        [e.task for e in source_entries],
        curves,
        picked,
        similarities,
        zero_shot,
        eval_period,
        target_steps,
        predictions,
        labels,
    )
    for line in report["verdict"]:
        log(line)
    log(f"report: {work / 'report.md'}")
    return report


def main(argv: list[str]) -> dict:
    """`prompt-transfer spot --gin_file=experiments/spot_tiny --gin.WORK_DIR=...`."""
    launch = gin_files.parse_command_line(argv)
    config_text = gin_files.configure(launch.files, launch.bindings)
    return gin_files.configured(run)(config_text=config_text)
