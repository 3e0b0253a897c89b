"""Reading a run back as a user would (issue 34): `eval` and `infer` of a run folder, compared
with what the run logged when it trained (its last eval_history.jsonl entry)."""

import collections
import json
from pathlib import Path

from prompt_transfer import cli


def last_logged(model_dir: Path) -> dict:
    lines = (Path(model_dir) / "eval_history.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def eval_equals_log(model_dir: Path, *gin_args: str, capsys=None) -> None:
    """`eval` of the run with `gin_args` (none: the run's record alone) gives exactly the
    step and results the run logged last."""
    argv = ["eval", *gin_args, f"--gin.MODEL_DIR='{model_dir}'"]
    assert cli.main(argv) == 0, capsys.readouterr().err if capsys else argv
    got = json.loads((Path(model_dir) / "eval_validation_latest.json").read_text())
    want = last_logged(model_dir)
    assert (got["step"], got["results"]) == (want["step"], want["results"]), gin_args


def infer_equals_log(model_dir: Path, *gin_args: str, capsys) -> None:
    """`infer` of the run predicts each label as often as the run's last evaluation did."""
    capsys.readouterr()
    assert cli.main(["infer", *gin_args, f"--gin.MODEL_DIR='{model_dir}'"]) == 0
    written = capsys.readouterr().out.strip().split()[-1]
    records = [json.loads(line) for line in Path(written).read_text().splitlines()]
    want = last_logged(model_dir)
    [(task, counts)] = want["predictions"].items()
    got = collections.Counter(r["prediction"] for r in records)
    assert {k: v for k, v in counts.items() if v} == dict(got), task
