"""Retrieval order, eligibility, length fitting and the weighted average."""

import numpy as np
import pytest

from prompt_transfer.base.errors import UserError
from prompt_transfer.transfer import initial, library, retrieval, similarity


def _lib(tmp_path, prompts, fingerprint="fp", task_prefix="src"):
    lib = library.Library(tmp_path)
    for i, p in enumerate(prompts):
        lib.add(p, task=f"{task_prefix}{i}", model="tiny", model_fingerprint=fingerprint)
    return lib


def test_retrieval_order_follows_the_metric(tmp_path):
    rng = np.random.default_rng(0)
    target = rng.normal(size=(6, 8)).astype(np.float32)
    noise = [0.1, 2.0, 0.5, 5.0]  # closer sources have less noise
    lib = _lib(
        tmp_path, [target + s * rng.normal(size=target.shape).astype(np.float32) for s in noise]
    )
    entries = retrieval.eligible_sources(lib, "fp", 8)
    for metric in ("cosine_avg_tokens", "cosine_flat", "euclidean"):
        ranked = retrieval.rank_sources(lib, target, metric, entries)
        scores = [r.score for r in ranked]
        assert scores == sorted(scores, reverse=True)
        _, prompts = lib.load([r.entry for r in ranked])
        np.testing.assert_allclose(
            similarity.score_library(metric, target, prompts), scores, rtol=1e-6
        )
    top2 = retrieval.rank_sources(lib, target, "cosine_flat", entries, top_k=2)
    assert [r.entry.task for r in top2] == ["src0", "src2"]


def test_only_prompts_of_this_model_are_eligible(tmp_path):
    lib = _lib(tmp_path, [np.ones((2, 4), np.float32)], fingerprint="other")
    with pytest.raises(
        retrieval.TransferError, match="no library prompt was trained with this model .* projector"
    ):
        retrieval.eligible_sources(lib, "fp", 4)
    with pytest.raises(retrieval.TransferError, match="is empty apart from the target's own task"):
        retrieval.eligible_sources(lib, "other", 4, exclude_tasks=["src0"])
    with pytest.raises(retrieval.TransferError, match="is empty"):
        retrieval.eligible_sources(library.Library(tmp_path / "none"), "fp", 4)


def test_weighted_average_is_the_normalised_similarity_combination():
    a, b = np.ones((2, 3), np.float32), np.full((2, 3), 4.0, np.float32)
    out = initial.weighted_average([a, b], [0.75, 0.25])
    np.testing.assert_allclose(out, 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(initial.weighted_average([a, b], [3.0, 1.0]), out)
    np.testing.assert_allclose(initial.weighted_average([a, b], [0.5, -0.2]), a)  # clipped
    with pytest.raises(retrieval.TransferError):
        initial.weighted_average([a], [-1.0])


def test_length_fits():
    prompt = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(initial.fit_length(prompt, 2, "truncate"), prompt[:2])
    padded = initial.fit_length(prompt, 6, "pad")
    np.testing.assert_array_equal(padded[:4], prompt)
    np.testing.assert_allclose(padded[4:], np.repeat(prompt.mean(0, keepdims=True), 2, 0))
    stretched = initial.fit_length(prompt, 7, "interpolate")
    np.testing.assert_allclose(stretched[[0, 2, 4, 6]], prompt)  # every other row is original
    np.testing.assert_allclose(stretched[1], (prompt[0] + prompt[1]) / 2)
    with pytest.raises(retrieval.TransferError, match="choose a length fit"):
        initial.fit_length(prompt, 5)


def test_cli_ranks_sources_for_a_task_embedding(tmp_path, capsys):
    from prompt_transfer import cli

    rng = np.random.default_rng(1)
    target = rng.normal(size=(3, 4)).astype(np.float32)
    lib = library.Library(tmp_path)
    lib.add(target + 5 * rng.normal(size=(3, 4)), task="far", model="m", model_fingerprint="f")
    lib.add(target + 0.01, task="near", model="m", model_fingerprint="f")
    embedding = lib.add(target, task="tgt", model="m", model_fingerprint="f", kind="task_embedding")
    assert (
        cli.main(
            ["library", "rank", embedding.id, "--metric", "cosine_flat", "--library", str(tmp_path)]
        )
        == 0
    )
    rows = capsys.readouterr().out.split("\n")
    assert rows[0].split()[1] == "near" and rows[1].split()[1] == "far"
    assert (
        cli.main(["library", "rank", embedding.id, "--metric", "l2", "--library", str(tmp_path)])
        == 2
    )
    assert "choose one of cosine_avg_tokens" in capsys.readouterr().err


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(UserError, match="must be one of 'single_source', 'top_1', 'top_k_av"):
        initial.TransferInit(strategy="average_all")
