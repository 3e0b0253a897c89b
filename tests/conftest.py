"""Test set-up: quiet TensorFlow, 8 simulated CPU devices, paths to the shared anchors."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Must be set before jax initialises its backend: sharding tests use an 8-device CPU mesh.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ANCHORS = Path(
    os.environ.get(
        "PROMPT_TRANSFER_ANCHORS", Path(__file__).resolve().parents[2] / "shared" / "anchors"
    )
)
TINY_CHECKPOINT = ANCHORS / "t5x_checkpoints" / "test_t5_1_1_tiny" / "checkpoint_3"
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
    """One compilation cache for the session: the many short runs share compiled steps."""
    import tempfile

    from prompt_transfer import runtime

    runtime.enable_compilation_cache(tempfile.mkdtemp(prefix="prompt-transfer-jax-"))
