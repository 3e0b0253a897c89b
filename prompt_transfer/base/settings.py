"""Typed settings: what every run kind's dataclass takes, declared once and checked before work.

A field's type is its annotation; its range, where it has one, is `setting(...)`:

    steps: int = setting(1000, least=1)                       # TRAIN_STEPS
    learning_rate: float = setting(0.3, above=0)
    strategies: Sequence[str] = setting((), one_of=STRATEGIES, non_empty=True)

`check_bound(cls)` reads what gin binds to `cls` (following macros to their values and
`@Other()` references into `Other`'s own fields) and refuses the first value of the wrong type,
out of range or naming something unknown, in one line that names the macro the user sets:
`LEARNING_RATE='fast' must be a number > 0`. `gin_utils.build` calls it before constructing,
so a mistake stops the command before any model is built or any task is read.
`bound_settings` lists what gin binds (tests generate a wrong value for each), and `check`
does the same for a dataclass made in Python.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence

from prompt_transfer.base.errors import UserError


class SettingError(UserError):
    pass


# Macro -> the binding the user wrote that set it (a T5X configurable's parameter, folded into
# the macro by prompt_transfer.configure.t5x_habits), so that a refusal names what the user typed.
SAID_AS: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Rule:
    """A field's range beyond its type. Numbers: `least` <= value, value > `above`, value <=
    `most`, value < `below`; names: `one_of` (or each item of a list); lists: `non_empty`;
    `valid(value)` returns what is wrong, or None."""

    least: float | None = None
    above: float | None = None
    most: float | None = None
    below: float | None = None
    one_of: tuple | None = None
    non_empty: bool = False
    valid: Callable[[object], str | None] | None = None
    macro: str | None = None  # the macro a gin file binds it to, named when no binding says
    hint: str | None = None  # appended to the refusal: what to do instead


def setting(default=dataclasses.MISSING, **rule):
    """A dataclass field with a `Rule` (see its fields)."""
    return dataclasses.field(default=default, metadata={"rule": Rule(**rule)})


def rule_of(field: dataclasses.Field) -> Rule:
    return field.metadata.get("rule", Rule())


def regex(value) -> str | None:
    try:
        re.compile(value)
    except re.error as e:
        return f"is not a regular expression ({e})"
    return None


# ---- types ----------------------------------------------------------------------------------


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _conforms(value, tp) -> bool:
    """Whether a bound value (gin's literals; a dataclass reference counts as its class) is of
    annotation `tp`."""
    if tp is typing.Any or tp is object:
        return True
    if isinstance(value, _Built):
        return value.cls is object or not isinstance(tp, type) or issubclass(value.cls, tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return any(_conforms(value, arg) for arg in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        key, item = args or (object, object)
        return isinstance(value, Mapping) and all(
            _conforms(k, key) and _conforms(v, item) for k, v in value.items()
        )
    if origin in (Sequence, list, tuple) or tp in (Sequence, list, tuple):
        item = args[0] if args else object
        return isinstance(value, list | tuple) and all(_conforms(v, item) for v in value)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not know: not its business


_NAMES = {bool: "True or False", int: "a whole number", float: "a number", str: "a string"}


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or None" if type(None) in args else "")
    if tp in _NAMES:
        return _NAMES[tp]
    if origin in (Mapping, dict):
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}" if args else "a mapping"
    if origin in (Sequence, list, tuple):
        return f"a list of {_plural(args[0])}" if args else "a list"
    return f"a {getattr(tp, '__name__', tp)}"


def _plural(tp) -> str:
    return {bool: "booleans", int: "whole numbers", float: "numbers", str: "strings"}.get(
        tp, _type_name(tp)
    )


def describe(field: dataclasses.Field, tp) -> str:
    """What a field takes, in words: `a whole number >= 1`, `one of 'adam', 'adafactor'`."""
    rule = rule_of(field)
    if rule.one_of is not None:
        choices = ", ".join(repr(c) for c in rule.one_of)
        many = typing.get_origin(tp) in (Sequence, list, tuple)
        text = f"a list of names, each one of {choices}" if many else f"one of {choices}"
        return ("a non-empty " + text[2:]) if rule.non_empty and many else text
    text = _type_name(tp)
    bounds = [
        f"{sign} {_number(limit)}"
        for sign, limit in ((">=", rule.least), (">", rule.above), ("<=", rule.most))
        if limit is not None
    ]
    if rule.below is not None:
        bounds.append(f"< {_number(rule.below)}")
    if rule.non_empty:
        text = "a non-empty " + text[2:]
    return f"{text} {' and '.join(bounds)}".strip()


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# ---- ranges ---------------------------------------------------------------------------------


def _in_range(value, rule: Rule) -> bool:
    numbers = [value] if isinstance(value, int | float) else []
    if isinstance(value, Mapping):
        numbers = [v for v in value.values() if isinstance(v, int | float)]
    for x in numbers:
        if rule.least is not None and x < rule.least:
            return False
        if rule.above is not None and x <= rule.above:
            return False
        if rule.most is not None and x > rule.most:
            return False
        if rule.below is not None and x >= rule.below:
            return False
    if rule.one_of is not None:
        items = value if isinstance(value, list | tuple) else [value]
        if any(item not in rule.one_of for item in items):
            return False
    return not (rule.non_empty and not value)


def _optional(tp) -> tuple[object, bool]:
    """(the type without None, whether None is allowed) of an annotation."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def problem(field: dataclasses.Field, tp, value) -> str | None:
    """What is wrong with `value` for `field` (typed `tp`), or None."""
    rule = rule_of(field)
    if not _conforms(value, tp) or not _in_range(value, rule):
        hint = f"; {rule.hint}" if rule.hint else ""
        base, optional = _optional(tp)
        also = ", or None" if optional else ""
        return f"must be {describe(field, base)}{_whole_hint(value, base, rule)}{also}{hint}"
    if rule.valid is not None and not isinstance(value, _Built):
        return rule.valid(value)
    return None


def _whole_hint(value, tp, rule: Rule) -> str:
    """`TRAIN_STEPS=3e4`: gin reads a float; say which whole number was meant."""
    if tp is int and isinstance(value, float) and value.is_integer():
        checked = dataclasses.replace(rule, one_of=None)
        if _in_range(int(value), checked):
            return f" (write {int(value)})"
    return ""


# ---- what gin binds -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Built:
    """A bound `@Cls()`: checked through its own fields; stands for an instance of `cls`
    (`object`: what a function reference returns, not this checker's business)."""

    cls: type


@dataclasses.dataclass(frozen=True)
class Bound:
    """One field as gin binds it: `name` is what the user sets (a macro, or `Cls.field`)."""

    name: str
    macro: str | None
    field: dataclasses.Field
    type: object
    value: object


def bound_settings(cls, scopes: tuple[str, ...] = ()) -> list[Bound]:
    """Every field of dataclass `cls` that gin binds (within `scopes`), with the macro it reads
    and its value; the fields of `@Other()` dataclasses it refers to come before it. Unbound
    fields keep their defaults and are not listed."""
    import gin

    hints, found = _hints(cls), []
    for field_name, raw in _bindings(gin, cls, scopes).items():
        field = next((f for f in dataclasses.fields(cls) if f.name == field_name), None)
        if field is None:
            continue  # gin refuses an unknown parameter itself
        nested = []
        macro, value = _resolve(gin, raw, nested)
        for other, other_scopes in nested:
            found += bound_settings(other, other_scopes)
        name = macro or _parameter_name(cls, scopes, field.name)
        found.append(Bound(name, macro, field, hints.get(field.name, object), value))
    return found


def check_bound(cls) -> None:
    """Refuse the first value gin binds to a field of dataclass `cls` (or of a dataclass it
    refers to) that is of the wrong type, out of range or unknown, in one line naming what the
    user sets."""
    for bound in bound_settings(cls):
        wrong = problem(bound.field, bound.type, bound.value)
        if wrong:
            said = SAID_AS.get(bound.name)
            here = f" ({bound.name} here)" if said else ""
            raise SettingError(f"{said or bound.name}={_shown(bound.value)} {wrong}{here}")


def _shown(value) -> str:
    return value.cls.__name__ + "()" if isinstance(value, _Built) else repr(value)


def _parameter_name(cls, scopes: tuple[str, ...], field: str) -> str:
    return "/".join([*scopes, f"{cls.__name__}.{field}"])


def _selector(gin, cls) -> str | None:
    for _, selector in list(gin.config._CONFIG):
        try:
            found = gin.config._REGISTRY.get_match(selector)
        except (KeyError, ValueError):
            continue
        if found is not None and found.wrapped is cls:
            return selector
    return None


def _bindings(gin, cls, scopes: tuple[str, ...]) -> dict:
    """Parameter -> bound value for `cls`: unscoped bindings, then each enclosing scope's."""
    selector = _selector(gin, cls)
    if selector is None:
        return {}
    bound = {}
    for depth in range(len(scopes) + 1):
        bound.update(gin.config._CONFIG.get(("/".join(scopes[:depth]), selector), {}))
    return bound


def _resolve(gin, value, nested: list, macro: str | None = None):
    """(the macro the user sets, if any; the value with macros replaced by their values and
    `@Cls()` dataclass references by `_Built(Cls)`, each added to `nested` with its scopes)."""
    if isinstance(value, gin.config.ConfigurableReference):
        wrapped = value.configurable.wrapped
        if wrapped is gin.config.macro:
            name = value.scoped_selector.rpartition("/")[0]
            held = gin.config._CONFIG.get((name, "gin.macro"), {}).get("value")
            return _resolve(gin, held, nested, macro or name)
        if isinstance(wrapped, type) and dataclasses.is_dataclass(wrapped) and value.evaluate:
            nested.append((wrapped, tuple(value.scopes)))
        return macro, _Built(wrapped if isinstance(wrapped, type) else object)
    if isinstance(value, list | tuple):
        return macro, type(value)(_resolve(gin, v, nested)[1] for v in value)
    if isinstance(value, dict):
        return macro, {k: _resolve(gin, v, nested)[1] for k, v in value.items()}
    return macro, value


def check(obj) -> None:
    """`check_bound` for a constructed dataclass (a run the flow or a test made): each field's
    value against its type and range, nested dataclasses too, naming the field's macro."""
    hints = _hints(type(obj))
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check(value)
        wrong = problem(field, hints.get(field.name, object), value)
        if wrong:
            name = rule_of(field).macro or f"{type(obj).__name__}.{field.name}"
            said = SAID_AS.get(name)
            here = f" ({name} here)" if said else ""
            raise SettingError(f"{said or name}={value!r} {wrong}{here}")
