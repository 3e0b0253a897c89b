"""Deep prompts through the library and transfer: stored whole, retrieved and averaged whole
(the wide form), and placed whole in the target run's layers."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, tiny_config, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.configure import gin_files
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import t5
from prompt_transfer.prompt import prompts
from prompt_transfer.transfer import initial, library, retrieval

CONFIG = tiny_config(emb_dim=6, head_dim=3, mlp_dim=8, num_decoder_layers=1)
WIDTH = 3 * 2 * 2 * 3  # 3 self-attentions x (keys, values) x 2 heads x 3 dims


def _deep(seed, length=4):
    rng = np.random.default_rng(seed)
    prompt = rng.normal(size=(length, CONFIG.emb_dim)).astype(np.float32)
    shape = (2, length, CONFIG.num_heads * CONFIG.head_dim)
    deep = {p: rng.normal(size=shape).astype(np.float32) for p in prompts.deep_prefix_paths(CONFIG)}
    return prompt, deep


def test_the_wide_form_holds_every_layer_and_joins_like_its_parts():
    prompt, deep = _deep(0)
    wide = prompts.widen(prompt, deep, CONFIG)
    assert wide.shape == (4, CONFIG.emb_dim + WIDTH) == (4, 6 + prompts.deep_width(CONFIG))
    back, back_deep = prompts.narrow(wide, CONFIG)
    np.testing.assert_array_equal(back, prompt)
    assert sorted(back_deep) == sorted(deep)
    for path in deep:
        np.testing.assert_array_equal(back_deep[path], deep[path])
    # Each row of the wide form is one prompt position: reordering rows reorders positions in
    # the input prompt and in every layer alike (what length fits and averages rely on).
    _, flipped = prompts.narrow(wide[::-1], CONFIG)
    for path in deep:
        np.testing.assert_array_equal(flipped[path], deep[path][:, ::-1])

    module = t5.T5(CONFIG)
    tokens = jnp.ones((1, 5), jnp.int32)
    network = nn.unbox(module.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
    joined = prompts.join(network, CONFIG, wide)
    by_parts = prompts.with_deep_prompt(prompts.with_prompt(network, jnp.asarray(prompt)), deep)
    x = jnp.asarray(np.random.default_rng(1).integers(3, 64, (2, 5)))
    y = jnp.asarray(np.random.default_rng(2).integers(3, 64, (2, 3)))
    model = EncoderDecoderModel(module)
    np.testing.assert_allclose(model.score(joined, x, y), model.score(by_parts, x, y), rtol=1e-6)
    only_input = model.score(prompts.join(network, CONFIG, prompt), x, y)
    assert np.abs(np.asarray(only_input) - np.asarray(model.score(joined, x, y))).max() > 1e-3
    np.testing.assert_array_equal(prompts.wide_of(joined, CONFIG), wide)
    with pytest.raises(prompts.PromptError, match="width 7 fits neither"):
        prompts.narrow(np.zeros((4, 7)), CONFIG)


def test_the_library_keeps_the_deep_part_beside_the_prompt(tmp_path):
    lib = library.Library(tmp_path)
    prompt, deep = _deep(0)
    wide = prompts.widen(prompt, deep, CONFIG)
    entry = lib.add(prompt, deep=wide[:, 6:], task="a", model="m", model_fingerprint="f")
    assert (entry.embed_dim, entry.deep_width) == (6, WIDTH)
    np.testing.assert_array_equal(lib.prompt(entry), prompt)  # what export and PROMPT_FILE take
    np.testing.assert_array_equal(lib.prompt(entry, deep=True), wide)
    # The same input prompt with other prefixes is another entry, not "already stored".
    other = lib.add(prompt, deep=wide[:, 6:] + 1, task="a", model="m", model_fingerprint="f")
    assert other.id != entry.id and len(lib.entries()) == 2
    _, both = lib.load(deep=True)
    assert both.shape == (2, 4, 6 + WIDTH)

    plain = lib.add(prompt + 1, task="b", model="m", model_fingerprint="f")
    with pytest.raises(library.LibraryError, match="input prompt only"):
        lib.prompt(plain, deep=True)
    with pytest.raises(library.LibraryError, match=r"\[P, W\] with the prompt's P=4"):
        lib.add(prompt, deep=wide[:3, 6:], task="c", model="m", model_fingerprint="f")

    np.save(tmp_path / entry.id / "deep.npy", wide[:, 6:] * 2)  # bit rot in the deep part
    with pytest.warns(UserWarning, match=f"{entry.id} is damaged: .*deep.npy does not hold"):
        good, _ = lib.load([entry, other], deep=True)
    assert [e.id for e in good] == [other.id]
    np.testing.assert_array_equal(lib.prompt(entry), prompt)  # the input prompt is intact


def test_deep_targets_retrieve_and_average_whole_deep_prompts(tmp_path):
    lib = library.Library(tmp_path)
    target, target_deep = _deep(0)
    near, far = _deep(1), _deep(2)
    wide = lambda p, d: prompts.widen(p, d, CONFIG)
    add = lambda p, d, task, **kw: lib.add(
        p, deep=wide(p, d)[:, 6:], task=task, model="m", model_fingerprint="f", **kw
    )
    add(target + 0.05 * near[0], target_deep, "near")
    add(*far, "far")
    lib.add(target, task="plain_twin", model="m", model_fingerprint="f")  # no deep part
    embedding = add(target, target_deep, "t", kind="task_embedding")
    init = initial.TransferInit(
        strategy="top_k_average", library=str(tmp_path), target_embedding=embedding.id, top_k=2
    )
    got, report = initial.initial_prompt(init, 4, 6, "f", "t", deep_width=WIDTH)
    assert got.shape == (4, 6 + WIDTH) and report["sources"][0] == "near"
    assert "plain_twin" not in report["sources"]  # an input prompt alone cannot start a deep run
    w = np.clip(report["similarities"], 0, None) / np.clip(report["similarities"], 0, None).sum()
    sources = {"near": wide(target + 0.05 * near[0], target_deep), "far": wide(*far)}
    expect = sum(wi * sources[s] for wi, s in zip(w, report["sources"], strict=True))
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    _, got_deep = prompts.narrow(got, CONFIG)
    assert all(np.abs(got_deep[p]).max() > 0 for p in got_deep)  # every layer was averaged

    # A plain target may still start from a deep source's input prompt.
    plain_embedding = lib.add(target, task="u", model="m", model_fingerprint="f", kind="x")
    plain_init = initial.TransferInit(
        strategy="top_1", library=str(tmp_path), target_embedding=plain_embedding.id
    )
    got_plain, report = initial.initial_prompt(plain_init, 4, 6, "f", "u")
    assert got_plain.shape == (4, 6) and report["chosen"] in {"near", "plain_twin", "t"}
    with pytest.raises(retrieval.TransferError, match=f"deep width {WIDTH + 1}"):
        initial.initial_prompt(init, 4, 6, "f", "t", deep_width=WIDTH + 1)


def test_compose_joins_and_sums_whole_deep_prompts(tmp_path):
    """compose on deep sub-tasks works on their wide forms: joined along the sequence or summed,
    every layer's keys and values move with the input prompt; a plain target composes the
    same entries' input prompts alone."""
    lib, wide, plain = library.Library(tmp_path), {}, {}
    for seed, task in [(1, "domain"), (2, "sentiment")]:
        plain[task], deep = _deep(seed, length=2)
        wide[task] = prompts.widen(plain[task], deep, CONFIG)
        lib.add(plain[task], deep=wide[task][:, 6:], task=task, model="m", model_fingerprint="f")
    compose = lambda how, length, deep_width=WIDTH, **kw: initial.initial_prompt(  # noqa: E731
        initial.TransferInit(
            strategy="compose",
            library=str(tmp_path),
            compose_sources=("domain", "sentiment"),
            compose_how=how,
            **kw,
        ),
        length,
        6,
        "f",
        "t",
        deep_width=deep_width,
    )
    got, report = compose("concat", 4)
    assert report == {"sources": ["domain", "sentiment"], "how": "concat"}
    np.testing.assert_array_equal(got, np.concatenate([wide["domain"], wide["sentiment"]]))
    got, report = compose("weighted_sum", 2, compose_weights=(1.0, 3.0))
    assert report["weights"] == [0.25, 0.75]
    domain, sentiment = (wide[t].astype(np.float64) for t in ("domain", "sentiment"))
    np.testing.assert_allclose(
        got, (0.25 * domain + 0.75 * sentiment).astype(np.float32), rtol=1e-6
    )
    _, got_deep = prompts.narrow(got, CONFIG)
    assert all(np.abs(got_deep[p]).max() > 0 for p in got_deep)  # every layer was summed
    got, _ = compose("concat", 4, deep_width=0)
    np.testing.assert_array_equal(got, np.concatenate([plain["domain"], plain["sentiment"]]))


def _trained_arrays(step_dir) -> dict:
    tree = ocp.PyTreeCheckpointer().restore(step_dir / "state")
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {k.removeprefix("trainable/"): v for k, v in flat.items() if k.startswith("trainable/")}


def test_a_deep_source_run_joins_the_library_and_starts_a_deep_target(anchors, tmp_path):
    register_keyword_task(T5_VOCAB)
    lib_dir = tmp_path / "library"
    common = tiny_run_args(
        None,  # each run names its own MODEL_DIR
        "--gin.DEEP_PROMPT=True",
        f"--gin.TRAINABLE='{prompts.PROMPT_PATH}|{prompts.DEEP_REGEX}'",
        "--gin.train_state.OptimizerConfig.name='adam'",
        "--gin.EVAL_PERIOD=0",
    )
    source = [
        "train",
        *common,
        f"--gin.MODEL_DIR='{tmp_path / 'source'}'",
        "--gin.TRAIN_STEPS=6",
        "--gin.LEARNING_RATE=0.03",
        f"--gin.LIBRARY_DIR='{lib_dir}'",
    ]
    assert cli.main(source) == 0
    (entry,) = library.Library(lib_dir).entries()
    config = gin_files.read_model_config("tiny")
    assert entry.deep_width == prompts.deep_width(config) > 0
    stored = library.Library(lib_dir).prompt(entry, deep=True)
    trained = _trained_arrays(tmp_path / "source" / "checkpoint_6")
    source_wide = prompts.widen(trained.pop(prompts.PROMPT_PATH), trained, config)
    np.testing.assert_allclose(stored, source_wide, rtol=1e-6)

    # The target starts from the entry: after one step at a negligible rate, its input prompt
    # and every layer's prefix still equal the source's (the transfer placed all of them).
    target = [
        "train",
        *common,
        "--gin_file=transfer/single_source.gin",
        f"--gin.MODEL_DIR='{tmp_path / 'target'}'",
        f"--gin.LIBRARY='{lib_dir}'",
        f"--gin.SOURCE_PROMPT='{entry.id}'",
        "--gin.TRAIN_STEPS=1",
        "--gin.SAVE_PERIOD=1",
        "--gin.LEARNING_RATE=1e-7",
    ]
    assert cli.main(target) == 0
    started = _trained_arrays(tmp_path / "target" / "checkpoint_1")
    got = prompts.widen(started.pop(prompts.PROMPT_PATH), started, config)
    np.testing.assert_allclose(got, stored, atol=1e-5)
    # A plain run takes the deep entry's input prompt alone.
    plain = [a for a in target if "DEEP" not in a and "TRAINABLE" not in a and "MODEL_DIR" not in a]
    assert cli.main([*plain, f"--gin.MODEL_DIR='{tmp_path / 'plain'}'"]) == 0
    started = _trained_arrays(tmp_path / "plain" / "checkpoint_1")
    assert list(started) == [prompts.PROMPT_PATH]
    np.testing.assert_allclose(started[prompts.PROMPT_PATH], stored[:, : config.emb_dim], atol=1e-5)


def test_library_rank_and_list_treat_deep_entries_whole(tmp_path, capsys):
    lib = library.Library(tmp_path)
    target, target_deep = _deep(0)
    wide = prompts.widen(target, target_deep, CONFIG)
    # "near" shares the target's deep part but not its input prompt; "far" the reverse: in the
    # wide form (mostly deep columns) near ranks first, on input prompts alone far would.
    far_deep = _deep(5)[1]
    add = lambda p, d, task, **kw: lib.add(
        p,
        deep=prompts.widen(p, d, CONFIG)[:, 6:],
        task=task,
        model="m",
        model_fingerprint="f",
        **kw,
    )
    add(-target, target_deep, "near")
    add(target, far_deep, "far")
    embedding = add(target, target_deep, "t", kind="task_embedding")
    assert cli.main(["library", "rank", embedding.id, "--library", str(tmp_path)]) == 0
    ranked = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert ranked == ["near", "far"]
    np.testing.assert_array_equal(lib.prompt(embedding, deep=True), wide)
    assert cli.main(["library", "list", "--library", str(tmp_path)]) == 0
    assert f"4x6+{WIDTH}" in capsys.readouterr().out


def test_an_input_metric_ranks_deep_sources_by_their_input_prompts_alone(tmp_path):
    """`input_cosine_avg_tokens` (the study's best predictor on the shipped model) compares the
    input prompts; the wide form's keys and values, which outvote them, do not count."""
    lib = library.Library(tmp_path)
    target, target_deep = _deep(0)
    other, other_deep = _deep(1)
    wide = lambda p, d: prompts.widen(p, d, CONFIG)
    add = lambda p, d, task, **kw: lib.add(
        p, deep=wide(p, d)[:, 6:], task=task, model="m", model_fingerprint="f", **kw
    )
    add(target, other_deep, "same_input")  # the target's input prompt, other keys and values
    add(other, target_deep, "same_deep")  # the target's keys and values, another input prompt
    embedding = add(target, target_deep, "t", kind="task_embedding")
    first = {}
    for metric in ("cosine_avg_tokens", "input_cosine_avg_tokens"):
        init = initial.TransferInit(
            strategy="top_1",
            library=str(tmp_path),
            target_embedding=embedding.id,
            metric=metric,
        )
        got, report = initial.initial_prompt(init, 4, 6, "f", "t", deep_width=WIDTH)
        assert got.shape == (4, 6 + WIDTH)  # the whole deep prompt moves either way
        first[metric] = report["sources"][0]
    assert first == {"cosine_avg_tokens": "same_deep", "input_cosine_avg_tokens": "same_input"}


def test_retrieval_by_what_training_added_subtracts_the_shared_start(tmp_path):
    """trained_blocks_cosine_avg_tokens (the flow's RETRIEVAL_METRIC): every prompt minus the
    start they all trained from, each layer's keys and values weighed like the input prompt.
    Here the start dominates the raw prompts, so a raw cosine ranks the source that trained
    against the target's direction first; what training added ranks the other."""
    from prompt_transfer.transfer import similarity, views

    lib = library.Library(tmp_path)
    rng = np.random.default_rng(3)
    start = 20 * prompts.widen(*_deep(9), CONFIG)
    moved = rng.normal(size=start.shape).astype(np.float32)
    wide = {"with": start + moved + 3 * rng.normal(size=start.shape), "against": start - moved}
    for task, w in wide.items():
        lib.add(w[:, :6], deep=w[:, 6:], task=task, model="m", model_fingerprint="f")
    target = start + moved
    embedding = lib.add(
        target[:, :6], deep=target[:, 6:], task="t", model="m", model_fingerprint="f",
        kind="task_embedding",
    )  # fmt: skip
    np.save(tmp_path / "start.npy", start)
    init = initial.TransferInit(
        strategy="top_1",
        library=str(tmp_path),
        target_embedding=embedding.id,
        metric="trained_blocks_cosine_avg_tokens",
        start=str(tmp_path / "start.npy"),
        top_k=2,
    )
    got, report = initial.initial_prompt(
        init, 4, 6, "f", "t", deep_width=WIDTH, model_config=CONFIG
    )
    assert report["chosen"] == "with" and report["sources"] == ["with", "against"]
    seen = lambda x: views.view("trained_blocks", x, CONFIG, start)  # noqa: E731
    expect = similarity.score_library(
        "cosine_avg_tokens", seen(target), seen(np.stack([wide["with"], wide["against"]]))
    )
    np.testing.assert_allclose(report["similarities"], expect, rtol=1e-5)
    raw = similarity.score_library("cosine_avg_tokens", target, np.stack(list(wide.values())))
    assert raw[1] > raw[0]  # the raw prompts' cosine would have chosen "against"
    np.testing.assert_allclose(got, wide["with"], rtol=1e-6)

    without = dataclasses.replace(init, start="")
    with pytest.raises(retrieval.TransferError, match="needs the start they shared: SHARED_START"):
        initial.initial_prompt(without, 4, 6, "f", "t", deep_width=WIDTH, model_config=CONFIG)
