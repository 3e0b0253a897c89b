"""Pre-training recipe pieces: span corruption with the project's vocabulary, all parameters
trained, exported in bfloat16 and restored into the offline_small model."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_transfer import cli
from prompt_transfer.base.tf_import import import_seqio, import_tensorflow
from prompt_transfer.cli.jobs import train_main
from prompt_transfer.configure import gin_files
from prompt_transfer.data import offline_data, registry, vocab
from prompt_transfer.network import checkpoints, t5


def test_pretrain_steps_export_bf16_and_restore(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPT_TRANSFER_DATA", str(tmp_path / "offline"))
    seqio, tf = import_seqio(), import_tensorflow()
    texts = offline_data.corpus_texts()[:400]
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({"text": texts}),
        splits=("train",),
    )
    registry.register_span_corruption_task(
        "test_span", source, vocab.get_vocabulary(vocab.OFFLINE_VOCAB_PATH)
    )
    summary = train_main(
        [
            "--gin_file=experiments/pretrain_offline",
            f"--gin.MODEL_DIR={tmp_path / 'run'}",
            "--gin.MIXTURE_OR_TASK_NAME='test_span'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
            "--gin.BATCH_SIZE=8",
            "--gin.TRAIN_STEPS=3",
            "--gin.SAVE_PERIOD=3",
            "--gin.LOG_PERIOD=1",
        ]
    )
    assert summary["step"] == 3
    assert (
        cli.main(
            [
                "export",
                str(tmp_path / "run"),
                "--size",
                "offline_small",
                "--output",
                str(tmp_path / "export"),
                "--dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    config = gin_files.read_model_config(str(tmp_path / "export" / "model.gin"))
    module = t5.T5(config)
    abstract = t5.abstract_params(module)
    restored = checkpoints.restore_params(tmp_path / "export" / "checkpoint", abstract)
    trained = checkpoints.restore_params(tmp_path / "run", abstract)
    emb, trained_emb = (
        restored["token_embedder"]["embedding"],
        trained["token_embedder"]["embedding"],
    )
    assert emb.dtype == jnp.float32 and emb.shape == (8192, 128)
    np.testing.assert_array_equal(
        np.asarray(emb), np.asarray(trained_emb.astype(jnp.bfloat16), np.float32)
    )
    rows, step = checkpoints.describe(tmp_path / "export" / "checkpoint")
    assert step == 3 and all(dtype == "bfloat16" for name, _, dtype in rows if "kernel" in name)
    logits = module.apply({"params": restored}, jnp.asarray([[5, 6, 1]]), jnp.asarray([[0, 7]]))
    assert logits.shape == (1, 2, 8192) and np.isfinite(np.asarray(logits)).all()


def test_offline_pretraining_mixes_both_objectives():
    from prompt_transfer.data import batches

    mixture = batches.get_task("offline_pretraining")
    assert sorted(t.name for t in mixture.tasks) == ["offline_prefix_lm", "offline_span_corruption"]
    ds = batches.batched_dataset("offline_prefix_lm", "train", {"inputs": 32, "targets": 8}, 4, 0)
    batch = next(ds.as_numpy_iterator())
    assert (batch["encoder_input_tokens"] > 0).sum(1).min() >= 2  # a prefix and its EOS
    assert (batch["decoder_target_tokens"][:, -1] == 1).all()  # the continuation is trimmed


def _register_test_span(name="test_span_cache"):
    seqio, tf = import_seqio(), import_tensorflow()
    texts = offline_data.corpus_texts()[:300]
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({"text": texts}),
        splits=("train", "validation"),
    )
    registry.register_span_corruption_task(
        name, source, vocab.get_vocabulary(vocab.OFFLINE_VOCAB_PATH)
    )
    return name


def test_example_cache_holds_what_the_feature_converter_makes(tmp_path, monkeypatch):
    from prompt_transfer.data import batches

    monkeypatch.setenv("PROMPT_TRANSFER_DATA", str(tmp_path / "offline"))
    name, lengths = _register_test_span(), {"inputs": 32, "targets": 8}
    counts = batches.write_example_cache(name, tmp_path / "c.npz", lengths, passes=2, seed=5)
    assert counts["train"] == 2 * counts["validation"] > 0
    with np.load(tmp_path / "c.npz") as f:
        assert f["train/encoder_input_tokens"].dtype == np.uint16  # 8,100 ids fit
    cached = batches.read_example_cache(tmp_path / "c.npz")
    first = next(
        batches.batched_dataset(name, "train", lengths, 16, 5, num_epochs=1).as_numpy_iterator()
    )
    for key, value in first.items():
        np.testing.assert_array_equal(cached["train"][key][:16], value, err_msg=key)
    # The second pass has its own seed: other spans, other order.
    half = counts["train"] // 2
    assert not np.array_equal(
        cached["train"]["encoder_input_tokens"][:half],
        cached["train"]["encoder_input_tokens"][half:],
    )
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(batches.TaskError, match="cache-examples"):
        batches.read_example_cache(tmp_path / "bad.npz")


def test_pretrain_from_cache_without_tensorflow_exports_a_loadable_model(tmp_path, monkeypatch):
    """launch/pretrain_cached.py: the accelerator-host recipe; it keeps the network with the
    lowest validation loss and measures how much the decoder relies on the encoder."""
    import importlib.util
    import json

    from prompt_transfer.data import batches

    monkeypatch.setenv("PROMPT_TRANSFER_DATA", str(tmp_path / "offline"))
    name, lengths = _register_test_span(), {"inputs": 32, "targets": 8}
    batches.write_example_cache(name, tmp_path / "c.npz", lengths)
    spec = importlib.util.spec_from_file_location(
        "pretrain_cached", Path(__file__).resolve().parents[1] / "launch" / "pretrain_cached.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    argv = ["--cache", str(tmp_path / "c.npz"), "--output", str(out), "--batch-size", "8"]
    result = script.main([*argv, "--steps", "6", "--log-period", "2", "--warmup-steps", "2"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and result["steps"] == 6
    assert all(np.isfinite(r["val_loss"]) and "val_loss_other_input" in r for r in log)
    best = min(log, key=lambda r: r["val_loss"])
    assert result["saved_step"] == best["step"]
    rows, step = checkpoints.describe(out / "export" / "checkpoint")
    assert step == best["step"] and all(d == "bfloat16" for n, _, d in rows if "kernel" in n)
    config = gin_files.read_model_config(str(out / "export" / "model.gin"))
    params = checkpoints.restore_params(
        out / "export" / "checkpoint", t5.abstract_params(t5.T5(config))
    )
    assert np.isfinite(np.asarray(params["token_embedder"]["embedding"])).all()
    with pytest.raises(SystemExit, match="already exists"):
        script.main([*argv, "--steps", "1"])
