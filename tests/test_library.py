"""The prompt library: entries, hashes, corruption, concurrency, imports, CLI."""

import json

import numpy as np
import pytest

from conftest import RELEASED_PROMPTS
from prompt_transfer import cli
from prompt_transfer.transfer import library


def _prompt(seed, shape=(4, 8)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_add_read_remove(tmp_path):
    lib = library.Library(tmp_path)
    entry = lib.add(
        _prompt(0),
        task="rte",
        model="tiny",
        model_fingerprint="abc",
        score=61.0,
        metric="accuracy",
        steps=100,
        seed=3,
    )
    assert (entry.prompt_length, entry.embed_dim) == (4, 8)
    np.testing.assert_array_equal(lib.prompt(entry.id), _prompt(0))
    assert lib.get(entry.id) == entry and [e.id for e in lib.entries(task="rte")] == [entry.id]
    assert lib.add(_prompt(0), task="rte", model="tiny", model_fingerprint="abc").id == entry.id
    lib.remove(entry.id)
    assert lib.entries() == []


def test_nan_prompts_are_refused(tmp_path):
    bad = _prompt(0)
    bad[1, 2] = np.nan
    with pytest.raises(library.LibraryError, match="NaN or inf"):
        library.Library(tmp_path).add(bad, task="x", model="m", model_fingerprint="")
    assert not any(tmp_path.iterdir())


def test_corrupted_entry_is_reported_and_skipped(tmp_path):
    lib = library.Library(tmp_path)
    good = lib.add(_prompt(0), task="a", model="m", model_fingerprint="")
    bad = lib.add(_prompt(1), task="b", model="m", model_fingerprint="")
    damaged = _prompt(1)
    damaged[0, 0] += 1.0
    np.save(tmp_path / bad.id / "prompt.npy", damaged)
    with pytest.raises(library.LibraryError, match=f"{bad.id} is damaged"):
        lib.prompt(bad.id)
    with pytest.warns(UserWarning, match=f"{bad.id} is damaged"):
        entries, prompts = lib.load()
    assert [e.id for e in entries] == [good.id] and prompts.shape == (1, 4, 8)


def test_released_prompts_import_with_metadata(anchors, tmp_path, capsys):
    folder = RELEASED_PROMPTS / "t5_1_1_lm100k_base"
    assert (
        cli.main(
            [
                "library",
                "import",
                str(folder),
                "--library",
                str(tmp_path),
                "--model",
                "t5_1_1_lm100k_base",
            ]
        )
        == 0
    )
    entries = {e.task: e for e in library.Library(tmp_path).entries()}
    assert set(entries) == {"sst2", "mrpc", "rte"}
    assert entries["sst2"].score == pytest.approx(95.07) and entries["rte"].kind == "released"
    assert (entries["rte"].prompt_length, entries["rte"].embed_dim) == (100, 768)
    np.testing.assert_array_equal(
        library.Library(tmp_path).prompt(entries["mrpc"]), np.load(folder / "mrpc.npy")
    )


def test_t5x_numpy_checkpoint_import(tmp_path):
    ckpt = tmp_path / "numpy_checkpoints" / "checkpoint_1000"
    ckpt.mkdir(parents=True)
    with open(ckpt / "encoder.prompt.prompt.prompt", "wb") as f:
        np.save(f, _prompt(5))
    np.testing.assert_array_equal(library.read_t5x_prompt(ckpt), _prompt(5))


def test_cli_add_list_show_export_remove(tmp_path, capsys):
    np.save(tmp_path / "p.npy", _prompt(2))
    lib = ["--library", str(tmp_path / "lib")]
    assert (
        cli.main(
            [
                "library",
                "add",
                str(tmp_path / "p.npy"),
                "--task",
                "boolq",
                "--model",
                "tiny",
                "--score",
                "70.5",
                "--metric",
                "accuracy",
                *lib,
            ]
        )
        == 0
    )
    entry_id = capsys.readouterr().out.split()[-1]
    assert cli.main(["library", "list", *lib]) == 0
    assert "boolq" in capsys.readouterr().out
    assert cli.main(["library", "show", entry_id, *lib]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == 70.5
    assert cli.main(["library", "export", entry_id, "--output", str(tmp_path / "o.npy"), *lib]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), _prompt(2))
    assert cli.main(["library", "remove", entry_id, *lib]) == 0
    assert cli.main(["library", "show", entry_id, *lib]) == 2
    assert "no library entry" in capsys.readouterr().err


def test_a_malformed_entry_is_skipped_and_named(tmp_path):
    lib = library.Library(tmp_path)
    good = lib.add(_prompt(0), task="a", model="m", model_fingerprint="f")
    bad = lib.add(_prompt(1), task="b", model="m", model_fingerprint="f")
    (tmp_path / bad.id / "meta.json").write_text('{"id": "b-1", "task": ')  # torn by hand
    with pytest.warns(UserWarning, match=f"library entry {bad.id} skipped"):
        assert [e.id for e in lib.entries()] == [good.id]


@pytest.mark.parametrize("entry_id", ["../outside", "a/b", ".hidden", "/etc"])
def test_entry_ids_cannot_reach_outside_the_library(tmp_path, entry_id):
    lib = library.Library(tmp_path / "lib")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "meta.json").write_text("{}")
    for action in (lib.get, lib.remove, lib.prompt):
        with pytest.raises(library.LibraryError, match="is not a library entry id"):
            action(entry_id)
    assert (tmp_path / "outside" / "meta.json").exists()
    entry = lib.add(_prompt(0), task="../../x", model="m", model_fingerprint="f")
    assert (tmp_path / "lib" / entry.id / "prompt.npy").exists() and "/" not in entry.id


def test_adding_a_stored_prompt_again_updates_its_metadata(tmp_path):
    lib = library.Library(tmp_path)
    first = lib.add(_prompt(0), task="a", model="m", model_fingerprint="f", score=50.0)
    again = lib.add(_prompt(0), task="a", model="m", model_fingerprint="f", score=61.5, steps=9)
    assert again.id == first.id and len(lib.entries()) == 1
    assert (lib.get(first.id).score, lib.get(first.id).steps) == (61.5, 9)
    assert lib.get(first.id).created == first.created


def test_ranking_reads_cached_summaries_and_scores_as_the_whole_prompts_do(tmp_path, monkeypatch):
    """The SPoT similarities rank from the library's summary cache: the same scores as from the
    prompts themselves, and a second ranking opens no prompt."""
    from prompt_transfer.transfer import retrieval, similarity

    lib = library.Library(tmp_path)
    entries = [
        lib.add(_prompt(seed, (6, 8)) + seed, task=f"t{seed}", model="m", model_fingerprint="")
        for seed in range(5)
    ]
    damaged = lib.add(_prompt(9, (6, 8)), task="bad", model="m", model_fingerprint="")
    np.save(tmp_path / damaged.id / "prompt.npy", _prompt(8, (6, 8)))
    target = _prompt(7, (3, 8))
    _, stacked = lib.load(entries)
    for metric in similarity.SUMMARY_METRICS:
        with pytest.warns(UserWarning, match=f"{damaged.id} is damaged"):
            ranked = retrieval.rank_sources(lib, target, metric, [*entries, damaged])
        expected = similarity.score_library(metric, target, stacked)
        by_id = {r.entry.id: r.score for r in ranked}
        assert damaged.id not in by_id
        np.testing.assert_allclose([by_id[e.id] for e in entries], expected, atol=1e-6)
    assert (tmp_path / library.SUMMARY_FILE).exists()

    def no_prompt_reads(*args, **kwargs):
        raise AssertionError("a cached summary was read from the prompt")

    monkeypatch.setattr(library.Library, "prompt", no_prompt_reads)
    again = retrieval.rank_sources(lib, target, "cosine_per_token", entries, top_k=2)
    assert [r.entry.id for r in again] == [r.entry.id for r in ranked[:2]]
    monkeypatch.undo()

    (tmp_path / library.SUMMARY_FILE).write_bytes(b"not a zip file")  # damaged: rebuilt
    rebuilt = retrieval.rank_sources(lib, target, "cosine_per_token", entries, top_k=2)
    assert [r.entry.id for r in rebuilt] == [r.entry.id for r in ranked[:2]]


READING = {
    "list": [],
    "show": ["x"],
    "remove": ["x"],
    "export": ["x", "--output", "{tmp}/o.npy"],
    "rank": ["x"],
    "train-projector": ["--source-model", "a", "--target-model", "b", "--output", "{tmp}/p"],
    "project": ["x", "--projector", "{tmp}/p", "--model", "m"],
}


@pytest.mark.parametrize("action", list(READING))
def test_a_command_that_reads_refuses_a_missing_library(tmp_path, capsys, action):
    """A mistyped --library is "no library there", not an empty library ("0 entries")."""
    extra = [a.replace("{tmp}", str(tmp_path)) for a in READING[action]]
    typo = tmp_path / "libary"
    assert cli.main(["library", action, *extra, "--library", str(typo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"prompt-transfer library: error: --library={typo}: no library there (no such folder); "
        f"{library.CREATE_HINT}"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_missing_default_library_is_named_by_what_chose_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPT_TRANSFER_LIBRARY", str(tmp_path / "lib"))
    assert cli.main(["library", "list"]) == 2
    assert f"$PROMPT_TRANSFER_LIBRARY={tmp_path / 'lib'}: no library" in capsys.readouterr().err
    monkeypatch.delenv("PROMPT_TRANSFER_LIBRARY")
    monkeypatch.setenv("PROMPT_TRANSFER_CACHE", str(tmp_path / "cache"))
    assert cli.main(["library", "list"]) == 2
    assert f"no library at {tmp_path / 'cache' / 'library'} (" in capsys.readouterr().err


def test_commands_that_write_create_the_library(tmp_path, capsys):
    """add and import make a new library; then every reader finds it (an empty one too)."""
    np.save(tmp_path / "p.npy", _prompt(2))
    for action, extra in (("add", ["--task", "t"]), ("import", [])):
        lib = tmp_path / f"new_{action}" / "lib"
        argv = ["library", action, str(tmp_path / "p.npy"), "--model", "m", *extra]
        assert cli.main([*argv, "--library", str(lib)]) == 0
        assert len(library.Library(lib).entries()) == 1
    (tmp_path / "empty").mkdir()
    assert cli.main(["library", "list", "--library", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.endswith(f"0 entries in {tmp_path / 'empty'}\n")


def test_a_library_in_python_names_a_missing_or_file_root(tmp_path):
    """The Python API keeps an absent library empty (a flow adds to it), but looking an entry
    up there says the library is missing; a file is no library, for reading or adding."""
    missing = library.Library(tmp_path / "none")
    assert missing.entries() == []
    for action in (missing.get, missing.remove):
        with pytest.raises(library.LibraryError, match=f"no library at {tmp_path / 'none'} "):
            action("x")
    (tmp_path / "file").write_text("x")
    file_lib = library.Library(tmp_path / "file")
    with pytest.raises(library.LibraryError, match="is a file, not a folder"):
        file_lib.get("x")
    with pytest.raises(library.LibraryError, match="is a file, not a folder"):
        file_lib.add(_prompt(0), task="t", model="m", model_fingerprint="")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_a_prompt_file_that_is_not_2d_is_named(tmp_path, shape):
    np.save(tmp_path / "p.npy", np.zeros(shape, np.float32))
    with pytest.raises(library.LibraryError, match=r"p\.npy holds an array of shape .* not a"):
        library.read_t5x_prompt(tmp_path / "p.npy")
