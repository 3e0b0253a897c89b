"""The shipped vocabulary and model: hash-checked, named by `shipped:`, and a damaged or
missing file is reported with the way to get it back."""

import shutil

import numpy as np
import pytest

from prompt_transfer import cli
from prompt_transfer.base import assets, errors
from prompt_transfer.configure import gin_files
from prompt_transfer.network import checkpoints, t5


@pytest.fixture
def assets_copy(tmp_path, monkeypatch):
    root = tmp_path / "assets"
    shutil.copytree(assets.ASSETS_DIR, root)
    monkeypatch.setattr(assets, "ASSETS_DIR", root)
    return root


def test_shipped_artifacts_match_their_manifest():
    assert assets.verify("offline_spm.model").is_file()
    assert (assets.verify("offline_t5") / "checkpoint" / "checkpoint").is_file()


def test_shipped_model_restores_by_name_and_is_the_size_it_says():
    config = gin_files.read_model_config(str(assets.ASSETS_DIR / "offline_t5" / "model.gin"))
    assert config == gin_files.read_model_config("offline_small")
    abstract = t5.abstract_params(t5.T5(config))
    params = checkpoints.restore_params("shipped:offline_t5", abstract)
    direct = checkpoints.restore_params(assets.ASSETS_DIR / "offline_t5" / "checkpoint", abstract)
    emb = np.asarray(params["token_embedder"]["embedding"])
    np.testing.assert_array_equal(emb, np.asarray(direct["token_embedder"]["embedding"]))
    assert emb.shape == (8192, 128) and emb.std() > 0.1  # trained weights, not zeros


def test_corrupt_file_is_named_with_the_fix(assets_copy):
    kernel = next((assets_copy / "offline_t5" / "checkpoint").glob("target.encoder.*/0.0"))
    data = bytearray(kernel.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    kernel.write_bytes(bytes(data))
    with pytest.raises(assets.AssetError, match=r"corrupt.*git checkout.*pretrain_offline\.sh"):
        assets.verify("offline_t5")
    with pytest.raises(assets.AssetError, match=kernel.parent.name):
        checkpoints.resolve_checkpoint("shipped:offline_t5")


def test_missing_file_and_unknown_artifact(assets_copy):
    (assets_copy / "offline_spm.model").unlink()
    with pytest.raises(assets.AssetError, match=r"offline_spm\.model is missing.*build-vocab"):
        assets.verify("offline_spm.model")
    with pytest.raises(assets.AssetError, match="no shipped artifact 'nope'"):
        assets.verify("nope")
    (assets_copy / assets.MANIFEST).unlink()
    with pytest.raises(assets.AssetError, match="SHA256SUMS is missing"):
        assets.verify("offline_t5")


def test_demo_refuses_a_damaged_model_before_any_work(assets_copy, tmp_path, capsys):
    (assets_copy / "offline_t5" / "model.gin").write_text("# edited\n")
    work = tmp_path / "demo"
    assert cli.main(["demo", "--work-dir", str(work)]) == errors.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.gin is corrupt" in err
    assert not work.exists()


def test_manifest_round_trip(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"123")
    (tmp_path / "y.txt").write_text("y")
    assets.write_manifest(tmp_path)
    assert assets.verify("a", tmp_path) == tmp_path / "a"
    (tmp_path / "a" / "x.bin").write_bytes(b"124")
    with pytest.raises(assets.AssetError, match="x.bin is corrupt"):
        assets.verify("a", tmp_path)


def test_build_vocab_rebuilds_the_shipped_file_and_records_it(assets_copy, capsys):
    """`prompt-transfer build-vocab` (the rebuild a damaged vocabulary's message names) writes
    the shipped file and enters its new SHA-256 in the manifest, so it verifies; the other
    files' lines are left as they were, so damage elsewhere is still found."""
    from prompt_transfer import cli

    manifest = (assets_copy / assets.MANIFEST).read_text().splitlines()
    (assets_copy / "offline_spm.model").write_bytes(b"damaged")
    assert cli.main(["build-vocab", "--size=500"]) == 0
    assert "recorded its SHA-256" in capsys.readouterr().out
    assert assets.verify("offline_spm.model").stat().st_size > 1000
    after = (assets_copy / assets.MANIFEST).read_text().splitlines()
    changed = [line for line in after if line not in manifest]
    assert [line.split("  ")[1] for line in changed] == ["offline_spm.model"]
    assert len(after) == len(manifest)
    assert assets.verify("offline_t5").is_dir()
