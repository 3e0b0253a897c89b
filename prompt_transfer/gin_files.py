"""Find the project's gin files by name and read model sizes from them.

Gin files live in the top-level `gin/` folder (models/, runs/, prompts/, transfer/,
experiments/). They are found by name, so a launch needs no `--gin_search_paths`:
`models/base`, `models/base.gin` and a plain path all work.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import gin
from gin import config_parser

from prompt_transfer.t5 import T5Config

GIN_DIR = Path(__file__).resolve().parent.parent / "gin"
_CONFIG_SELECTORS = ("t5.T5Config", "prompt_transfer.t5.T5Config", "T5Config")


class GinFileError(ValueError):
    pass


def available(folder: str) -> list[str]:
    """Names (without .gin) of the gin files in `gin/<folder>/`."""
    return sorted(p.stem for p in (GIN_DIR / folder).glob("*.gin"))


def available_sizes() -> list[str]:
    return available("models")


def find(name: str | Path) -> Path:
    """Resolve a gin file given as a path or as a name relative to `gin/`."""
    candidates = [Path(name), GIN_DIR / name, GIN_DIR / f"{name}.gin"]
    for path in candidates:
        if path.is_file():
            return path
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
        "# Provides: t5.T5Config and the macros ACTIVATION_DTYPE and DROPOUT_RATE.",
        "# Requires: nothing.",
        "# Commonly overridden: ACTIVATION_DTYPE ('bfloat16' on TPU/GPU), DROPOUT_RATE.",
        "from __gin__ import dynamic_registration",
        "from prompt_transfer import t5",
        "",
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
