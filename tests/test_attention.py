"""Attention over source prompts (ATTEMPT; prompt/attention.py): each input's prompt is the
target prompt plus the sources weighted by a trained module, for plain and deep prompts."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, TINY_CHECKPOINT, tiny_config, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.configure import gin_files
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import checkpoints, t5
from prompt_transfer.prompt import attention, prompts
from prompt_transfer.transfer import library

CONFIG = tiny_config(emb_dim=6, head_dim=3, mlp_dim=8, num_decoder_layers=1)
WIDTH = prompts.deep_width(CONFIG)


@pytest.fixture(scope="module")
def small():
    module = t5.T5(CONFIG)
    tokens = jnp.ones((1, 5), jnp.int32)
    network = nn.unbox(module.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
    rng = np.random.default_rng(0)
    sources = rng.normal(size=(3, 4, CONFIG.emb_dim + WIDTH)).astype(np.float32)
    x = jnp.asarray(rng.integers(3, 64, (4, 5)))
    y = jnp.asarray(rng.integers(3, 64, (4, 3)))
    return EncoderDecoderModel(module), network, sources, x, y


def _mixing(model):
    """The model of an attention run: its kind mixes each input's prompt (prompt/kinds.py)."""
    return dataclasses.replace(model, kind=attention.KIND)


def _with_pieces(network, target, pieces):
    return prompts.with_deep_prompt(prompts.join(network, CONFIG, target), pieces.flat())


def _forced(pieces, j):
    """The pieces with the module's output fixed so that source j takes all the weight: the
    layer norm's scale 0 and its bias v with keys @ v = 1e4 at j and 0 elsewhere."""
    keys = pieces.sources[..., : CONFIG.emb_dim].max(1)
    v = np.linalg.lstsq(keys, 1e4 * np.eye(len(keys))[j], rcond=None)[0]
    module = dict(pieces.module, **{"layer_norm/scale": np.zeros(CONFIG.emb_dim, np.float32)})
    module["layer_norm/bias"] = v.astype(np.float32)
    return attention.Pieces(pieces.sources, pieces.temperature, module)


@pytest.mark.parametrize("deep", [True, False])
def test_each_input_gets_the_target_plus_its_weighted_sources(small, deep):
    model, network, sources, x, y = small
    sources = sources if deep else sources[..., : CONFIG.emb_dim]
    pieces = attention.start(sources, CONFIG.emb_dim, hidden=5, temperature=0.5, seed=0)
    target = np.random.default_rng(1).normal(size=sources.shape[1:]).astype(np.float32)
    params = _with_pieces(network, target, pieces)
    network_alone, _ = prompts.split_prompt(params)
    _, mixed, weights = attention.compose(params, network_alone, x, CONFIG)
    weights = np.asarray(weights)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    assert np.ptp(weights, axis=0).max() > 1e-3  # the weights depend on the input
    # Each input scores as if its own mixed prompt were the run's one prompt, in every verb
    # (rank classification repeats each input's deep prompt over the candidates).
    candidates = jnp.asarray(np.random.default_rng(2).integers(3, 64, (2, 3)))
    scores = np.asarray(_mixing(model).score(params, x, y))
    ranked = np.asarray(_mixing(model).rank_classify(params, x, candidates))
    for b in range(len(x)):
        own = target + np.tensordot(weights[b], sources, axes=1)
        np.testing.assert_allclose(np.asarray(mixed[b]), own[:, : CONFIG.emb_dim], rtol=1e-5)
        alone = prompts.join(network, CONFIG, own)
        one = slice(b, b + 1)
        np.testing.assert_allclose(scores[b], model.score(alone, x[one], y[one])[0], rtol=1e-4)
        np.testing.assert_allclose(
            ranked[b], model.rank_classify(alone, x[one], candidates)[0], rtol=1e-4
        )


def test_a_source_given_all_the_weight_is_that_source(small):
    model, network, sources, x, y = small
    pieces = attention.start(sources, CONFIG.emb_dim, hidden=5, temperature=0, seed=0)
    zero = np.zeros(sources.shape[1:], np.float32)
    for j in range(len(sources)):
        params = _with_pieces(network, zero, _forced(pieces, j))
        _, _, weights = attention.compose(params, prompts.split_prompt(params)[0], x, CONFIG)
        np.testing.assert_allclose(np.asarray(weights)[:, j], 1.0, atol=1e-6)
        np.testing.assert_allclose(
            _mixing(model).score(params, x, y),
            model.score(prompts.join(network, CONFIG, sources[j]), x, y),
            rtol=1e-5,
        )
        tokens = _mixing(model).predict(params, x, max_length=4)
        alone = model.predict(prompts.join(network, CONFIG, sources[j]), x, max_length=4)
        np.testing.assert_array_equal(tokens, alone)


# ---------------------------------------------------------------------------------------------
# End to end on the tiny model: gin/transfer/attention.gin.


@pytest.fixture(scope="module")
def lib(anchors, tmp_path_factory):
    """Two sources of the tiny model and the target's task embedding."""
    for name in ("test_keyword", "source_a", "source_b"):
        register_keyword_task(T5_VOCAB, name=name)
    network = checkpoints.restore_params(
        TINY_CHECKPOINT, t5.abstract_params(t5.T5(gin_files.read_model_config("tiny")))
    )
    fingerprint = library.model_fingerprint(network)
    store = library.Library(tmp_path_factory.mktemp("library"))
    rng = np.random.default_rng(0)
    target = rng.normal(size=(5, 4)).astype(np.float32)
    for task, prompt in [("source_a", target + 0.1), ("source_b", -target)]:
        store.add(prompt, task=task, model="tiny", model_fingerprint=fingerprint)
    embedding = store.add(
        target, task="test_keyword", model="tiny", model_fingerprint=fingerprint,
        kind="task_embedding",
    )  # fmt: skip
    return store, embedding.id


def _args(run, lib, *extra):
    store, embedding = lib
    return tiny_run_args(
        run,
        "--gin_file=transfer/attention.gin",
        f"--gin.LIBRARY='{store.root}'",
        f"--gin.TARGET_EMBEDDING='{embedding}'",
        "--gin.TOP_K=2",
        "--gin.ATTENTION_HIDDEN=3",
        "--gin.TRAIN_STEPS=4",
        "--gin.SAVE_PERIOD=2",
        "--gin.EVAL_PERIOD=2",
        "--gin.LEARNING_RATE=0.3",
        f"--gin.LIBRARY_DIR='{run}-library'",
        *extra,
    )


def _trained(step_dir) -> dict:
    tree = ocp.PyTreeCheckpointer().restore(step_dir / "state")
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {k.removeprefix("trainable/"): v for k, v in flat.items() if k.startswith("trainable/")}


def test_an_attention_run_trains_its_module_beside_frozen_sources(lib, tmp_path, capsys):
    store, _ = lib
    run = tmp_path / "run"
    assert cli.main(["train", *_args(run, lib)]) == 0
    report = json.loads((run / "transfer" / "report.json").read_text())
    assert report["strategy"] == "attention" and report["sources"] == ["source_a", "source_b"]
    entry = {e.task: e for e in store.entries() if e.kind != "task_embedding"}
    pieces = attention.load(run)
    expect = np.stack([store.prompt(entry[t]) for t in report["sources"]])
    np.testing.assert_array_equal(pieces.sources, expect)
    np.testing.assert_array_equal(np.load(run / "transfer" / "initial_prompt.npy"), expect[0])

    # Only what trains is in a checkpoint: the target prompt and the module, which moved.
    trained = _trained(run / "checkpoint_4")
    module = {k: v for k, v in trained.items() if k.startswith(attention.ATTENTION_PATH)}
    assert set(trained) == {prompts.PROMPT_PATH, *module}
    assert {k.removeprefix(attention.ATTENTION_PATH + "/") for k in module} == set(pieces.module)
    assert not np.allclose(module[f"{attention.ATTENTION_PATH}/down/kernel"],
                           pieces.module["down/kernel"])  # fmt: skip

    # Its library entry is the target plus the sources at their mean weights on validation.
    weights = json.loads((run / "transfer" / "attention_weights.json").read_text())
    mean = np.asarray(list(weights["mean_weights"].values()))
    assert list(weights["mean_weights"]) == report["sources"] and mean.sum() == pytest.approx(1)
    own = library.Library(f"{run}-library")
    (added,) = own.entries()
    typical = trained[prompts.PROMPT_PATH] + np.tensordot(mean, expect, axes=1)
    np.testing.assert_allclose(own.prompt(added), typical, atol=1e-3)

    # eval reads the sources back from the run and scores what training last scored.
    assert cli.main(["eval", *_args(run, lib)]) == 0
    evaluated = json.loads((run / "eval_validation_latest.json").read_text())
    last = json.loads((run / "eval_history.jsonl").read_text().splitlines()[-1])
    assert evaluated["step"] == last["step"] == 4
    assert evaluated["results"] == last["results"]

    # No prompt file can hold the run: an export is refused in one line.
    capsys.readouterr()
    out = tmp_path / "prompt.npy"
    assert cli.main(["library", "export", "--run", str(run), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an attention run" in err[0] and not out.exists(), err
    score = ["score", "--checkpoint", str(TINY_CHECKPOINT), "--size", "tiny", "--inputs", "a",
             "--targets", "b", "--prompt", str(run)]  # fmt: skip
    assert cli.main(score) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an attention run" in err[0] and "eval" in err[0], err

    # Stopped at step 2 and resumed, a run ends where the straight one did, bit for bit.
    halves = tmp_path / "halves"
    assert cli.main(["train", *_args(halves, lib, "--gin.TRAIN_STEPS=2")]) == 0
    assert cli.main(["train", *_args(halves, lib), "--resume"]) == 0
    again = _trained(halves / "checkpoint_4")
    for name, value in trained.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_an_attention_run_must_train_its_module_and_keep_its_sources(lib, tmp_path, capsys):
    for trainable in [prompts.PROMPT_PATH, ".*"]:
        args = _args(tmp_path / "run", lib, f"--gin.TRAINABLE='{trainable}'")
        assert cli.main(["train", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "strategy 'attention' trains its module" in err[0], err
        assert f"use TRAINABLE='{attention.TRAINABLE}'" in err[0]
    assert not (tmp_path / "run" / "checkpoint_4").exists()
