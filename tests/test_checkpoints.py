"""Reading real T5X checkpoints, sharded restore, orbax, the legacy writer and bad input."""

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util
from jax.sharding import PartitionSpec

from conftest import ANCHOR_TINY_CHECKPOINT as TINY_CHECKPOINT
from prompt_transfer.configure import gin_files
from prompt_transfer.network import checkpoints, partitioning, t5


@pytest.fixture(scope="module")
def tiny():
    module = t5.T5(gin_files.read_model_config("tiny"))
    return module, t5.abstract_params(module)


def _read_zarr_independently(directory: Path) -> np.ndarray:
    """A zarr v2 array from its chunk files with gzip and NumPy alone (no tensorstore)."""
    meta = json.loads((directory / ".zarray").read_text())
    assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C"
    shape, chunks, dtype = meta["shape"], meta["chunks"], np.dtype(meta["dtype"])
    out = np.zeros(shape, dtype)
    grid = [range(-(-s // c)) for s, c in zip(shape, chunks, strict=True)]
    for idx in np.ndindex(*[len(g) for g in grid]):
        chunk = np.frombuffer(
            gzip.decompress((directory / ".".join(map(str, idx))).read_bytes()), dtype
        ).reshape(chunks)
        region = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape, strict=True)
        )
        out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def _reference_values(ckpt: Path) -> dict:
    raw = serialization.msgpack_restore((ckpt / "checkpoint").read_bytes())
    flat = traverse_util.flatten_dict(
        raw["optimizer"]["target"],
        sep="/",
        is_leaf=lambda _, x: isinstance(x, dict) and "kvstore" in x,
    )
    return {
        name: _read_zarr_independently(ckpt / leaf["kvstore"]["path"])
        if isinstance(leaf, dict)
        else np.asarray(leaf)
        for name, leaf in flat.items()
    }


def test_anchor_checkpoint_loads_exactly_and_runs(anchors, tiny):
    module, abstract = tiny
    params = checkpoints.restore_params(TINY_CHECKPOINT, abstract)
    restored = traverse_util.flatten_dict(params, sep="/")
    reference = _reference_values(TINY_CHECKPOINT)
    assert set(restored) == set(reference) and len(restored) == 52
    for name, value in reference.items():
        np.testing.assert_array_equal(np.asarray(restored[name]), value, err_msg=name)
    assert t5.param_count(params) == sum(v.size for v in reference.values())
    # The checkpoint's own embedding, not a fresh init: it is trained, so rows differ from N(0,1).
    logits = module.apply(
        {"params": params}, jnp.asarray([[37, 8, 59, 1, 0]]), jnp.asarray([[0, 2163, 1]])
    )
    assert logits.shape == (1, 3, 32128) and np.isfinite(np.asarray(logits)).all()


def test_describe_lists_tree_and_step(anchors):
    rows, step = checkpoints.describe(TINY_CHECKPOINT / "checkpoint")
    assert step == 3
    table = {name: (shape, dtype) for name, shape, dtype in rows}
    assert table["token_embedder/embedding"] == ((32128, 4), "float32")
    assert table["encoder/relpos_bias/rel_embedding"] == ((2, 4), "float32")


def test_restore_onto_8_device_mesh_follows_logical_rules(anchors, tiny):
    _, abstract = tiny
    assert jax.device_count() == 8
    mesh = partitioning.make_mesh(num_partitions=4)
    sharded = checkpoints.restore_params(TINY_CHECKPOINT, abstract, mesh=mesh)
    single = checkpoints.restore_params(TINY_CHECKPOINT, abstract)
    flat = traverse_util.flatten_dict(sharded, sep="/")
    expect = {
        "token_embedder/embedding": PartitionSpec("model", None),  # vocab -> model
        "encoder/layers_0/attention/query/kernel": PartitionSpec(None, "model"),  # joined_kv
        "encoder/layers_0/attention/out/kernel": PartitionSpec("model", None),
        "decoder/layers_1/mlp/wi_0/kernel": PartitionSpec(None, "model"),  # mlp -> model
        "decoder/logits_dense/kernel": PartitionSpec(None, "model"),
        "encoder/encoder_norm/scale": PartitionSpec(None),
    }
    for name, spec in expect.items():
        assert flat[name].sharding.spec == spec, name
    emb = flat["token_embedder/embedding"]
    assert {s.data.shape for s in emb.addressable_shards} == {(32128 // 4, 4)}
    for name, value in traverse_util.flatten_dict(single, sep="/").items():
        np.testing.assert_array_equal(np.asarray(flat[name]), np.asarray(value), err_msg=name)


def test_restore_casts_dtype(anchors, tiny):
    _, abstract = tiny
    params = checkpoints.restore_params(TINY_CHECKPOINT, abstract, dtype=jnp.bfloat16)
    reference = _reference_values(TINY_CHECKPOINT)
    kernel = params["decoder"]["logits_dense"]["kernel"]
    assert kernel.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(kernel), reference["decoder/logits_dense/kernel"].astype(jnp.bfloat16)
    )


def test_wrong_size_names_parameter_and_both_shapes(anchors, tiny):
    module, _ = tiny
    wider = t5.T5(dataclasses.replace(module.config, emb_dim=8))  # the checkpoint's E is 4
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"decoder/decoder_norm/scale .* shape \(4,\) .* expects \(8,\)",
    ):
        checkpoints.restore_params(TINY_CHECKPOINT, t5.abstract_params(wider))


def test_missing_and_truncated_files_are_named(anchors, tiny, tmp_path):
    _, abstract = tiny
    with pytest.raises(checkpoints.CheckpointError, match="not found: .*nowhere"):
        checkpoints.restore_params(tmp_path / "nowhere", abstract)

    ckpt = tmp_path / "checkpoint_3"
    shutil.copytree(TINY_CHECKPOINT, ckpt)
    index = (ckpt / "checkpoint").read_bytes()
    (ckpt / "checkpoint").write_bytes(index[: len(index) // 2])
    with pytest.raises(
        checkpoints.CheckpointError, match=r"index .*checkpoint_3/checkpoint is truncated"
    ):
        checkpoints.restore_params(ckpt, abstract)

    (ckpt / "checkpoint").write_bytes(index)
    chunk = ckpt / "target.decoder.logits_dense.kernel" / "0.3"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(checkpoints.CheckpointError, match="decoder/logits_dense/kernel"):
        checkpoints.restore_params(ckpt, abstract)

    shutil.rmtree(ckpt / "target.encoder.layers_1.mlp.wo.kernel")
    with pytest.raises(checkpoints.CheckpointError, match="encoder/layers_1/mlp/wo/kernel"):
        checkpoints.restore_params(ckpt, abstract)


def test_relative_paths_work(anchors, tiny, tmp_path, monkeypatch):
    import os

    _, abstract = tiny
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(TINY_CHECKPOINT, tmp_path)
    assert relative.startswith("..")
    params = checkpoints.restore_params(relative, abstract)
    checkpoints.save_legacy_checkpoint(jax.tree.map(np.asarray, params), "out/checkpoint_3")
    again = checkpoints.restore_params("out/checkpoint_3", abstract)
    np.testing.assert_array_equal(
        np.asarray(again["decoder"]["logits_dense"]["kernel"]),
        np.asarray(params["decoder"]["logits_dense"]["kernel"]),
    )


def test_model_directory_resolves_to_latest_step(anchors, tmp_path):
    for step in (3, 12):
        shutil.copytree(TINY_CHECKPOINT, tmp_path / f"checkpoint_{step}")
    assert checkpoints.resolve_checkpoint(tmp_path) == (str(tmp_path / "checkpoint_12"), "legacy")


def test_legacy_writer_round_trips_in_t5x_layout(anchors, tiny, tmp_path):
    _, abstract = tiny
    params = checkpoints.restore_params(TINY_CHECKPOINT, abstract)
    out = checkpoints.save_legacy_checkpoint(
        jax.tree.map(np.asarray, params), tmp_path / "checkpoint_7", step=7
    )
    index = serialization.msgpack_restore((out / "checkpoint").read_bytes())
    assert index["version"] == 3 and int(index["optimizer"]["state"]["step"]) == 7
    spec = index["optimizer"]["target"]["token_embedder"]["embedding"]
    assert spec["kvstore"] == {"driver": "gfile", "path": "target.token_embedder.embedding"}
    again = checkpoints.restore_params(out, abstract)
    for name, value in _reference_values(TINY_CHECKPOINT).items():
        np.testing.assert_array_equal(
            np.asarray(traverse_util.flatten_dict(again, sep="/")[name]), value
        )
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_7"]  # no temporary left


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="Object"):  # fails after the zarr arrays were written
        checkpoints.save_legacy_checkpoint(
            {"a": {"kernel": np.ones((2, 2))}, "b": object()}, tmp_path / "checkpoint_1"
        )
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "checkpoint_2").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="already exists"):
        checkpoints.save_legacy_checkpoint(
            {"a": {"kernel": np.ones((2, 2))}}, tmp_path / "checkpoint_2"
        )


def test_orbax_checkpoint_in_t5x_layout_restores_sharded(anchors, tiny, tmp_path):
    import orbax.checkpoint as ocp

    _, abstract = tiny
    params = checkpoints.restore_params(TINY_CHECKPOINT, abstract)
    ocp.PyTreeCheckpointer().save(
        tmp_path / "checkpoint_3" / "state",
        {"target": params, "state": {"step": np.asarray(3, np.int32)}},
    )
    mesh = partitioning.make_mesh(num_partitions=2)
    restored = checkpoints.restore_params(
        tmp_path / "checkpoint_3", abstract, mesh=mesh, dtype=jnp.bfloat16
    )
    emb = restored["token_embedder"]["embedding"]
    assert emb.sharding.spec == PartitionSpec("model", None) and emb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(emb), np.asarray(params["token_embedder"]["embedding"], jnp.bfloat16)
    )
    rows, _ = checkpoints.describe(tmp_path / "checkpoint_3")
    assert ("decoder/logits_dense/kernel", (4, 32128), "float32") in rows


def test_gcs_paths_map_to_tensorstore_gcs_driver():
    kv = checkpoints._absolute_kvstore(
        {"driver": "gfile", "path": "target.encoder.x.kernel"},
        "gs://bucket/models/t5/checkpoint_100",
    )
    assert kv == {
        "driver": "gcs",
        "bucket": "bucket",
        "path": "models/t5/checkpoint_100/target.encoder.x.kernel",
    }
