"""Command lines and gin, T5X style (T5X keeps these in its `gin_utils.py`): `--gin_file=NAME`
(found in gin/ by gin_files.find), `--gin.MACRO=value` and `--gin_bindings=...`, parsed and
checked before anything compiles; `configured` and `build` give the bound entry points and
dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import os
import re
import sys
from collections.abc import Sequence

import gin
from gin import config_parser

from prompt_transfer.base import settings
from prompt_transfer.configure import t5x_habits
from prompt_transfer.configure.gin_files import GIN_DIR, GinFileError, find


@dataclasses.dataclass
class Launch:
    """What a command line asked for: gin files, bindings, and plain flags."""

    files: list[str]
    bindings: list[str]
    flags: dict[str, bool]
    search_paths: list[str] = dataclasses.field(default_factory=list)  # --gin_search_paths


def _binding(name: str, value: str) -> str:
    """`NAME = value`; a bare path or word that is not a gin literal is taken as a string, so
    `--gin.MODEL_DIR=/tmp/run` works as well as T5X's `--gin.MODEL_DIR="'/tmp/run'"`."""
    text = f"{name} = {value}"
    try:
        list(config_parser.ConfigParser(text, gin.config.ParserDelegate(True)))
        return text
    except SyntaxError:
        return f"{name} = {value!r}"


def bound_name(binding: str) -> str:
    """What a binding (`NAME = value`, as `parse_command_line` writes it) binds: a macro's or a
    configurable parameter's name."""
    return binding.partition("=")[0].strip()


def parse_command_line(
    argv: list[str], flags: tuple[str, ...] = (), need_files: bool = True
) -> Launch:
    """Split argv into gin files (`--gin_file`), bindings (`--gin.X=`, `--gin_bindings`), and
    boolean `flags` (`--overwrite`); a command that reads a run needs no gin file
    (`need_files` False)."""
    launch = Launch([], [], {f: False for f in flags})
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, has_value, value = arg.partition("=")
        if key in ("--gin_file", "--gin_bindings", "--gin_search_paths") and not has_value:
            if not args:
                raise GinFileError(f"{key} needs a value")
            value = args.pop(0)
        if key == "--gin_file":
            launch.files.append(value)
        elif key == "--gin_search_paths":  # T5X's: folders searched first, comma-separated
            launch.search_paths += [p for p in value.split(",") if p]
        elif key == "--gin_bindings":
            launch.bindings.append(value)
        elif key.startswith("--gin.") and has_value:
            launch.bindings.append(_binding(key[len("--gin.") :], value))
        elif key.startswith("--") and key[2:] in flags and not has_value:
            launch.flags[key[2:]] = True
        else:
            known = ", ".join(
                ["--gin_file", "--gin.NAME=VALUE", "--gin_bindings", "--gin_search_paths"]
                + [f"--{f}" for f in flags]
            )
            raise GinFileError(f"unknown argument {arg!r}; expected {known}")
    if not launch.files and need_files:
        raise GinFileError(
            "no --gin_file given; pass an experiment, e.g. "
            "--gin_file=experiments/prompt_tuning_tiny"
        )
    return launch


def literal(binding: str):
    """The value of a binding (`NAME = value`) as a Python value: gin's literals are Python's."""
    import ast

    text = binding.partition("=")[2].strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise GinFileError(f"{binding!r}: the value is not a literal ({e})") from None


def macro(name: str):
    """The value the parsed config binds macro `name` to (None when unbound)."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return None


def set_macro(name: str, value) -> None:
    """Bind macro `name` (which the parsed gin files bind) to `value`, as --gin.NAME= would."""
    gin.config._CONFIG[(name, "gin.macro")]["value"] = value


def binds(cls) -> bool:
    """Whether the parsed gin files bind any parameter of configurable `cls`."""
    return settings._selector(gin, cls) is not None


def binds_macro(name: str) -> bool:
    """Whether the parsed gin files bind macro `name` (to anything, None included)."""
    return (name, "gin.macro") in gin.config._CONFIG


def binds_flow() -> bool:
    """Whether the parsed gin files are a SPoT flow's or a study's (they bind WORK_DIR), whose
    runs each set their own task, TRAINABLE and prompt."""
    return ("WORK_DIR", "gin.macro") in gin.config._CONFIG


def _is_required(value) -> bool:
    return isinstance(value, gin.config.ConfigurableReference) and str(value) == "%gin.REQUIRED"


def _macro_references(value):
    if isinstance(value, gin.config.ConfigurableReference) and str(value).startswith("%"):
        yield str(value)[1:]
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _macro_references(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _macro_references(item)


def _bound_and_used_macros() -> tuple[set[str], set[str]]:
    """(macros the parsed config binds, macros its bindings refer to as `%NAME`)."""
    bound, used = set(), set()
    for (scope, selector), args in gin.config._CONFIG.items():
        if selector.endswith("gin.macro"):
            bound.add(scope)
        for value in args.values():
            used.update(_macro_references(value))
    return bound, used


def _unbound_macros() -> list[str]:
    """Macros a binding refers to (`%NAME`) that no gin file or flag binds."""
    bound, used = _bound_and_used_macros()
    return sorted(used - bound - {"gin.REQUIRED"})


@functools.cache
def project_macros() -> frozenset[str]:
    """Every macro any gin file of the project binds or uses."""
    names = set()
    for path in GIN_DIR.rglob("*.gin"):
        text = path.read_text()
        names.update(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)", text))
        names.update(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", text, flags=re.M))
    return frozenset(names - {"gin"})


# Macros the code reads itself (`macro`), not through a binding: a reading command's MODEL_DIR.
_READ_BY_CODE = frozenset({"MODEL_DIR"})


def _refuse_unused_macros(bindings: list[str]) -> None:
    """A macro set on the command line that no gin file of this launch uses would be ignored:
    one the project knows nowhere is a typo (`--gin.TRAIN_STEP=`) and is refused with a
    did-you-mean; one that belongs to other gin files (a shared launch script) gets a note."""
    bound, used = _bound_and_used_macros()
    for text in bindings:
        name = bound_name(text)
        if "." in name or "/" in name or name in used or name in _READ_BY_CODE & bound:
            continue  # a configurable's parameter (gin checks those), or a macro in use
        if name in project_macros():
            print(
                f"prompt-transfer: note: --gin.{name}=... is not used by these gin files "
                "and is ignored",
                file=sys.stderr,
            )
            continue
        close = difflib.get_close_matches(name, sorted((used | bound) - {name}), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GinFileError(
            f"--gin.{name}=... sets a macro that no gin file of the project knows, so it would "
            f"be ignored{hint}"
        )


def configure(files: list[str], bindings: list[str], search_paths: Sequence[str] = ()) -> str:
    """Parse gin files (found by name in `search_paths`, then in gin/) and bindings; check
    required macros before anything compiles. Returns the config text (written to
    MODEL_DIR/config.gin)."""
    gin.clear_config()
    for folder in search_paths:
        if not os.path.isdir(folder):
            raise GinFileError(
                f"--gin_search_paths: {folder!r} is not a folder; give folders of gin files, "
                "comma-separated"
            )
    # Gin looks in these in order, an include as a --gin_file: the user's folders come first,
    # as T5X's --gin_search_paths do, then the project's gin/ (reset on every launch).
    gin.config._LOCATION_PREFIXES[:] = ["", *search_paths, str(GIN_DIR)]
    # Gin tries each include relative to the working directory first and logs an error for
    # every miss before it looks in gin/; those misses are expected, so keep them quiet.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    t5x_habits.stand_in()  # a T5X user's `from t5x import utils` reads T5X's names here
    try:
        gin.parse_config_files_and_bindings(
            [str(find(f, search_paths)) for f in files], bindings, finalize_config=False
        )
    except (ValueError, SyntaxError, ImportError, OSError) as e:
        raise GinFileError(f"gin config does not parse: {e}".splitlines()[0]) from e
    finally:
        root.setLevel(level)
    t5x_habits.fold()  # T5X's configurables' values into the project's settings
    _refuse_unused_macros(bindings)
    unbound = _unbound_macros()
    if unbound:
        hint = "; a model's size gin file names its vocabulary: VOCABULARY = None for T5's"
        raise _macro_error(
            "gin macro(s) used but never bound", unbound, hint if "VOCABULARY" in unbound else ""
        )
    missing = sorted(
        scope
        for (scope, selector), args in gin.config._CONFIG.items()
        if selector.endswith("gin.macro") and _is_required(args.get("value"))
    )
    if missing:
        raise _macro_error("required gin macro(s) not set", missing)
    return gin.config_str()


def _macro_error(problem: str, names: list[str], hint: str = "") -> GinFileError:
    flags = " ".join(f"--gin.{m}=..." for m in names)
    return GinFileError(f"{problem}: {', '.join(names)}; pass {flags}{hint}")


def configured(fn):
    """The gin-configured version of a library function (dynamic registration)."""
    try:
        return gin.get_configurable(fn)
    except ValueError as e:
        raise GinFileError(
            f"the gin files bind nothing of {fn.__qualname__}; include the run file that "
            "does (e.g. runs/prompt_tuning.gin)"
        ) from e


def build(cls):
    """The dataclass `cls` as the gin files bind it: a plain instance (not gin's configurable
    subclass), so that `dataclasses.replace` and comparisons behave. What gin binds is checked
    against the fields' types and ranges first (settings.check_bound): a mistake is one line
    naming the macro, before anything is constructed."""
    settings.check_bound(cls)
    try:
        made = configured(cls)()
    except TypeError as e:  # a field nobody bound
        raise GinFileError(f"{cls.__qualname__}: {e}".splitlines()[0]) from e
    return cls(**{f.name: getattr(made, f.name) for f in dataclasses.fields(cls)})
