"""benchmarks/peers.py and many_prompts.py: their figures rest on a FLOP count and on both
sides training the same thing. Checked here at toy sizes; the timings are the scripts'."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import peers  # noqa: E402
import train_step  # noqa: E402

from prompt_transfer.configure import gin_files  # noqa: E402
from prompt_transfer.trainer import train_state  # noqa: E402


@pytest.mark.parametrize("size", ["offline_small", "small"])
def test_the_counted_flops_agree_with_xla_on_the_compiled_step(size):
    """The analytic count that every MFU figure divides by, against XLA's own cost analysis of
    the trainer's compiled prompt-tuning step (which adds elementwise work: within 15%). The
    count reads shapes alone: the network is zeros."""
    opt = train_state.OptimizerConfig()
    built = train_step.build(
        size, 8, (16, 4), "encoder/prompt/prompt", 8, "float32", opt, zeros=True
    )
    args = (built["state"], built["frozen"], built["batch"], built["rng"])
    xla = train_step.xla_flops(built["step"], *args) * jax.device_count()  # XLA counts one shard
    counted = peers.model_flops(gin_files.read_model_config(size), 8, 8 + 16, 4, full=False)
    assert 0.85 < counted / xla <= 1.0


def test_model_tuning_counts_half_again_as_much_as_prompt_tuning():
    config = gin_files.read_model_config("small")
    prompt = peers.model_flops(config, 8, 228, 8, full=False)
    assert peers.model_flops(config, 8, 228, 8, full=True) == pytest.approx(1.5 * prompt, rel=1e-6)


def test_peers_trains_the_same_prompt_on_both_sides(tmp_path):
    """A toy run of the script as a user runs it: both frameworks' rows, with the trainable
    count equal on both sides (the PEFT prompt sits on the encoder only, as ours)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peers.py"), "--size", "offline_small", "--batch",
         "8", "--inputs", "8", "--prompt-length", "4", "--steps", "1", "--warmup", "1",
         "--peak-size", "64", "--results", str(tmp_path / "peers.jsonl")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| ours (jax) |") and rows[2].startswith("| PEFT ")
    assert '"trainable_params": 512' in done.stdout  # 4 x 128 on the PEFT side
    assert len((tmp_path / "peers.jsonl").read_text().splitlines()) == 2


def test_stacked_rows_each_train_their_own_prompt():
    """many_prompts.py stacks K copies of one state: after a step each copy has moved, on its
    own key, exactly as the single run does (same batch, same start)."""
    import many_prompts  # noqa: F401  (the script imports cleanly)

    opt = train_state.OptimizerConfig()
    built = train_step.build("offline_small", 8, (8, 4), "encoder/prompt/prompt", 4, "float32", opt)
    single = jax.tree.map(lambda x: x.sharding, built["state"])
    step = train_state.compile_stacked_step(
        built["model"], train_state.make_optimizer(opt), train_state.learning_rate_schedule(opt),
        1, jax.tree.leaves(single)[0].mesh, single,
        jax.tree.map(lambda x: x.sharding, built["frozen"]),
    )  # fmt: skip
    start = np.asarray(built["state"].trainable["encoder"]["prompt"]["prompt"])
    states = train_state.stack_states([built["state"]] * 2)
    batch = {k: np.stack([np.asarray(v)] * 2) for k, v in built["batch"].items()}
    rngs = np.stack([np.asarray(built["rng"])] * 2)
    stacked, _ = step(states, built["frozen"], batch, rngs)
    alone, _ = built["step"](built["state"], built["frozen"], built["batch"], built["rng"])
    moved = np.asarray(alone.trainable["encoder"]["prompt"]["prompt"])
    assert not np.allclose(moved, start)
    for k in range(2):
        copy = train_state.unstack_state(stacked, k).trainable["encoder"]["prompt"]["prompt"]
        np.testing.assert_allclose(np.asarray(copy), moved, atol=1e-5, rtol=0)
