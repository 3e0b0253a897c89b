"""Transfer strategies chosen by gin, end to end on the tiny model and synthetic tasks."""

import json
import shutil

import numpy as np
import pytest
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, TINY_CHECKPOINT, TINY_LENGTHS, tiny_run_args
from prompt_transfer.base.errors import UserError
from prompt_transfer.cli.jobs import train_main
from prompt_transfer.configure import gin_files
from prompt_transfer.data import metrics
from prompt_transfer.network import checkpoints, t5
from prompt_transfer.prompt import attention
from prompt_transfer.trainer import race as race_lib
from prompt_transfer.trainer import run_dir
from prompt_transfer.transfer import library, retrieval, similarity


@pytest.fixture(scope="module")
def lib(anchors, tmp_path_factory):
    """A library of two trained-looking sources and the target's task embedding."""
    for name in ("test_keyword", "source_a", "source_b"):
        register_keyword_task(T5_VOCAB, name=name)
    network = checkpoints.restore_params(
        TINY_CHECKPOINT, t5.abstract_params(t5.T5(gin_files.read_model_config("tiny")))
    )
    fingerprint = library.model_fingerprint(network)
    root = tmp_path_factory.mktemp("library")
    store = library.Library(root)
    rng = np.random.default_rng(0)
    target = rng.normal(size=(5, 4)).astype(np.float32)
    store.add(
        target + 0.1 * rng.normal(size=(5, 4)),
        task="source_a",
        model="tiny",
        model_fingerprint=fingerprint,
    )
    store.add(
        -target + 0.1 * rng.normal(size=(5, 4)),
        task="source_b",
        model="tiny",
        model_fingerprint=fingerprint,
    )
    store.add(rng.normal(size=(5, 4)), task="source_a", model="other", model_fingerprint="x")
    embedding = store.add(
        target,
        task="test_keyword",
        model="tiny",
        model_fingerprint=fingerprint,
        kind="task_embedding",
    )
    return root, embedding.id


def _run(model_dir, lib, strategy, *extra):
    root, embedding = lib
    return train_main(
        tiny_run_args(
            model_dir,
            f"--gin_file=transfer/{strategy}.gin",
            f"--gin.LIBRARY='{root}'",
            f"--gin.TARGET_EMBEDDING='{embedding}'",
            "--gin.TRAIN_STEPS=2",
            "--gin.EVAL_PERIOD=0",
            "--gin.SAVE_PERIOD=2",
            *extra,
        )
    )


def _report(model_dir):
    return (
        json.loads((model_dir / "transfer" / "report.json").read_text()),
        np.load(model_dir / "transfer" / "initial_prompt.npy"),
    )


def test_weighted_average_of_top_k(lib, tmp_path):
    _run(
        tmp_path, lib, "weighted_average", "--gin.TOP_K=2", "--gin.SIMILARITY_METRIC='cosine_flat'"
    )
    report, initial = _report(tmp_path)
    store = library.Library(lib[0])
    sources = [
        next(e for e in store.entries(task=t) if e.model == "tiny") for t in report["sources"]
    ]
    assert report["sources"] == ["source_a", "source_b"]  # the other model's entry is ineligible
    target = store.prompt(lib[1])
    sims = similarity.score_library(
        "cosine_flat", target, np.stack([store.prompt(e) for e in sources])
    )
    np.testing.assert_allclose(report["similarities"], sims, rtol=1e-6)
    weights = np.clip(sims, 0, None) / np.clip(sims, 0, None).sum()
    expected = sum(w * store.prompt(e) for w, e in zip(weights, sources, strict=True))
    np.testing.assert_allclose(initial, expected, rtol=1e-5, atol=1e-6)


def test_top_1_and_single_source(lib, tmp_path):
    _run(tmp_path / "top1", lib, "top_1")
    report, initial = _report(tmp_path / "top1")
    assert report["chosen"] == "source_a"
    source = tmp_path / "source.npy"
    np.save(source, np.full((5, 4), 0.25, np.float32))
    _run(tmp_path / "single", lib, "single_source", f"--gin.SOURCE_PROMPT='{source}'")
    np.testing.assert_array_equal(_report(tmp_path / "single")[1], np.load(source))


def test_best_of_top_k_runs_each_candidate(lib, tmp_path):
    _run(tmp_path, lib, "best_of_top_k", "--gin.TOP_K=2", "--gin.CANDIDATE_STEPS=2")
    report, _ = _report(tmp_path)
    assert len(report["candidate_scores"]) == 2
    best = report["sources"][int(np.argmax(report["candidate_scores"]))]
    assert report["chosen"] == best
    assert (tmp_path / "transfer" / "candidate_source_a" / "checkpoint_2").exists()


def test_mixture_trains_on_the_sources(lib, tmp_path):
    _run(tmp_path, lib, "mixture", "--gin.TOP_K=2", "--gin.MIXTURE_STEPS=3")
    _, initial = _report(tmp_path)
    np.testing.assert_array_equal(
        initial, np.load(tmp_path / "transfer" / "mixture" / "prompts" / "checkpoint_3.npy")
    )


def test_length_mismatch_needs_an_explicit_fit(lib, tmp_path, capsys):
    from prompt_transfer import cli

    source = tmp_path / "long.npy"
    np.save(source, np.ones((8, 4), np.float32))
    args = [
        "train",
        *tiny_run_args(
            tmp_path / "run",
            "--gin_file=transfer/single_source.gin",
            f"--gin.SOURCE_PROMPT='{source}'",
            "--gin.TRAIN_STEPS=1",
            "--gin.EVAL_PERIOD=0",
            "--gin.SAVE_PERIOD=1",
        ),
    ]
    assert cli.main(args) == 2
    assert "length 8 but the target uses 5; choose a length fit" in capsys.readouterr().err
    assert cli.main([*args, "--gin.LENGTH_FIT='interpolate'"]) == 0


@pytest.mark.parametrize("metric", ["zero_shot", "activation_overlap"])
def test_retrieval_by_metrics_that_run_the_model(lib, tmp_path, metric):
    from prompt_transfer.model.encoder_decoder import EncoderDecoderModel

    _run(tmp_path, lib, "top_1", f"--gin.SIMILARITY_METRIC='{metric}'", "--gin.TOP_K=2")
    report, initial = _report(tmp_path)
    assert report["metric"] == metric and len(report["similarities"]) == 2
    assert report["similarities"] == sorted(report["similarities"], reverse=True)
    store = library.Library(lib[0])
    chosen = next(e for e in store.entries(task=report["chosen"]) if e.model == "tiny")
    np.testing.assert_array_equal(initial, store.prompt(chosen))
    if metric == "zero_shot":  # the score is the source prompt's accuracy on the target
        module = t5.T5(gin_files.read_model_config("tiny"))
        network = checkpoints.restore_params(TINY_CHECKPOINT, t5.abstract_params(module))
        direct = retrieval.zero_shot_matrix(
            EncoderDecoderModel(module),
            network,
            store.prompt(chosen)[None],
            ["test_keyword"],
            TINY_LENGTHS,
        )
        assert report["similarities"][0] == pytest.approx(direct[0, 0])


def _by_task(lib, task):
    store = library.Library(lib[0])
    return store.prompt(next(e for e in store.entries(task=task) if e.model == "tiny"))


def _summed(weights, parts):
    """sum_i w_i P_i in float64, as float32."""
    return sum(w * p.astype(np.float64) for w, p in zip(weights, parts, strict=True)).astype(
        np.float32
    )


def test_compose_joins_or_sums_the_subtasks_prompts(lib, tmp_path):
    """compose: the sub-tasks' prompts (named by task: the library's entry of this model, not
    the other model's) joined along the sequence, or summed with weights."""
    a, b = _by_task(lib, "source_a"), _by_task(lib, "source_b")
    subtasks = "--gin.COMPOSE_SOURCES=['source_a', 'source_b']"
    _run(tmp_path / "concat", lib, "compose", subtasks, "--gin.PROMPT_LENGTH=10")
    report, start = _report(tmp_path / "concat")
    assert report["strategy"] == "compose" and report["how"] == "concat"
    np.testing.assert_array_equal(start, np.concatenate([a, b]))
    _run(
        tmp_path / "sum", lib, "compose", subtasks, "--gin.COMPOSE_HOW='weighted_sum'",
        "--gin.COMPOSE_WEIGHTS=[3, 1]",
    )  # fmt: skip
    report, start = _report(tmp_path / "sum")
    assert report["weights"] == [0.75, 0.25]
    np.testing.assert_allclose(start, _summed([0.75, 0.25], [a, b]), rtol=1e-6)
    # Mixed per input: the sub-tasks stay beside the target, which starts from the first.
    _run(tmp_path / "mixed", lib, "compose", subtasks, "--gin.COMPOSE_HOW='attention'")
    _, start = _report(tmp_path / "mixed")
    np.testing.assert_array_equal(start, a)
    np.testing.assert_array_equal(attention.load(tmp_path / "mixed").sources, np.stack([a, b]))


@pytest.mark.parametrize(
    "overrides, says",
    [
        (
            ["--gin.PROMPT_LENGTH=7"],
            "lengths [5, 5] into one of 10 positions; set PROMPT_LENGTH=10",
        ),
        (
            ["--gin.COMPOSE_HOW='weighted_sum'", "--gin.COMPOSE_WEIGHTS=[1.0]"],
            "COMPOSE_WEIGHTS has 1 weights for 2 COMPOSE_SOURCES",
        ),
        (["--gin.COMPOSE_SOURCES=['source_a', 'nope']"], "COMPOSE_SOURCES: 'nope' is neither"),
        (
            ["--gin.COMPOSE_HOW='weighted_sum'", "--gin.COMPOSE_WEIGHTS=[1.0, -1.0]"],
            "COMPOSE_WEIGHTS=[1.0, -1.0] must sum to more than 0",
        ),
        (["--gin.COMPOSE_SOURCES=['source_a']"], "needs COMPOSE_SOURCES of two sub-tasks or more"),
    ],
)
def test_compose_refuses_in_one_line(lib, tmp_path, capsys, overrides, says):
    from prompt_transfer import cli

    subtasks = "--gin.COMPOSE_SOURCES=['source_a', 'source_b']"
    args = [
        "train",
        *tiny_run_args(
            tmp_path / "run",
            "--gin_file=transfer/compose.gin",
            f"--gin.LIBRARY='{lib[0]}'",
            subtasks,
            "--gin.TRAIN_STEPS=1",
            "--gin.EVAL_PERIOD=0",
            *overrides,
        ),
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_compose_starts_from_the_prompts_two_subtask_runs_trained(anchors, tmp_path):
    """The whole path: two sub-task runs add their prompts to a library (LIBRARY_DIR), and a
    target named after neither starts from exactly their concatenation, or their weighted sum
    (equal weights by default), its report naming the sub-tasks and how they were combined."""
    store, parts = tmp_path / "library", []
    for task, labels in [("sub_fruit", ("yes", "no")), ("sub_kind", ("fruit", "land"))]:
        register_keyword_task(T5_VOCAB, name=task, labels=labels)
        summary = train_main(
            tiny_run_args(
                tmp_path / task,
                "--gin.TRAIN_STEPS=3",
                "--gin.EVAL_PERIOD=0",
                f"--gin.LIBRARY_DIR='{store}'",
                task=task,
            )
        )
        parts.append(library.Library(store).prompt(summary["library_entry"]))
    assert parts[0].shape == (5, 4) and not np.array_equal(*parts)
    register_keyword_task(T5_VOCAB)

    def compose(name, *extra):
        train_main(
            tiny_run_args(
                tmp_path / name,
                "--gin_file=transfer/compose.gin",
                f"--gin.LIBRARY='{store}'",
                "--gin.COMPOSE_SOURCES=['sub_fruit', 'sub_kind']",
                "--gin.TRAIN_STEPS=1",
                "--gin.EVAL_PERIOD=0",
                *extra,
            )
        )
        return _report(tmp_path / name)

    report, start = compose("concat", "--gin.PROMPT_LENGTH=10")
    assert report["sources"] == ["sub_fruit", "sub_kind"] and report["how"] == "concat"
    np.testing.assert_array_equal(start, np.concatenate(parts))
    for name, weights, expected in [("sum", "[3, 1]", [0.75, 0.25]), ("equal", "[]", [0.5, 0.5])]:
        report, start = compose(
            name, "--gin.COMPOSE_HOW='weighted_sum'", f"--gin.COMPOSE_WEIGHTS={weights}"
        )
        assert report["how"] == "weighted_sum" and report["weights"] == expected
        np.testing.assert_allclose(start, _summed(expected, parts), rtol=1e-6)


def _three_sources(lib, tmp_path, more=("source_c",)):
    """The library with a third source, source_c (and any other of `more`)."""
    root = tmp_path / "library"
    shutil.copytree(lib[0], root)
    store = library.Library(root)
    known = store.entries(task="source_a")[0]
    for seed, name in enumerate(more, 1):
        register_keyword_task(T5_VOCAB, name=name)
        store.add(
            np.random.default_rng(seed).normal(size=(5, 4)),
            task=name,
            model="tiny",
            model_fingerprint=known.model_fingerprint,
        )
    return root


def test_race_halves_the_sources_in_stacked_rungs_and_the_survivor_goes_on(lib, tmp_path):
    """Three sources race: rung 1 trains all three in one stacked step, rung 2 the better two
    from their checkpoints, and the survivor's run goes on as the target run from the race's
    last step (its checkpoint adopted) to TRAIN_STEPS; each rung's scores are what its runs'
    evaluations logged."""
    root = _three_sources(lib, tmp_path)
    run = tmp_path / "run"
    args = ("--gin.RACE_STEPS=2", "--gin.EVAL_PERIOD=2")
    with pytest.raises(UserError, match="trains its winner 4 steps .* as many as the run's 2"):
        _run(run, (root, lib[1]), "race", *args)  # TRAIN_STEPS=2: the race would be all of it
    _run(run, (root, lib[1]), "race", *args, "--gin.TRAIN_STEPS=6")
    report, initial = _report(run)
    race = report["race"]
    assert sorted(race["ranking"]) == ["source_a", "source_b", "source_c"]
    first, second = race["rungs"]
    assert list(first["scores"]) == report["sources"]  # every source, retrieval's order
    assert first["step"] == 2 and second["step"] == 4 and len(first["kept"]) == 2
    assert list(second["scores"]) == first["kept"] and second["kept"] == [race["chosen"]]
    assert report["chosen"] == race["chosen"] == race["ranking"][0]
    assert race["steps"] == 2 * 3 + 2 * 2  # every runner in every rung
    folder = run / "transfer" / "race"
    for rung in race["rungs"]:
        for name, score in rung["scores"].items():
            history = run_dir.RunDir(folder / name / "seed_0").read_eval_history()
            logged = {h["step"]: h["results"]["test_keyword"] for h in history}
            assert score == pytest.approx(next(iter(logged[rung["step"]].values())))
    survivor = folder / race["chosen"] / "seed_0"
    assert race["folder"] == str(survivor) and (survivor / "checkpoint_4").exists()
    np.testing.assert_array_equal(initial, np.load(survivor / "prompts" / "checkpoint_4.npy"))
    # The run adopted the survivor's run: it resumed at step 4 and trained steps 5-6 only, its
    # history the survivor's evaluations, then its own.
    assert "resumed from checkpoint_4" in (run / "log.txt").read_text()
    history = run_dir.RunDir(run).read_eval_history()
    assert [h["step"] for h in history] == [2, 4, 6]
    assert history[:2] == run_dir.RunDir(survivor).read_eval_history()
    assert (run / "checkpoint_6").exists()
    assert (
        "trained together with 2 other run(s) in one stacked step"
        in (folder / "source_a" / "seed_0" / "log.txt").read_text()
    )
    assert first["examples"] == second["examples"] == 32  # the whole validation split
    # The same race asked again is read back, not run; another (a seed, a source trained
    # again) is not.
    asked = json.loads((folder / race_lib.RACE_FILE).read_text())["asked"]
    again = race_lib._read_back(folder, asked)
    assert again.chosen == race["chosen"] and again.rungs == race["rungs"]
    np.testing.assert_array_equal(again.prompt, initial)
    assert race_lib._read_back(folder, dict(asked, seed=1)) is None
    assert race_lib._read_back(folder, dict(asked, prompts="0" * 16)) is None  # retrained


def test_a_race_decided_by_the_true_labels_likelihood(lib, tmp_path, monkeypatch):
    """RACE_SCORE='likelihood': each rung's scores are the log-probabilities of the true labels
    that its runs' evaluations logged, the survivor is the best of them, and the race is not
    the one decided by the main metric (neither is read back for the other). A target without
    labels is refused before anything trains."""
    root = _three_sources(lib, tmp_path)
    run = tmp_path / "run"
    args = ("--gin.RACE_STEPS=2", "--gin.EVAL_PERIOD=2", "--gin.TRAIN_STEPS=6")
    _run(run, (root, lib[1]), "race", *args, "--gin.RACE_SCORE='likelihood'")
    race = _report(run)[0]["race"]
    folder = run / "transfer" / "race"
    for rung in race["rungs"]:
        for name, score in rung["scores"].items():
            history = run_dir.RunDir(folder / name / "seed_0").read_eval_history()
            logged = {h["step"]: h["label_log_likelihood"]["test_keyword"] for h in history}
            assert score == pytest.approx(logged[rung["step"]]) and score < 0
        assert (
            rung["kept"]
            == sorted(rung["scores"], key=rung["scores"].get, reverse=True)[: len(rung["kept"])]
        )
    asked = json.loads((folder / race_lib.RACE_FILE).read_text())["asked"]
    assert asked["score"] == "likelihood"
    assert race_lib._read_back(folder, asked) is not None
    by_metric = {k: v for k, v in asked.items() if k != "score"}  # how a metric race asks
    assert race_lib._read_back(folder, by_metric) is None
    monkeypatch.setattr(race_lib.registry, "mixture_labels", lambda name: {name: ()})
    with pytest.raises(UserError, match="RACE_SCORE='likelihood' needs a classification"):
        _run(
            tmp_path / "generative", (root, lib[1]), "race", *args, "--gin.RACE_SCORE='likelihood'"
        )
    assert not (tmp_path / "generative" / "transfer" / "race").exists()


def test_a_race_decided_by_balanced_accuracy(lib, tmp_path):
    """RACE_SCORE='balanced_accuracy': each rung's scores are the balanced accuracies its runs'
    evaluations logged (the mean recall over the classes: a run answering one class for every
    input scores 50 on two, whatever the majority's share). A target whose tasks do not report
    it is refused before anything trains."""
    root = _three_sources(lib, tmp_path)
    task = register_keyword_task(
        T5_VOCAB, name="test_balanced", metric_fns=[metrics.accuracy, metrics.balanced_accuracy]
    )
    run = tmp_path / "run"
    args = ("--gin.RACE_STEPS=2", "--gin.EVAL_PERIOD=2", "--gin.TRAIN_STEPS=6")
    score = "--gin.RACE_SCORE='balanced_accuracy'"
    _run(run, (root, lib[1]), "race", *args, score, f"--gin.MIXTURE_OR_TASK_NAME='{task}'")
    race = _report(run)[0]["race"]
    folder = run / "transfer" / "race"
    for rung in race["rungs"]:
        for name, value in rung["scores"].items():
            history = run_dir.RunDir(folder / name / "seed_0").read_eval_history()
            logged = {h["step"]: h["results"][task] for h in history}[rung["step"]]
            assert value == pytest.approx(logged["balanced_accuracy"])
        best = max(rung["scores"].values())
        assert all(rung["scores"][name] == best for name in rung["kept"][:1])
    assert json.loads((folder / race_lib.RACE_FILE).read_text())["asked"]["score"] == (
        "balanced_accuracy"
    )
    with pytest.raises(UserError, match="RACE_SCORE='balanced_accuracy' needs a target whose"):
        _run(tmp_path / "plain", (root, lib[1]), "race", *args, score)  # test_keyword: accuracy
    assert not (tmp_path / "plain" / "transfer" / "race").exists()


def test_race_and_overlap_picks_by_mean_rank_and_its_run_goes_on_from_where_it_left(
    lib, tmp_path, monkeypatch
):
    """race_and_overlap races as `race` does and scores every source by activation overlap with
    the target embedding (the report keeps those scores); the pick is the source whose two
    ranks average best. A source that left the race at its first rung can be that pick: the
    target run then adopts that source's run at step 2 and trains steps 3-6."""
    root = _three_sources(lib, tmp_path, more=("source_c", "source_d"))
    args = ("--gin.RACE_STEPS=2", "--gin.EVAL_PERIOD=2", "--gin.TRAIN_STEPS=6")
    real, measured = retrieval.retrieve, {}

    def spy(lib_, target, entries, metric, *rest):
        found = real(lib_, target, entries, metric, *rest)
        if metric == "activation_overlap":
            measured.update({r.entry.task: r.score for r in found})
        return found

    monkeypatch.setattr(retrieval, "retrieve", spy)
    _run(tmp_path / "measured", (root, lib[1]), "race_and_overlap", *args)
    race = _report(tmp_path / "measured")[0]["race"]
    assert race["prior"] == pytest.approx(measured) and len(measured) == 4
    assert race["chosen"] == race_lib.pick(race["ranking"], race["prior"])
    assert [len(r["scores"]) for r in race["rungs"]] == [4, 2]

    # Overlap put in this order, third and fourth of the race first: the mean ranks are the
    # survivor's (1 + 4) / 2, the runner-up's (2 + 3) / 2, the third's (3 + 1) / 2 and the
    # fourth's (4 + 2) / 2, so the third, out after rung 1, is picked.
    ranking = race["ranking"]
    order = [ranking[2], ranking[3], ranking[1], ranking[0]]
    overlap = dict(zip(order, [0.9, 0.8, 0.7, 0.6], strict=True))

    def forced(lib_, target, entries, metric, *rest):
        if metric != "activation_overlap":
            return real(lib_, target, entries, metric, *rest)
        return [retrieval.Ranked(e, overlap[e.task]) for e in entries]

    monkeypatch.setattr(retrieval, "retrieve", forced)
    run = tmp_path / "forced"
    _run(run, (root, lib[1]), "race_and_overlap", *args)
    report, initial = _report(run)
    assert report["race"]["ranking"] == ranking  # the same race: same seed, same steps
    assert report["chosen"] == report["race"]["chosen"] == ranking[2]
    picked = run / "transfer" / "race" / ranking[2] / "seed_0"
    assert report["race"]["folder"] == str(picked) and not (picked / "checkpoint_4").exists()
    np.testing.assert_array_equal(initial, np.load(picked / "prompts" / "checkpoint_2.npy"))
    assert "resumed from checkpoint_2" in (run / "log.txt").read_text()
    history = run_dir.RunDir(run).read_eval_history()
    assert [h["step"] for h in history] == [2, 4, 6]
    assert history[:1] == run_dir.RunDir(picked).read_eval_history()
    assert (
        "picked by its mean rank in the race and by activation overlap"
        in (run / "log.txt").read_text()
    )


def test_the_pick_by_mean_rank_breaks_ties_by_the_race():
    order = ["a", "b", "c", "d"]  # the race's ranking, its survivor first
    assert race_lib.pick(order, {"a": 0.1, "b": 0.2, "c": 0.4, "d": 0.3}) == "c"
    # b and c both average 2 (2 + 2, 3 + 1): b raced longer; a keeps its place on a flat prior
    assert race_lib.pick(order, {"a": 0.1, "b": 0.3, "c": 0.4, "d": 0.2}) == "b"
    assert race_lib.pick(order, dict.fromkeys(order, 0.5)) == "a"
    joint = race_lib.mean_rank(np.array([4.0, 3.0, 2.0, 1.0]), np.array([0.1, 0.3, 0.4, 0.2]))
    assert list(np.argsort(-joint)) == [1, 2, 0, 3]  # b, c (tie, by the first), a, d


def test_race_keeps_the_best_half_and_breaks_ties_by_retrieval():
    scores = {"a": 50.0, "b": 70.0, "c": 50.0, "d": 40.0, "e": 70.0}
    order = ["e", "d", "c", "b", "a"]
    assert race_lib.halve(scores, order) == ["e", "b", "c"]  # ceil(5 / 2); c before a: retrieval
    rungs = [
        {"step": 2, "scores": scores, "kept": ["e", "b", "c"]},
        {"step": 4, "scores": {"e": 60.0, "b": 65.0, "c": 61.0}, "kept": ["b", "c"]},
        {"step": 6, "scores": {"b": 70.0, "c": 72.0}, "kept": ["c"]},
    ]
    assert race_lib.ranking(rungs, order) == ["c", "b", "e", "a", "d"]
