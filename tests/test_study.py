"""The transferability study, cut down: the tiny model, offline tasks, a few steps per run."""

import json

import numpy as np
import pytest
from read_back import eval_equals_log

from conftest import TINY_CHECKPOINT
from prompt_transfer import cli
from prompt_transfer.data import offline_data

SOURCES = ["offline_sentiment_coachella", "offline_bbc_topic", "offline_tweet_domain"]
TARGET = "offline_sentiment_apple_32shot"


def test_a_cut_down_study_measures_every_pair_and_a_rerun_with_more_seeds_adds_only_them(
    anchors, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PROMPT_TRANSFER_DATA", str(tmp_path / "offline"))
    offline_data.prepare(tmp_path / "offline")
    work = tmp_path / "study"
    argv = [
        "study",
        "--gin_file=experiments/study_tiny",
        f"--gin.WORK_DIR='{work}'",
        f"--gin.SOURCES={SOURCES}",
        f"--gin.TARGETS=['{TARGET}']",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'",
    ]
    assert cli.main(argv) == 0
    study = json.loads((work / "study.json").read_text())
    pairs = {(p["source"], p["target"]) for p in study["pairs"]}
    assert pairs == {(s, TARGET) for s in SOURCES}
    assert set(study["metrics"]) == {
        "cosine_avg_tokens",
        "cosine_per_token",
        "euclidean",
        "activation_overlap",
        "blocks_cosine_avg_tokens",  # a plain prompt's views (transfer/views.py)
        "trained_cosine_avg_tokens",
        "trained_blocks_cosine_avg_tokens",  # RETRIEVAL_METRIC, always measured
        "zero_shot",
        "zero_shot_loss",  # the target's training loss under each source, before any step
        "race",  # the sources' race on the target: its order of elimination
        "first_rung",  # and its first rung's scores
        "race_and_overlap",  # the race's ranks and activation overlap's, averaged
    }
    assert study["default_metric"] == "trained_blocks_cosine_avg_tokens"
    assert study["steps"] == [2, 4]
    # 3 sources x 4 steps, 1 embedding x 2, (3 sources + the baseline) x 1 seed x 4, and the
    # race: 3 sources x 2 steps, then the better 2 x 2 more
    assert study["cost"]["runs"] == 9 and study["cost"]["steps"] == 40
    assert study["cost"]["race_steps"] == {TARGET: 10}
    race = json.loads((work / "study" / TARGET / "race" / "race.json").read_text())
    assert race["asked"]["seed"] == 1000 and sorted(race["ranking"]) == sorted(SOURCES)
    order = study["similarity"]["race"][0]
    assert [study["sources"][i] for i in np.argsort(order)[::-1]] == race["ranking"]
    overlap = np.asarray(study["similarity"]["activation_overlap"][0])
    by_overlap = np.argsort(np.argsort(-overlap)) + 1  # 1: the closest (no ties here)
    by_race = np.argsort(np.argsort(-np.asarray(order))) + 1
    joined = np.asarray(study["similarity"]["race_and_overlap"][0])
    mean = (by_overlap + by_race) / 2  # the lower, the better; a tie goes to the race's order
    assert list(np.argsort(-joined)) == list(np.lexsort((by_race, mean)))
    assert study["cost"]["predictor_steps"]["race_and_overlap"] == 10  # the race's
    for pair in study["pairs"]:
        assert set(pair["gain_at"]) == {"2", "4"} and pair["gain"] == pair["gain_at"]["4"]
        assert 0 <= pair["zero_shot"] <= 100
    for name in ("study.md", "study_gain.png", "study_scatter.png"):
        assert (work / name).exists()
    assert "[study] study:" in capsys.readouterr().err
    # A study's run reads back as it trained: with no gin, and with the study's command line.
    run = work / "study" / TARGET / f"from_{SOURCES[0]}" / "seed_0"
    for args in ([], argv[1:]):
        eval_equals_log(run, *args, capsys=capsys)

    # A second seed trains only the new seed's runs: no finished run is touched. The same runs
    # read as balanced accuracy, whose constant answer scores 100 / classes.
    before = {p: p.stat().st_mtime for p in work.rglob("checkpoint_*")}
    rerun = [*argv, "--gin.SEEDS_PER_RUN=2", "--gin.STUDY_MEASURE='balanced_accuracy'"]
    assert cli.main(rerun) == 0
    after = {p: p.stat().st_mtime for p in work.rglob("checkpoint_*")}
    assert all(after[p] == t for p, t in before.items())
    new = {p.relative_to(work).parts[:4] for p in after.keys() - before.keys()}
    assert new == {
        ("study", TARGET, n, "seed_1") for n in ["sampled_vocab"] + [f"from_{s}" for s in SOURCES]
    }
    balanced = json.loads((work / "study.json").read_text())
    assert balanced["seeds"] == 2 and balanced["measure"] == "balanced_accuracy"
    assert balanced["chance"][TARGET] == 100 / 3  # negative, neutral, positive


def test_two_predictors_join_by_their_mean_rank():
    """Each source's ranks by the two predictors, averaged (tied values share their mean rank),
    where both rank it; the target itself (NaN) stays out; a tie in the mean goes to the first
    predictor's (the race's) order, as the race_and_overlap strategy picks."""
    from prompt_transfer.study.run import joint_rank
    from prompt_transfer.trainer import race as race_lib

    race = np.array([[3.0, np.nan, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    overlap = np.array([[0.2, 0.9, 0.8, 0.8], [0.5, 0.5, 0.1, 0.9], [0.1, 0.3, 0.4, 0.2]])
    joined = joint_rank(race, overlap)
    # target 0: race ranks 1, -, 3, 2; overlap ranks (0.9 is the target's own, left out) 3,
    # -, 1.5, 1.5: means 2, -, 2.25, 1.75, no tie
    assert np.isnan(joined[0, 1]) and list(np.argsort(-joined[0])[:3]) == [3, 0, 2]
    # target 1: race ranks 4, 3, 2, 1; overlap 2.5, 2.5, 4, 1: means 3.25, 2.75, 3, 1
    assert list(np.argsort(-joined[1])) == [3, 1, 2, 0]
    # target 2: race ranks 1, 2, 3, 4; overlap 4, 2, 1, 3: means 2.5, 2, 2, 3.5; the race
    # ranks the second above the third
    assert list(np.argsort(-joined[2])) == [1, 2, 0, 3]
    assert race_lib.pick(["a", "b", "c", "d"], dict(zip("abcd", overlap[2], strict=True))) == "b"


def test_the_views_weigh_the_input_prompt_and_each_key_and_value_block_alike():
    """Keys and values far larger than the input embeddings decide a cosine of the wide form;
    the blocks view gives the input prompt and each layer's keys and values one vote each."""
    from conftest import tiny_config
    from prompt_transfer.prompt import prompts
    from prompt_transfer.transfer import similarity, views

    config = tiny_config()
    emb, width = config.emb_dim, prompts.deep_width(config)
    blocks = 1 + 2 * len(prompts.deep_prefix_paths(config))
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, emb + width)).astype(np.float32)
    start[:, emb:] *= 50  # keys and values of a larger scale than the embeddings
    same_input = start.copy()
    same_input[:, emb:] = 50 * rng.normal(size=(3, width))  # only the keys and values differ
    same_kv = start.copy()
    same_kv[:, :emb] = rng.normal(size=(3, emb))  # only the input prompt differs

    def cosine(name, a, b):
        a, b = (views.view(name, x[None], config, initial=np.zeros_like(start)) for x in (a, b))
        return float(similarity.score_library("cosine_avg_tokens", a[0], b)[0])

    assert cosine("all", start, same_kv) > 0.99  # the input prompt does not count
    assert cosine("blocks", start, same_kv) == pytest.approx((blocks - 1) / blocks, abs=0.1)
    assert cosine("blocks", start, same_input) == pytest.approx(1 / blocks, abs=0.1)
    assert cosine("input", start, same_input) == pytest.approx(1.0, abs=1e-5)
    assert views.view("input", start, config).shape == (3, emb)
    trained = views.view("trained", start + 1.0, config, initial=start)
    np.testing.assert_allclose(trained, np.ones_like(start), atol=1e-4)
    with pytest.raises(ValueError, match="needs the prompts' initial value"):
        views.view("trained_blocks", start, config)
