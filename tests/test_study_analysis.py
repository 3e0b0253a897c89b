"""The transferability study's analysis and report on synthetic scores (no model): how each
metric's ranking of the sources is judged against the gains the runs measured (issue 24)."""

import json

import numpy as np
import pytest

from prompt_transfer.base import paths
from prompt_transfer.study.analysis import StudyData, analyse
from prompt_transfer.study.report import write_study

SOURCES = ["s0", "s1", "s2", "s3"]
TARGETS = ["t0", "t1", "t2"]
STEPS = [10, 20]
# [T, S]: each target's final gain over random init from each source, all different
GAINS = np.asarray([[4.0, 1.0, -2.0, 7.0], [0.5, 3.0, 6.0, -1.0], [2.0, 8.0, 1.0, 5.0]])
RANDOM = 60.0  # random init's mean score on every target at the final step
NOISE = np.asarray([-1.0, 0.0, 1.0])  # three seeds; their mean is exactly the seedless score


def study_data(gains=GAINS, similarity=None, zero_shot=None, skip=(), noise=NOISE, **kwargs):
    """Scores whose final gains are `gains` [T, S] and whose first-step gains are half that;
    `similarity` {metric: [T, S]} defaults to the gains themselves."""
    seeds = noise[:, None]  # [R, 1]
    base = np.asarray([RANDOM - 10.0, RANDOM])  # [K]
    transfer = {
        (s, t): base + np.asarray([gains[i, j] / 2, gains[i, j]]) + seeds
        for i, t in enumerate(TARGETS)
        for j, s in enumerate(SOURCES)
        if (s, t) not in skip
    }
    return StudyData(
        sources=SOURCES,
        targets=TARGETS,
        steps=STEPS,
        transfer=transfer,
        random_init={t: base + seeds for t in TARGETS},
        zero_shot=np.full((len(SOURCES), len(TARGETS)), 50.0) if zero_shot is None else zero_shot,
        similarity={"cosine": gains} if similarity is None else similarity,
        default_metric=kwargs.pop("default_metric", "cosine"),
        **kwargs,
    )


def test_a_metric_equal_to_the_gains_predicts_them_and_its_reverse_anti_predicts():
    study = analyse(study_data(similarity={"cosine": GAINS, "reversed": -GAINS}))
    perfect, reversed_ = study["metrics"]["cosine"], study["metrics"]["reversed"]
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["targets"] == len(TARGETS)
    assert perfect["top1_oracle_rate"] == 1.0 and perfect["top3_oracle_rate"] == 1.0
    assert perfect["regret"] == 0.0
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["top1_oracle_rate"] == 0
    # ranked last, the oracle's gain minus the worst source's, target by target
    assert reversed_["regret"] == pytest.approx(np.mean(GAINS.max(1) - GAINS.min(1)))
    assert study["best_metric"] == "cosine"
    first = study["verdict"][0]
    assert first.startswith("1 of the 3 metrics predicts transfer") and first.endswith(": cosine.")
    assert "meets both of issue 24's goals" in " ".join(study["verdict"])


def test_gains_are_mean_transfer_minus_mean_random_init_at_every_step():
    study = analyse(study_data())
    assert len(study["pairs"]) == len(SOURCES) * len(TARGETS) and study["seeds"] == 3
    for p in study["pairs"]:
        gain = GAINS[TARGETS.index(p["target"]), SOURCES.index(p["source"])]
        assert p["gain"] == pytest.approx(gain) and p["gain_at"]["20"] == p["gain"]
        assert p["gain_at"]["10"] == pytest.approx(gain / 2)
        assert p["spread"] == pytest.approx(1.0) and p["seeds"] == 3
    assert study["spread"] == {t: pytest.approx(1.0) for t in TARGETS}


def test_one_seed_has_no_spread_and_no_judgement_against_it():
    study = analyse(study_data(noise=np.zeros(1)))
    assert set(study["spread"].values()) == {None}
    assert {p["spread"] for p in study["pairs"]} == {None}
    assert study["metrics"]["cosine"]["spearman"] == pytest.approx(1.0)
    assert all(c["judged"] == 0 for c in study["beyond_spread"].values())
    assert "no target can be judged" in study["verdict"][-1]


def test_a_missing_pair_is_skipped_not_imputed():
    # The missing pair's similarity is the largest on its target: ranked, it would be first.
    similarity = GAINS.copy()
    similarity[0, 2] = 100.0
    study = analyse(study_data(similarity={"cosine": similarity}, skip={("s2", "t0")}))
    assert len(study["pairs"]) == len(SOURCES) * len(TARGETS) - 1
    assert ("s2", "t0") not in {(p["source"], p["target"]) for p in study["pairs"]}
    metric = study["metrics"]["cosine"]
    assert metric["spearman"] == pytest.approx(1.0) and metric["top1_oracle_rate"] == 1.0
    assert metric["regret"] == 0.0


def test_zero_shot_ranks_the_sources_like_any_metric():
    noise = np.asarray([[1.0, -1.0, 2.0, 0.0], [0.0, 3.0, 1.0, 2.0], [2.0, 1.0, 0.0, 3.0]])
    good = analyse(study_data(similarity={"cosine": noise}, zero_shot=50 + GAINS.T))
    bad = analyse(study_data(similarity={"cosine": noise}, zero_shot=50 - GAINS.T))
    assert set(good["metrics"]) == {"cosine", "zero_shot"}
    assert good["metrics"]["zero_shot"]["spearman"] == pytest.approx(1.0)
    assert good["metrics"]["zero_shot"]["top1_oracle_rate"] == 1.0
    assert good["best_metric"] == "zero_shot"
    assert bad["metrics"]["zero_shot"]["spearman"] == pytest.approx(-1.0)
    # the pair carries its own zero-shot score: source s on target t is zero_shot[s, t]
    pair = next(p for p in good["pairs"] if (p["source"], p["target"]) == ("s1", "t2"))
    assert pair["zero_shot"] == pytest.approx(50 + GAINS[2, 1])


def test_a_constant_metric_scores_what_picking_blindly_does():
    """Four sources tied: the oracle is first with chance 1/4 and in the top 3 with 3/4, and
    the regret is the oracle's gain minus the mean gain; no source order makes it look good."""
    study = analyse(study_data(similarity={"constant": np.ones_like(GAINS)}))
    metric = study["metrics"]["constant"]
    assert metric["top1_oracle_rate"] == pytest.approx(0.25)
    assert metric["top3_oracle_rate"] == pytest.approx(0.75)
    assert metric["regret"] == pytest.approx(np.mean(GAINS.max(1) - GAINS.mean(1)))
    assert metric["spearman"] is None and metric["targets"] == 0


def test_relative_error_reduction_on_a_hand_computed_case():
    # Random init 60 (error 40); gains 4, 1, -2, 7 on t0: errors 36, 39, 42, 33.
    study = analyse(study_data())
    t0 = [p for p in study["pairs"] if p["target"] == "t0"]
    expected = {"s0": 4 / 40, "s1": 1 / 40, "s2": -2 / 40, "s3": 7 / 40}
    assert {p["source"]: p["relative_error_reduction"] for p in t0} == pytest.approx(expected)
    # random init already perfect: there is no error to reduce
    perfect = study_data(gains=np.zeros_like(GAINS))
    perfect.random_init["t0"][:] = 100.0
    t0 = [p for p in analyse(perfect)["pairs"] if p["target"] == "t0"]
    assert {p["relative_error_reduction"] for p in t0} == {None}


def test_the_bootstrap_interval_brackets_the_mean_spearman():
    rng = np.random.default_rng(3)
    noisy = GAINS + rng.normal(0, 3, GAINS.shape)
    metric = analyse(study_data(similarity={"noisy": noisy}))["metrics"]["noisy"]
    low, high = metric["spearman_ci95"]
    per_target = list(metric["spearman_per_target"].values())
    assert len(set(np.round(per_target, 6))) > 1  # the targets disagree: an interval, not a point
    assert low < metric["spearman"] < high
    assert metric["spearman"] == pytest.approx(np.mean(per_target))
    # one target: no interval
    one = study_data(skip={(s, t) for s in SOURCES for t in ("t1", "t2")})
    assert analyse(one)["metrics"]["cosine"]["spearman_ci95"] == [None, None]


def test_nothing_predicting_transfer_is_said_plainly():
    # Right on t0, reversed on t1, mostly reversed on t2: a mean Spearman of about -0.27.
    mixed = np.stack([GAINS[0], -GAINS[1], [1.0, 0.0, 3.0, 2.0]])
    study = analyse(study_data(similarity={"mixed": mixed}, default_metric="mixed"))
    assert study["metrics"]["mixed"]["spearman"] < 0.5
    verdict = study["verdict"]
    assert verdict[0].startswith("Nothing predicts transfer on this study")
    assert any("The default metric, mixed, misses issue 24's goal" in v for v in verdict)


def test_the_seeds_spread_decides_whether_a_gain_counts():
    """At step 10 the best gains are 3.5, 3 and 4 points against a spread of 1; halve the
    gains and make the seeds noisier (std 5) and none counts."""
    clear = analyse(study_data())["beyond_spread"]
    assert clear["10"] == {"targets": 3, "judged": 3}
    # Retrieval's first source: the best one under a metric equal to the gains, the worst
    # under its reverse (at step 10 their gains are -1, -0.5 and 0.5: within the spread of 1).
    assert analyse(study_data())["retrieved_beyond_spread"]["10"] == clear["10"]
    worst = analyse(study_data(similarity={"cosine": -GAINS}))["retrieved_beyond_spread"]
    assert worst["10"] == {"targets": 0, "judged": 3}
    noisy = analyse(study_data(noise=np.asarray([-5.0, 0.0, 5.0])))["beyond_spread"]
    assert noisy["10"] == {"targets": 0, "judged": 3}


def test_inconsistent_shapes_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"zero_shot is \(3, 4\)") as error:
        analyse(study_data(zero_shot=np.zeros((3, 4))))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("remote", [False, True])
def test_write_study_writes_every_file(tmp_path, remote):
    data = study_data(skip={("s0", "t0")}, chance={"t0": 50.0, "t1": None})
    work = "gs://bucket/study" if remote else tmp_path / "study"
    with paths.mounted("gs://bucket", tmp_path / "bucket"):
        written = write_study(work, data)
    folder = tmp_path / ("bucket/study" if remote else "study")
    names = {"study.json", "study.md", "study_gain.png", "study_scatter.png"}
    assert {p.name for p in folder.iterdir()} == names  # no temporary file left behind
    study = json.loads((folder / "study.json").read_text())
    assert len(study["pairs"]) == len(SOURCES) * len(TARGETS) - 1
    assert study == json.loads(json.dumps(written))
    for png in ("study_gain.png", "study_scatter.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (folder / "study.md").read_text()
    assert "## Which metric predicts transfer" in text and written["verdict"][0] in text
    assert "| cosine (default) (best) |" in text


def test_the_flow_report_judges_retrieval_by_a_study(tmp_path):
    """STUDY_FILE: the retrieval metric's correlation there, and per target whether the first
    source retrieval picks is the one the study measured best."""
    from prompt_transfer.spot import against_study

    study = {
        "metrics": {
            "cosine_avg_tokens": {"spearman": 0.3, "spearman_ci95": [-0.2, 0.7], "targets": 2}
        },
        "best_metric": "zero_shot",
        "pairs": [
            {"source": "a", "target": "t", "gain": 1.0},
            {"source": "b", "target": "t", "gain": 4.0},
            {"source": "a", "target": "u", "gain": 2.0},
            {"source": "b", "target": "u", "gain": -1.0},
        ],
    }
    sims = {"cosine_avg_tokens": np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5]])}
    said = against_study.lines(
        study, "s.json", "cosine_avg_tokens", ["t", "u", "v"], ["a", "b"], sims
    )
    assert said[0].startswith("retrieval ranks by cosine_avg_tokens: in the study its Spearman")
    assert "0.30 [-0.20, 0.70] over 2 target(s) (the study's best is zero_shot)" in said[0]
    assert (
        said[1]
        == "t: retrieval's first source is a (+1.0 in the study); the study's best is b (+4.0)"
    )
    assert said[2] == "u: retrieval's first source, a, is the study's best (+2.0)"
    assert said[3] == "v: the study did not measure this target from these sources"
    assert against_study.lines(None, None, "cosine_avg_tokens", ["t"], ["a"], sims) == []
    missing = str(tmp_path / "none.json")
    assert against_study.read(missing) is None
    assert against_study.lines(None, missing, "m", ["t"], ["a"], sims)[0].startswith("no study at")
