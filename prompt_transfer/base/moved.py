"""Where the modules of the flat package (up to session 17) live now, so that what was written
with the old names still reads: a size file that `convert` or `export` wrote
(`from prompt_transfer import t5`), a user's own gin file or script, and the config.gin of a run
folder, which a relaunch compares line by line (`RunDir.check_config`).

`install()` (run by `prompt_transfer/__init__.py`) puts a finder first on `sys.meta_path` that
answers an old name with the module of its new one: the same module object, so a gin binding
through either name configures the same function. `canonical_imports` rewrites the import lines
of a gin config into their new names, so two configs that differ only there compare equal.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import re
import sys

MOVED = {
    "errors": "base.errors",
    "paths": "base.paths",
    "settings": "base.settings",
    "runtime": "base.runtime",
    "tf_import": "base.tf_import",
    "t5": "network.t5",
    "decoding": "network.decoding",
    "partitioning": "network.partitioning",
    "checkpoints": "network.checkpoints",
    "hf_t5": "network.hf_t5",
    "registry": "data.registry",
    "file_tasks": "data.file_tasks",
    "offline_data": "data.offline_data",
    "span_corruption": "data.span_corruption",
    "text_formats": "data.text_formats",
    "vocab": "data.vocab",
    "wordnet": "data.wordnet",
    "ppt": "data.ppt",
    "seqio_cache": "data.seqio_cache",
    "metrics": "data.metrics",
    "prompts": "prompt.prompts",
    "transfer.attention": "prompt.attention",
    "transfer.multitask": "prompt.multitask",
    "gin_files": "configure.gin_files",
    "gin_utils": "configure.gin_utils",
    "t5x.habits": "configure.t5x_habits",
    "models": "model.encoder_decoder",
    "evaluation": "model.seqio_eval",
    "inference": "model.inference",
    "plan": "trainer.plan",
    "remote": "trainer.remote",
    "trainer.checkpointing": "trainer.saving",
    "cli.runs": "cli.jobs",
    "spot.rows": "spot.strategies",
    "spot.runs": "stages.runs",
    "spot.plots": "stages.figures",
}  # not here: `data` (now the data layer's folder; its module is data/batches.py) and `assets`
# (prompt_transfer/assets is the package's data folder; its module is base/assets.py)
PACKAGE = "prompt_transfer"
NEW_NAME = {f"{PACKAGE}.{old}": f"{PACKAGE}.{new}" for old, new in MOVED.items()}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):  # the target ran when it was imported
        pass


class _OldNames(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in NEW_NAME:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(NEW_NAME[fullname]))


def install() -> None:
    if not any(isinstance(f, _OldNames) for f in sys.meta_path):
        sys.meta_path.insert(0, _OldNames())


_IMPORT = re.compile(r"from (prompt_transfer[\w.]*) import (\w+)(?: as (\w+))?$")


def canonical_imports(lines: list[str]) -> list[str]:
    """A gin config's lines with each `from prompt_transfer... import x [as y]` in its new
    name, and the import lines sorted (gin sorts them by module, which a move reorders)."""
    imports, rest = [], []
    for line in lines:
        match = _IMPORT.match(line.strip())
        if not match:
            rest.append(line)
            continue
        module, name, local = match.groups()
        full = NEW_NAME.get(f"{module}.{name}", f"{NEW_NAME.get(module, module)}.{name}")
        imports.append(f"import {full} as {local or name}")
    return sorted(imports) + rest
