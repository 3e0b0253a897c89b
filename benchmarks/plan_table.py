"""The memory-plan table of docs/pods.md: `prompt-transfer plan` for T5 1.1 small..xxl on slices.

    .venv/bin/python benchmarks/plan_table.py            # appends to benchmarks/plan.jsonl

Each plan compiles the train step for the slice's device count simulated on this host's CPU
(minutes for xxl). Slices: v4-32 (16 chips of 32 GB), v5e-16 (16 chips of 16 GB), one host of
8 x H100 80 GB. The batch, lengths and dtypes are `plan`'s defaults (batch 32, inputs 512 +
prompt 100, targets 16, bfloat16 frozen network and activations).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SLICES = {"v4-32": (16, 32), "v5e-16": (16, 16), "8xH100-80GB": (8, 80)}
SIZES = ("small", "base", "large", "xl", "xxl")
RESULTS = Path(__file__).with_name("plan.jsonl")


def plan(size: str, devices: int, memory_gb: float, extra: list[str]) -> dict:
    flags = [f"--size={size}", f"--devices={devices}", f"--device-memory-gb={memory_gb}"]
    command = [sys.executable, "-m", "prompt_transfer", "plan", *flags, "--json", *extra]
    start = time.time()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["seconds"] = round(time.time() - start, 1)
    return result


def markdown(results: list[dict]) -> str:
    """docs/pods.md's table: per size and slice, the smallest NUM_PARTITIONS that fits and its
    GB per device (frozen network + step), or the least memory any partitioning needs."""
    latest = {(r["shape"]["size"], r["slice"]): r for r in results}
    lines = ["| size | " + " | ".join(SLICES) + " |", "|---" * (len(SLICES) + 1) + "|"]
    for size in SIZES:
        cells = []
        for name in SLICES:
            r = latest.get((size, name))
            if r is None:
                cells.append("")
                continue
            rows = {row["partitions"]: row for row in r["rows"]}
            if r["fits"]:
                row = rows[r["fits"]]
                cells.append(
                    f"{r['fits']}: {row['total'] / 1e9:.1f} GB "
                    f"({row['frozen'] / 1e9:.2f} + {row['working'] / 1e9:.1f})"
                )
            else:
                least = min(
                    (row for row in rows.values() if row["total"]), key=lambda x: x["total"]
                )
                cells.append(
                    f"none (least: {least['total'] / 1e9:.0f} GB at {least['partitions']})"
                )
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=SIZES)
    parser.add_argument("--slices", nargs="+", default=list(SLICES))
    parser.add_argument("--markdown", action="store_true", help="print the table of plan.jsonl")
    args, extra = parser.parse_known_args()
    if args.markdown:
        print(markdown([json.loads(line) for line in RESULTS.read_text().splitlines()]))
        return
    for size in args.sizes:
        for name in args.slices:
            devices, memory = SLICES[name]
            result = dict(plan(size, devices, memory, extra), slice=name)
            with RESULTS.open("a") as f:
                f.write(json.dumps(result) + "\n")
            fit = result["fits"]
            rows = {r["partitions"]: r for r in result["rows"]}
            total = rows[fit]["total"] / 1e9 if fit else None
            print(f"{size:6} {name:12} NUM_PARTITIONS={fit} total={total}", flush=True)


if __name__ == "__main__":
    main()
