"""The bad-input catalogue: every mistake gets one line that names the bad thing and nothing
after it, exit status 2, and leaves every existing file as it was.

One small world is prepared once (a finished tiny run, a library, task files, a file that is not
UTF-8); each case runs one command against it in-process and compares the world's files, byte
for byte, before and after. A refusal that comes once orbax has started (a resume whose
checkpoint does not fit) also runs as its own process, whose exit would show threads left open.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_tasks import register_keyword_task

from conftest import T5_VOCAB, TINY_CHECKPOINT
from prompt_transfer import cli
from prompt_transfer.transfer import library

TINY = [
    "--gin_file=experiments/prompt_tuning_tiny",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}",
    f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'",
]
TASK = "--gin.MIXTURE_OR_TASK_NAME='test_keyword'"
FRESH = "--gin.MODEL_DIR='{w}/fresh'"  # a MODEL_DIR no case may create
RUN = "--gin.MODEL_DIR='{w}/run'"  # the finished run


def train(*extra):
    return ["train", *TINY, TASK, FRESH, *extra]


def transfer(strategy, *extra):
    return train(f"--gin_file=transfer/{strategy}.gin", "--gin.LIBRARY='{w}/library'", *extra)


def score(*extra):
    return [
        "score",
        "--checkpoint",
        str(TINY_CHECKPOINT),
        "--inputs",
        "a",
        "--targets",
        "b",
        *extra,
    ]


def add_task(*extra, name="my_task", train_file="{w}/train.tsv"):
    base = ["add-task", "--name", name, "--train", train_file, "--validation", "{w}/train.tsv"]
    return [*base, "--inputs", "sentence", "--labels", "yes", "no", *extra]


CATALOGUE = {
    # configuration: train
    "misspelled macro": (train("--gin.TRAIN_STEP=100"), "did you mean TRAIN_STEPS"),
    "float steps": (train("--gin.TRAIN_STEPS=3e4"), "TRAIN_STEPS=30000.0 must be a whole number"),
    "zero steps": (train("--gin.TRAIN_STEPS=0"), "TRAIN_STEPS=0 must be a whole number >= 1"),
    "zero save period": (train("--gin.SAVE_PERIOD=0"), "SAVE_PERIOD=0 must be a whole number"),
    "negative batch": (train("--gin.BATCH_SIZE=-8"), "BATCH_SIZE=-8 must be a whole number"),
    "fractional prompt": (train("--gin.PROMPT_LENGTH=2.5"), "PROMPT_LENGTH=2.5 must be"),
    "text period": (train("--gin.EVAL_PERIOD=often"), "EVAL_PERIOD='often' must be"),
    "lengths without targets": (
        train("--gin.TASK_FEATURE_LENGTHS={'inputs': 64}"),
        "TASK_FEATURE_LENGTHS={'inputs': 64} lacks 'targets'",
    ),
    "negative patience": (
        train("--gin.EARLY_STOPPING_PATIENCE=-1"),
        "EARLY_STOPPING_PATIENCE=-1 must be a whole number >= 0",
    ),
    "broken regex": (train("--gin.TRAINABLE='['"), "TRAINABLE='[' is not a regular expression"),
    "partitions": (train("--gin.NUM_PARTITIONS=3"), "NUM_PARTITIONS=3 does not divide the 8"),
    "batch over devices": (train("--gin.BATCH_SIZE=12"), "BATCH_SIZE=12 does not split"),
    "frozen dtype": (train("--gin.FROZEN_DTYPE='fp8'"), "FROZEN_DTYPE='fp8' must be one of"),
    "data shards": (train("--gin.DATA_SHARDS=3"), "DATA_SHARDS=3 must be a multiple of the 1"),
    "index without coordinator": (
        train("--process_index=1"),
        "--process_index needs --coordinator_address",
    ),
    "coordinator without count": (
        train("--coordinator_address=localhost:1234"),
        "--coordinator_address needs --process_count and --process_index",
    ),
    "index out of range": (
        train("--coordinator_address=localhost:1", "--process_count=2", "--process_index=2"),
        "--process_index=2 is not in 0..1",
    ),
    "no task": (["train", *TINY, FRESH], "required gin macro(s) not set: MIXTURE_OR_TASK_NAME"),
    "unknown task": (
        ["train", *TINY, FRESH, "--gin.MIXTURE_OR_TASK_NAME='test_keywrd'"],
        "did you mean test_keyword",
    ),
    "unknown gin file": (
        ["train", "--gin_file=experiments/prompt_tuning_tiyn", FRESH],
        "did you mean experiments/prompt_tuning_tiny",
    ),
    "no gin file": (["train", FRESH], "no --gin_file given"),
    "unknown flag": (train("--frobnicate"), "unknown argument '--frobnicate'"),
    "misspelled parameter": (
        train("--gin.train_state.OptimizerConfig.learning_rte=0.1"),
        "learning_rte",
    ),
    "missing prompt file": (
        train("--gin_file=prompts/file.gin", "--gin.PROMPT_FILE='{w}/nope.npy'"),
        "nope.npy",
    ),
    "prompt file of another width": (
        train("--gin_file=prompts/file.gin", "--gin.PROMPT_FILE='{w}/wide.npy'"),
        "has shape (5, 12) but the run expects (5, 4)",
    ),
    "frozen deep prompt": (train("--gin.DEEP_PROMPT=True"), "leaves the deep prompt"),
    "missing checkpoint": (
        ["train", *TINY[:2], TASK, FRESH, "--gin.INITIAL_CHECKPOINT_PATH='{w}/no_ckpt'"],
        "no_ckpt",
    ),
    "checkpoint of another size": (
        ["train", *TINY, TASK, FRESH, "--gin_file=models/small.gin"],
        "but the configured model expects",
    ),
    "MODEL_DIR is a file": (
        ["train", *TINY, TASK, "--gin.MODEL_DIR='{w}/train.tsv'"],
        "MODEL_DIR='{w}/train.tsv' is a file, not a folder; give a folder's path",
    ),
    "MODEL_DIR inside a file": (
        ["train", *TINY, TASK, "--gin.MODEL_DIR='{w}/train.tsv/run'"],
        "MODEL_DIR='{w}/train.tsv/run' lies inside {w}/train.tsv, which is a file; give a",
    ),
    "LIBRARY_DIR is a file, refused before training": (
        train("--gin.LIBRARY_DIR='{w}/train.tsv'"),
        "LIBRARY_DIR='{w}/train.tsv' is a file, not a folder; give a folder's path",
    ),
    "LIBRARY_DIR quoted twice (a shell's quotes and gin's)": (
        train("--gin.LIBRARY_DIR=\"'{w}/lib'\""),
        "LIBRARY_DIR=\"'{w}/lib'\" starts with a quote mark (quoted twice?); quote the path once",
    ),
    "WORK_DIR is a file": (
        ["spot", "--gin_file=experiments/spot_tiny", "--gin.WORK_DIR='{w}/train.tsv'"]
        + ["--gin.SOURCES=['test_keyword']", "--gin.TARGETS=['test_keyword']", TINY[2]],
        "WORK_DIR='{w}/train.tsv' is a file, not a folder; give a folder's path",
    ),
    "gin file that is a folder": (
        ["train", "--gin_file={w}/library", TASK, FRESH],
        "--gin_file={w}/library is a folder; give a gin file",
    ),
    "prompt file that is a folder": (
        train("--gin_file=prompts/file.gin", "--gin.PROMPT_FILE='{w}/library'"),
        "PROMPT_FILE='{w}/library' is a folder; give a .npy file [P, E]",
    ),
    "TFDS folder that is a file": (
        train("--tfds_data_dir={w}/train.tsv"),
        "--tfds_data_dir={w}/train.tsv is a file, not a folder; give a folder's path",
    ),
    "checkpoint that is a file": (
        ["train", *TINY[:2], TASK, FRESH, "--gin.INITIAL_CHECKPOINT_PATH='{w}/train.tsv'"],
        "checkpoint {w}/train.tsv is a file; give a checkpoint_N folder",
    ),
    "changed config in a run's MODEL_DIR": (
        ["train", *TINY, TASK, RUN, "--gin.PROMPT_LENGTH=7"],
        "holds a run with a different config",
    ),
    "resume with another prompt length": (
        ["train", *TINY, TASK, RUN, "--gin.PROMPT_LENGTH=7", "--resume"],
        "(trainable/encoder/prompt/prompt is (5, 4) there, (7, 4) here)",
    ),
    "resume with another model": (
        ["train", *TINY[:2], TASK, RUN, "--gin.INITIAL_CHECKPOINT_PATH=None", "--resume"],
        "was trained with the frozen model",
    ),
    # eval and infer
    "misspelled checkpoint": (
        ["eval", *TINY, TASK, RUN, "--gin.CHECKPOINT='bset'"],
        "CHECKPOINT='bset' is unknown",
    ),
    "eval without a run": (["eval", *TINY, TASK, FRESH], "no latest checkpoint in"),
    "eval a MODEL_DIR that is a file": (
        ["eval", *TINY, TASK, "--gin.MODEL_DIR='{w}/train.tsv'"],
        "MODEL_DIR='{w}/train.tsv' is a file, not a folder; give a folder's path",
    ),
    "missing inference input": (
        ["infer", *TINY, TASK, RUN, "--gin.INFER_INPUT_FILE='{w}/nope.txt'"],
        "INFER_INPUT_FILE='{w}/nope.txt' does not exist; give a text file, one input per line",
    ),
    "inference input a folder": (
        ["infer", *TINY, TASK, RUN, "--gin.INFER_INPUT_FILE='{w}/library'"],
        "INFER_INPUT_FILE='{w}/library' is a folder; give a text file, one input per line",
    ),
    "inference output a folder": (
        ["infer", *TINY, TASK, RUN, "--gin.INFER_OUTPUT_FILE='{w}/library'"],
        "INFER_OUTPUT_FILE='{w}/library' is a folder; give a file's path, e.g. {w}/library/",
    ),
    "inference input not UTF-8": (
        ["infer", *TINY, TASK, RUN, "--gin.INFER_INPUT_FILE='{w}/latin1.txt'"],
        "latin1.txt: not UTF-8 text (byte 0xe9",
    ),
    # transfer
    "single source without a source": (
        transfer("single_source"),
        "required gin macro(s) not set: SOURCE_PROMPT",
    ),
    "unknown source entry": (
        transfer("single_source", "--gin.SOURCE_PROMPT='no_such_entry'"),
        "no library entry 'no_such_entry'",
    ),
    "source entry outside the library": (
        transfer("single_source", "--gin.SOURCE_PROMPT='../escape'"),
        "'../escape' is not a library entry id",
    ),
    "source of another length": (
        transfer("single_source", "--gin.SOURCE_PROMPT='{entry}'"),
        "choose a length fit: truncate, pad or interpolate",
    ),
    "transfer from a missing library": (
        train(
            "--gin_file=transfer/single_source.gin",
            "--gin.LIBRARY='{w}/libary'",
            "--gin.SOURCE_PROMPT='{entry}'",
        ),
        "no library at {w}/libary (no such folder); give an existing library's folder",
    ),
    "unknown length fit": (
        transfer("single_source", "--gin.SOURCE_PROMPT='{entry}'", "--gin.LENGTH_FIT='stretch'"),
        "LENGTH_FIT='stretch' must be one of 'error', 'truncate', 'pad', 'interpolate'",
    ),
    "unknown similarity": (
        transfer(
            "weighted_average",
            "--gin.SIMILARITY_METRIC='cosine_avg'",
            "--gin.TARGET_EMBEDDING='{entry}'",
        ),
        "SIMILARITY_METRIC='cosine_avg' must be one of 'cosine_avg_tokens', 'cosine_per_tok",
    ),
    "retrieval without an embedding": (
        transfer("weighted_average"),
        "required gin macro(s) not set: TARGET_EMBEDDING",
    ),
    # the library
    "list a missing library": (
        ["library", "list", "--library", "{w}/libary"],
        "--library={w}/libary: no library there (no such folder); give an existing library's",
    ),
    "rank in a missing library": (
        ["library", "rank", "{entry}", "--library", "{w}/libary"],
        "--library={w}/libary: no library there (no such folder)",
    ),
    "export from a missing library": (
        ["library", "export", "{entry}", "--output", "{w}/x.npy", "--library", "{w}/libary"],
        "--library={w}/libary: no library there (no such folder)",
    ),
    "library that is a file": (
        ["library", "list", "--library", "{w}/train.tsv"],
        "--library={w}/train.tsv is a file, not a folder; give a folder's path",
    ),
    "add to a library that is a file": (
        ["library", "add", "{w}/wide.npy", "--task", "t", "--model", "m"]
        + ["--library", "{w}/train.tsv"],
        "--library={w}/train.tsv is a file, not a folder; give a folder's path",
    ),
    "add a prompt that is not 2-D": (
        ["library", "add", "{w}/flat.npy", "--task", "t", "--model", "m"]
        + ["--library", "{w}/library"],
        "{w}/flat.npy holds an array of shape (5,), not a prompt; give a 2-D array [P, E]",
    ),
    "show outside the library": (
        ["library", "show", "../escape", "--library", "{w}/library"],
        "is not a library entry id",
    ),
    "show an unknown entry": (
        ["library", "show", "nope", "--library", "{w}/library"],
        "no library entry 'nope'",
    ),
    "import a text file": (
        ["library", "import", "{w}/train.tsv", "--model", "m", "--library", "{w}/library"],
        "is not a NumPy array file",
    ),
    "import without a model": (
        ["library", "import", "{w}/wide.npy", "--library", "{w}/library"],
        "library import needs --model",
    ),
    "export neither entry nor run": (
        ["library", "export", "--output", "{w}/x.npy", "--library", "{w}/library"],
        "takes an ENTRY or --run MODEL_DIR",
    ),
    "export a run that never evaluated": (
        ["library", "export", "--run", "{w}/run", "--output", "{w}/x.npy"],
        "no best prompt in",
    ),
    "export a missing run": (
        ["library", "export", "--run", "{w}/rnu", "--output", "{w}/x.npy"],
        "--run={w}/rnu: no run there (no such folder); give a run's MODEL_DIR",
    ),
    "export onto a folder": (
        ["library", "export", "{entry}", "--output", "{w}/run", "--library", "{w}/library"],
        "--output={w}/run is a folder; give a file's path, e.g. {w}/run/prompt.npy",
    ),
    # user tasks
    "task name outside its folder": (add_task(name="../escape"), "may hold letters, digits"),
    "task file not UTF-8": (add_task(train_file="{w}/latin1.tsv"), "not UTF-8 text"),
    "task file without the column": (add_task("--inputs", "text"), "lacks column(s) ['text']"),
    "task label outside the labels": (
        add_task(train_file="{w}/maybe.tsv"),
        "example 1 has label 'maybe'",
    ),
    "missing task file": (add_task(train_file="{w}/nope.tsv"), "task file not found"),
    "empty task split": (
        add_task(train_file="{w}/header_only.tsv"),
        "header_only.tsv: the train split has no examples",
    ),
    # models and scoring
    "unknown size": (score("--size", "huge"), "unknown model size 'huge'"),
    "prompt of another width": (
        score("--size", "tiny", "--prompt", "{w}/wide.npy", "--vocab", str(T5_VOCAB)),
        "a prompt of width 12 fits neither this model's input prompt (4)",
    ),
    "score with a prompt of a missing library": (
        score("--size", "tiny", "--prompt-entry", "{entry}", "--library", "{w}/libary"),
        "no library at {w}/libary (no such folder)",
    ),
    "two prompts": (
        score("--size", "tiny", "--prompt", "{w}/wide.npy", "--prompt-entry", "x"),
        "--prompt or --prompt-entry, not both",
    ),
    "convert a missing model": (
        ["convert", "--hf", "{w}/no_hf", "--output", "{w}/converted"],
        "no_hf",
    ),
    "convert onto existing output": (
        ["convert", "--hf", "{w}/no_hf", "--output", "{w}/run"],
        "already exists",
    ),
    # the SPoT flow
    "flow macro typo": (
        ["spot", "--gin_file=experiments/demo", "--gin.WORK_DIR='{w}/spot'", "--gin.TOP_KK=3"],
        "did you mean TOP_K",
    ),
}


def _snapshot(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(anchors, tmp_path_factory):
    register_keyword_task(T5_VOCAB)
    w = tmp_path_factory.mktemp("world")
    run = ["train", *TINY, TASK, f"--gin.MODEL_DIR='{w}/run'", "--gin.TRAIN_STEPS=2"]
    assert cli.main([*run, "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=0"]) == 0
    lib = library.Library(w / "library")
    entry = lib.add(np.ones((3, 4), np.float32), task="source", model="tiny", model_fingerprint="")
    np.save(w / "wide.npy", np.zeros((5, 12), np.float32))
    np.save(w / "flat.npy", np.zeros(5, np.float32))
    (w / "train.tsv").write_text("sentence\tlabel\ngood day\tyes\nbad day\tno\n")
    (w / "maybe.tsv").write_text("sentence\tlabel\nfine\tmaybe\n")
    (w / "header_only.tsv").write_text("sentence\tlabel\n")
    (w / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9\tyes\n".encode("latin-1"))
    (w / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    return w, entry.id


def test_the_catalogue_is_large():
    assert len(CATALOGUE) >= 40


def assert_one_refusal(err: str, command: str, message: str) -> None:
    """stderr of a refused command: the lines it prints on purpose ("[prompt-transfer] ..."
    progress) may come first; then its one refusal line, naming the bad thing, and nothing
    after it (no warning, no traceback, no thread's last words)."""
    lines = err.splitlines()
    assert err.endswith("\n") and lines, err
    *before, refusal = lines
    assert refusal.startswith(f"prompt-transfer {command}: error: "), err
    assert message in refusal, err
    assert all(line.startswith("[prompt-transfer] ") for line in before), err


def _argv(world, case):
    w, entry = world
    argv, message = CATALOGUE[case]
    fill = lambda text: text.replace("{w}", str(w)).replace("{entry}", entry)
    return [fill(a) for a in argv], fill(message)


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_a_bad_input_is_one_line_exit_2_and_changes_nothing(world, case, capfd, monkeypatch):
    w, _ = world
    monkeypatch.setenv("PROMPT_TRANSFER_TASKS", str(w.parent / "user_tasks"))
    argv, message = _argv(world, case)
    before = _snapshot(w)
    capfd.readouterr()
    assert cli.main(argv) == 2
    assert_one_refusal(capfd.readouterr().err, argv[0], message)
    assert _snapshot(w) == before  # nothing written, nothing changed
    assert not (w / "fresh").exists() and not (w / "spot").exists()


def test_a_refusal_at_restore_is_the_process_last_line(world, tmp_path):
    """Orbax reads a checkpoint with threads and an event loop of its own; a refusal there once
    printed its line inside 212 lines of their tracebacks (issue 23). The whole process, exit
    included, prints the one line last."""
    w, _ = world
    argv, message = _argv(world, "resume with another prompt length")
    main = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from synthetic_tasks import register_keyword_task; "
        "register_keyword_task(sys.argv[2]); "
        "from prompt_transfer import cli; sys.exit(cli.main(sys.argv[3:]))"
    )
    tests = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PROMPT_TRANSFER_JAX_CACHE=str(tmp_path / "jax"))
    before = _snapshot(w)
    done = subprocess.run(
        [sys.executable, "-c", main, tests, str(T5_VOCAB), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert_one_refusal(done.stderr, "train", message)
    assert _snapshot(w) == before
