"""Where a prompt-tuning step's time goes: a jax.profiler trace of it, summed by XLA operation.

Not a test: it traces `--steps` steps of the trainer's own jitted step (as benchmarks/peers.py
builds it), reads the trace back, and prints the share of device time by kind of operation
(matrix products, fused elementwise work, copies and transposes, reductions, the rest) and the
ten costliest operations, with the step's FLOPs from the compiled HLO's cost analysis.

    .venv/bin/python benchmarks/profile_step.py --size small --batch 8
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax
import train_step

from prompt_transfer.trainer import train_state

KINDS = (
    # XLA:CPU hands dots (and what it fuses into them) to YNNPACK/XNNPACK: "ynn_fusion.N".
    ("matrix products", re.compile(r"dot|gemm|matmul|conv|cublas|cutlass|triton_gemm|[yx]nn_")),
    ("copies and transposes", re.compile(r"copy|transpose|memcpy")),
    ("reductions", re.compile(r"reduce")),
    ("fused elementwise", re.compile(r"fusion|loop_|input_")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, pattern in KINDS if pattern.search(lowered)), "other")


def trace_events(folder: Path) -> list[dict]:
    files = sorted(folder.rglob("*.trace.json.gz"))
    if not files:
        raise SystemExit(f"no trace written under {folder}")
    with gzip.open(files[-1]) as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and "dur" in e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    train_step.shape_arguments(parser, batch=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    built = train_step.build_prompt_step(args, train_state.OptimizerConfig())
    step, state = built["step"], built["state"]
    rest = (built["frozen"], built["batch"], built["rng"])
    flops = train_step.xla_flops(step, state, *rest)
    seconds, state = train_step.seconds_per_step(step, state, rest, args.steps, warmup=2)
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            _, state = train_step.seconds_per_step(step, state, rest, args.steps - 1, warmup=1)
        events = trace_events(Path(folder))
    # Operation events name an HLO instruction; the step itself and the host's own spans are
    # the long enclosing events, left out by keeping only names the HLO could hold.
    by_name = collections.Counter()
    for e in events:
        name = e["name"]
        if re.fullmatch(r"[\w.\-]+", name) and not name.startswith(("jit_", "Pjit", "Thunk")):
            by_name[name] += e["dur"]
    total = sum(by_name.values()) or 1
    by_kind = collections.Counter()
    for name, us in by_name.items():
        by_kind[kind_of(name)] += us
    print(
        f"{args.size}, batch {args.batch}, inputs {args.inputs} + prompt {args.prompt_length}, "
        f"{jax.devices()[0].device_kind}: {seconds * 1e3:.1f} ms per step, "
        f"{flops / 1e9:.2f} GFLOP by XLA's count; "
        f"operations traced: {total / 1e3 / args.steps:.1f} ms per step"
    )
    print("\n| kind | share of traced time |\n|---|---|")
    for kind, us in by_kind.most_common():
        print(f"| {kind} | {100 * us / total:.1f}% |")
    by_family = collections.Counter()
    for name, us in by_name.items():
        by_family[re.sub(r"[.\d]+$", "", name)] += us
    print("\n| operation family | ms per step | share |\n|---|---|---|")
    for name, us in by_family.most_common(12):
        print(f"| {name} | {us / 1e3 / args.steps:.2f} | {100 * us / total:.1f}% |")


if __name__ == "__main__":
    main()
