"""Find the project's gin files by name and read model sizes from them.

Gin files live in the top-level `gin/` folder (models/, runs/, prompts/, transfer/,
experiments/). They are found by name, so a launch needs no `--gin_search_paths`:
`models/base`, `models/base.gin` and a plain path all work.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path

import gin
from gin import config_parser

from prompt_transfer.base.errors import UserError
from prompt_transfer.network.t5 import T5Config

GIN_DIR = Path(__file__).resolve().parents[2] / "gin"
_CONFIG_SELECTORS = ("t5.T5Config", "prompt_transfer.network.t5.T5Config", "T5Config")


class GinFileError(UserError):
    pass


def _safe_existence_checks() -> None:
    """gin looks an include such as 'runs/x.gin' up as a file of the Python package `runs`; a
    plain folder of that name in the working directory (a namespace package, say the `runs/`
    that holds run directories) has no file origin and gin's check raises TypeError instead of
    answering no. Wrap its checks so that such a folder means "not here"."""

    def safe(check):
        def exists(path):
            try:
                return check(path)
            except TypeError:
                return False

        exists.wrapped = check
        return exists

    readers = gin.config._FILE_READERS
    readers[:] = [(r, c if hasattr(c, "wrapped") else safe(c)) for r, c in readers]


_safe_existence_checks()


def available(folder: str) -> list[str]:
    """Names (without .gin) of the gin files in `gin/<folder>/`."""
    return sorted(p.stem for p in (GIN_DIR / folder).glob("*.gin"))


def available_sizes() -> list[str]:
    return available("models")


def find(name: str | Path, search_paths: Sequence[str | Path] = ()) -> Path:
    """Resolve a gin file given as a path, or as a name relative to one of `search_paths`
    (T5X's --gin_search_paths, searched in order) or to `gin/`."""
    folders = [*map(Path, search_paths), GIN_DIR]
    candidates = [Path(name)] + [f / n for f in folders for n in (name, f"{name}.gin")]
    for path in candidates:
        if path.is_file():
            return path
    if Path(name).is_dir():
        raise GinFileError(f"--gin_file={name} is a folder; give a gin file, e.g. {name}/x.gin")
    known = [str(p.relative_to(GIN_DIR).with_suffix("")) for p in GIN_DIR.rglob("*.gin")]
    close = difflib.get_close_matches(str(name).removesuffix(".gin"), known, n=3)
    hint = (
        f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
    )
    raise GinFileError(f"gin file {name!r} not found{hint}")


def size_file(size: str) -> Path:
    """The gin file of a model size, by name (tiny, small, base, ...) or path."""
    if Path(size).suffix == ".gin" and Path(size).is_file():
        return Path(size)
    if size not in available_sizes():
        raise GinFileError(
            f"unknown model size {size!r}; choose one of: " + ", ".join(available_sizes())
        )
    return GIN_DIR / "models" / f"{size}.gin"


def _resolve(value, macros: dict):
    if isinstance(value, gin.config.ConfigurableReference) and str(value).startswith("%"):
        name = str(value)[1:]
        if name not in macros:
            raise GinFileError(f"macro %{name} is used but never bound")
        return _resolve(macros[name], macros)
    return value


def read_model_config(size: str, overrides: dict | None = None) -> T5Config:
    """The T5Config a size gin file binds, without touching gin's global state.

    `overrides` replace macro values (as `--gin.ACTIVATION_DTYPE='bfloat16'` would).
    """
    path = size_file(size)
    macros, fields = {}, {}
    parser = config_parser.ConfigParser(path.read_text(), gin.config.ParserDelegate(True))
    for statement in parser:
        if not isinstance(statement, config_parser.BindingStatement):
            continue
        if not statement.arg_name:
            macros[statement.selector] = statement.value
        elif statement.selector in _CONFIG_SELECTORS:
            fields[statement.arg_name] = statement.value
    macros.update(overrides or {})
    known = {f.name for f in dataclasses.fields(T5Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise GinFileError(
            f"{path} binds unknown T5Config field {unknown[0]}; "
            f"fields are: {', '.join(sorted(known))}"
        )
    return T5Config(**{k: _resolve(v, macros) for k, v in fields.items()})


def model_gin_text(config: T5Config, title: str) -> str:
    """A size gin file (same layout as gin/models/*.gin) for `config`."""
    lines = [
        f"# Model size: {title}.",
        "#",
        "# Provides: t5.T5Config and the macros VOCABULARY, ACTIVATION_DTYPE and DROPOUT_RATE.",
        "# Requires: nothing.",
        "# Commonly overridden: ACTIVATION_DTYPE ('bfloat16' on TPU/GPU), DROPOUT_RATE.",
        "from __gin__ import dynamic_registration",
        "from prompt_transfer import t5",
        "",
        "VOCABULARY = None  # T5's standard one; name the converted model's own file here",
        f"ACTIVATION_DTYPE = {config.dtype!r}",
        f"DROPOUT_RATE = {config.dropout_rate!r}",
        "",
        "t5.T5Config:",
    ]
    for field in dataclasses.fields(T5Config):
        value = getattr(config, field.name)
        if field.name == "dtype":
            value = "%ACTIVATION_DTYPE"
        elif field.name == "dropout_rate":
            value = "%DROPOUT_RATE"
        else:
            value = repr(value)
        lines.append(f"  {field.name} = {value}")
    return "\n".join(lines) + "\n"
