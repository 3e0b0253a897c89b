"""What can stop a command, and the exit status each reason gets.

Every error a user can act on derives from `UserError`: the console script prints its first line
(`prompt-transfer train: error: ...`) and exits with 2. Each module keeps its own subclass
(`CheckpointError`, `TaskError`, ...) so a caller can catch one kind, and a new subclass needs no
registration anywhere. A run that diverged or was pre-empted is not bad input; each has its own
status, so a launcher can tell "fix the config" (2) from "lower the learning rate" (3) from
"start the same command again" (4); a disk that is full or a file that may not be written is
the system's refusal (5), with the file named.
"""

from __future__ import annotations

import json

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 4
EXIT_SYSTEM = 5  # the system refused a read or write: a full disk, a permission


class UserError(ValueError):
    """Bad input: a missing file, an unknown name, a config that cannot work. Exit 2."""

    exit_code = EXIT_BAD_INPUT


class Diverged(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept. Exit 3."""

    exit_code = EXIT_DIVERGED


class Preempted(RuntimeError):
    """SIGTERM arrived (a pre-empted TPU or spot VM); the run saved its state first. Exit 4."""

    exit_code = EXIT_PREEMPTED


def exit_code(error: BaseException) -> int | None:
    """The status for `error`, or None when it is a bug (let the traceback show)."""
    if isinstance(error, UserError | Diverged | Preempted):
        return error.exit_code
    if isinstance(error, FileNotFoundError | UnicodeDecodeError | json.JSONDecodeError):
        return EXIT_BAD_INPUT  # a path or a file given
    if isinstance(error, OSError):  # str() names the file: "[Errno 28] No space left ...: 'x'"
        return EXIT_SYSTEM
    return None


def one_line(error: BaseException) -> str:
    """The first line of the message: gin appends "In call to configurable ..." below it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def not_utf8(path, error: UnicodeDecodeError) -> UserError:
    """The one-line refusal of a text file that is not UTF-8, naming the file and the byte."""
    byte = error.object[error.start]
    return UserError(
        f"{path}: not UTF-8 text (byte {byte:#x} at offset {error.start}); save it as UTF-8"
    )
