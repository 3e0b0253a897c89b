"""Every setting is typed and checked before any work (prompt_transfer/base/settings.py).

The cases are generated, not listed: for every macro that `train` or `spot` reads (found by
walking what gin binds to RunSpec, TrainConfig and FlowConfig), a value of the wrong type, one
out of its range, and one naming nothing known is given to that command. Each must be refused
in one line on stderr naming the macro, with exit 2, nothing written, and no network built.
"""

import dataclasses
import typing
from collections.abc import Mapping

import pytest

from conftest import TINY_CHECKPOINT, tiny_run_args
from prompt_transfer import cli
from prompt_transfer.base import settings
from prompt_transfer.configure import gin_utils
from prompt_transfer.spot.config import FlowConfig
from prompt_transfer.study.config import StudyConfig
from prompt_transfer.trainer.config import RunSpec, TrainConfig
from prompt_transfer.trainer.train_state import OptimizerConfig
from prompt_transfer.transfer import initial

SOURCES = ["offline_sentiment_coachella", "offline_bbc_topic"]
TARGETS = ["offline_sentiment_apple_32shot"]
WORK = "/nonexistent/settings-test"  # replaced by each test's tmp_path


def _argv(command: str, work: str) -> list[str]:
    """`command`'s argv; "transfer" is a train whose prompt starts from a library, "attention"
    one that mixes library prompts per input, "compose" one built from sub-tasks' prompts."""
    if command == "train":
        return ["train", *tiny_run_args(f"{work}/run", "--gin.TRAIN_STEPS=4")]
    if command in ("transfer", "attention", "compose"):
        strategy = {"transfer": "best_of_top_k"}.get(command, command)
        return [
            *_argv("train", work),
            f"--gin_file=transfer/{strategy}",
            f"--gin.LIBRARY='{work}/library'",
            "--gin.TARGET_EMBEDDING='embedding'",
            *(["--gin.COMPOSE_SOURCES=['a', 'b']"] if command == "compose" else []),
        ]
    return [
        command,
        f"--gin_file=experiments/{command}_tiny",
        f"--gin.WORK_DIR='{work}/flow'",
        f"--gin.SOURCES={SOURCES}",
        f"--gin.TARGETS={TARGETS}",
        f"--gin.INITIAL_CHECKPOINT_PATH='{TINY_CHECKPOINT}'",
    ]


# What each command reads; spot's runs read RunSpec and TrainConfig as train does, and a
# transfer run's TrainConfig holds the TransferInit of gin/transfer/.
READS = {
    "train": (RunSpec, TrainConfig),
    "transfer": (TrainConfig,),
    "attention": (TrainConfig,),
    "compose": (TrainConfig,),
    "spot": (FlowConfig,),
    "study": (StudyConfig,),
}


# The commands whose macros a command's own exclude: each builds on the ones before it.
BELOW = {
    "transfer": ("train",),
    "attention": ("train", "transfer"),
    "compose": ("train", "transfer", "attention"),
}


def _macros(command: str) -> dict[str, settings.Bound]:
    """{macro: how it is bound} for every macro the command's settings read (for "transfer",
    those a plain train does not; for "attention", those a transfer does not)."""
    launch = gin_utils.parse_command_line(_argv(command, WORK)[1:])
    gin_utils.configure(launch.files, launch.bindings)
    found = {}
    for cls in READS[command]:
        for bound in settings.bound_settings(cls):
            if bound.macro is not None:
                found.setdefault(bound.macro, bound)
    for other in BELOW.get(command, ()):
        known = _macros(other)  # once: in the comprehension's test it ran once per macro
        found = {m: b for m, b in found.items() if m not in known}
    return found


def _wrong_type(tp) -> str | None:
    """A gin literal that is not of type `tp`."""
    args = typing.get_args(tp)
    if str in args or tp is str:
        return "5"
    if tp in (int, float) or int in args or float in args:
        return "'x'"
    if tp is bool:
        return "'yes'"
    return "5"  # a list, a mapping or a dataclass: never a bare number


def _bad_values(bound: settings.Bound) -> dict[str, str]:
    """{what is wrong: a gin literal} for one bound macro."""
    rule, tp = settings.rule_of(bound.field), bound.type
    cases = {"wrong type": _wrong_type(tp)}
    outside = [
        x
        for x in (
            None if rule.least is None else rule.least - 1,
            rule.above,
            None if rule.most is None else rule.most + 1,
            rule.below,
        )
        if x is not None
    ]
    if outside:
        x = int(outside[0]) if tp is int or typing.get_args(tp)[-1:] == (int,) else outside[0]
        if typing.get_origin(tp) is Mapping or isinstance(bound.value, Mapping):
            cases["out of range"] = repr({k: x for k in bound.value})
        else:
            cases["out of range"] = repr(x)
    if rule.one_of is not None:
        many = typing.get_origin(tp) in (list, tuple, typing.get_origin(typing.Sequence[str]))
        cases["unknown name"] = "['nope']" if many else "'nope'"
    if rule.non_empty:
        cases["empty"] = "[]"
    if rule.valid is not None:  # the first of these the rule refuses: a regex, a folder
        cases["invalid"] = next(v for v in ("'['", repr(__file__)) if rule.valid(eval(v)))
    return cases


def _cases():
    cases = []
    for command in READS:
        for macro, bound in sorted(_macros(command).items()):
            for kind, value in _bad_values(bound).items():
                case = f"{command}-{macro}-{kind}"
                cases.append(pytest.param(command, macro, value, id=case))
    # Names the schema cannot know until tasks are registered: checked before work all the same.
    cases += [
        pytest.param("train", "MIXTURE_OR_TASK_NAME", "'nope'", id="train-task-unknown name"),
        pytest.param("spot", "SOURCES", "['nope']", id="spot-SOURCES-unknown task"),
        pytest.param("spot", "TARGETS", "['nope']", id="spot-TARGETS-unknown task"),
        pytest.param("study", "SOURCES", "['nope']", id="study-SOURCES-unknown task"),
    ]
    return cases


CASES = _cases()


@pytest.fixture
def no_network(monkeypatch):
    """A command that got as far as building the frozen network failed this test."""
    from prompt_transfer.trainer import weights

    def refuse(*_, **__):
        raise AssertionError("a network was built before the settings were checked")

    monkeypatch.setattr(weights, "frozen_network", refuse)


@pytest.mark.parametrize("command, macro, value", CASES)
def test_a_bad_setting_is_one_line_before_any_work(
    command, macro, value, tmp_path, capsys, no_network
):
    argv = [*_argv(command, str(tmp_path)), f"--gin.{macro}={value}"]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"prompt-transfer {argv[0]}: error: {macro}="), err[0]
    assert not any(tmp_path.iterdir()), sorted(tmp_path.rglob("*"))


def test_the_generated_cases_cover_every_macro_of_the_schema():
    """Each command's macros are found from gin (a new field bound to a macro gets its cases
    without a new line here), and every macro gets a wrong type."""
    for command in READS:
        macros = _macros(command)
        ids = {c.id for c in CASES if c.id.startswith(f"{command}-")}
        assert all(f"{command}-{m}-wrong type" in ids for m in macros)
    assert {"LEARNING_RATE", "TASK_FEATURE_LENGTHS", "DEEP_PROMPT", "FROZEN_DTYPE"} <= set(
        _macros("train")
    )
    assert {"SOURCES", "STRATEGIES", "RETRIEVAL_METRIC", "TOP_K"} <= set(_macros("spot"))
    assert {"SIMILARITY_METRIC", "LENGTH_FIT", "CANDIDATE_STEPS"} <= set(_macros("transfer"))
    assert {"SOURCES", "SIMILARITY_METRICS", "STUDY_BASELINE"} <= set(_macros("study"))


@pytest.mark.parametrize(
    "value, wanted",
    [
        ("'fast'", "LEARNING_RATE='fast' must be a number > 0"),
        ("-1", "LEARNING_RATE=-1 must be a number > 0"),
        ("0", "LEARNING_RATE=0 must be a number > 0; to score a prompt without training it"),
    ],
)
def test_learning_rate_must_be_positive(value, wanted, tmp_path, capsys, no_network):
    argv = ["train", *tiny_run_args(tmp_path / "run"), f"--gin.LEARNING_RATE={value}"]
    assert cli.main(argv) == 2
    assert wanted in capsys.readouterr().err


def test_a_setting_made_in_python_is_checked_too():
    """The flow and tests build runs with dataclasses.replace: the same schema applies."""
    with pytest.raises(settings.SettingError, match="LEARNING_RATE=0.0 must be a number > 0"):
        settings.check(OptimizerConfig(learning_rate=0.0))
    with pytest.raises(settings.SettingError, match="TOP_K=0 must be a whole number >= 1"):
        initial.TransferInit(top_k=0)
    flow = FlowConfig("/w", ["a"], ["b"])
    with pytest.raises(
        settings.SettingError, match=r"STRATEGIES=\['top_k'\] must be a non-empty list"
    ):
        settings.check(dataclasses.replace(flow, strategies=["top_k"]))


def test_top_k_above_the_sources_is_clamped_with_a_note(tmp_path, capsys, monkeypatch):
    from prompt_transfer.spot import flow

    seen = {}
    monkeypatch.setattr(flow, "run", lambda f, *a, **k: seen.setdefault("flow", f))
    flow.main([*_argv("spot", str(tmp_path))[1:], "--gin.TOP_K=5"])
    assert seen["flow"].top_k == len(SOURCES)
    assert "note: TOP_K=5 is more than the 2 source(s); using TOP_K=2" in capsys.readouterr().err
