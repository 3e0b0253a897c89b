"""How a command ends: a refusal closes what the command left open (orbax's checkpoint managers
and their threads) before its one line, and only what the command opened."""

from prompt_transfer.base import runtime
from prompt_transfer.base.errors import EXIT_BAD_INPUT, UserError
from prompt_transfer.trainer import run_dir, saving


class Resource:
    def __init__(self):
        self.closed = 0
        runtime.track(self)

    def close(self):
        self.closed += 1
        runtime.untrack(self)


def test_a_refusal_closes_what_the_command_left_open_and_nothing_else(capsys):
    earlier = Resource()  # a caller's own (a test's): not the command's to close
    opened = []

    def body():
        opened.append(Resource())
        raise UserError("bad input\nIn call to configurable ...")

    assert runtime.run_entry("train", body) == EXIT_BAD_INPUT
    assert opened[0].closed == 1 and earlier.closed == 0
    assert capsys.readouterr().err == "prompt-transfer train: error: bad input\n"
    earlier.close()


def _manager_closes(store) -> list:
    calls, real = [], store.manager.close
    store.manager.close = lambda: calls.append(1) or real()
    return calls


def test_a_checkpoint_store_closes_its_manager_once(tmp_path):
    with saving.CheckpointStore(tmp_path / "run", keep=1) as store:
        calls = _manager_closes(store)
        assert store.latest_step() is None
    assert calls == [1]
    store.close()  # again, as a caller's own close after the block would: nothing more
    assert calls == [1]


def test_a_store_left_open_by_a_refusal_is_closed_before_the_line(tmp_path, capsys):
    seen = []

    def body():
        store = saving.CheckpointStore(tmp_path / "run", keep=1)
        calls = _manager_closes(store)
        seen.append(calls)
        raise run_dir.RunDirError("checkpoint_2 does not fit")

    assert runtime.run_entry("train", body) == EXIT_BAD_INPUT
    assert seen == [[1]]
    assert capsys.readouterr().err == "prompt-transfer train: error: checkpoint_2 does not fit\n"
