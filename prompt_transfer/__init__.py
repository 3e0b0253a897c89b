"""Soft prompt transfer on frozen T5 models (see README.md and docs/architecture.md)."""

from prompt_transfer.base import moved

moved.install()  # the flat package's old module names still import (base/moved.py)
