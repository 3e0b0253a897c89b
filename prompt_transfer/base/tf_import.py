"""Import TensorFlow (and SeqIO, which imports it) without its native start-up chatter.

TensorFlow's C++ runtime writes oneDNN and CUDA-stub notices to the process's stderr before
`TF_CPP_MIN_LOG_LEVEL` takes effect. File descriptor 2 is pointed at /dev/null for the import
only; Python exceptions raised by the import still surface normally.
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _native_stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_seqio():
    """The `seqio` module, imported quietly the first time."""
    if "seqio" not in sys.modules:
        with _native_stderr_silenced():
            import seqio  # noqa: F401
    return sys.modules["seqio"]


def import_tensorflow():
    if "tensorflow" not in sys.modules:
        with _native_stderr_silenced():
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]
