"""Related prompts trained together (prompt/multitask.py): one run on a mixture, each example
with its task's prompt composed from a shared prompt and the task's part (add, concat, MPT)."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from synthetic_tasks import register_keyword_task

from conftest import (
    T5_VOCAB,
    TINY_CHECKPOINT,
    TINY_LENGTHS,
    tiny_config,
    tiny_run_args,
    trained_arrays,
)
from prompt_transfer import cli
from prompt_transfer.base.tf_import import import_seqio
from prompt_transfer.configure import gin_files
from prompt_transfer.data import batches
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import t5
from prompt_transfer.prompt import multitask, prompts
from prompt_transfer.transfer import library

CONFIG = tiny_config(emb_dim=6, head_dim=3, mlp_dim=8, num_decoder_layers=1)
WIDTH = CONFIG.emb_dim + prompts.deep_width(CONFIG)
K, P, P_TASK = 3, 4, 2


def _expected(how, shared, parts):
    """Each task's prompt [K, P', W] as the module docstring defines it, in NumPy."""
    if how == "add":
        return shared[None] + parts["deltas"]
    if how == "concat":
        return np.concatenate([np.broadcast_to(shared, (K, *shared.shape)), parts["own"]], 1)
    return shared[None] * np.einsum("kpr,kwr->kpw", parts["u"], parts["v"])


def _random_parts(how, width, rng):
    if how == "add":
        return {"deltas": rng.normal(size=(K, P, width))}
    if how == "concat":
        return {"own": rng.normal(size=(K, P_TASK, width))}
    return {"u": rng.normal(size=(K, P, 2)), "v": rng.normal(size=(K, width, 2))}


@pytest.fixture(scope="module")
def small():
    module = t5.T5(CONFIG)
    tokens = jnp.ones((1, 5), jnp.int32)
    network = nn.unbox(module.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(3, 64, (4, 5)))
    y = jnp.asarray(rng.integers(3, 64, (4, 3)))  # no padding: every example has 3 tokens
    return EncoderDecoderModel(module), network, x, y


def _composing(model, distills=False):
    """The model of a multi-task run: its kind composes each example's prompt for its task
    (prompt/kinds.py), and distills it from a teacher when the run does."""
    return dataclasses.replace(model, kind=multitask.Multitask(distills=distills))


@pytest.mark.parametrize("how", multitask.HOWS)
@pytest.mark.parametrize("deep", [True, False])
def test_each_example_gets_its_tasks_composed_prompt(small, how, deep):
    model, network, x, y = small
    rng = np.random.default_rng(1)
    width = WIDTH if deep else CONFIG.emb_dim
    shared = rng.normal(size=(P, width)).astype(np.float32)
    parts = {k: v.astype(np.float32) for k, v in _random_parts(how, width, rng).items()}
    pieces = multitask.Pieces(how, ("a", "b", "c"), parts)
    params = prompts.with_deep_prompt(prompts.join(network, CONFIG, shared), pieces.flat())
    every = _expected(how, shared, parts)
    np.testing.assert_allclose(multitask.task_prompts(params, CONFIG), every, rtol=1e-5)

    # A task's parameters are a plain run of its composed prompt, deep part included.
    for k in range(K):
        alone = prompts.join(network, CONFIG, every[k])
        own = multitask.params_for(params, k, CONFIG)
        for path, value in traverse_util.flatten_dict(alone, sep="/").items():
            got = traverse_util.flatten_dict(own, sep="/")[path]
            np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=path)

    # In a batch of several tasks, each example is scored with its own task's prompt.
    index = jnp.asarray([2, 0, 1, 2], jnp.int32)
    batch = {
        "encoder_input_tokens": x,
        "decoder_input_tokens": jnp.pad(y, ((0, 0), (1, 0)))[:, :-1],
        "decoder_target_tokens": y,
        "task_index": index,
    }
    mixed, _ = _composing(model).loss(params, batch)
    singles = []
    for b, k in enumerate(np.asarray(index)):
        one = {name: v[b : b + 1] for name, v in batch.items() if name != "task_index"}
        singles.append(model.loss(prompts.join(network, CONFIG, every[k]), one)[0])
    np.testing.assert_allclose(mixed, np.mean(singles), rtol=1e-5)


def test_a_run_of_one_task_has_no_task_to_compose_without_its_index(small):
    model, network, x, y = small
    pieces = multitask.Pieces("add", ("a", "b"), {"deltas": np.zeros((2, P, 6), np.float32)})
    params = prompts.with_deep_prompt(
        prompts.join(network, CONFIG, np.zeros((P, 6), np.float32)), pieces.flat()
    )
    with pytest.raises(multitask.MultitaskError, match="task_index"):
        _composing(model).score(params, x, y)


def test_every_task_starts_as_the_shared_prompt():
    shared = np.random.default_rng(0).normal(size=(P, 5)).astype(np.float32)
    for how, layout in [
        ("add", multitask.MultitaskPrompt("add")),
        ("mpt", multitask.MultitaskPrompt("mpt", rank=3)),
    ]:
        pieces = multitask.start(layout, ["a", "b"], shared)
        every = np.asarray(multitask.combine(jnp.asarray(shared), pieces.parts))
        np.testing.assert_allclose(every, np.stack([shared, shared]), rtol=1e-6, err_msg=how)
    layout = multitask.MultitaskPrompt("concat", task_length=2)
    own = lambda k: np.full((2, 5), k, np.float32)  # noqa: E731
    every = np.asarray(
        multitask.combine(shared, multitask.start(layout, ["a", "b"], shared, own).parts)
    )
    assert every.shape == (2, P + 2, 5)
    np.testing.assert_array_equal(every[1, :P], shared)
    np.testing.assert_array_equal(every[1, P:], 1.0)


# ---------------------------------------------------------------------------------------------
# The data: a mixture's stream with each example's task.


@pytest.fixture(scope="module")
def pair():
    """Two tasks of the tiny vocabulary told apart by their labels, and their mixture."""
    register_keyword_task(T5_VOCAB, name="mt_yes", labels=("yes", "no"))
    register_keyword_task(T5_VOCAB, name="mt_up", labels=("up", "down"))
    seqio = import_seqio()
    if "mt_pair" in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove("mt_pair")
    seqio.MixtureRegistry.add("mt_pair", [("mt_yes", 1.0), ("mt_up", 1.0)])
    return "mt_pair"


def test_a_multitask_stream_marks_each_example_with_its_task(pair):
    vocabulary = batches.get_task("mt_yes").output_features["targets"].vocabulary
    by_task = {"mt_yes": {"yes", "no"}, "mt_up": {"up", "down"}}
    labels = [by_task[t.name] for t in batches.get_task(pair).tasks]  # SeqIO's order, by name
    stream = batches.BatchStream(pair, TINY_LENGTHS, 8, seed=0, task_index=True)
    seen = np.zeros(2, int)
    for _ in range(8):
        batch = next(stream)
        for row, k in zip(batch["decoder_target_tokens"], batch["task_index"], strict=True):
            label = vocabulary.decode([t for t in row.tolist() if t > 1])
            assert label in labels[k], (label, k)
            seen[k] += 1
    assert seen.min() > 16, seen  # equal rates: each task about half of 64 examples
    # The same seed, the same batches; the plain mixture stream has no mark.
    again = next(batches.BatchStream(pair, TINY_LENGTHS, 8, seed=0, task_index=True))
    first = next(batches.BatchStream(pair, TINY_LENGTHS, 8, seed=0, task_index=True))
    np.testing.assert_array_equal(again["task_index"], first["task_index"])
    assert "task_index" not in next(batches.BatchStream(pair, TINY_LENGTHS, 8, seed=0))


# ---------------------------------------------------------------------------------------------
# End to end on the tiny model: gin/runs/multitask_prompt.gin.


def _args(run, how, *extra):
    return [
        "--gin_file=models/tiny.gin",
        "--gin_file=runs/multitask_prompt.gin",
        "--gin_file=prompts/sampled_vocab.gin",
        f"--gin.MODEL_DIR='{run}'",
        "--gin.MIXTURE_OR_TASK_NAME='mt_pair'",
        f"--gin.TASK_FEATURE_LENGTHS={TINY_LENGTHS!r}",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'",
        "--gin.MODEL_NAME='tiny'",
        "--gin.BATCH_SIZE=8",
        "--gin.PROMPT_LENGTH=3",
        "--gin.TRAIN_STEPS=4",
        "--gin.SAVE_PERIOD=2",
        "--gin.EVAL_PERIOD=2",
        "--gin.LOG_PERIOD=2",
        f"--gin.MULTITASK_HOW='{how}'",
        f"--gin.LIBRARY_DIR='{run}-library'",
        *extra,
    ]


@pytest.mark.parametrize(
    "how, extra",
    [
        ("add", ()),
        ("mpt", ("--gin.MULTITASK_RANK=2", "--gin.DEEP_PROMPT=True")),
        ("concat", ("--gin.MULTITASK_TASK_LENGTH=2",)),
    ],
)
def test_a_multitask_run_trains_every_tasks_prompt_and_resumes_bit_for_bit(
    pair, tmp_path, capsys, how, extra
):
    run = tmp_path / "run"
    assert cli.main(["train", *_args(run, how, *extra)]) == 0
    pieces = multitask.load(run)
    assert pieces.how == how and pieces.names == ("mt_up", "mt_yes")  # the mixture's order

    # Only what trains is in a checkpoint: the shared prompt and the parts, which moved.
    trained = trained_arrays(run / "checkpoint_4")
    parts = {k.removeprefix(multitask.TASKS_PATH + "/"): v for k, v in trained.items()
             if k.startswith(multitask.TASKS_PATH)}  # fmt: skip
    assert set(parts) == set(pieces.parts) and prompts.PROMPT_PATH in trained
    assert all(not np.allclose(parts[k], pieces.parts[k]) for k in parts)
    deep = sorted(k for k in trained if k.endswith(prompts.DEEP_PREFIX))
    assert bool(deep) == ("--gin.DEEP_PROMPT=True" in extra)

    # Each task's library entry is its composed prompt at the last step.
    shared = prompts.widen(
        trained[prompts.PROMPT_PATH],
        {k: trained[k] for k in deep} or None,
        gin_files.read_model_config("tiny"),
    )
    every = np.asarray(multitask.combine(jnp.asarray(shared), parts))
    own = library.Library(f"{run}-library")
    entries = {e.task: e for e in own.entries()}
    assert set(entries) == {"mt_yes", "mt_up"}
    for k, task in enumerate(pieces.names):
        np.testing.assert_allclose(own.prompt(entries[task], deep=bool(deep)), every[k], atol=1e-5)
        assert entries[task].score is not None

    # eval scores each task with its own prompt: what training last scored.
    assert cli.main(["eval", *_args(run, how, *extra)]) == 0
    evaluated = json.loads((run / "eval_validation_latest.json").read_text())
    last = json.loads((run / "eval_history.jsonl").read_text().splitlines()[-1])
    assert evaluated["step"] == last["step"] == 4
    assert evaluated["results"] == last["results"]
    assert set(last["results"]) == {"mt_yes", "mt_up"}

    if how == "add":
        _infer_each_task(run, tmp_path, capsys)

    # Stopped at step 2 and resumed, a run ends where the straight one did, bit for bit.
    halves = tmp_path / "halves"
    assert cli.main(["train", *_args(halves, how, *extra, "--gin.TRAIN_STEPS=2")]) == 0
    assert cli.main(["train", *_args(halves, how, *extra), "--resume"]) == 0
    again = trained_arrays(halves / "checkpoint_4")
    assert set(again) == set(trained)
    for name, value in trained.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def _infer_each_task(run, tmp_path, capsys):
    """infer predicts each task with its own prompt; MIXTURE_OR_TASK_NAME one of them: that
    one (as its eval); a file of inputs names no task, so the mixture is refused there."""
    out = tmp_path / "all.jsonl"
    args = _args(run, "add", f"--gin.INFER_OUTPUT_FILE='{out}'")
    assert cli.main(["infer", *args]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["task"] for r in records} == {"mt_up", "mt_yes"} and len(records) == 64
    one = tmp_path / "yes.jsonl"
    only = [
        *_args(run, "add", f"--gin.INFER_OUTPUT_FILE='{one}'"),
        "--gin.MIXTURE_OR_TASK_NAME='mt_yes'",
    ]
    assert cli.main(["infer", *only]) == 0
    alone = [json.loads(line) for line in one.read_text().splitlines()]
    assert [r["prediction"] for r in alone] == [
        r["prediction"] for r in records if r["task"] == "mt_yes"
    ]
    assert cli.main(["eval", *only]) == 0
    evaluated = json.loads((run / "eval_validation_latest.json").read_text())
    last = json.loads((run / "eval_history.jsonl").read_text().splitlines()[-1])
    assert evaluated["results"] == {"mt_yes": last["results"]["mt_yes"]}
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("topic: apple pear plum\n")
    capsys.readouterr()
    assert cli.main(["infer", *_args(run, "add", f"--gin.INFER_INPUT_FILE='{inputs}'")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set MIXTURE_OR_TASK_NAME to one of its tasks" in err[0], err


def test_a_multitask_run_cannot_be_exported_or_scored_as_one_prompt(pair, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *_args(run, "add", "--gin.TRAIN_STEPS=2")]) == 0
    capsys.readouterr()
    out = tmp_path / "prompt.npy"
    assert cli.main(["library", "export", "--run", str(run), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a multi-task run" in err[0] and not out.exists(), err
    score = ["score", "--checkpoint", str(TINY_CHECKPOINT), "--size", "tiny", "--inputs", "a",
             "--targets", "b", "--prompt", str(run)]  # fmt: skip
    assert cli.main(score) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a multi-task run" in err[0] and "--prompt-entry" in err[0], err


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["--gin.MIXTURE_OR_TASK_NAME='mt_yes'"], "is one task; give a SeqIO mixture"),
        (["--gin.TRAINABLE='encoder/prompt/prompt'"], "leaves it frozen; use TRAINABLE="),
        (["--gin.MULTITASK_HOW='concat'"], "MULTITASK_TASK_LENGTH >= 1"),
        (["--gin.MULTITASK_TASK_LENGTH=2"], "MULTITASK_HOW='add' takes 0"),
        (["--gin.MULTITASK_HOW='sum'"], "MULTITASK_HOW"),
        (["--gin.MULTITASK_RANK=0"], "MULTITASK_RANK"),
    ],
)
def test_a_bad_multitask_setting_is_refused_in_one_line(pair, tmp_path, capsys, overrides, expect):
    run = tmp_path / "run"
    assert cli.main(["train", *_args(run, "add"), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (run / "checkpoint_2").exists()


# ---------------------------------------------------------------------------------------------
# A finished run as a new task's start: gin/transfer/multitask.gin (MPT's and PEFT's inits).


def test_a_new_task_starts_from_a_finished_multitask_run(pair, tmp_path, capsys):
    source = tmp_path / "multitask"
    extra = ("--gin.MULTITASK_RANK=2", "--gin.TRAIN_STEPS=2")
    assert cli.main(["train", *_args(source, "mpt", *extra)]) == 0
    trained = trained_arrays(source / "checkpoint_2")
    shared = trained[prompts.PROMPT_PATH]
    u, v = (trained[f"{multitask.TASKS_PATH}/{k}"] for k in ("u", "v"))
    expect = {
        "only_source_shared": shared,
        "exact_source_task": shared * (u[1] @ v[1].T),  # mt_yes, second in the mixture
        "average_source_tasks": shared * (u.mean(0) @ v.mean(0).T),  # PEFT: U, V averaged
    }

    def start(init, *more, name=""):
        run = tmp_path / (name or init)
        args = tiny_run_args(
            run,
            "--gin_file=transfer/multitask.gin",
            f"--gin.MULTITASK_RUN='{source}'",
            f"--gin.MULTITASK_INIT='{init}'",
            "--gin.PROMPT_LENGTH=3",
            "--gin.TRAIN_STEPS=1",
            "--gin.EVAL_PERIOD=0",
            *more,
            task="mt_yes",
        )
        return cli.main(["train", *args]), run

    for init, prompt in expect.items():
        code, run = start(init, "--gin.MULTITASK_SOURCE_TASK='mt_yes'")
        assert code == 0
        began = np.load(run / "transfer" / "initial_prompt.npy")
        np.testing.assert_allclose(began, prompt, rtol=1e-5, atol=1e-6, err_msg=init)
    assert not np.allclose(expect["exact_source_task"], expect["average_source_tasks"])

    # What cannot start a task is refused in one line, leaving no run behind.
    capsys.readouterr()
    for more, says in [
        (("--gin.MULTITASK_SOURCE_TASK='mt_other'",), "is not one of the run's tasks"),
    ]:
        code, run = start("exact_source_task", *more, name="refused")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and says in err[0], err
        assert not run.exists() or not any(run.glob("checkpoint_*"))
    plain = tmp_path / "plain"
    args = tiny_run_args(plain, "--gin.TRAIN_STEPS=1", "--gin.EVAL_PERIOD=0", task="mt_yes")
    assert cli.main(["train", *args]) == 0
    capsys.readouterr()
    code, _ = start("only_source_shared", f"--gin.MULTITASK_RUN='{plain}'", name="refused")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a multi-task run" in err[0], err


# ---------------------------------------------------------------------------------------------
# Distillation from single-task teachers (MPT): MULTITASK_DISTILL, MULTITASK_DISTILL_HIDDEN.


@pytest.mark.parametrize("deep", [True, False])
def test_distillation_adds_the_teachers_kl_and_hidden_state_error(small, deep):
    model, network, x, y = small
    rng = np.random.default_rng(3)
    width = WIDTH if deep else CONFIG.emb_dim
    shared = rng.normal(size=(P, width)).astype(np.float32)
    parts = {"deltas": rng.normal(size=(K, P, width)).astype(np.float32)}
    teachers = rng.normal(size=(K, P, width)).astype(np.float32)
    index = jnp.asarray([2, 0, 1, 2], jnp.int32)
    batch = {
        "encoder_input_tokens": x,
        "decoder_input_tokens": jnp.pad(y, ((0, 0), (1, 0)))[:, :-1],
        "decoder_target_tokens": y,
        "task_index": index,
    }

    def params_with(pieces):
        return prompts.with_deep_prompt(prompts.join(network, CONFIG, shared), pieces.flat())

    plain = params_with(multitask.Pieces("add", ("a", "b", "c"), parts))
    taught = params_with(multitask.Pieces("add", ("a", "b", "c"), parts, teachers, (1.0, 0.5)))
    without, _ = _composing(model).loss(plain, batch)
    with_, metrics = _composing(model, distills=True).loss(taught, batch)

    # The same terms computed apart: each example under its task's prompt and its teacher,
    # each a plain run of that one prompt.
    every = _expected("add", shared, parts)
    kls, errors = [], []
    for b, k in enumerate(np.asarray(index)):
        one = slice(b, b + 1)
        student, teacher = (prompts.join(network, CONFIG, p[k]) for p in (every, teachers))
        log_s, log_t = (
            jax.nn.log_softmax(model._logits(p, x[one], batch["decoder_input_tokens"][one]))
            for p in (student, teacher)
        )
        kls.append(float((np.exp(log_t) * (log_t - log_s)).sum(-1).mean()))
        (_, s_states, _), (_, t_states, _) = (model._encode(p, x[one]) for p in (student, teacher))
        errors.append(float(np.square(s_states - t_states).mean()))
    np.testing.assert_allclose(metrics["distill_kl"], np.mean(kls), rtol=1e-4)
    np.testing.assert_allclose(metrics["distill_hidden"], np.mean(errors), rtol=1e-4)
    np.testing.assert_allclose(with_ - without, np.mean(kls) + 0.5 * np.mean(errors), rtol=1e-4)

    # A teacher equal to its task's prompt teaches nothing.
    same = params_with(multitask.Pieces("add", ("a", "b", "c"), parts, every, (1.0, 1.0)))
    _, metrics = _composing(model, distills=True).loss(same, batch)
    assert abs(float(metrics["distill_kl"])) < 1e-6 and float(metrics["distill_hidden"]) < 1e-9


def test_a_distilled_run_learns_from_each_tasks_own_prompt(pair, tmp_path, capsys):
    teachers = tmp_path / "teachers"
    for task in ("mt_yes", "mt_up"):
        args = tiny_run_args(
            tmp_path / task,
            "--gin.PROMPT_LENGTH=3",
            "--gin.TRAIN_STEPS=2",
            "--gin.EVAL_PERIOD=0",
            "--gin.MODEL_NAME='tiny'",
            f"--gin.LIBRARY_DIR='{teachers}'",
            task=task,
        )
        assert cli.main(["train", *args]) == 0
    lib = library.Library(teachers)
    own = {e.task: lib.prompt(e) for e in lib.entries()}
    distill = ["--gin.MULTITASK_DISTILL=1.0", "--gin.MULTITASK_DISTILL_HIDDEN=0.1"]
    run = tmp_path / "run"
    taught = [*distill, f"--gin.MULTITASK_TEACHERS='{teachers}'", "--gin.TRAIN_STEPS=2"]
    assert cli.main(["train", *_args(run, "add", *taught)]) == 0
    pieces = multitask.load(run)
    np.testing.assert_array_equal(pieces.teachers, np.stack([own[n] for n in pieces.names]))
    assert pieces.distill == (1.0, pytest.approx(0.1))
    trained = trained_arrays(run / "checkpoint_2")
    assert not any(k.startswith(multitask.TEACHERS_PATH) for k in trained)  # fixed, not saved

    capsys.readouterr()
    for more, says in [
        (distill, "set MULTITASK_TEACHERS to the library that holds them"),
        ([*taught, "--gin.TRAINABLE='.*'"], "would train the teachers"),
        ([*taught, "--gin.PROMPT_LENGTH=4"], "has 3 positions and this run's prompts 4"),
    ]:
        assert cli.main(["train", *_args(tmp_path / "refused", "add", *more)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    (tmp_path / "lonely").mkdir()
    one = library.Library(tmp_path / "lonely")
    entry = next(e for e in lib.entries() if e.task == "mt_yes")
    one.add(own["mt_yes"], task="mt_yes", model="tiny", model_fingerprint=entry.model_fingerprint)
    lonely = [*distill, f"--gin.MULTITASK_TEACHERS='{tmp_path / 'lonely'}'"]
    assert cli.main(["train", *_args(tmp_path / "refused", "add", *lonely)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no trained prompt of task 'mt_up'" in err[0], err
