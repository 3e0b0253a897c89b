"""Retrieval over a large prompt library: the time to rank every entry for one target.

Not a test: it builds a library of `--entries` random prompts of `--shape` in `--root` (kept,
so a rerun measures rankings only), then times, for one target:
- listing the entries (every meta.json);
- the first SPoT ranking (cosine of average tokens), which reads and verifies every prompt
  and fills the library's summary cache;
- the same ranking again, from the summary cache alone (what a SPoT flow pays per target);
- cosine per token, also from the cache;
- with `--whole`, euclidean, which needs every whole prompt in memory.
It prints one JSON line and appends it to benchmarks/retrieval.jsonl.

    .venv/bin/python benchmarks/retrieval.py --entries 10000 --root /tmp/library_10k
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from prompt_transfer.transfer import library, retrieval

RESULTS = Path(__file__).with_name("retrieval.jsonl")


def build(lib: library.Library, entries: int, shape: tuple[int, int]) -> float:
    have = len(lib.entries())
    start = time.perf_counter()
    rng = np.random.default_rng(have)
    for i in range(have, entries):
        lib.add(
            rng.standard_normal(shape, np.float32) * 0.5,
            task=f"source_{i:05d}",
            model="bench",
            model_fingerprint="bench",
        )
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1:,} entries written", flush=True)
    return time.perf_counter() - start


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--shape", type=int, nargs=2, default=(100, 768))
    parser.add_argument("--root", default="/tmp/prompt_library_bench")
    parser.add_argument("--whole", action="store_true", help="also time euclidean")
    args = parser.parse_args()
    lib = library.Library(args.root)
    built = build(lib, args.entries, tuple(args.shape))
    (Path(args.root) / library.SUMMARY_FILE).unlink(missing_ok=True)
    target = np.random.default_rng(12345).standard_normal(args.shape, np.float32)

    entries, listing = timed(lib.entries)
    entries = entries[: args.entries]

    def rank(metric):
        return retrieval.rank_sources(lib, target, metric, entries, top_k=3)

    first, cold = timed(lambda: rank("cosine_avg_tokens"))
    again, warm = timed(lambda: rank("cosine_avg_tokens"))
    assert [r.entry.id for r in first] == [r.entry.id for r in again]
    _, per_token = timed(lambda: rank("cosine_per_token"))
    row = {
        "entries": len(entries),
        "shape": list(args.shape),
        "library_bytes": sum(f.stat().st_size for f in Path(args.root).glob("*/prompt.npy")),
        "build_seconds": round(built, 1),
        "list_seconds": round(listing, 3),
        "first_rank_seconds": round(cold, 3),
        "cached_rank_seconds": round(warm, 3),
        "cached_per_token_seconds": round(per_token, 3),
        "list_and_rank_seconds": round(listing + warm, 3),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.whole:
        row["euclidean_seconds"] = round(timed(lambda: rank("euclidean"))[1], 3)
    print(json.dumps(row))
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
