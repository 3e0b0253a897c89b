"""PPT's self-supervised pre-training tasks (Gu et al. 2022, Sec. 4), built from any corpus.

- Sentence pair (`nsp`): is the second sentence the next one (yes), another from the same
  document (maybe), or from another document (no)? PPT's 3-way NSP with verbalizers yes/maybe/no.
- Single sentence (`rating`): a sentence's rating with PPT's 5-level verbalizers
  (terrible / bad / maybe / good / great), where the corpus carries a rating.
- Multiple choice (`nss`): which of four sentences follows the context (next-sentence
  selection), answered by the option's letter.
- Unified (`unified`): every format above cast into multiple choice, options listed in the input.

Downstream tasks are cast into the same formats with `verbalize` (e.g. entailment -> yes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PAIR_LABELS = ("yes", "maybe", "no")
RATING_VERBALIZERS = ("terrible", "bad", "maybe", "good", "great")
LETTERS = ("A", "B", "C", "D")
# Downstream labels -> PPT verbalizers, as PPT casts its targets.
DOWNSTREAM_VERBALIZERS = {
    "entailment": "yes",
    "neutral": "maybe",
    "contradiction": "no",
    "not_entailment": "no",
    "negative": "bad",
    "positive": "good",
    "equivalent": "yes",
    "not_equivalent": "no",
}


def nsp_examples(documents: Sequence[Sequence[str]], rng: np.random.Generator, n: int):
    """3-way next-sentence prediction pairs, balanced over yes / maybe / no."""
    usable = [i for i, d in enumerate(documents) if len(d) >= 3]
    out = []
    for k in range(n):
        d = documents[usable[rng.integers(len(usable))]]
        i = int(rng.integers(len(d) - 1))
        label = PAIR_LABELS[k % 3]
        if label == "yes":
            second = d[i + 1]
        elif label == "maybe":
            choices = [j for j in range(len(d)) if j not in (i, i + 1)]
            second = d[choices[rng.integers(len(choices))]]
        else:
            other = documents[usable[rng.integers(len(usable))]]
            while other is d:
                other = documents[usable[rng.integers(len(usable))]]
            second = other[rng.integers(len(other))]
        out.append({"inputs": f"nsp sentence1: {d[i]} sentence2: {second}", "targets": label})
    return out


def nss_examples(documents: Sequence[Sequence[str]], rng: np.random.Generator, n: int):
    """Next-sentence selection: the true next sentence among three from other documents."""
    usable = [i for i, d in enumerate(documents) if len(d) >= 2]
    out = []
    for _ in range(n):
        di = usable[rng.integers(len(usable))]
        d = documents[di]
        i = int(rng.integers(len(d) - 1))
        options = [d[i + 1]]
        while len(options) < len(LETTERS):
            dj = usable[rng.integers(len(usable))]
            if dj != di:
                options.append(documents[dj][rng.integers(len(documents[dj]))])
        order = rng.permutation(len(options))
        answer = LETTERS[int(np.flatnonzero(order == 0)[0])]
        listed = " ".join(f"({LETTERS[k]}) {options[j]}" for k, j in enumerate(order))
        out.append({"inputs": f"nss context: {d[i]} options: {listed}", "targets": answer})
    return out


def rating_examples(texts: Sequence[str], ratings: Sequence[int], levels: int = 5):
    """Single-sentence classification: a rating 1..levels verbalised with PPT's words."""
    words = RATING_VERBALIZERS if levels == 5 else ("bad", "maybe", "good")
    return [
        {"inputs": f"rating sentence: {t}", "targets": words[r - 1]}
        for t, r in zip(texts, ratings, strict=True)
    ]


def to_unified(example: Mapping[str, str], options: Sequence[str]) -> dict[str, str]:
    """Cast a classification example into PPT's unified multiple-choice format."""
    if example["targets"] in LETTERS and options == LETTERS:  # already multiple choice
        return {"inputs": f"unified {example['inputs']}", "targets": example["targets"]}
    listed = " ".join(f"({LETTERS[k]}) {o}" for k, o in enumerate(options))
    answer = LETTERS[list(options).index(example["targets"])]
    return {"inputs": f"unified {example['inputs']} options: {listed}", "targets": answer}


def verbalize(example: Mapping[str, str], mapping: Mapping[str, str] | None = None) -> dict:
    """A downstream example with its label replaced by PPT's verbaliser."""
    mapping = DOWNSTREAM_VERBALIZERS if mapping is None else mapping
    return dict(example, targets=mapping.get(example["targets"], example["targets"]))


def build_ppt_tasks(
    documents: Sequence[Sequence[str]], prefix: str, seed: int, n_per_task: int = 6000
) -> dict[str, list[dict]]:
    """The PPT pre-training tasks over a corpus of documents (lists of sentences)."""
    rng = np.random.default_rng(seed)
    nsp = nsp_examples(documents, rng, n_per_task)
    nss = nss_examples(documents, rng, n_per_task)
    unified = [to_unified(ex, PAIR_LABELS) for ex in nsp[: n_per_task // 2]] + [
        to_unified(ex, LETTERS) for ex in nss[: n_per_task // 2]
    ]
    return {f"{prefix}_ppt_nsp": nsp, f"{prefix}_ppt_nss": nss, f"{prefix}_ppt_unified": unified}
