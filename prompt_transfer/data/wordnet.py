"""Tasks from WordNet 3.0's database files (Debian's wordnet-base, /usr/share/wordnet).

- `offline_wordnet_wic`: do two example sentences use a word in the same sense? Pairs come from
  the quoted examples in the glosses of the word's synsets (same synset: True). Same format and
  labels as SuperGLUE's WiC.
- `offline_wordnet_hypernym`: is word2 a more general term for word1 (up to three hypernym
  steps)? Negatives pair a word with a random noun that is not among its ancestors.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np

LABELS = ("False", "True")
_EXAMPLE = re.compile(r'"([^"]+)"')


def available(directory: Path) -> bool:
    return (Path(directory) / "data.noun").exists()


def parse_data_file(path: Path) -> dict[str, dict]:
    """offset -> {"words", "hypernyms", "examples"} for one data.<pos> file."""
    synsets = {}
    for line in Path(path).read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # licence header
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        offset, count = fields[0], int(fields[3], 16)
        words = [fields[4 + 2 * i].lower().replace("_", " ") for i in range(count)]
        at = 4 + 2 * count
        n_pointers = int(fields[at])
        pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(n_pointers)]
        hypernyms = [p[1] for p in pointers if p[0] in ("@", "@i")]
        synsets[offset] = {
            "words": words,
            "hypernyms": hypernyms,
            "examples": _EXAMPLE.findall(gloss),
        }
    return synsets


def wic_examples(synsets: dict, rng: np.random.Generator, n: int) -> list[dict]:
    """Balanced same-sense / different-sense sentence pairs for words with several senses."""
    uses = collections.defaultdict(lambda: collections.defaultdict(list))
    for offset, s in synsets.items():
        for word in s["words"]:
            if " " in word:
                continue
            for sentence in s["examples"]:
                if re.search(rf"\b{re.escape(word)}\b", sentence.lower()):
                    uses[word][offset].append(sentence)
    same, different = [], []
    for word, senses in sorted(uses.items()):
        offsets = sorted(senses)
        for o in offsets:
            if len(senses[o]) >= 2:
                same.append((word, senses[o][0], senses[o][1]))
        if len(offsets) >= 2:
            different.append((word, senses[offsets[0]][0], senses[offsets[1]][0]))
    k = min(n // 2, len(same), len(different))
    pick = lambda xs: [xs[i] for i in rng.permutation(len(xs))[:k]]
    rows = [(w, a, b, "True") for w, a, b in pick(same)]
    rows += [(w, a, b, "False") for w, a, b in pick(different)]
    return [
        {"inputs": f"wic word: {w} sentence1: {a} sentence2: {b}", "targets": label}
        for w, a, b, label in (rows[i] for i in rng.permutation(len(rows)))
    ]


def _ancestors(synsets: dict, offset: str, depth: int = 3) -> set[str]:
    found, frontier = set(), [offset]
    for _ in range(depth):
        frontier = [h for o in frontier for h in synsets[o]["hypernyms"] if h in synsets]
        found.update(frontier)
    return found


def hypernym_examples(synsets: dict, rng: np.random.Generator, n: int) -> list[dict]:
    offsets = [o for o, s in synsets.items() if s["hypernyms"]]
    rows = []
    for k in range(n):
        o = offsets[rng.integers(len(offsets))]
        ancestors = _ancestors(synsets, o)
        if k % 2 == 0:
            other, label = sorted(ancestors)[rng.integers(len(ancestors))], "True"
        else:
            other = offsets[rng.integers(len(offsets))]
            while other in ancestors or other == o:
                other = offsets[rng.integers(len(offsets))]
            label = "False"
        rows.append(
            {
                "inputs": f"hypernym word1: {synsets[o]['words'][0]} "
                f"word2: {synsets[other]['words'][0]}",
                "targets": label,
            }
        )
    return rows


def build_tasks(directory: Path, seed: int, n_per_task: int = 4000) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    nouns = parse_data_file(Path(directory) / "data.noun")
    verbs = parse_data_file(Path(directory) / "data.verb")
    return {
        "offline_wordnet_wic": wic_examples({**nouns, **verbs}, rng, n_per_task),
        "offline_wordnet_hypernym": hypernym_examples(nouns, rng, n_per_task),
    }
