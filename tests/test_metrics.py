"""Metric functions against scikit-learn and SciPy (independent implementations)."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from prompt_transfer.data import metrics


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 200).tolist()
    predictions = [t if rng.random() < 0.7 else 1 - t for t in targets]
    return targets, predictions


def test_accuracy_f1_mcc_match_sklearn(labels):
    t, p = labels
    assert metrics.accuracy(t, p)["accuracy"] == pytest.approx(100 * skm.accuracy_score(t, p))
    assert metrics.f1_and_accuracy(t, p)["f1"] == pytest.approx(100 * skm.f1_score(t, p))
    assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
        100 * skm.matthews_corrcoef(t, p)
    )
    assert metrics.matthews_corrcoef([1, 1, 0], [1, 1, 1])["matthews_corrcoef"] == 0.0


def test_balanced_accuracy_matches_sklearn_and_is_chance_for_a_constant_answer():
    rng = np.random.default_rng(2)
    targets = rng.choice(3, 300, p=[0.6, 0.3, 0.1]).tolist()
    predictions = [t if rng.random() < 0.6 else int(rng.integers(0, 3)) for t in targets]
    got = metrics.balanced_accuracy(targets, predictions)["balanced_accuracy"]
    assert got == pytest.approx(100 * skm.balanced_accuracy_score(targets, predictions))
    constant = metrics.balanced_accuracy(targets, [0] * len(targets))["balanced_accuracy"]
    assert constant == pytest.approx(100 / 3)  # where accuracy gives about 60


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 3, 120).tolist()
    p = [x if rng.random() < 0.6 else int(rng.integers(0, 3)) for x in t]
    assert metrics.macro_f1(t, p)["macro_f1"] == pytest.approx(
        100 * skm.f1_score(t, p, average="macro")
    )


def test_invalid_predictions_count_as_wrong():
    assert metrics.f1_and_accuracy([1, 0, 1], [1, -1, -1]) == {
        "f1": pytest.approx(100 * 2 / 3),
        "accuracy": pytest.approx(100 / 3),
    }


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(2)
    t = np.round(rng.uniform(0, 5, 150), 1)
    p = np.round(t + rng.normal(0, 1, 150), 0)  # many ties
    out = metrics.pearson_and_spearman(t.tolist(), p.tolist())
    assert out["pearson_corrcoef"] == pytest.approx(100 * stats.pearsonr(t, p)[0])
    assert out["spearman_corrcoef"] == pytest.approx(100 * stats.spearmanr(t, p)[0])


def test_squad_em_and_f1_take_the_best_reference():
    out = metrics.squad(
        [["The Eiffel Tower", "Eiffel tower"], ["1889"]], ["eiffel tower!", "in 1889 exactly"]
    )
    assert out["em"] == pytest.approx(50.0)
    # Second: prediction tokens {in, 1889, exactly} vs {1889}: P=1/3, R=1 -> F1=0.5.
    assert out["f1"] == pytest.approx(100 * (1.0 + 0.5) / 2)


def test_multirc_exact_match_per_question_and_f1a():
    targets = [
        {"group": 0, "value": 1},
        {"group": 0, "value": 0},
        {"group": 1, "value": 1},
        {"group": 1, "value": 1},
    ]
    out = metrics.multirc(targets, [1, 0, 1, 0])
    assert out["exact_match"] == pytest.approx(50.0)
    assert out["f1a"] == pytest.approx(100 * skm.f1_score([1, 0, 1, 1], [1, 0, 1, 0]))
