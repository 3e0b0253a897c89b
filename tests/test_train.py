"""The trainer: what trains, checkpoints, resume, NaN handling, run-directory safety, CLI."""

import collections
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from synthetic_tasks import keyword_examples, register_keyword_task

from conftest import (
    T5_VOCAB,
    TINY_CHECKPOINT,
    TINY_LENGTHS,
    WITH_DROPOUT,
    killed_at_batch,
    tiny_run_args,
)
from prompt_transfer import cli
from prompt_transfer.base import errors
from prompt_transfer.cli.jobs import train_main
from prompt_transfer.configure import gin_files, gin_utils
from prompt_transfer.data import batches as data
from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
from prompt_transfer.network import checkpoints, partitioning
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import config as run_config
from prompt_transfer.trainer import run_dir, train, train_state, weights


@pytest.fixture(scope="module")
def task(anchors):
    return register_keyword_task(T5_VOCAB)


def _losses(model_dir: Path) -> list[float]:
    lines = (model_dir / "log.txt").read_text().splitlines()
    return [float(line.split("loss ")[1].split()[0]) for line in lines if " loss " in line]


# -- the step --------------------------------------------------------------------------------


def _one_step(task_name, pattern):
    config = gin_files.read_model_config("tiny")
    mesh = partitioning.make_mesh(2)
    module, abstract, network = weights.frozen_network(config, str(TINY_CHECKPOINT), mesh, seed=0)
    prompt = prompts.initial_prompt(
        prompts.PromptInit("sampled_vocab"), 5, np.asarray(network["token_embedder"]["embedding"])
    )
    params = prompts.with_prompt(network, jnp.asarray(prompt))
    shardings = partitioning.param_shardings(
        prompts.with_prompt(abstract, prompts.abstract_prompt(5, 4)), mesh
    )
    trainable, fixed = train_state.split_trainable(jax.device_put(params, shardings), pattern)
    optimizer = train_state.make_optimizer(train_state.OptimizerConfig())
    state = train_state.create_state(trainable, optimizer, mesh)
    batch = next(data.BatchStream(task_name, TINY_LENGTHS, 8, seed=0))
    step, batch_shardings = train_state.compile_train_step(
        EncoderDecoderModel(module),
        optimizer,
        train_state.learning_rate_schedule(train_state.OptimizerConfig()),
        1,
        mesh,
        jax.tree.map(lambda x: x.sharding, state),
        train_state.split_trainable(shardings, train_state.trainable_regex(trainable))[1],
        batch,
    )
    before = jax.tree.map(np.asarray, params)
    new_state, metrics = step(
        state, fixed, jax.device_put(batch, batch_shardings), jax.random.PRNGKey(0)
    )
    return before, train_state.merge(fixed, new_state.trainable), new_state, metrics


def test_one_step_changes_only_the_prompt(task):
    before, after, state, metrics = _one_step(task, prompts.PROMPT_PATH)
    flat_before = traverse_util.flatten_dict(before, sep="/")
    flat_after = traverse_util.flatten_dict(jax.tree.map(np.asarray, after), sep="/")
    for name, value in flat_before.items():
        if name == prompts.PROMPT_PATH:
            assert not np.array_equal(flat_after[name], value)
        else:
            np.testing.assert_array_equal(flat_after[name], value, err_msg=name)  # bit-identical
    # The optimizer only ever saw the prompt: its state holds nothing else.
    opt_shapes = {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim == 2}
    assert opt_shapes == {(5, 4)}
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def test_model_tuning_pattern_trains_everything(task):
    before, after, _, _ = _one_step(task, ".*")
    changed = [
        not np.array_equal(np.asarray(a), b)
        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True)
    ]
    assert np.mean(changed) > 0.9


def test_trainable_matching_nothing_is_an_error():
    with pytest.raises(train_state.TrainError, match="matches no parameter"):
        train_state.split_trainable({"encoder": {"x": np.ones(2)}}, "decoder/.*")


# -- a whole run through the CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_run(task, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    assert (
        cli.main(
            [
                "train",
                *tiny_run_args(
                    model_dir,
                    "--gin.TRAIN_STEPS=40",
                    "--gin.EVAL_PERIOD=20",
                    "--gin.SAVE_PERIOD=20",
                    "--gin.LOG_PERIOD=10",
                ),
            ]
        )
        == 0
    )
    return model_dir


def test_prompt_tuning_run_writes_what_it_should(prompt_run):
    """Logs, config, prompt exports, best checkpoint and summaries of a 40-step prompt run.

    No learning claim: a prompt barely moves the 3-step-trained, width-4 anchor model. Over
    seeds 0-4 the windowed loss went from 10.80-11.05 to 10.78-10.84, within the 0.1 noise
    between windows, so "the last window is lower" held by 0.02 at worst (measured on a 2-core
    AMD EPYC). Learning is asserted where it is clear: model tuning below.
    """
    losses = _losses(prompt_run)
    assert len(losses) == 4 and all(np.isfinite(losses))
    # Each evaluation records what the run predicted and the split's true labels.
    last = json.loads((prompt_run / "eval_history.jsonl").read_text().splitlines()[-1])
    truth = keyword_examples(32, 1)["targets"]
    assert last["labels"] == {"test_keyword": {"yes": truth.count("yes"), "no": truth.count("no")}}
    assert sum(last["predictions"]["test_keyword"].values()) == 32
    assert (prompt_run / "config.gin").read_text().count("test_keyword") >= 1
    prompt = np.load(prompt_run / "prompts" / "checkpoint_40.npy")
    assert prompt.shape == (5, 4) and prompt.dtype == np.float32
    assert (prompt_run / "best" / "prompt.npy").exists()
    assert json.loads((prompt_run / "best" / "best.json").read_text())["metric"] == "accuracy"
    assert list((prompt_run / "train").glob("events.out.tfevents*"))
    assert list((prompt_run / "eval").glob("events.out.tfevents*"))


def test_checkpoint_holds_no_frozen_weights(prompt_run):
    import orbax.checkpoint as ocp

    ckpt = prompt_run / "checkpoint_40" / "state"
    tree = ocp.PyTreeCheckpointer().metadata(ckpt).item_metadata.tree
    names = traverse_util.flatten_dict(tree, sep="/")
    assert {n for n in names if n.startswith("trainable/")} == {"trainable/encoder/prompt/prompt"}
    assert not any("token_embedder" in n or "layers_" in n for n in names)
    size = sum(f.stat().st_size for f in (prompt_run / "checkpoint_40").rglob("*") if f.is_file())
    assert size < 200_000  # O(prompt), the frozen model alone is ~1 MB


def test_eval_and_infer_through_the_cli(prompt_run, capsys):
    assert cli.main(["eval", *tiny_run_args(prompt_run)]) == 0
    report = json.loads((prompt_run / "eval_validation_latest.json").read_text())
    assert report["step"] == 40 and 0 <= report["results"]["test_keyword"]["accuracy"] <= 100
    inputs = prompt_run / "inputs.txt"
    inputs.write_text("topic: apple lemon mango\ntopic: river ocean desert\n")
    infer = ["infer", *tiny_run_args(prompt_run), f"--gin.INFER_INPUT_FILE='{inputs}'"]
    assert cli.main(infer) == 0
    out = capsys.readouterr().out.strip().split()[-1]
    records = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [r["input"] for r in records] == inputs.read_text().splitlines()
    assert all(
        r["prediction"] in ("yes", "no") and set(r["scores"]) == {"yes", "no"} for r in records
    )


def test_a_run_is_evaluated_and_resumed_only_with_its_own_model(prompt_run, capsys):
    record = json.loads((prompt_run / "model.json").read_text())
    assert record["checkpoint"] == str(TINY_CHECKPOINT) and len(record["fingerprint"]) == 16
    before = sorted(p.name for p in prompt_run.iterdir())
    other = tiny_run_args(prompt_run, checkpoint=None)  # the same shapes, at random init
    for command in (["eval", *other], ["train", *other, "--gin.TRAIN_STEPS=60", "--resume"]):
        capsys.readouterr()
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert f"was trained with the frozen model {TINY_CHECKPOINT}" in err, err
        assert err.count("\n") == 1
    assert sorted(p.name for p in prompt_run.iterdir()) == before


def test_a_second_run_in_a_live_run_dir_is_refused_and_a_stale_lock_taken_over(
    task, tmp_path, capsys
):
    import os
    import socket
    import subprocess
    import sys

    from prompt_transfer.trainer import run_dir

    model_dir = tmp_path / "run"
    model_dir.mkdir()
    lock = model_dir / run_dir.LOCK_FILE
    live = {"pid": os.getpid(), "host": socket.gethostname(), "since": 0}
    lock.write_text(json.dumps(live))
    steps = ["--gin.TRAIN_STEPS=2", "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=0"]
    args = tiny_run_args(model_dir, *steps)
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert f"is in use by process {os.getpid()}" in err and err.count("\n") == 1
    assert sorted(p.name for p in model_dir.iterdir()) == [run_dir.LOCK_FILE]  # nothing written

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(json.dumps(dict(live, pid=int(gone.stdout))))  # its process was killed
    assert cli.main(["train", *args]) == 0
    assert (model_dir / "checkpoint_2").exists() and not lock.exists()


# -- learning, resume, failures ----------------------------------------------------------------


def test_model_tuning_loss_falls_and_accuracy_rises(anchors, tmp_path):
    """Same trainer, TRAINABLE='.*': the tiny model learns the keyword task, clearly.

    Margin, measured on a 2-core AMD EPYC (family 25) with this exact set-up (dropout off,
    learning rate 0.03, 200 steps, 128 validation examples, majority class 52.3%): over seeds
    0-9 every run was at 98.4-100% by step 100, and the final windowed loss was 0.6-1.9% of the
    first. The test asks for majority + 25 points (77.3%) and a 10x fall. The old set-up
    (dropout 0.1 on a width-4 model, learning rate 0.01, 150 steps, 32 examples) learnt in a
    jump whose timing varied by seed and processor: seed 2 sat at 40.6% for 400 steps.
    """
    task = register_keyword_task(T5_VOCAB, name="test_keyword_128", n_validation=128)
    args = tiny_run_args(
        tmp_path,
        "--gin.TRAINABLE='.*'",
        "--gin.PROMPT_LENGTH=0",
        "--gin.DROPOUT_RATE=0.0",
        "--gin.LEARNING_RATE=0.03",
        "--gin.TRAIN_STEPS=200",
        "--gin.EVAL_PERIOD=200",
        "--gin.SAVE_PERIOD=200",
        "--gin.LOG_PERIOD=50",
        task=task,
        checkpoint=None,
    )
    summary = train_main(args)
    losses = _losses(tmp_path)
    assert losses[-1] < 0.1 * losses[0]
    validation = keyword_examples(128, 1)["targets"]
    majority = 100 * max(validation.count("yes"), validation.count("no")) / len(validation)
    assert summary["best"]["value"] > majority + 25


def test_runs_in_one_process_share_the_network_and_compile_their_step_once(
    task, tmp_path, monkeypatch
):
    """A flow's runs restore the frozen network once and trace an equal step and initial state
    once; model tuning on the shared network leaves it as the checkpoint has it."""
    restores, traces, inits = [], [], []
    real_restore, real_step = checkpoints.restore_params, train_state.train_step
    real_init = train_state.init_state
    monkeypatch.setattr(
        train_state, "init_state", lambda tr, opt: inits.append(tr.keys()) or real_init(tr, opt)
    )
    monkeypatch.setattr(
        checkpoints,
        "restore_params",
        lambda *a, **k: restores.append(a[0]) or real_restore(*a, **k),
    )
    monkeypatch.setattr(
        train_state, "train_step", lambda *a: traces.append(a[4].trainable.keys()) or real_step(*a)
    )
    # As a fresh process: no network or compiled step kept from earlier tests.
    monkeypatch.setattr(weights, "_NETWORKS", collections.OrderedDict())
    train_state._jitted_step.cache_clear()
    train_state._jitted_init.cache_clear()
    short = ("--gin.TRAIN_STEPS=3", "--gin.EVAL_PERIOD=3", "--gin.SAVE_PERIOD=3")
    model_tuning = ("--gin.TRAINABLE='.*'", "--gin.PROMPT_LENGTH=0")
    tuned = tiny_run_args(tmp_path / "model", *short, *model_tuning)
    train_main(tuned)
    first = train_main(tiny_run_args(tmp_path / "p1", *short))
    second = train_main(tiny_run_args(tmp_path / "p2", *short))
    assert len(restores) == 1
    assert len(traces) == 2  # model tuning's step, then one prompt step for both prompt runs
    assert len(inits) == 2  # and their initial states: each traced once
    assert first["step"] == second["step"] == 3
    np.testing.assert_array_equal(
        np.load(tmp_path / "p1" / "best" / "prompt.npy"),
        np.load(tmp_path / "p2" / "best" / "prompt.npy"),
    )
    config, mesh = gin_files.read_model_config("tiny"), partitioning.make_mesh(1)
    shared = weights.frozen_network(config, str(TINY_CHECKPOINT), mesh, seed=0).params
    fresh = weights._build_network(config, str(TINY_CHECKPOINT), mesh, 0, jnp.float32).params
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_k_prompts_in_one_step_end_where_k_separate_runs_do(task):
    """Three prompts, each with its own start, data order, dropout key and optimizer state,
    trained for four steps in one stacked step and in three separate runs."""
    config = dataclasses.replace(gin_files.read_model_config("tiny"), dropout_rate=0.1)
    mesh = partitioning.make_mesh(1)
    network = weights.frozen_network(config, str(TINY_CHECKPOINT), mesh, seed=0)
    embedding = np.asarray(network.params["token_embedder"]["embedding"])
    opt = train_state.OptimizerConfig(name="adam", learning_rate=0.1)
    optimizer, schedule = train_state.make_optimizer(opt), train_state.learning_rate_schedule(opt)
    model = EncoderDecoderModel(network.module)
    init = prompts.PromptInit("sampled_vocab")
    starts = [prompts.initial_prompt(init, 5, embedding, seed=k) for k in range(3)]
    streams = [data.BatchStream(task, TINY_LENGTHS, 8, seed=k) for k in range(3)]
    batches = [[next(s) for _ in range(4)] for s in streams]
    placed = [weights.place(network, start, prompts.PROMPT_PATH, mesh) for start in starts]
    fixed, fixed_shardings = placed[0][1], placed[0][2]

    separate = []
    for k, (trainable, _, _) in enumerate(placed):
        state = train_state.create_state(trainable, optimizer, mesh)
        step, shardings = train_state.compile_train_step(
            model, optimizer, schedule, 1, mesh,
            jax.tree.map(lambda x: x.sharding, state), fixed_shardings, batches[k][0],
        )  # fmt: skip
        for batch in batches[k]:
            state, _ = step(state, fixed, jax.device_put(batch, shardings), jax.random.PRNGKey(k))
        separate.append(np.asarray(state.trainable["encoder"]["prompt"]["prompt"]))

    states = [train_state.create_state(t, optimizer, mesh) for t, _, _ in placed]
    stacked_step = train_state.compile_stacked_step(
        model, optimizer, schedule, 1, mesh,
        jax.tree.map(lambda x: x.sharding, states[0]), fixed_shardings,
    )  # fmt: skip
    stacked = train_state.stack_states(states)
    rngs = jnp.stack([jax.random.PRNGKey(k) for k in range(3)])
    for i in range(4):
        batch = {key: np.stack([batches[k][i][key] for k in range(3)]) for key in batches[0][0]}
        stacked, metrics = stacked_step(stacked, fixed, batch, rngs)
    assert metrics["loss"].shape == (3,) and int(stacked.step[2]) == 4
    for k in range(3):
        run = train_state.unstack_state(stacked, k).trainable["encoder"]["prompt"]["prompt"]
        assert not np.allclose(separate[k], starts[k], atol=1e-3)  # it trained
        np.testing.assert_allclose(np.asarray(run), separate[k], atol=1e-5, rtol=0)
    assert not np.allclose(separate[0], separate[1], atol=1e-3)


def test_runs_trained_together_end_where_each_alone_does(task, tmp_path):
    """Three seeds in one stacked step (dropout on, so each run's key matters) against the same
    three runs trained one at a time: the same checkpoints, evaluations and best steps."""
    periods = ("--gin.TRAIN_STEPS=6", "--gin.EVAL_PERIOD=3", "--gin.SAVE_PERIOD=3")
    launch = gin_utils.parse_command_line(tiny_run_args(tmp_path, *periods, WITH_DROPOUT))
    text = gin_utils.configure(launch.files, launch.bindings)
    spec, config = gin_utils.build(run_config.RunSpec), gin_utils.build(run_config.TrainConfig)
    assert spec.model_config.dropout_rate > 0

    def runs(where):
        return [
            (dataclasses.replace(spec, model_dir=str(tmp_path / where / f"s{seed}"), seed=seed),
             config)
            for seed in range(3)
        ]  # fmt: skip

    stacked, alone = runs("together"), runs("alone")
    assert train.stackable(stacked)
    summaries = train.train_together(stacked, config_text=text)
    for run in alone:
        train.train(*run, config_text=text)
    assert not train.stackable(stacked)  # they exist now: a rerun resumes each alone
    finals = []
    for (mine, _), (theirs, _), summary in zip(stacked, alone, summaries, strict=True):
        mine, theirs = Path(mine.model_dir), Path(theirs.model_dir)
        assert summary["step"] == 6 and (mine / "checkpoint_6").is_dir()
        for name in ("prompts/checkpoint_3.npy", "prompts/checkpoint_6.npy", "best/prompt.npy"):
            # Float rounding of the vmapped sums: 1.05e-5 at most seen (one entry, step 6, on
            # this project's 2-core machine), 6.9e-5 with the tests' XLA flags (conftest.py);
            # the seeds' prompts differ by over 1e-3.
            np.testing.assert_allclose(
                np.load(mine / name), np.load(theirs / name), atol=2e-4, err_msg=name
            )
        histories = [
            [(h["step"], h["value"]) for h in run_dir.RunDir(d).read_eval_history()]
            for d in (mine, theirs)
        ]
        assert histories[0] == histories[1] and len(histories[0]) == 2
        assert "trained together with 2 other run(s)" in (mine / "log.txt").read_text()
        finals.append(np.load(mine / "prompts/checkpoint_6.npy"))
    assert not np.allclose(finals[0], finals[1], atol=1e-3)


def test_killed_and_resumed_run_ends_with_the_uninterrupted_prompt(task, tmp_path, monkeypatch):
    steps = [
        "--gin.TRAIN_STEPS=30",
        "--gin.SAVE_PERIOD=10",
        "--gin.LOG_PERIOD=10",
        "--gin.EVAL_PERIOD=0",
        WITH_DROPOUT,  # the resumed steps draw the keys the straight run's did
    ]
    train_main(tiny_run_args(tmp_path / "straight", *steps))

    killed_at_batch(
        monkeypatch, 25, lambda: train_main(tiny_run_args(tmp_path / "resumed", *steps))
    )
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint_*")) == [
        "checkpoint_10",
        "checkpoint_20",
    ]
    train_main(tiny_run_args(tmp_path / "resumed", *steps))
    assert "resumed from checkpoint_20" in (tmp_path / "resumed" / "log.txt").read_text()
    np.testing.assert_array_equal(
        np.load(tmp_path / "resumed" / "prompts" / "checkpoint_30.npy"),
        np.load(tmp_path / "straight" / "prompts" / "checkpoint_30.npy"),
    )


def test_sigterm_saves_exits_4_and_the_rerun_ends_where_an_uninterrupted_run_does(
    task, tmp_path, monkeypatch, capsys
):
    """Pre-emption (SIGTERM, as TPU and spot VMs send it) at batch 17, an evaluation step: the
    state of step 17 is saved without evaluating, the command exits with its own status, and
    the same command evaluates step 17 first and finishes the run with the prompt and the
    evaluations of an uninterrupted run, bit for bit."""
    import os
    import signal

    steps = ["--gin.TRAIN_STEPS=30", "--gin.SAVE_PERIOD=10", "--gin.EVAL_PERIOD=17"]
    train_main(tiny_run_args(tmp_path / "straight", *steps))
    real_next = data.BatchStream.__next__

    def sigterm_at_batch_17(self):
        if self.position == 16:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_next(self)

    monkeypatch.setattr(data.BatchStream, "__next__", sigterm_at_batch_17)
    args = ["train", *tiny_run_args(tmp_path / "preempted", *steps)]
    assert cli.main(args) == errors.EXIT_PREEMPTED
    assert "SIGTERM at step 17: saved checkpoint_17" in capsys.readouterr().err
    assert (tmp_path / "preempted" / "checkpoint_17").exists()
    preempted = run_dir.RunDir(tmp_path / "preempted")
    assert preempted.read_eval_history() == []  # stopped, not evaluated
    monkeypatch.setattr(data.BatchStream, "__next__", real_next)
    assert cli.main(args) == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "preempted" / "prompts" / "checkpoint_30.npy"),
        np.load(tmp_path / "straight" / "prompts" / "checkpoint_30.npy"),
    )
    history = run_dir.RunDir(tmp_path / "preempted").read_eval_history()
    assert [h["step"] for h in history] == [17, 30]
    assert history == run_dir.RunDir(tmp_path / "straight").read_eval_history()


def test_nan_loss_stops_naming_steps_and_keeps_last_good_checkpoint(
    task, tmp_path, capsys, monkeypatch
):
    stream_next = data.BatchStream.__next__

    def nan_batches_after_12(self):
        batch = stream_next(self)
        if self.position > 12:  # NaN loss weights poison the loss from step 13 on
            shape = batch["decoder_target_tokens"].shape
            batch = dict(batch, decoder_loss_weights=np.full(shape, np.nan, np.float32))
        return batch

    monkeypatch.setattr(data.BatchStream, "__next__", nan_batches_after_12)
    args = tiny_run_args(
        tmp_path,
        "--gin.TRAIN_STEPS=30",
        "--gin.SAVE_PERIOD=10",
        "--gin.LOG_PERIOD=5",
        "--gin.EVAL_PERIOD=0",
    )
    assert cli.main(["train", *args]) == errors.EXIT_DIVERGED
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(
        "prompt-transfer train: error: loss became NaN or inf at step 13 (window 11-15)"
    )
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == ["checkpoint_10"]
    assert np.isfinite(np.load(tmp_path / "prompts" / "checkpoint_10.npy")).all()


def test_changed_config_is_refused_unless_overwrite(prompt_run, tmp_path, capsys):
    model_dir = tmp_path / "run"
    base = tiny_run_args(
        model_dir, "--gin.TRAIN_STEPS=10", "--gin.SAVE_PERIOD=10", "--gin.EVAL_PERIOD=0"
    )
    assert cli.main(["train", *base]) == 0
    assert cli.main(["train", *base, "--gin.PROMPT_LENGTH=7"]) == 2
    assert "holds a run with a different config" in capsys.readouterr().err
    assert np.load(model_dir / "prompts" / "checkpoint_10.npy").shape == (5, 4)  # untouched
    (model_dir / "notes.md").write_text("my notes")  # the user's, not the run's
    (model_dir / "data").mkdir()
    (model_dir / "data" / "train.tsv").write_text("x\ty\n")
    assert cli.main(["train", *base, "--gin.PROMPT_LENGTH=7", "--overwrite"]) == 0
    assert np.load(model_dir / "prompts" / "checkpoint_10.npy").shape == (7, 4)
    # --overwrite removed the old run's files only.
    assert (model_dir / "notes.md").read_text() == "my notes"
    assert (model_dir / "data" / "train.tsv").read_text() == "x\ty\n"


def test_an_interrupted_first_save_is_not_a_checkpoint_to_resume(tmp_path):
    from prompt_transfer.trainer import run_dir

    (tmp_path / "checkpoint_10.orbax-checkpoint-tmp-1700000000").mkdir()  # killed mid-save
    assert not run_dir.RunDir(tmp_path).holds_checkpoint()
    (tmp_path / "checkpoint_10").mkdir()
    assert run_dir.RunDir(tmp_path).holds_checkpoint()


def test_a_torn_last_evaluation_line_is_dropped_and_appends_stay_jsonl(tmp_path):
    from prompt_transfer.trainer import run_dir

    good = [{"step": s, "metric": "accuracy", "value": 50.0 + s, "results": {}} for s in (2, 4)]
    history = tmp_path / run_dir.EVAL_HISTORY
    history.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"step": 6, "met')
    assert [r["step"] for r in run_dir.RunDir(tmp_path).read_eval_history()] == [2, 4]
    with run_dir.ProgressLog(run_dir.RunDir(tmp_path), 10, quiet=True) as log:
        log.eval_metrics(6, {"t": {"accuracy": 57.0}}, "accuracy", 57.0)
    assert [r["step"] for r in run_dir.RunDir(tmp_path).read_eval_history()] == [2, 4, 6]
    assert all(json.loads(line) for line in history.read_text().splitlines())
    history.write_text('{"step": 2}\nnot json\n{"step": 4}\n')  # damage inside is named
    with pytest.raises(run_dir.RunDirError, match="line 2 is not JSON"):
        run_dir.RunDir(tmp_path).read_eval_history()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "required gin macro(s) not set: MIXTURE_OR_TASK_NAME"),
        (["--gin.MIXTURE_OR_TASK_NAME='test_keywrd'"], "did you mean test_keyword"),
        (
            [
                "--gin.MIXTURE_OR_TASK_NAME='test_keyword'",
                "--gin_file=prompts/file.gin",
                "--gin.PROMPT_FILE='@@'",
            ],
            "has shape (5, 256) but the run expects (5, 4)",
        ),
    ],
)
def test_bad_input_one_line(task, tmp_path, capsys, extra, message):
    from conftest import RELEASED_PROMPTS

    extra = [e.replace("@@", str(RELEASED_PROMPTS / "prompt_5x256.npy")) for e in extra]
    argv = ["train", *tiny_run_args(tmp_path, *extra, task=None, checkpoint=None)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "config.gin").exists()  # a corrected launch is not refused later


def test_every_gin_file_parses():
    import gin

    files = sorted(gin_files.GIN_DIR.rglob("*.gin"))
    assert len(files) >= 12
    for path in files:
        gin.clear_config()
        gin.add_config_file_search_path(str(gin_files.GIN_DIR))
        gin.parse_config_file(str(path))
        header = path.read_text().splitlines()[0]
        assert header.startswith("# "), f"{path} has no header"
    gin.clear_config()


def test_early_stopping_after_patience_without_improvement(task, tmp_path):
    """A learning rate of 1e-6 cannot beat the first evaluation by a whole example.

    Margin, measured on a 2-core AMD EPYC: at step 5 the smallest |score(yes) - score(no)| over
    the 32 validation examples is 1.37, and from step 5 to 15 no score gap moved by more than
    1e-4, so no prediction can flip on any processor.
    """
    summary = train_main(
        tiny_run_args(
            tmp_path,
            "--gin.TRAIN_STEPS=60",
            "--gin.EVAL_PERIOD=5",
            "--gin.SAVE_PERIOD=60",
            "--gin.LOG_PERIOD=5",
            "--gin.EARLY_STOPPING_PATIENCE=2",
            "--gin.LEARNING_RATE=1e-6",
        )
    )
    assert summary["stopped_early"] and summary["step"] == 15
    assert summary["best"]["step"] == 5 and summary["best"]["evals_since_best"] == 2
    assert (tmp_path / "checkpoint_15").exists()  # the stopping point is saved


def test_task_embedding_is_stored_in_the_library(task, tmp_path, capsys):
    from prompt_transfer.network import checkpoints, t5
    from prompt_transfer.transfer import library

    assert (
        cli.main(
            [
                "task-embedding",
                *tiny_run_args(tmp_path / "run"),
                "--library",
                str(tmp_path / "lib"),
                "--steps",
                "5",
            ]
        )
        == 0
    )
    (entry,) = library.Library(tmp_path / "lib").entries()
    assert (entry.kind, entry.steps, entry.task) == ("task_embedding", 5, "test_keyword")
    assert (entry.model, entry.prompt_length, entry.embed_dim) == ("test_t5_1_1_tiny", 5, 4)
    network = checkpoints.restore_params(
        TINY_CHECKPOINT, t5.abstract_params(t5.T5(gin_files.read_model_config("tiny")))
    )
    assert entry.model_fingerprint == library.model_fingerprint(network)
    np.testing.assert_array_equal(
        library.Library(tmp_path / "lib").prompt(entry),
        np.load(tmp_path / "run" / "prompts" / "checkpoint_5.npy"),
    )
    assert entry.id in capsys.readouterr().out


def test_labels_longer_than_the_target_length_are_refused_before_any_work(task, tmp_path, capsys):
    run = tmp_path / "run"
    lengths = {"inputs": 12, "targets": 1}
    assert cli.main(["train", *tiny_run_args(run, lengths=lengths)]) == errors.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "label 'yes' of 'test_keyword' needs 2 target tokens" in err and "at least 2" in err
    assert not run.exists()


def test_rank_classification_with_labels_of_different_token_lengths(anchors, monkeypatch):
    """SeqIO stacks the predictions into one array: mixed predictions of a 1-token and a
    several-token label must still evaluate (they once raised 'inhomogeneous shape')."""
    from synthetic_tasks import keyword_examples

    from prompt_transfer.data import vocab
    from prompt_transfer.model import seqio_eval

    labels = ("yes", "not at all")
    name = register_keyword_task(T5_VOCAB, "test_keyword_long_label", labels=labels)
    v = vocab.get_vocabulary(str(T5_VOCAB))
    assert len({len(v.encode(label)) for label in labels}) == 2
    config = gin_files.read_model_config("tiny")
    module, _, network = weights.frozen_network(
        config, str(TINY_CHECKPOINT), partitioning.make_mesh(1), 0
    )
    evaluator = seqio_eval.TaskEvaluator(
        EncoderDecoderModel(module), name, "validation", {"inputs": 12, "targets": 6}, 32
    )
    # Scores that pick the labels alternately, example by example.
    alternate = lambda params, tokens, candidates, prompt: jnp.stack(
        [jnp.arange(tokens.shape[0]) % 2 == 0, jnp.arange(tokens.shape[0]) % 2 == 1], -1
    ).astype(jnp.float32)
    monkeypatch.setattr(seqio_eval, "_jitted", lambda model: (alternate, None))
    accuracy = evaluator.evaluate(network)[name]["accuracy"]
    targets = keyword_examples(32, 1, labels)["targets"]
    expected = np.mean([t == labels[i % 2] for i, t in enumerate(targets)]) * 100
    assert accuracy == pytest.approx(expected)


def test_the_true_labels_likelihood_is_their_probability_among_the_labels(anchors, monkeypatch):
    """The evaluator's likelihood is the mean log-probability of each example's true label among
    the labels (a softmax over the candidates' scores); sharper scores that pick the same labels
    keep the accuracy and change it, which is what a race's rung needs to tell runs apart."""
    from synthetic_tasks import keyword_examples

    from prompt_transfer.model import seqio_eval

    labels = ("yes", "no")
    name = register_keyword_task(T5_VOCAB, "test_keyword_likelihood", labels=labels)
    config = gin_files.read_model_config("tiny")
    module, _, network = weights.frozen_network(
        config, str(TINY_CHECKPOINT), partitioning.make_mesh(1), 0
    )
    evaluator = seqio_eval.TaskEvaluator(
        EncoderDecoderModel(module), name, "validation", {"inputs": 12, "targets": 6}, 32
    )
    targets = keyword_examples(32, 1, labels)["targets"]
    truth = np.array([labels.index(t) for t in targets])

    def scored(margin):  # even examples favour 'yes' by `margin` nats, odd ones 'no'
        favoured = np.arange(32) % 2
        table = np.where(np.arange(2)[None] == favoured[:, None], margin, 0.0)
        return lambda params, tokens, candidates, prompt: jnp.asarray(
            table[: tokens.shape[0]], jnp.float32
        )

    found = {}
    for margin in (1.0, 3.0):
        monkeypatch.setattr(seqio_eval, "_jitted", lambda model, m=margin: (scored(m), None))
        accuracy = evaluator.evaluate(network)[name]["accuracy"]
        found[margin] = (accuracy, evaluator.likelihoods()[name])
        right = truth == np.arange(32) % 2
        p_right = np.exp(margin) / (np.exp(margin) + 1)
        expected = np.mean(np.where(right, np.log(p_right), np.log(1 - p_right)))
        assert found[margin][1] == pytest.approx(expected)
        assert evaluator.labels[name] == {label: int(np.sum(truth == i)) for i, label in
                                          enumerate(labels)}  # fmt: skip
    assert found[1.0][0] == found[3.0][0] and found[1.0][1] != found[3.0][1]


def test_a_resume_restores_the_data_iterator_and_matches_a_straight_run(task, tmp_path):
    def run(model_dir, steps):
        args = tiny_run_args(
            model_dir, f"--gin.TRAIN_STEPS={steps}", "--gin.SAVE_PERIOD=3", "--gin.EVAL_PERIOD=0"
        )
        assert cli.main(["train", *args]) == 0

    run(tmp_path / "straight", 9)
    run(tmp_path / "split", 6)
    assert (tmp_path / "split" / "data_state" / "p0" / "checkpoint_6" / "iterator.index").exists()
    (tmp_path / "split" / "data_state" / "p0" / ".checkpoint_9.tmp-killed").mkdir()  # a kill
    run(tmp_path / "split", 9)  # extends the run: resumes at batch 6 from the saved iterator
    assert (
        "data iterator restored at batch 6 (no replay)"
        in (tmp_path / "split" / "log.txt").read_text()
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "split" / "prompts" / "checkpoint_9.npy"),
        np.load(tmp_path / "straight" / "prompts" / "checkpoint_9.npy"),
    )
    kept = sorted(p.name for p in (tmp_path / "split" / "data_state" / "p0").iterdir())
    assert kept == sorted(p.name for p in (tmp_path / "split").glob("checkpoint_*"))


def test_a_saved_iterator_that_does_not_fit_falls_back_to_replay(task, tmp_path):
    straight = data.BatchStream(task, TINY_LENGTHS, 8, seed=0)
    for _ in range(3):
        next(straight)
    expected = next(straight)
    (tmp_path / "iterator.index").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="does not fit this pipeline.*replaying to batch 3"):
        resumed = data.BatchStream(
            task, TINY_LENGTHS, 8, seed=0, position=3, state_file=str(tmp_path / "iterator")
        )
    assert not resumed.restored
    for key, value in next(resumed).items():
        np.testing.assert_array_equal(value, expected[key])


def test_infer_scores_its_batches_with_one_compiled_program(anchors, tmp_path):
    """`infer`'s rank classification is jitted as evaluation's is: each call compiles one
    program for all its batches (run op by op, the network compiled one program per operation,
    about 150 on the tiny T5, and dispatched them one by one for every batch)."""
    from prompt_transfer.model import inference

    name = register_keyword_task(T5_VOCAB, "test_keyword_infer_compiles")
    config = gin_files.read_model_config("tiny")
    module, _, network = weights.frozen_network(
        config, str(TINY_CHECKPOINT), partitioning.make_mesh(1), 0
    )
    model = EncoderDecoderModel(module)
    compiled = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: (
            compiled.append(event)
            if event == "/jax/core/compile/backend_compile_duration"
            else None
        )
    )
    counts = []
    for words in ("apple lemon mango", "river ocean desert"):
        (tmp_path / "inputs.txt").write_text("\n".join([f"topic: {words}"] * 5) + "\n")
        task, rows = inference.rows_from_file(name, str(tmp_path / "inputs.txt"), TINY_LENGTHS)
        before = len(compiled)
        records = inference.predict(model, network, task, rows, TINY_LENGTHS, 2)
        counts.append(len(compiled) - before)
        assert len(records) == 5 and all(set(r["scores"]) == {"yes", "no"} for r in records)
    assert all(1 <= n <= 3 for n in counts), counts


def test_an_evaluation_set_is_read_once_per_task_and_again_when_registered_again(
    anchors, tmp_path, monkeypatch
):
    """Every run of a process that evaluates on a task's split shares one read of it (another
    run's evaluator, with its own log folder, reads no tf.data: its batches, and the examples
    SeqIO's metrics walk beside the predictions, come from memory); a task registered again
    under the same name is a new set, read anew."""
    from prompt_transfer.base.tf_import import import_tensorflow
    from prompt_transfer.model import seqio_eval

    labels = ("yes", "no")
    name = register_keyword_task(T5_VOCAB, "test_keyword_read_once", labels=labels)
    config = gin_files.read_model_config("tiny")
    module, _, network = weights.frozen_network(
        config, str(TINY_CHECKPOINT), partitioning.make_mesh(1), 0
    )
    model = EncoderDecoderModel(module)

    def evaluator_in(run: str):  # a run's evaluator, logging to the run's folder
        (tmp_path / run).mkdir(exist_ok=True)
        return seqio_eval.TaskEvaluator(
            model, name, "validation", {"inputs": 12, "targets": 6}, 8, str(tmp_path / run)
        )

    picks_yes = lambda params, tokens, candidates, prompt: jnp.stack(
        [jnp.ones(tokens.shape[0]), jnp.zeros(tokens.shape[0])], -1
    )
    monkeypatch.setattr(seqio_eval, "_jitted", lambda model: (picks_yes, None))
    evaluator = evaluator_in("a")
    accuracy = evaluator.evaluate(network)[name]["accuracy"]
    assert sum(evaluator.labels[name].values()) == 32

    other = evaluator_in("b")
    with monkeypatch.context() as m:  # no tf.data dataset is batched or iterated
        m.setattr(import_tensorflow().data.Dataset, "batch", lambda *a, **k: 1 / 0)
        m.setattr(import_tensorflow().data.Dataset, "__iter__", lambda *a, **k: 1 / 0)
        assert other.evaluate(network)[name]["accuracy"] == accuracy
        assert other.labels == evaluator.labels and other.predictions == evaluator.predictions

    register_keyword_task(T5_VOCAB, name, n_validation=12, labels=labels)
    again = evaluator_in("a")
    again.evaluate(network)
    assert sum(again.labels[name].values()) == 12
