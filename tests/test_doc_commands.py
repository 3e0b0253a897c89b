"""The docs run (issue 35, part 7): every `prompt-transfer` command line a user can copy from
README.md and docs/*.md (code blocks, and inline code that gives flags) is executed here, in the
order of its page, in a scratch folder, as typed:

- train, spot, study and demo with `--check` (everything validated, the resolved run printed,
  nothing trained), except the runs a later command of the docs reads, which train for real,
  cut down to 2 steps (README's quick start, its prompt-then-model run, and a stand-in for the
  demo's target run and library);
- eval, infer, forget, library, plan, prepare-offline and checkpoint-info for real;
- remote commands (gs://, GLUE's TFDS data, T5's checkpoints) up to their first remote read:
  they must fail there, in one line naming the remote thing, and nowhere earlier;
- commands with placeholders (`...`, `ID`, `/models/...`) only through the argument parser, and
  their list is reviewed here (PLACEHOLDERS), so a new one is looked at.

A wrong task name, gin file, macro or flag in the docs fails this test.
"""

import re
import shlex
from pathlib import Path

import pytest

from prompt_transfer import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]
FENCE = re.compile(r"^ {0,3}```[a-z]*\n(.*?)^ {0,3}```", re.S | re.M)
CODE_SPAN = re.compile(r"(?<!`)`([^`]+?)`(?!`)", re.S)
PROGRAMS = ("prompt-transfer", ".venv/bin/prompt-transfer")
# A value the user fills in: `...`, a choice, an optional flag, a name in capitals, an index.
PLACEHOLDER = re.compile(r"\.\.\.|^[^-].*\||^\[--|^(ID|DIR|MODEL_DIR)$|^i$|\.tsv$")
# Paths on the user's machine (a local T5X or Hugging Face model, a run of theirs).
THEIRS = re.compile(r"^/(models|adapters|runs)/")
REMOTE = re.compile(r"gs://|glue|_base\b")
# What a remote command's first remote read says (trainer/remote.py, batches.check_prepared).
REMOTE_SAID = re.compile(r"cannot be (read|written): no network|is not prepared in")
# Cut down, for the runs a later command reads: steps after the shipped model's own.
CUT_DOWN = ["--gin.TRAIN_STEPS_RELATIVE=2", "--gin.SAVE_PERIOD=2", "--gin.EVAL_PERIOD=2"]
CHECKED = ("train", "spot", "study", "demo")
# Reviewed: placeholder commands (page, subcommand), each parsed but not run.
PLACEHOLDERS = {
    ("README.md", "forget"), ("architecture.md", "train"), ("command_line.md", "convert"),
    ("command_line.md", "score"), ("command_line.md", "eval"), ("command_line.md", "forget"),
    ("library_and_transfer.md", "task-embedding"), ("peft.md", "convert"),
    ("peft.md", "library"), ("peft.md", "score"), ("pods.md", "train"), ("tasks.md", "add-task"),
}  # fmt: skip
# Reviewed: offline commands too long to run here, and the test that runs them cut down.
ELSEWHERE = {("pods.md", "plan"): "tests/test_plan.py (the same command on the tiny model)"}


def doc_commands() -> list[tuple[str, int, list[str]]]:
    """(page, line, argv without the program) of every command of the docs, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        spans = []
        for block in FENCE.finditer(text):
            start = text.count("\n", 0, block.start(1)) + 1
            pending, first = "", None
            for i, raw in enumerate(block.group(1).split("\n")):
                first = start + i if first is None else first
                if raw.rstrip().endswith("\\"):  # continued on the next line
                    pending += raw.rstrip()[:-1] + " "
                    continue
                spans.append((first, pending + raw))
                pending, first = "", None
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in CODE_SPAN.finditer(prose):
            words = span.group(1).split()
            if words and words[0] in PROGRAMS and any(w.startswith("--") for w in words):
                spans.append((prose.count("\n", 0, span.start()) + 1, span.group(1)))
        for line_no, line in sorted(spans):
            try:
                argv = shlex.split(line.strip().removeprefix("$ "), comments=True)
            except ValueError:
                continue
            if argv and argv[0] in PROGRAMS:
                found.append((page.name, line_no, argv[1:]))
    return found


def kind(argv: list[str]) -> str:
    """'placeholder' (values to fill in, or the user's own paths, unless the command stops at
    a remote read before them), 'remote' or 'offline'."""
    values = [a.partition("=")[2] if a.startswith("--") else a for a in argv]
    if any(PLACEHOLDER.search(v) for v in values):
        return "placeholder"
    if REMOTE.search(" ".join(argv)):
        return "remote"
    return "placeholder" if any(THEIRS.search(v) for v in values) else "offline"


def placeholder(argv: list[str]) -> bool:
    return kind(argv) == "placeholder"


def test_the_docs_commands_are_found_and_placeholders_reviewed():
    commands = doc_commands()
    assert len(commands) >= 30
    held = {(page, argv[0]) for page, _, argv in commands if placeholder(argv)}
    assert held == PLACEHOLDERS
    for page, line, argv in commands:  # every flag is one the (sub)command takes
        flags = {a.strip("[]").partition("=")[0] for a in argv if a.strip("[").startswith("--")}
        unknown = sorted(f for f in flags - options(argv) if not f.startswith(GIN_FLAGS))
        assert not unknown, f"{page}:{line}: {' '.join(argv)} takes no {unknown}"


GIN_FLAGS = ("--gin.", "--gin_file", "--gin_bindings", "--gin_search_paths", "--check",
             "--overwrite", "--resume")  # fmt: skip


def options(argv: list[str]) -> set[str]:
    """The option strings of the (sub-sub)command `argv` names."""
    import argparse

    parser = cli.build_parser()
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return set(parser._option_string_actions)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A user's folder with what the docs' later commands read: an input file for infer, and
    the demo's library and one of its target runs as stand-ins (2-step runs of the same
    experiment, so the demo need not run)."""
    import importlib
    import os

    from prompt_transfer.data import batches, vocab

    root = tmp_path_factory.mktemp("user")
    (root / "articles.txt").write_text("the match ended in a draw\nshares fell sharply\n")
    here = os.getcwd()
    # As in a user's shell: no $PROMPT_TRANSFER_VOCAB (this session sets T5's), and the offline
    # tasks registered with the shipped vocabulary, as a fresh process registers them.
    saved = os.environ.pop("PROMPT_TRANSFER_VOCAB", None)
    batches.load_registrations()
    offline = importlib.import_module("prompt_transfer_tasks.offline")
    vocab.follow_model(None)
    importlib.reload(offline)
    os.chdir(root)
    try:
        target = "runs/demo/targets/offline_bbc_topic_32shot/best_of_top_k/seed_0"
        for model_dir, task in (("runs/source", "offline_sentiment_apple_32shot"),
                                (target, "offline_bbc_topic_32shot")):  # fmt: skip
            argv = ["train", "--gin_file=experiments/deep_prompt_tuning_offline",
                    f"--gin.MODEL_DIR={model_dir}", f"--gin.MIXTURE_OR_TASK_NAME={task}",
                    *CUT_DOWN]  # fmt: skip
            assert cli.main(argv) == 0
        argv = ["library", "add", "runs/source", "--library", "runs/demo/library"]
        assert cli.main(argv) == 0
        yield root
    finally:
        os.chdir(here)
        if saved is not None:
            os.environ["PROMPT_TRANSFER_VOCAB"] = saved
        vocab.follow_model(None)
        importlib.reload(offline)  # the session's registrations again


def _ran(argv: list[str]) -> list[str]:
    """The command as this test runs it: checked, or cut down where a later command reads it."""
    verb = argv[0]
    if verb == "train" and any(a.startswith("--gin.MODEL_DIR=runs/") for a in argv):
        cut = CUT_DOWN + (["--gin.MODEL_STEPS=2"] if "prompt_then_model" in " ".join(argv) else [])
        return [*argv, *cut]
    if verb in CHECKED:
        return [*argv, "--check"]
    return argv


def test_every_docs_command_runs_as_typed(sandbox, capsys):
    failed = []
    for page, line, argv in doc_commands():
        if placeholder(argv) or (page, argv[0]) in ELSEWHERE:
            continue
        capsys.readouterr()
        status = cli.main(_ran(argv))
        err = capsys.readouterr().err
        said = [x for x in err.splitlines() if "error" in x]
        if kind(argv) == "remote":
            if status != 2 or len(said) != 1 or not REMOTE_SAID.search(said[0]):
                failed.append(f"{page}:{line} {' '.join(argv)} -> {status} {said}")
        elif status != 0:
            failed.append(f"{page}:{line} {' '.join(argv)} -> {status} {said}")
    assert failed == []
