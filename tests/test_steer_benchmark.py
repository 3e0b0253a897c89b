"""benchmarks/steer.py: the verdict that says whether a prompt steers the model (issue 13's
goal) must fail a constant predictor and pass an input-dependent one; its never-seen task must
be a fair 5-way task. The training itself is the benchmark's, not the test's."""

import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "steer.py"


@pytest.fixture(scope="module")
def steer():
    spec = importlib.util.spec_from_file_location("steer_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _history(*evaluations):
    """Evaluations as eval_history.jsonl holds them: (accuracy, predicted counts)."""
    labels = {"a": 60, "b": 25, "c": 15}  # majority 60%
    return [
        {"step": 100 * (i + 1), "value": v, "labels": {"t": labels}, "predictions": {"t": p}}
        for i, (v, p) in enumerate(evaluations)
    ]


def test_constant_predictor_fails_and_steering_prompt_passes(steer):
    constant = steer.summarize([_history((60.0, {"a": 100, "b": 0, "c": 0}))] * 3)
    assert constant["majority"] == pytest.approx(60.0)
    assert constant["top_class_share"] == [100.0] * 3
    steering = steer.summarize(
        [
            _history((55.0, {"a": 90, "b": 10, "c": 0}), (75.0, {"a": 55, "b": 30, "c": 15})),
            _history((72.0, {"a": 60, "b": 25, "c": 15})),
            _history((71.0, {"a": 62, "b": 20, "c": 18})),
        ]
    )
    assert steering["best"] == [75.0, 72.0, 71.0]  # each run's best evaluation
    assert steering["top_class_share"] == [55.0, 60.0, 62.0]  # read at that evaluation
    goal = steer.verdicts({"const": constant, "steer": steering}, None)
    assert goal == {"const: +10 over majority": False, "steer: +10 over majority": True}


def test_one_weak_seed_fails_the_margin_and_topic_share_compares_means(steer):
    seeds = steer.summarize(
        [_history((80.0, {"a": 1})), _history((80.0, {"a": 1})), _history((65.0, {"a": 1}))]
    )
    topic = steer.TOPIC
    model = {"mean": 90.0}
    goal = steer.verdicts({topic: seeds}, model)
    assert goal[f"{topic}: +10 over majority"] is False  # 65 < 60 + 10, whatever the mean
    assert goal[f"{topic}: prompt >= 80% of model tuning"] is True  # 75 >= 72
    assert (
        steer.verdicts({topic: seeds}, {"mean": 95.0})[f"{topic}: prompt >= 80% of model tuning"]
        is False
    )


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(), reason="no WordNet")
def test_never_seen_task_is_balanced_five_way_and_splits_share_no_text(steer, tmp_path):
    files = steer.write_gloss_task(tmp_path, per_class=60)
    rows = {}
    for split, path in files.items():
        with open(path, newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            assert next(reader) == ["text", "label"]
            rows[split] = list(reader)
    assert [len(rows[s]) for s in ("train", "validation", "test")] == [210, 45, 45]
    labels = [label for part in rows.values() for _, label in part]
    assert {label: labels.count(label) for label in set(labels)} == dict.fromkeys(
        steer.GLOSS_CATEGORIES.values(), 60
    )
    texts = [{text for text, _ in part} for part in rows.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
