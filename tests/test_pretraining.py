"""Pre-training recipe pieces: span corruption with the project's vocabulary, all parameters
trained, exported in bfloat16 and restored into the offline_small model."""

import jax.numpy as jnp
import numpy as np

from prompt_transfer import checkpoints, cli, gin_files, offline_data, registry, t5, train, vocab
from prompt_transfer.tf_import import import_seqio, import_tensorflow


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
    summary = train.main(
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
