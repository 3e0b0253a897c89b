"""The README's memory-plan table: `prompt-transfer plan` for T5 1.1 small..xxl on common slices.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=SIZES)
    parser.add_argument("--slices", nargs="+", default=list(SLICES))
    args, extra = parser.parse_known_args()
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
