"""Deep prompts (DEEP_PROMPT=True): keys and values of the prompt's own in every self-attention.

How well they steer the shipped model is measured by benchmarks/steer.py, not here; these tests
hold the mechanics: every layer is reached, cached decoding agrees with teacher forcing, only
the prompt trains, checkpoints keep it, and eval reads it back.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic_tasks import register_keyword_task

from conftest import (
    DEEP_PROMPT_ARGS,
    T5_VOCAB,
    TINY_CHECKPOINT,
    TINY_LENGTHS,
    tiny_config,
    tiny_run_args,
    trained_arrays,
)
from prompt_transfer import cli
from prompt_transfer.configure import gin_files
from prompt_transfer.model import inference
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel, shift_right
from prompt_transfer.network import partitioning, t5
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import weights

# Where a model of 2 encoder and 2 decoder layers (both models here) keeps a deep prompt.
TWO_BY_TWO_PATHS = [f"encoder/layers_{i}/attention/prompt_prefix" for i in range(2)] + [
    f"decoder/layers_{i}/self_attention/prompt_prefix" for i in range(2)
]

DEEP = DEEP_PROMPT_ARGS


@pytest.fixture(scope="module")
def small():
    config = tiny_config()
    module = t5.T5(config)
    tokens = jnp.ones((1, 8), jnp.int32)
    network = nn.unbox(module.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
    deep = prompts.initial_deep_prompt(network, config, 3, seed=0, population=50)
    with_deep = prompts.with_deep_prompt(network, {k: jnp.asarray(v) for k, v in deep.items()})
    return EncoderDecoderModel(module), network, with_deep, deep


def test_every_self_attention_gets_its_own_keys_and_values(small):
    model, network, with_deep, deep = small
    assert sorted(deep) == sorted(TWO_BY_TWO_PATHS)
    assert all(v.shape == (2, 3, 16) for v in deep.values())
    x = jnp.asarray(np.random.default_rng(0).integers(3, 64, (2, 7)))
    y = jnp.asarray(np.random.default_rng(1).integers(3, 64, (2, 5)))
    plain = np.asarray(model.score(network, x, y))
    # Each layer's prefix on its own moves the scores: none of them is ignored.
    for path, value in deep.items():
        one = prompts.with_deep_prompt(network, {path: jnp.asarray(value)})
        assert np.abs(np.asarray(model.score(one, x, y)) - plain).max() > 1e-3, path


def test_cached_decoding_with_a_deep_prompt_agrees_with_teacher_forcing(small):
    model, _, with_deep, _ = small
    x = jnp.asarray(np.random.default_rng(2).integers(3, 64, (3, 7)))
    greedy = np.asarray(model.predict(with_deep, x, 6))
    logits = model.module.apply({"params": with_deep}, x, shift_right(jnp.asarray(greedy)))
    # Up to each row's EOS, every greedy token is the argmax of the full-sequence pass.
    for row, best in zip(greedy, np.asarray(logits.argmax(-1)), strict=True):
        end = list(row).index(1) + 1 if 1 in row else len(row)
        assert (row[:end] == best[:end]).all()


@pytest.fixture(scope="module")
def deep_run(anchors, tmp_path_factory):
    register_keyword_task(T5_VOCAB)
    model_dir = tmp_path_factory.mktemp("deep")
    steps = ["--gin.TRAIN_STEPS=20", "--gin.EVAL_PERIOD=20", "--gin.SAVE_PERIOD=10"]
    assert cli.main(["train", *tiny_run_args(model_dir, *steps, *DEEP)]) == 0
    return model_dir


def test_deep_prompt_run_trains_and_saves_only_the_prompt(deep_run):
    first, last = (
        trained_arrays(deep_run / "checkpoint_10"),
        trained_arrays(deep_run / "checkpoint_20"),
    )
    assert sorted(last) == sorted([prompts.PROMPT_PATH, *TWO_BY_TWO_PATHS])  # no frozen weight
    assert all(last[p].shape == (2, 5, 4) for p in TWO_BY_TWO_PATHS)  # 2 heads x 2 dims, P = 5
    assert all(not np.allclose(first[p], last[p]) for p in last)  # every part trained


def test_eval_and_infer_read_the_deep_prompt_back(deep_run, capsys):
    args = tiny_run_args(deep_run, *DEEP)
    assert cli.main(["eval", *args]) == 0
    report = json.loads((deep_run / "eval_validation_latest.json").read_text())
    last = json.loads((deep_run / "eval_history.jsonl").read_text().splitlines()[-1])
    assert report["step"] == last["step"] == 20 and report["results"] == last["results"]

    # infer's scores are those of the checkpoint's arrays, read here straight from orbax, and
    # differ from the same prompt without its prefixes (so the check could fail).
    inputs = deep_run / "inputs.txt"
    inputs.write_text("topic: apple lemon mango\ntopic: river ocean desert\n")
    capsys.readouterr()
    assert cli.main(["infer", *args, f"--gin.INFER_INPUT_FILE='{inputs}'"]) == 0
    out = capsys.readouterr().out.strip().split()[-1]
    scores = [json.loads(line)["scores"] for line in open(out)]
    config = gin_files.read_model_config("tiny", {"DROPOUT_RATE": 0.0})
    mesh = partitioning.make_mesh(1)
    module, _, network = weights.frozen_network(config, str(TINY_CHECKPOINT), mesh, 0)
    arrays = trained_arrays(deep_run / "checkpoint_20")
    plain = prompts.with_prompt(network, jnp.asarray(arrays.pop(prompts.PROMPT_PATH)))
    deep = prompts.with_deep_prompt(plain, {k: jnp.asarray(v) for k, v in arrays.items()})
    task, rows = inference.rows_from_file("test_keyword", str(inputs), TINY_LENGTHS)
    model = EncoderDecoderModel(module)
    expect = [r["scores"] for r in inference.predict(model, deep, task, rows, TINY_LENGTHS, 8)]
    without = [r["scores"] for r in inference.predict(model, plain, task, rows, TINY_LENGTHS, 8)]
    for got, want, other in zip(scores, expect, without, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
        assert max(abs(want[k] - other[k]) for k in want) > 1e-3


def test_a_frozen_deep_prompt_is_refused_in_one_line(anchors, tmp_path, capsys):
    register_keyword_task(T5_VOCAB)
    assert cli.main(["train", *tiny_run_args(tmp_path, "--gin.DEEP_PROMPT=True")]) == 2
    err = capsys.readouterr().err
    assert "leaves the deep prompt" in err and prompts.DEEP_REGEX in err and err.count("\n") == 1


def test_deep_prompt_steers_the_shipped_model_on_bbc_topic(tmp_path):
    """What the plain prompt cannot do on the shipped 3.6M model (issue 13): input-dependent
    predictions on BBC topic (5 classes, majority 27.5%), one evaluation after 400 steps.

    Margin, measured with the same settings (benchmarks/steer_deep.md, 2-core AMD EPYC): seeds
    0-2 at step 400: 73.5, 69.7, 74.9, every class predicted (this test's run gave 73.5 again);
    the plain prompt's best over 400 steps is 27.0-31.3, mostly one or two classes. The test
    asks for the majority + 25 points (52.5) and all five classes: 17 points spare.
    """
    # A fresh process, as a user runs it: the suite's tasks take the shipped model's vocabulary
    # (this test session binds them to T5's through $PROMPT_TRANSFER_VOCAB), on one CPU device
    # as measured (not the session's 8 simulated ones).
    env = {k: v for k, v in os.environ.items() if k not in ("PROMPT_TRANSFER_VOCAB", "XLA_FLAGS")}
    argv = [
        sys.executable,
        "-m",
        "prompt_transfer",
        "train",
        "--gin_file=experiments/deep_prompt_tuning_offline",
        f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.MIXTURE_OR_TASK_NAME='offline_bbc_topic'",
        "--gin.TRAIN_STEPS_RELATIVE=400",  # after the shipped model's own 8,128 steps
        "--gin.EVAL_PERIOD=400",
        "--gin.SAVE_PERIOD=400",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "eval_history.jsonl").read_text().splitlines()[-1])
    labels = record["labels"]["offline_bbc_topic"]
    predicted = record["predictions"]["offline_bbc_topic"]
    majority = 100 * max(labels.values()) / sum(labels.values())
    assert record["step"] == 8128 + 400 and record["value"] >= majority + 25, record
    assert all(predicted[label] > 0 for label in labels), predicted
