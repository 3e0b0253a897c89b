"""A prompt-then-model run (trainer/phases.py) as 2 processes x 2 CPU devices with
NUM_PARTITIONS=2, against 1 process x 4 devices: its phase boundary is written once and both
phases end where the single process's do."""

import multihost_runs as mh
import numpy as np
import pytest


@pytest.fixture(scope="module")
def task_files(anchors, tmp_path_factory):
    return mh.task_files(tmp_path_factory.mktemp("task"))


def _restored(model_dir):
    """The run's parameters as `eval` restores them (its config.gin), flattened."""
    import gin
    from flax import traverse_util

    from prompt_transfer.configure import gin_utils
    from prompt_transfer.trainer import config, evaluate

    gin.clear_config()
    launch = gin_utils.parse_command_line(
        [f"--gin_file={model_dir / 'config.gin'}", f"--gin.MODEL_DIR='{model_dir}'"]
    )
    gin_utils.configure(launch.files, launch.bindings)
    _, params, step = evaluate.trained(gin_utils.build(config.RunSpec), "latest")
    return step, traverse_util.flatten_dict(params, sep="/")


def test_prompt_then_model_as_two_processes_with_partitions_ends_where_one_process_does(
    task_files, tmp_path
):
    """Both phases of a prompt-then-model run, 2 processes x 2 devices against 1 x 4, each with
    NUM_PARTITIONS=2: the boundary written once, the same evaluations in both phases and the
    same network and prompt at the end."""

    def argv(model_dir):
        return [
            "train",
            "--gin_file=runs/prompt_then_model",
            *mh.argv(task_files, model_dir)[1:],
            "--gin.TRAIN_STEPS=4",
            "--gin.MODEL_STEPS=4",
            "--gin.SAVE_PERIOD=4",
            "--gin.EVAL_PERIOD=4",
            "--gin.NUM_PARTITIONS=2",
            "--gin.MODEL_LEARNING_RATE=0.01",
        ]

    cache = tmp_path / "jax"
    [(code, err)] = mh.finish(mh.launch(argv(tmp_path / "one"), 1, 4, cache))
    assert code == 0, err
    ended = mh.finish(mh.launch(argv(tmp_path / "two"), 2, 2, cache))
    assert [code for code, _ in ended] == [0, 0], ended
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "phases.json").read_text() == (one / "phases.json").read_text()
    assert (two / "log.txt").read_text().count("phase 2: the network trains") == 1
    steps = {}
    for sub in ("phase1", ""):
        a = mh.evaluations(lambda n, s=sub: (two / s / n).read_bytes())
        b = mh.evaluations(lambda n, s=sub: (one / s / n).read_bytes())
        steps[sub] = [e["step"] for e in a]
        assert steps[sub] == [e["step"] for e in b]
        for x, y in zip(a, b, strict=True):
            assert x["value"] == pytest.approx(y["value"]) and x["predictions"] == y["predictions"]
    assert steps == {"phase1": [4], "": [4, 8]}  # phase 2 evaluates at the boundary too
    (step_two, two_params), (step_one, one_params) = _restored(two), _restored(one)
    assert step_two == step_one == 8 and two_params.keys() == one_params.keys()
    for name, value in one_params.items():
        np.testing.assert_allclose(two_params[name], value, atol=1e-5, rtol=0, err_msg=name)
