"""A T5X prompt-tuning user's habits (issue 35): the anchors' gin files under their own names,
T5X's configurables bound as T5X users bind them (each folded into the one schema, or refused in
one line), T5's and prompt-tuning's task names, and prompt-tuning's sst2-demo.sh run as typed
with local stand-ins for its remote paths (the T5X-written tiny checkpoint, the T5 vocabulary
through $PROMPT_TRANSFER_VOCAB, TFDS's mock data)."""

import json
import re
from pathlib import Path

import pytest

from conftest import ANCHOR_TINY_CHECKPOINT as TINY_CHECKPOINT  # T5X-written, at step 3
from prompt_transfer import cli
from prompt_transfer.configure import gin_utils, t5x_habits
from prompt_transfer.network import t5
from prompt_transfer.trainer import config
from prompt_transfer.trainer.train_state import OptimizerConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "t5x_users.md"
# prompt-tuning's scripts/sst2-demo.sh, its gin files and flags as written there.
SST2_DEMO_FILES = [
    "--gin_file=prompt_tuning/configs/models/t5_1_1_base_prompt.gin",
    "--gin_file=prompt_tuning/configs/prompts/from_class_labels.gin",
    "--gin_file=prompt_tuning/configs/runs/prompt_finetune.gin",
]
SST2_DEMO_FLAGS = [
    "--gin.CLASS_LABELS=['positive', 'negative']",
    "--gin.MIXTURE_OR_TASK_NAME='taskless_glue_sst2_v200_examples'",
    "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.data.glue'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 8}",
    "--gin.USE_CACHED_TASKS=False",
]
TINY = "--gin_file=prompt_tuning/configs/test/t5_1_1_tiny_prompt.gin"


def configured(*argv: str):
    launch = gin_utils.parse_command_line(list(argv))
    gin_utils.configure(launch.files, launch.bindings, launch.search_paths)
    return gin_utils.build(config.RunSpec), gin_utils.build(config.TrainConfig)


def sst2(*extra: str, files=SST2_DEMO_FILES):
    return configured(*files, *SST2_DEMO_FLAGS, "--gin.MODEL_DIR='/tmp/m'",
                      "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'", "--gin.TRAIN_STEPS=10",
                      *extra)  # fmt: skip


def test_prompt_tunings_gin_files_give_its_model_and_recipe():
    spec, train = sst2()
    base = spec.model_config
    assert (base.emb_dim, base.num_heads, base.num_encoder_layers, base.mlp_dim) == (
        768, 12, 12, 2048)  # fmt: skip
    assert spec.prompt_length == 100 and spec.trainable_regex == "encoder/prompt/prompt"
    assert spec.model_config.dtype == "bfloat16"
    assert train.prompt_init.method == "class_labels"
    assert list(train.prompt_init.labels) == ["positive", "negative"]
    # prompt_finetune.gin: constant 0.3, a save every 1,000 steps, one kept; T5X's batch 128.
    assert (train.optimizer.learning_rate, train.save_period, train.keep_checkpoints) == (
        0.3, 1000, 1)  # fmt: skip
    assert train.batch_size == 128 and train.eval_period == 1000
    # prompt-tuning's Adafactor, through adafactor.Adafactor's bindings.
    assert train.optimizer == OptimizerConfig(
        learning_rate=0.3, weight_decay=1e-5, decay_rate=0.8, multiply_by_parameter_scale=False
    )
    assert spec.task == "taskless_glue_sst2_v200_examples"
    assert spec.task_module == "prompt_tuning.data.glue"


def test_the_tiny_test_model_is_the_anchor_checkpoints_shape():
    spec, _ = sst2(files=[TINY, *SST2_DEMO_FILES[1:]])
    c = spec.model_config
    assert (c.emb_dim, c.num_heads, c.head_dim, c.mlp_dim) == (4, 2, 2, 8)
    assert (c.num_encoder_layers, c.num_decoder_layers) == (2, 2)
    # Flaxformer's relative_position_biases.RelativePositionBiases, folded into T5Config.
    assert (c.relative_attention_num_buckets, c.relative_attention_max_distance) == (4, 8)


def test_t5xs_plain_model_files_tune_the_whole_model():
    spec, train = configured(
        "--gin_file=t5x/examples/t5/t5_1_1/small.gin", "--gin_file=t5x/configs/runs/finetune.gin",
        "--gin.MODEL_DIR='/tmp/m'", "--gin.MIXTURE_OR_TASK_NAME='glue_sst2_v002'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}", "--gin.TRAIN_STEPS=10",
        "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'",
    )  # fmt: skip
    assert spec.trainable_regex == ".*" and spec.prompt_length == 0
    assert spec.model_config.emb_dim == 512 and spec.model_config.dropout_rate == 0.1
    assert train.optimizer.learning_rate == 0.001 and train.keep_checkpoints is None
    assert train.optimizer.multiply_by_parameter_scale and train.optimizer.weight_decay == 0.0
    assert train.save_period == 5000


@pytest.mark.parametrize(
    "binding, field, value",
    [
        ("utils.SaveCheckpointConfig.period=500", "save_period", 500),
        ("utils.SaveCheckpointConfig.keep=4", "keep_checkpoints", 4),
        ("train/utils.DatasetConfig.batch_size=16", "batch_size", 16),
        ("train_eval/utils.DatasetConfig.batch_size=64", "eval_batch_size", 64),
        ("train_eval/utils.DatasetConfig.split='test'", "eval_split", "test"),
        ("trainer.Trainer.num_microbatches=4", "num_microbatches", 4),
        ("trainer.Trainer.num_microbatches=None", "num_microbatches", 1),
        ("train.eval_period=250", "eval_period", 250),
        ("utils.create_learning_rate_scheduler.base_learning_rate=0.1", "learning_rate", 0.1),
        ("partitioning.PjitPartitioner.num_partitions=2", "num_partitions", 2),
        ("partitioning.PjitPartitioner.model_parallel_submesh=(4, 4, 1, 2)", "num_partitions", 32),
        ("train.random_seed=7", "seed", 7),
        ("utils.RestoreCheckpointConfig.path='/elsewhere'", "initial_checkpoint", "/elsewhere"),
        ("utils.RestoreCheckpointConfig.dtype='bfloat16'", "frozen_dtype", "bfloat16"),
        ("adafactor.Adafactor.decay_rate=0.9", "decay_rate", 0.9),
        ("utils.DatasetConfig.module='my.tasks'", "task_module", "my.tasks"),
    ],
)
def test_a_t5x_configurable_sets_the_projects_setting(binding, field, value):
    spec, train = sst2(f"--gin.{binding}")
    found = [getattr(obj, field) for obj in (spec, train, train.optimizer) if hasattr(obj, field)]
    assert found[0] == value


def test_the_settings_own_macro_after_it_still_wins_where_t5x_binds_the_macro():
    # prompt_finetune.gin binds utils.SaveCheckpointConfig.period = %SAVE_PERIOD, as T5X users
    # expect from a gin file; a user's --gin.SAVE_PERIOD= sets it.
    _, train = sst2("--gin.SAVE_PERIOD=20", "--gin.LEARNING_RATE=0.5")
    assert (train.save_period, train.optimizer.learning_rate) == (20, 0.5)


@pytest.mark.parametrize(
    "binding, said",
    [
        ("train/utils.DatasetConfig.pack=True", "train/utils.DatasetConfig.pack=True is not "
         "supported here: examples are padded to TASK_FEATURE_LENGTHS here, never packed"),
        ("utils.SaveCheckpointConfig.dtype='bfloat16'", "in float32; FROZEN_DTYPE"),
        ("utils.SaveCheckpointConfig.period=0", "utils.SaveCheckpointConfig.period=0 must be a "
         "whole number >= 1 (SAVE_PERIOD here)"),
        ("train/utils.DatasetConfig.seed=42", "the data order follows RANDOM_SEED"),
        ("utils.create_learning_rate_scheduler.factors='constant * rsqrt_decay'",
         "schedule='rsqrt'"),
        ("partitioning.standard_logical_axis_rules.parameter_partitioning_dims=2",
         "one mesh axis"),
        ("utils.SaveCheckpointConfig.perod=5", "perod"),
        ("adafactor.Adafactor.beta1=0.9", "adafactor.Adafactor.beta1=0.9 is not supported here: "
         "this project has no counterpart"),
    ],
)  # fmt: skip
def test_a_binding_it_cannot_honour_is_refused_in_one_line(binding, said, capsys):
    argv = ["train", *SST2_DEMO_FILES, *SST2_DEMO_FLAGS, "--gin.MODEL_DIR='/tmp/never'",
            "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'", "--gin.TRAIN_STEPS=10",
            f"--gin.{binding}"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err, err
    assert not Path("/tmp/never").exists()


def test_a_users_own_gin_file_that_imports_t5x_parses(tmp_path):
    """Where T5X is not installed, `from t5x import utils` reads this project's T5X names: a
    gin file kept beside a job, found through --gin_search_paths, works unchanged."""
    job = tmp_path / "job"
    (job / "mine").mkdir(parents=True)
    (job / "mine" / "short.gin").write_text(
        "from __gin__ import dynamic_registration\n"
        "from t5x import utils\nfrom t5x import partitioning\n"
        "include 'prompt_tuning/configs/runs/prompt_finetune.gin'\n"
        "partitioning.PjitPartitioner.num_partitions = 1\n"
        "utils.SaveCheckpointConfig.period = 2\n"
        "train/utils.DatasetConfig.batch_size = 8\n"
    )
    _, train = configured(
        f"--gin_search_paths={job}", TINY, *SST2_DEMO_FILES[1:2], "--gin_file=mine/short.gin",
        *SST2_DEMO_FLAGS, "--gin.MODEL_DIR='/tmp/m'", "--gin.TRAIN_STEPS=3",
        "--gin.INITIAL_CHECKPOINT_PATH='/tmp/ckpt'",
    )  # fmt: skip
    assert (train.save_period, train.batch_size) == (2, 8)


def test_every_habit_is_in_the_users_table():
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]

    def listed(name: str, param: str) -> bool:
        return any(
            f"{name}.{param}`" in row
            or (f"`{name}." in row.split("|")[1] and f"`{param}`" in row.split("|")[1])
            for row in rows
        )

    missing = [f"{name}.{param}" for name, param, _ in t5x_habits.HABITS if not listed(name, param)]
    assert not missing, f"docs/t5x_users.md does not list {missing}"


def test_a_task_module_that_is_not_installed(capsys):
    config.import_task_module("prompt_tuning.data.glue")  # stood in by the project's tasks
    assert "its GLUE and SuperGLUE tasks are this project's" in capsys.readouterr().err
    with pytest.raises(config.TrainError, match="MIXTURE_OR_TASK_MODULE='my_tasks_nowhere'"):
        config.import_task_module("my_tasks_nowhere")


@pytest.fixture
def mock_glue(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=16, data_dir=str(tmp_path / "tfds")):
        yield


def test_sst2_demo_sh_trains_as_typed(anchors, mock_glue, tmp_path, capsys):
    """prompt-tuning's scripts/sst2-demo.sh with `python3 -m t5x.train` replaced by
    `prompt-transfer train`, the tiny checkpoint (at step 3) and its test gin file for the base
    model, TRAIN_STEPS=7 for 1_150_000 (4 steps after the checkpoint's own, as 1_150_000 is
    50,000 after checkpoint_1100000), and TFDS's mock data in place of --tfds_data_dir's folder."""
    model_dir = tmp_path / "model"
    config._SAID_STOOD_IN.clear()  # said once a process
    argv = [
        "train", f"--gin_search_paths={tmp_path},{tmp_path}", TINY, *SST2_DEMO_FILES[1:],
        *SST2_DEMO_FLAGS, f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'", "--gin.TRAIN_STEPS=7",
        "--gin.BATCH_SIZE=8", "--gin.utils.SaveCheckpointConfig.period=2",
        "--gin.EVAL_PERIOD=0",  # TFDS's mock data has no split sizes, which SeqIO's evaluator reads
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "MIXTURE_OR_TASK_MODULE='prompt_tuning.data.glue' is not installed" in out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["step"] == 7
    assert "steps 4-7: 4 steps (counting on from INITIAL_CHECKPOINT_PATH's step 3)" in out.err
    # SAVE_PERIOD from T5X's binding (2, from the checkpoint's step: 5, 7), KEEP_CHECKPOINTS=1
    # from prompt_finetune.gin.
    saved = sorted(p.name for p in model_dir.iterdir() if re.fullmatch(r"checkpoint_\d+", p.name))
    assert saved == ["checkpoint_7"]
    assert sorted(p.name for p in (model_dir / "numpy_checkpoints").iterdir()) == [
        "checkpoint_5", "checkpoint_7"]  # fmt: skip
    record = json.loads((model_dir / "run.json").read_text())
    assert record["spec"]["task"] == "taskless_glue_sst2_v200_examples"
    assert record["spec"]["model_config"]["emb_dim"] == 4
    # Each save writes the prompt too (prompts/), the only array that trained.
    assert [p.name for p in (model_dir / "prompts").iterdir()]


def test_embedding_file_is_what_the_numpy_initialisers_sample(tmp_path):
    """prompts/from_sampled_vocab_numpy.gin: the prompt's rows come from EMBEDDING_FILE's
    table, not the network's; a table of another width is refused naming the file."""
    import types

    import numpy as np

    from prompt_transfer.prompt import prompts
    from prompt_transfer.trainer import start

    spec, train = sst2(
        f"--gin.EMBEDDING_FILE='{tmp_path / 'table.npy'}'",
        files=[TINY, "--gin_file=prompt_tuning/configs/prompts/from_sampled_vocab_numpy.gin",
               *SST2_DEMO_FILES[2:]],
    )  # fmt: skip
    init = train.prompt_init
    assert (init.method, init.embedding_file) == ("sampled_vocab", str(tmp_path / "table.npy"))
    table = np.arange(40 * 4, dtype=np.float32).reshape(40, 4)
    np.save(tmp_path / "table.npy", table)
    network = types.SimpleNamespace(params={"token_embedder": {"embedding": np.zeros((40, 4))}})
    rows = start._embeddings(spec, init, network)
    prompt = prompts.initial_prompt(init, 5, rows, seed=0)
    assert {tuple(r) for r in prompt} <= {tuple(r) for r in table}  # sampled from the file
    np.save(tmp_path / "table.npy", table[:, :3])
    with pytest.raises(config.TrainError, match=r"EMBEDDING_FILE=.*\(40, 3\).*\[vocabulary, 4\]"):
        start._embeddings(spec, init, network)


# ---- the anchors' command lines, chained on a task of the user's own module ----------------

USER_MODULE = """
import seqio
from synthetic_tasks import keyword_examples, register_keyword_task
from prompt_transfer import registry, vocab
import tensorflow as tf

register_keyword_task({vocab!r}, name="my_sst2", labels=("positive", "negative"))
# A generative task: the input's words again.
_rows = keyword_examples(8, 2)
_source = seqio.FunctionDataSource(
    lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
        {{"inputs": _rows["inputs"], "targets": _rows["inputs"]}}
    ),
    splits=("validation",),
)
registry.register_text_task("my_copy", _source, vocab.get_vocabulary({vocab!r}))
"""


@pytest.fixture(scope="module")
def job(anchors, tmp_path_factory):
    """A T5X user's job folder: their task module (MIXTURE_OR_TASK_MODULE='my_glue', a small
    offline sentiment-like task with T5's vocabulary) on the path, and sst2-demo.sh's training
    run in model/ (4 steps from the tiny checkpoint's step 3, a save every 2, evaluated at the
    end, step 7)."""
    import sys

    from conftest import T5_VOCAB

    root = tmp_path_factory.mktemp("job")
    (root / "my_glue.py").write_text(USER_MODULE.format(vocab=str(T5_VOCAB)))
    sys.path.insert(0, str(root))
    argv = [
        "train", f"--gin_search_paths={root}", TINY, *SST2_DEMO_FILES[1:],
        "--gin.CLASS_LABELS=['positive', 'negative']", f"--gin.MODEL_DIR='{root / 'model'}'",
        "--gin.MIXTURE_OR_TASK_NAME='my_sst2'", "--gin.MIXTURE_OR_TASK_MODULE='my_glue'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'", "--gin.TRAIN_STEPS=7",
        "--gin.USE_CACHED_TASKS=False", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=4",
        "--gin.utils.SaveCheckpointConfig.period=2",
    ]  # fmt: skip
    try:
        assert cli.main(argv) == 0
        yield root
    finally:
        sys.path.remove(str(root))


LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"


def on_checkpoint(verb: str, out, prompt, *extra: str) -> list[str]:
    """prompt-tuning's prompt_eval.gin (`verb` 'eval') or prompt_infer.gin ('infer'): the tiny
    checkpoint with PROMPT_FILE `prompt`, on my_sst2's validation split, written to `out`."""
    return [
        verb, TINY, f"--gin_file=prompt_tuning/configs/runs/prompt_{verb}.gin",
        "--gin.MIXTURE_OR_TASK_NAME='my_sst2'", "--gin.MIXTURE_OR_TASK_MODULE='my_glue'",
        f"--gin.CHECKPOINT_PATH='{TINY_CHECKPOINT}'", f"--gin.{verb.upper()}_OUTPUT_DIR='{out}'",
        "--gin.utils.DatasetConfig.split='validation'", f"--gin.PROMPT_FILE='{prompt}'", *extra,
    ]  # fmt: skip


def logged_accuracy(job) -> float:
    """The accuracy the sst2 run's last evaluation logged (eval_history.jsonl)."""
    last = [json.loads(line) for line in (job / "model" / "eval_history.jsonl").open()][-1]
    return last["results"]["my_sst2"]["accuracy"]


def scored(out) -> dict:
    """The one metrics line T5X's eval wrote in EVAL_OUTPUT_DIR/inference_eval/."""
    [metrics] = [json.loads(x) for x in (out / "inference_eval" / "my_sst2-metrics.jsonl").open()]
    return metrics


def test_spot_readmes_prompt_file_is_where_t5x_writes_it(job):
    """SPoT's README: PROMPT_FILE=${MODEL_DIR}/numpy_checkpoints/checkpoint_${step}/
    encoder.prompt.prompt.prompt, a file each save writes, equal to the run's prompt."""
    import numpy as np

    written = job / "model" / "numpy_checkpoints" / "checkpoint_7" / "encoder.prompt.prompt.prompt"
    prompt = np.load(written)
    assert prompt.shape == (100, 4)
    np.testing.assert_array_equal(prompt, np.load(job / "model" / "prompts" / "checkpoint_7.npy"))


def test_a_target_starts_from_a_source_prompt_file_as_spots_readme_says(job, capsys):
    source = job / "model" / "numpy_checkpoints" / "checkpoint_7" / "encoder.prompt.prompt.prompt"
    argv = [
        "train", TINY, "--gin_file=prompt_tuning/configs/prompts/from_file.gin",
        SST2_DEMO_FILES[2], f"--gin.PROMPT_FILE={source}", f"--gin.MODEL_DIR='{job / 'target'}'",
        "--gin.MIXTURE_OR_TASK_NAME='my_sst2'", "--gin.MIXTURE_OR_TASK_MODULE='my_glue'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'", "--gin.TRAIN_STEPS=5",
        "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=0", "--gin.USE_CACHED_TASKS=False",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    import numpy as np

    # The target's run starts from the source's prompt: its record says so, and its first save
    # moved away from it by training, not from a fresh initialisation.
    record = json.loads((job / "target" / "run.json").read_text())
    assert record["spec"]["task"] == "my_sst2"
    start = np.load(source)
    after = np.load(job / "target" / "prompts" / "checkpoint_5.npy")
    assert 0 < np.abs(after - start).max() < 0.5 * np.abs(start).max()


def test_sst2_demo_eval_sh_scores_the_prompt_as_training_logged_it(job, capsys):
    """sst2-demo-eval.sh: prompt_eval.gin, CHECKPOINT_PATH the frozen checkpoint, PROMPT_FILE the
    trained prompt, the split and batch through utils.DatasetConfig: T5X's metrics file in
    EVAL_OUTPUT_DIR/inference_eval/, at the checkpoint's step, equal to the run's logged score."""
    prompt = job / "model" / "numpy_checkpoints" / "checkpoint_7" / "encoder.prompt.prompt.prompt"
    out = job / "eval"
    argv = [
        "eval", f"--gin_search_paths={job}", TINY,
        "--gin_file=prompt_tuning/configs/runs/prompt_eval.gin",
        "--gin.MIXTURE_OR_TASK_NAME='my_sst2'", "--gin.MIXTURE_OR_TASK_MODULE='my_glue'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
        f"--gin.CHECKPOINT_PATH='{TINY_CHECKPOINT}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
        "--gin.utils.DatasetConfig.split='validation'", "--gin.utils.DatasetConfig.batch_size=128",
        "--gin.USE_CACHED_TASKS=False", f"--gin.PROMPT_FILE='{prompt}'",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    [metrics] = [
        json.loads(line) for line in (out / "inference_eval" / "my_sst2-metrics.jsonl").open()
    ]
    assert metrics["step"] == 3  # the frozen checkpoint's own step, as T5X logs it
    logged = [json.loads(line) for line in (job / "model" / "eval_history.jsonl").open()][-1]
    assert metrics["accuracy"] == pytest.approx(logged["results"]["my_sst2"]["accuracy"], abs=1e-6)
    assert (out / "inference_eval" / "my_sst2-000003.jsonl").exists()  # the predictions
    assert list((out / "inference_eval").glob("my_sst2/events.out.tfevents.*"))


def test_t5x_infer_writes_its_jsonl(job, capsys):
    prompt = job / "model" / "prompts" / "checkpoint_7.npy"
    out = job / "infer"
    assert cli.main(on_checkpoint("infer", out, prompt, LENGTHS)) == 0
    written = out / "my_sst2-predict.jsonl-00000-of-00001"
    rows = [json.loads(line) for line in written.open()]
    assert len(rows) == 32 and (out / f"{written.name}.COMPLETED").exists()
    assert {r["prediction"] for r in rows} <= {"positive", "negative"}
    assert rows[0]["inputs"]["inputs_pretokenized"].startswith("topic: ")
    assert rows[0]["inputs"]["targets_pretokenized"] in ("positive", "negative")
    # The same prompt, read back through the run: the same predictions as the run's own infer.
    assert cli.main(["infer", f"--gin.MODEL_DIR={job / 'model'}"]) == 0
    [own] = (job / "model").glob("predictions_validation_step7.jsonl")
    assert [r["prediction"] for r in rows] == [
        json.loads(line)["prediction"] for line in own.open()
    ]


def test_sst2_demo_xxl_shs_partitioning_flags(capsys):
    """sst2-demo-xxl.sh's `--gin.partitioning.PjitPartitioner.model_parallel_submesh=(4, 4, 1, 2)`
    asks for 32 model-parallel devices: resolved, then refused in one line on these 8."""
    argv = ["train", TINY, *SST2_DEMO_FILES[1:], *SST2_DEMO_FLAGS, "--gin.MODEL_DIR='/tmp/never'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'", "--gin.TRAIN_STEPS=10",
            "--gin.BATCH_SIZE=32",
            "--gin.partitioning.PjitPartitioner.model_parallel_submesh=(4, 4, 1, 2)"]  # fmt: skip
    assert cli.main(argv) == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "NUM_PARTITIONS=32 does not divide the 8 devices" in err, err


def test_t5x_eval_of_a_runs_own_checkpoint_reads_the_run(job, capsys):
    """CHECKPOINT_PATH may name one of this project's run checkpoints (a prompt-only one): the
    run is read as it trained, its prompt from the checkpoint, at that step."""
    out = job / "eval_run"
    argv = [
        "eval", TINY, "--gin_file=t5x/configs/runs/eval.gin",
        "--gin.MIXTURE_OR_TASK_NAME='my_sst2'", "--gin.MIXTURE_OR_TASK_MODULE='my_glue'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
        f"--gin.CHECKPOINT_PATH='{job / 'model' / 'checkpoint_7'}'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'", "--gin.utils.DatasetConfig.split='validation'",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    [metrics] = [
        json.loads(line) for line in (out / "inference_eval" / "my_sst2-metrics.jsonl").open()
    ]
    logged = [json.loads(line) for line in (job / "model" / "eval_history.jsonl").open()][-1]
    assert metrics["step"] == logged["step"] == 7
    assert metrics["accuracy"] == pytest.approx(logged["results"]["my_sst2"]["accuracy"], abs=1e-6)
    # With prompt_eval.gin's PROMPT_FILE as well: refused in one line (the run holds its prompt).
    argv[2] = "--gin_file=prompt_tuning/configs/runs/prompt_eval.gin"
    assert (
        cli.main([*argv, f"--gin.PROMPT_FILE='{job / 'model' / 'prompts' / 'checkpoint_7.npy'}'"])
        == 2
    )
    assert "leave PROMPT_FILE out" in capsys.readouterr().err


# ---- decoding as T5X's gin files choose it ---------------------------------------------------


def decoding_bound(*files: str, bindings=()):

    from prompt_transfer.network.decoding import Decoding

    gin_utils.configure(["runs/eval_run", *files], ["MODEL_DIR = '/tmp/m'", *bindings])
    return gin_utils.configured(Decoding)()


def test_the_decoding_gin_files_choose_beam_search_and_nucleus_sampling():
    beam = decoding_bound("prompt_tuning/configs/models/decoding/beam_search.gin")
    assert (beam.method, beam.num_decodes, beam.alpha) == ("beam_search", 4, 0.6)
    nucleus = decoding_bound("prompt_tuning/configs/models/decoding/nucleus_sampling.gin")
    assert (nucleus.method, nucleus.temperature, nucleus.topp, nucleus.topk) == (
        "temperature_sample", 1.0, 0.9, 0)  # fmt: skip
    assert decoding_bound().method == "greedy"  # the project's default
    wider = decoding_bound(
        "prompt_tuning/configs/models/decoding/beam_search.gin",
        bindings=["models.EncoderDecoderModel.predict_batch_with_aux.num_decodes = 8"],
    )
    assert wider.num_decodes == 8
    from prompt_transfer.base.settings import SettingError

    with pytest.raises(SettingError, match=r"^decoding.temperature_sample.topp=1.5 must be .*<= 1"):
        decoding_bound(
            "prompt_tuning/configs/models/decoding/nucleus_sampling.gin",
            bindings=["decoding.temperature_sample.topp = 1.5"],
        )


def test_decode_follows_the_chosen_method():
    """Beam search keeps beam search's best beam; a nucleus so small it holds one token is
    greedy decoding; top-k 1 likewise."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from conftest import tiny_config
    from prompt_transfer.model.encoder_decoder import EncoderDecoderModel
    from prompt_transfer.network.decoding import Decoding

    module = t5.T5(tiny_config())
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 60, (3, 7)), jnp.int32)
    params = module.init(jax.random.PRNGKey(0), tokens, tokens)["params"]
    model = EncoderDecoderModel(module)
    greedy = np.asarray(model.predict(params, tokens, 6))
    beams, _ = model.predict_beam(params, tokens, 6, 3, 0.6)
    np.testing.assert_array_equal(
        model.decode(params, tokens, 6, Decoding("beam_search", num_decodes=3)), beams[:, 0]
    )
    key = jax.random.PRNGKey(1)
    for how in (Decoding("temperature_sample", topp=1e-6), Decoding("temperature_sample", topk=1)):
        np.testing.assert_array_equal(model.decode(params, tokens, 6, how, key), greedy)
    sampled = model.decode(params, tokens, 6, Decoding("temperature_sample", temperature=5.0), key)
    assert not np.array_equal(np.asarray(sampled), greedy)  # a hot sample strays from greedy


def test_a_runs_infer_with_a_decoding_file_still_ranks_labels(job, capsys):
    """prompt-tuning's decoding gin file beside a run (no run gin): a task with labels still
    ranks them, so the predictions are the run's own."""
    model_dir = job / "model"
    assert cli.main(["infer", f"--gin.MODEL_DIR={model_dir}"]) == 0
    own = [
        json.loads(x)["prediction"]
        for x in (model_dir / "predictions_validation_step7.jsonl").open()
    ]
    beam = "--gin_file=prompt_tuning/configs/models/decoding/beam_search.gin"
    out = job / "beam.jsonl"
    assert cli.main(["infer", beam, f"--gin.MODEL_DIR={model_dir}",
                     f"--gin.INFER_OUTPUT_FILE='{out}'"]) == 0  # fmt: skip
    assert [json.loads(x)["prediction"] for x in out.open()] == own


def test_t5x_infer_decodes_a_generative_task_by_beam_search(job, capsys):
    out = job / "infer_copy"
    argv = [
        "infer", TINY, "--gin_file=t5x/configs/runs/infer.gin",
        "--gin_file=prompt_tuning/configs/models/decoding/beam_search.gin",
        "--gin.MIXTURE_OR_TASK_NAME='my_copy'", "--gin.MIXTURE_OR_TASK_MODULE='my_glue'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 6}", "--gin.PROMPT_LENGTH=0",
        f"--gin.CHECKPOINT_PATH='{TINY_CHECKPOINT}'", f"--gin.INFER_OUTPUT_DIR='{out}'",
        "--gin.utils.DatasetConfig.split='validation'", "--gin.utils.DatasetConfig.batch_size=4",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in (out / "my_copy-predict.jsonl-00000-of-00001").open()]
    assert len(rows) == 8 and all(isinstance(r["prediction"], str) for r in rows)
    assert "method = 'beam_search'" in (out / "config.gin").read_text()


# ---- T5X's step count ------------------------------------------------------------------------


@pytest.fixture
def keyword(anchors):
    from synthetic_tasks import register_keyword_task

    from conftest import T5_VOCAB

    return register_keyword_task(T5_VOCAB)


def anchor_run(model_dir, *extra):
    from conftest import tiny_run_args

    return ["train", *tiny_run_args(model_dir, *extra, checkpoint=TINY_CHECKPOINT)]


def test_train_steps_count_on_from_the_checkpoints_step(keyword, tmp_path, capsys):
    """From the T5X-written checkpoint at step 3: TRAIN_STEPS is the step to stop at, its saves
    and evaluations count their periods from 3, TRAIN_STEPS_RELATIVE adds steps and decides
    when both are set, a TRAIN_STEPS not beyond 3 is refused in one line, and the library's
    entry says how many steps trained."""
    run = tmp_path / "run"
    periods = ["--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=2", "--gin.LOG_PERIOD=2"]
    assert cli.main(anchor_run(run, "--gin.TRAIN_STEPS=3", *periods)) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].endswith(
        "TRAIN_STEPS=3 is not beyond INITIAL_CHECKPOINT_PATH's step 3: TRAIN_STEPS counts the "
        "checkpoint's steps too (as T5X's), so give TRAIN_STEPS=6 for 3 steps more, or "
        "TRAIN_STEPS_RELATIVE=3"
    )
    assert not run.exists()
    lib = tmp_path / "lib"
    argv = anchor_run(run, "--gin.TRAIN_STEPS=7", *periods, f"--gin.LIBRARY_DIR='{lib}'")
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "steps 4-7: 4 steps (counting on from INITIAL_CHECKPOINT_PATH's step 3)" in out.err
    assert json.loads(out.out.splitlines()[-1])["step"] == 7
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_5", "checkpoint_7"]
    history = [json.loads(x)["step"] for x in (run / "eval_history.jsonl").open()]
    assert history == [5, 7]
    assert json.loads((run / "run.json").read_text())["start_step"] == 3
    [entry] = [json.loads(p.read_text()) for p in lib.glob("*/meta.json")]
    assert entry["steps"] == 4  # steps trained, not the step reached
    # Both set: TRAIN_STEPS_RELATIVE decides, as in T5X, and says so; a run resumes to it.
    argv = anchor_run(run, "--gin.TRAIN_STEPS=100", "--gin.TRAIN_STEPS_RELATIVE=6", *periods,
                      f"--gin.LIBRARY_DIR='{lib}'", "--resume")  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "TRAIN_STEPS_RELATIVE=6 decides (as in T5X): the run stops at step 9" in out.err
    assert json.loads(out.out.splitlines()[-1])["step"] == 9


def test_a_run_that_counted_from_zero_is_not_counted_again(keyword, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(anchor_run(run, "--gin.TRAIN_STEPS_RELATIVE=2", "--gin.SAVE_PERIOD=2",
                               "--gin.EVAL_PERIOD=0")) == 0  # fmt: skip
    record = json.loads((run / "run.json").read_text())
    del record["start_step"]  # as a run written before T5X's count
    (run / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    argv = anchor_run(run, "--gin.TRAIN_STEPS_RELATIVE=4", "--gin.SAVE_PERIOD=2",
                      "--gin.EVAL_PERIOD=0", "--resume")  # fmt: skip
    assert cli.main(argv) == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "holds a run that counted its steps from 0" in err and "--overwrite" in err
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_5"]


def test_seqio_cached_tasks_are_read_with_use_cached_tasks(job, capsys):
    """USE_CACHED_TASKS=True with --seqio_additional_cache_dirs reads SeqIO's cache, in the
    format seqio_cache_tasks writes (`prompt-transfer cache-tasks` writes it without Beam), and
    it is the cache that is read, not the source; a task that is not cached is refused in one
    line before any work, as is a cache folder that does not exist."""
    import tensorflow as tf

    cache = job / "cache"
    argv = ["cache-tasks", "--tasks=my_sst2", f"--output_cache_dir={cache}",
            "--module_import=my_glue"]  # fmt: skip
    assert cli.main(argv) == 0
    folder = cache / "my_sst2"
    assert sorted(p.name for p in folder.iterdir()) == [
        "COMPLETED", "info.train.json", "info.validation.json", "stats.train.json",
        "stats.validation.json", "train.tfrecord-00000-of-00001",
        "validation.tfrecord-00000-of-00001",
    ]  # fmt: skip
    info = json.loads((folder / "info.validation.json").read_text())
    assert info["features"]["inputs"] == {"dtype": "int32", "shape": [None]}
    assert json.loads((folder / "stats.validation.json").read_text())["examples"] == 32
    # Keep the first 12 cached validation examples: a read of the cache returns those 12.
    record = folder / "validation.tfrecord-00000-of-00001"
    kept = list(tf.data.TFRecordDataset(str(record)).take(12).as_numpy_iterator())
    with tf.io.TFRecordWriter(str(record)) as out:
        for row in kept:
            out.write(row)
    prompt = job / "model" / "prompts" / "checkpoint_7.npy"

    def infer(out, *extra):
        status = cli.main(on_checkpoint("infer", out, prompt, LENGTHS, *extra))
        rows = out / "my_sst2-predict.jsonl-00000-of-00001"
        return status, [json.loads(line) for line in rows.open()] if status == 0 else []

    # T5X's infer.gin binds utils.DatasetConfig.use_cached itself (False): a user sets that.
    status, cached = infer(job / "cached", "--gin.utils.DatasetConfig.use_cached=True",
                           f"--seqio_additional_cache_dirs={cache}")  # fmt: skip
    assert status == 0 and len(cached) == 12
    status, source = infer(job / "source")
    assert status == 0 and len(source) == 32
    assert cached == source[:12]  # the same examples, in the order they were cached
    capsys.readouterr()
    # T5X's finetune.gin reads cached tasks (its USE_CACHED_TASKS = True): my_copy is not cached.
    run = job / "never"
    argv = ["train", TINY, *SST2_DEMO_FILES[1:], "--gin.CLASS_LABELS=['positive', 'negative']",
            f"--gin.MODEL_DIR='{run}'", "--gin.MIXTURE_OR_TASK_NAME='my_copy'",
            "--gin.MIXTURE_OR_TASK_MODULE='my_glue'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
            f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'", "--gin.TRAIN_STEPS=5",
            f"--seqio_additional_cache_dirs={cache}"]  # fmt: skip
    assert cli.main(argv) == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "USE_CACHED_TASKS=True, but task 'my_copy' is not cached" in err
    assert "--seqio_additional_cache_dirs=DIR" in err and not run.exists()
    argv[-1] = f"--seqio_additional_cache_dirs={job / 'nowhere'}"
    assert cli.main(argv) == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert f"--seqio_additional_cache_dirs: {job / 'nowhere'} is no folder" in err


def test_prompt_file_may_name_a_library_entry(job, capsys, monkeypatch):
    """PROMPT_FILE may be a library entry, by its folder or by its id in the default library
    ($PROMPT_TRANSFER_LIBRARY): scored as training logged it; on another frozen model than the
    one it trained with, refused in one line."""
    import numpy as np

    lib = job / "lib"
    assert cli.main(["library", "add", str(job / "model"), f"--library={lib}"]) == 0
    [meta] = lib.glob("*/meta.json")
    entry = meta.parent.name
    trained = np.load(job / "model" / "prompts" / "checkpoint_7.npy")
    np.testing.assert_array_equal(np.load(meta.parent / "prompt.npy"), trained)
    monkeypatch.setenv("PROMPT_TRANSFER_LIBRARY", str(lib))

    def score(given, out):
        return cli.main(on_checkpoint("eval", out, given, LENGTHS))

    for given, out in ((entry, job / "eval_id"), (lib / entry, job / "eval_folder")):
        assert score(given, out) == 0
        assert scored(out)["accuracy"] == pytest.approx(logged_accuracy(job), abs=1e-6)
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "model_fingerprint": "0123456789abcdef"}))
    capsys.readouterr()
    assert score(entry, job / "eval_other") == 2
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert f"library entry {entry} trained with the frozen model" in err
    assert "give the checkpoint it trained with" in err


def test_t5x_eval_gin_measures_the_longest_example_when_lengths_are_none(job, capsys):
    """T5X's eval.gin leaves TASK_FEATURE_LENGTHS None: the split's longest example (EOS
    included) is measured and said in a line; the score is the one training logged."""
    prompt = job / "model" / "prompts" / "checkpoint_7.npy"

    out = job / "eval_none"
    assert cli.main(on_checkpoint("eval", out, prompt)) == 0  # no TASK_FEATURE_LENGTHS
    accuracy, said = scored(out)["accuracy"], capsys.readouterr().err
    [line] = [x for x in said.splitlines() if "TASK_FEATURE_LENGTHS=None" in x]
    measured = re.search(r"\{'inputs': (\d+), 'targets': (\d+)\}", line)
    assert measured and line.count("validation example of my_sst2") == 1
    inputs, targets = map(int, measured.groups())
    # The keyword task's inputs are 'topic:' and a few words; its labels one or two pieces.
    assert 3 <= inputs <= 16 and 2 <= targets <= 4
    # Nothing cut, only less padding: the score training logged with {'inputs': 16, 'targets': 4}.
    assert accuracy == pytest.approx(logged_accuracy(job), abs=1e-6)
