"""Each predictor judged on the targets it was not chosen on (issue 37): leave one target out,
on synthetic scores (no model)."""

import numpy as np
import pytest
from test_study_analysis import GAINS, SOURCES, TARGETS, study_data

from prompt_transfer.study import out_of_sample
from prompt_transfer.study.analysis import analyse

# Four targets, three sources; [T, S] final gains, every target's oracle a different source
# or at a different place.
GAINS4 = np.asarray([[5.0, 1.0, 0.0], [0.0, 6.0, 2.0], [1.0, 0.0, 4.0], [3.0, 2.0, 9.0]], float)


def runs(gains, noise=(-1.0, 0.0, 1.0), first=0.5):
    """(transfer [T][S] of [R, 2], random_init [T] of [R, 2]): random init scores 50 then 60,
    a transfer that plus `first` x gain and then the gain, each seed off by `noise`."""
    seeds = np.asarray(noise)[:, None]
    base = np.asarray([50.0, 60.0])
    transfer = [[base + [first * g, g] + seeds for g in row] for row in gains]
    return transfer, [base + seeds for _ in gains]


def judge(rankings, gains=GAINS4, **kwargs):
    transfer, random_init = runs(gains, **kwargs)
    names = [f"t{i}" for i in range(len(gains))]
    sources = [f"s{j}" for j in range(gains.shape[1])]
    return out_of_sample.judge(rankings, transfer, random_init, names, sources)


def test_a_predictor_equal_to_the_gains_is_chosen_for_every_target_and_never_regrets():
    held = judge({"blind": np.ones_like(GAINS4), "perfect": GAINS4, "reversed": -GAINS4})
    assert {c["predictor"] for c in held["chosen"].values()} == {"perfect"}
    assert [c["source"] for c in held["chosen"].values()] == ["s0", "s1", "s2", "s2"]
    assert held["regret"] == 0.0 and held["oracle_rate"] == 1.0
    assert held["gain"] == pytest.approx(GAINS4.max(1).mean())
    assert held["in_sample"]["predictor"] == "perfect"
    assert held["goals"] == {"regret": True, "oracle_rate": True, "beyond_spread": True}


def test_a_target_never_chooses_its_own_predictor():
    """'lucky' is right on t3 alone and 'steady' on the rest: in sample 'steady' has the lower
    mean regret, and t3, held out, gets 'steady' too; what t3's gains say cannot change that."""
    lucky = np.asarray([[0, 1, 2], [2, 0, 1], [0, 2, 1], [0, 0, 9]], float)
    steady = np.asarray([[9, 0, 0], [0, 9, 0], [0, 0, 9], [9, 0, 0]], float)
    held = judge({"lucky": lucky, "steady": steady})
    assert held["chosen"]["t3"] == {"predictor": "steady", "source": "s0", "regret": 6.0}
    assert held["regret"] == pytest.approx((9.0 - 3.0) / 4)  # t3 picks s0 (3) over s2 (9)
    changed = GAINS4.copy()
    changed[3] = [0.0, 0.0, 20.0]  # t3's own gains favour 'lucky' even more
    chosen = judge({"lucky": lucky, "steady": steady}, gains=changed)["chosen"]["t3"]
    assert chosen == {"predictor": "steady", "source": "s0", "regret": 20.0}


def test_out_of_sample_is_worse_than_in_sample_when_each_predictor_fits_one_target():
    """Each predictor is right on one target and wrong elsewhere: in sample one of them looks
    fine on its own target's strength; out of sample every choice is made by the others."""
    rankings = {}
    for t in range(4):
        values = -GAINS4.copy()  # wrong everywhere
        values[t] = GAINS4[t]  # right on target t
        rankings[f"fits_t{t}"] = values
    held = judge(rankings)
    assert held["in_sample"]["regret"] < held["regret"]
    assert held["oracle_rate"] < 1.0


def test_a_constant_predictor_picks_blindly_out_of_sample_too():
    held = judge({"constant": np.ones_like(GAINS4)})
    assert held["regret"] == pytest.approx(np.mean(GAINS4.max(1) - GAINS4.mean(1)))
    assert held["oracle_rate"] == pytest.approx(1 / 3)


def test_the_intervals_widen_with_the_seeds_noise_and_hold_the_estimate():
    rankings = {"perfect": GAINS4, "blind": np.ones_like(GAINS4)}
    quiet = judge(rankings, noise=(-0.1, 0.0, 0.1))
    loud = judge(rankings, noise=(-8.0, 0.0, 8.0))
    for held in (quiet, loud):
        low, high = held["intervals"]["regret"]
        assert low <= held["regret"] <= high
    assert quiet["intervals"]["regret"] == [0.0, 0.0]  # seeds too quiet to reorder the sources
    assert loud["intervals"]["regret"][1] > 1.0  # the seeds' noise now reorders them


def test_beating_the_spread_at_the_first_budget_is_counted_for_the_chosen_source():
    # At the first budget a gain is half the final one; the spread (std of -1, 0, 1) is 1.
    held = judge({"perfect": GAINS4})  # the picks' first-budget gains: 2.5, 3, 2, 4.5
    assert held["beyond_spread"] == 1.0 and held["beyond_spread_targets"] == 4
    small = judge({"perfect": GAINS4}, first=0.1)  # 0.5, 0.6, 0.4, 0.9: none beats 1
    assert small["beyond_spread"] == 0.0 and small["goals"]["beyond_spread"] is False
    one_seed = judge({"perfect": GAINS4}, noise=(0.0,))
    assert one_seed["beyond_spread"] is None and one_seed["beyond_spread_targets"] == 0


def test_the_study_reports_the_out_of_sample_choice_beside_the_in_sample_table():
    study = analyse(study_data(similarity={"cosine": GAINS, "reversed": -GAINS}))
    held = study["out_of_sample"]
    assert set(held["chosen"]) == set(TARGETS)
    assert all(c["source"] in SOURCES for c in held["chosen"].values())
    assert held["regret"] == 0.0  # 'cosine' is the gains themselves: chosen everywhere
    line = next(v for v in study["verdict"] if v.startswith("Out of sample"))
    assert "regret is 0.0" in line and "oracle on 100% of 3 targets" in line


def test_study_md_has_a_row_per_target_for_the_out_of_sample_choice():
    from prompt_transfer.study.report import markdown

    text = markdown(analyse(study_data(similarity={"cosine": GAINS, "reversed": -GAINS})))
    table = text.split("## Chosen out of sample")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| t") and "target" not in line]
    assert [r.split(" | ")[:2] for r in rows] == [[f"| {t}", "cosine"] for t in TARGETS]
    assert "| mean | | | 0.0 [0.0, 0.0] |" in table


def test_the_predictors_that_train_nothing_are_also_chosen_among_alone():
    """A race that ranks like the gains wins out of sample; chosen among the predictors that
    train nothing, the reversed metric and a constant zero-shot score (a blind pick) are all
    there is. The verdict says both, and a study without a training predictor has no second
    choice."""
    similarity = {"reversed": -GAINS, "race": GAINS}
    cost = {"predictor_steps": {"race": 120.0}, "run_steps": 100}
    study = analyse(study_data(similarity=similarity, cost=cost))
    assert study["out_of_sample"]["regret"] == 0.0
    free = study["out_of_sample_free"]
    assert {c["predictor"] for c in free["chosen"].values()} == {"zero_shot"}  # blind < reversed
    assert free["regret"] == pytest.approx((GAINS.max(1) - GAINS.mean(1)).mean())
    lines = [v for v in study["verdict"] if v.startswith("Out of sample")]
    assert len(lines) == 2 and "among the predictors that train nothing" in lines[1]
    assert analyse(study_data(similarity={"reversed": -GAINS}))["out_of_sample_free"] is None
