"""Test set-up: quiet TensorFlow, 8 simulated CPU devices, paths to the shared anchors."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Must be set before jax initialises its backend: sharding tests use an 8-device CPU mesh. The
# tests' programs are compiled without LLVM's costly optimisation passes (XLA's own passes over
# the program still run): the suite's tiny models spend far longer compiling than running, and
# test_multitask's 7 train steps compiled in 12 s instead of 32 (its file: 64 s instead of 86).
# XLA's older CPU fusion emitters compile faster still: the tiny train step 2.1-2.4 s instead of
# 3.0-3.6, test_multitask + test_prompt_then_model on 2 workers 142 and 179 s against 194 and 202.
# Subprocesses inherit these flags; a test that measures a learned outcome against figures taken
# with a user's settings drops them (test_deep_prompts' steer).
os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
        "--xla_cpu_use_fusion_emitters=false",
    ]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ANCHORS = Path(
    os.environ.get(
        "PROMPT_TRANSFER_ANCHORS", Path(__file__).resolve().parents[2] / "shared" / "anchors"
    )
)
# The T5X-written tiny checkpoint, saved at step 3: runs from it count on from step 3 (T5X's
# TRAIN_STEPS), as tests of that count and of the anchors' command lines use it.
ANCHOR_TINY_CHECKPOINT = ANCHORS / "t5x_checkpoints" / "test_t5_1_1_tiny" / "checkpoint_3"
T5_VOCAB = ANCHORS / "t5_vocab" / "sentencepiece.model"
RELEASED_PROMPTS = ANCHORS / "released_prompts"
# The SPoT flow cut down to a few steps per run (tests of `spot` and `demo`).
CUT_DOWN_FLOW = [
    "--gin.SOURCE_STEPS=4",
    "--gin.EMBEDDING_STEPS=2",
    "--gin.TARGET_STEPS=4",
    "--gin.EVAL_PERIOD=2",
    "--gin.CANDIDATE_STEPS=2",
    "--gin.STRATEGIES=['top_k_average', 'best_of_top_k']",
]
if T5_VOCAB.exists():  # tasks/ registers with this vocabulary instead of T5's gs:// one
    os.environ.setdefault("PROMPT_TRANSFER_VOCAB", str(T5_VOCAB))


def _at_step_zero(anchor: Path) -> Path:
    """The anchor's checkpoint with its step set to 0 (as a converted or imported model has),
    weights untouched: the trainer tests' runs count their steps from 0, so their step numbers
    say what they test. Made once per machine (a temporary folder, renamed into place)."""
    import shutil
    import tempfile

    target = Path(tempfile.gettempdir()) / "prompt_transfer_tests" / "tiny_step0" / "checkpoint_0"
    if target.exists() or not anchor.exists():
        return target
    import numpy as np
    from flax import serialization

    target.parent.mkdir(parents=True, exist_ok=True)
    made = Path(tempfile.mkdtemp(dir=target.parent)) / "checkpoint_0"
    shutil.copytree(anchor, made)
    state = serialization.msgpack_restore((anchor / "checkpoint").read_bytes())
    state["optimizer"]["state"]["step"] = np.asarray(0, np.int32)
    (made / "checkpoint").write_bytes(serialization.msgpack_serialize(state))
    try:
        made.rename(target)
    except OSError:  # another test process made it first
        shutil.rmtree(made.parent, ignore_errors=True)
    return target


TINY_CHECKPOINT = _at_step_zero(ANCHOR_TINY_CHECKPOINT)  # the anchor's weights at step 0

# What the tiny runs read: 12 input and 4 target tokens hold the keyword task and its labels.
TINY_LENGTHS = {"inputs": 12, "targets": 4}
# models/tiny.gin trains without dropout; a test whose proof needs dropout's keys (a resume, runs
# stacked or split over processes ending where one run does) turns it on.
WITH_DROPOUT = "--gin.DROPOUT_RATE=0.1"


def tiny_run_args(
    model_dir: Path | str | None,
    *overrides: str,
    task: str | None = "test_keyword",
    lengths: dict[str, int] = TINY_LENGTHS,
    checkpoint=TINY_CHECKPOINT,
) -> list[str]:
    """A run of the tiny experiment on `task` from the tiny T5X checkpoint: the argv of
    `train_main`, and of `cli.main` after its command (`["train", *tiny_run_args(...)]`).

    `overrides` come last (`--gin.X=...`, `--gin_file=...`, `--resume`). `model_dir`, `task` or
    `checkpoint` None leaves that macro unset (a file task names its own; a random-init run).
    """
    args = ["--gin_file=experiments/prompt_tuning_tiny"]
    if model_dir is not None:
        args.append(f"--gin.MODEL_DIR='{model_dir}'")
    if task is not None:
        args.append(f"--gin.MIXTURE_OR_TASK_NAME='{task}'")
    args.append(f"--gin.TASK_FEATURE_LENGTHS={lengths!r}")
    if checkpoint is not None:
        args.append(f"--gin.INITIAL_CHECKPOINT_PATH='{checkpoint}'")
    return [*args, *overrides]


def tiny_config(**changes):
    """A `t5.T5Config` small enough to build, run and differentiate in a test (V 64, E 16,
    2 heads of 8, M 32, 2 + 2 layers, 8 relative-position buckets); `changes` are the fields a
    test depends on."""
    from prompt_transfer.network import t5

    fields = dict(
        vocab_size=64,
        emb_dim=16,
        num_heads=2,
        head_dim=8,
        mlp_dim=32,
        num_encoder_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )
    return t5.T5Config(**{**fields, **changes})


def small_hf_t5(directory: Path, fmt: str = "safetensors", noise: float = 0.0, **changes):
    """A small random HF transformers T5 (flan-t5-like unless `changes` say otherwise: gated-GELU,
    untied output layer), seeded, saved in `directory`, and returned in eval mode.

    fmt "pretrained" is what transformers itself writes now (`save_pretrained`: transformers 5
    ties `lm_head` to `shared` and keeps T5 1.1's missing rescale as `scale_decoder_outputs`).
    fmt "safetensors" or "bin" is what older transformers wrote and T5 1.1 checkpoints hold: an
    `lm_head` of its own when untied, and `tie_word_embeddings` alone deciding tying and
    rescaling. `noise` > 0 redraws every weight from N(0, noise^2), layer-norm scales too, so
    that a mis-mapped norm shows up.
    """
    import json

    import torch
    import transformers

    fields = dict(
        vocab_size=32128,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,  # as T5's own configs say
        pad_token_id=0,
        eos_token_id=1,
    )
    fields.update(changes)
    tied = fields["tie_word_embeddings"]
    directory.mkdir(parents=True, exist_ok=True)
    cfg = transformers.T5Config(**fields)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not tied and fmt != "pretrained":  # transformers 5 ties lm_head in memory; T5 1.1 not
        model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model))
    if noise:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * noise)
    if fmt == "pretrained":
        model.save_pretrained(directory)
        return model
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if tied:
        state.pop("lm_head.weight", None)
    else:
        state["lm_head.weight"] = model.lm_head.weight.detach().clone()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    elif fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        raise ValueError(f"fmt={fmt!r}: choose safetensors, bin or pretrained")
    config = {k: v for k, v in cfg.to_dict().items() if k != "scale_decoder_outputs"}
    (directory / "config.json").write_text(json.dumps(dict(config, tie_word_embeddings=tied)))
    return model


@pytest.fixture(scope="session")
def anchors() -> Path:
    """The shared real-world artifacts (../shared/anchors beside the repository)."""
    if not ANCHORS.exists():
        pytest.skip(f"shared anchors not found at {ANCHORS} (set PROMPT_TRANSFER_ANCHORS)")
    return ANCHORS


@pytest.fixture
def fake_gcs(tmp_path):
    """A Cloud Storage stand-in (tests/fake_gcs.py); its `env()` sends a subprocess there."""
    import subprocess

    from fake_gcs import FakeGcs

    try:
        fake = FakeGcs(tmp_path).start()
    except (FileNotFoundError, subprocess.CalledProcessError) as e:  # no openssl to sign with
        pytest.skip(f"cannot make the fake server's certificate: {e}")
    yield fake
    fake.stop()


def pytest_configure(config):
    """One compilation cache for the session, made by the main pytest process and shared through
    $PROMPT_TRANSFER_JAX_CACHE with its xdist workers and every process a test starts (unless
    the test names its own): the many short runs share compiled steps across processes, and
    nothing is written to the user's cache (~/.cache/prompt_transfer/jax)."""
    import tempfile

    from prompt_transfer.base import runtime

    if not hasattr(config, "workerinput"):  # the main process (xdist's workers have it)
        config._jax_cache = tempfile.mkdtemp(prefix="prompt-transfer-jax-")
        os.environ["PROMPT_TRANSFER_JAX_CACHE"] = config._jax_cache
    runtime.enable_compilation_cache()  # reads $PROMPT_TRANSFER_JAX_CACHE, as every process does


# Seconds each file took in a whole run on 2 cores (`--durations=0`, summed per file; files
# under 15 s count 0). pytest-xdist hands out whole files (--dist loadfile) in collection order
# (pyproject: --no-loadscope-reorder; its default order is by test count, so the one-test demo
# came last): the longest first keeps the two workers from ending far apart.
FILE_SECONDS = {
    "test_spot.py": 180,
    "test_multihost.py": 146,
    "test_train.py": 140,
    "faults/test_kill_points.py": 136,
    "test_demo.py": 131,
    "test_prompt_then_model.py": 115,
    "test_deep_prompts.py": 106,
    "test_study.py": 101,
    "test_transfer_runs.py": 100,
    "test_pretraining.py": 98,
    "test_multihost_phases.py": 95,
    "test_multitask.py": 91,
    "test_remote_paths.py": 88,
    "test_read_back.py": 71,
    "test_t5x_habits.py": 68,
    "test_doc_commands.py": 60,
    "test_tasks_tfds.py": 50,
    "test_benchmarks.py": 39,
    "test_t5.py": 38,
    "test_offline_data.py": 28,
    "test_attention.py": 28,
    "test_plan.py": 27,
    "test_decoding.py": 22,
    "faults/test_damaged_files.py": 21,
    "test_partitioning.py": 20,
    "faults/test_bad_inputs.py": 19,
    "test_cli.py": 16,
}


def pytest_collection_modifyitems(config, items):
    """The longest files first (FILE_SECONDS); a file's tests stay together and in order."""
    tests = Path(__file__).parent
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.relative_to(tests).as_posix(), 0))


def pytest_unconfigure(config):
    """The session's compilation cache goes with it (the main process's, after its workers)."""
    import shutil

    shutil.rmtree(getattr(config, "_jax_cache", ""), ignore_errors=True)


def killed_at_batch(monkeypatch, position: int, launch) -> None:
    """`launch()` killed (KeyboardInterrupt, as a kill stops the process) when its data
    stream is about to read batch `position`; the stream is itself again afterwards."""
    from prompt_transfer.data import batches

    real_next = batches.BatchStream.__next__

    def dies(self):
        if self.position == position:
            raise KeyboardInterrupt("killed")
        return real_next(self)

    monkeypatch.setattr(batches.BatchStream, "__next__", dies)
    with pytest.raises(KeyboardInterrupt):
        launch()
    monkeypatch.setattr(batches.BatchStream, "__next__", real_next)


# A deep prompt on the tiny model (DEEP_PROMPT, what trains, and the optimizer it trains with).
DEEP_PROMPT_ARGS = [
    "--gin.DEEP_PROMPT=True",
    "--gin.TRAINABLE='encoder/prompt/prompt|.*/prompt_prefix'",
    "--gin.train_state.OptimizerConfig.name='adam'",
    "--gin.LEARNING_RATE=0.03",
]


def trained_arrays(step_dir) -> dict:
    """{parameter path: array} of what trains in a run's checkpoint_N, read straight from
    orbax (not through the project's restore)."""
    import orbax.checkpoint as ocp
    from flax import traverse_util

    tree = ocp.PyTreeCheckpointer().restore(Path(step_dir) / "state")
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {k.removeprefix("trainable/"): v for k, v in flat.items() if k.startswith("trainable/")}
