"""What a transferability study (`prompt-transfer study`, its study.json named by STUDY_FILE)
says of a flow's retrieval: how well the flow's RETRIEVAL_METRIC predicted the gain there, and
for each target whether the source retrieval ranks first is the one the study measured best."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prompt_transfer.base import files, paths

STUDY_COMMAND = "prompt-transfer study --gin_file=experiments/study_offline"


def read(study_file: str | None) -> dict | None:
    """study.json's dict, or None when no file is named or none is there yet."""
    file = paths.path(study_file) if study_file else None
    if file is None or not file.exists():
        return None
    return files.read_json(file, "run the study again, or set STUDY_FILE = None")


def lines(
    study: dict | None,
    study_file: str | None,
    metric: str,
    targets: Sequence[str],
    sources: Sequence[str],
    similarities: Mapping[str, np.ndarray],
) -> list[str]:
    """Plain sentences for the report; none when the flow names no study."""
    if not study_file:
        return []
    if study is None:
        return [f"no study at {study_file} yet to judge retrieval by ({STUDY_COMMAND})"]
    said = [_metric_line(study, metric)]
    scores = similarities.get(metric)
    for j, task in enumerate(targets):
        pairs = [p for p in study["pairs"] if p["target"] == task and p["source"] in sources]
        if not pairs:
            said.append(f"{task}: the study did not measure this target from these sources")
        elif scores is None:
            said.append(f"{task}: {metric} is not among SIMILARITY_METRICS, so not shown here")
        else:
            said.append(_target_line(task, pairs, sources[int(np.argmax(scores[j]))]))
    return said


def _metric_line(study: dict, metric: str) -> str:
    measured = study["metrics"].get(metric)
    if measured is None or measured.get("spearman") is None:
        return f"retrieval ranks by {metric}, which the study did not measure"
    low, high = measured.get("spearman_ci95") or (None, None)
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
    best = study.get("best_metric")
    which = "the study's best metric" if best == metric else f"the study's best is {best}"
    return (
        f"retrieval ranks by {metric}: in the study its Spearman correlation with the gain is "
        f"{measured['spearman']:.2f}{interval} over {measured.get('targets')} target(s) "
        f"({which})"
    )


def _target_line(task: str, pairs: list[dict], first: str) -> str:
    gains = {p["source"]: p["gain"] for p in pairs}
    best = max(gains, key=lambda s: gains[s] if gains[s] is not None else -np.inf)
    if first == best:
        return (
            f"{task}: retrieval's first source, {first}, is the study's best ({gains[best]:+.1f})"
        )
    got = gains.get(first)
    theirs = f"{got:+.1f}" if got is not None else "not measured"
    return (
        f"{task}: retrieval's first source is {first} ({theirs} in the study); the study's "
        f"best is {best} ({gains[best]:+.1f})"
    )
