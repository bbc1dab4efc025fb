"""Structuring raw JSON/TOML blocks into the schema, collecting every problem at once.

One cattrs converter, configured here: strict scalar types (``true`` is not an integer, ``"5"``
is not a number), ``stop`` as a string or a list of strings, dtype aliases. Unknown keys get a
did-you-mean; range validators (declared on the fields) all run, so a record with three bad
values reports three problems.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs

from gpt_simple_core.records.problems import Problem
from gpt_simple_core.records.schema import Options

T = TypeVar("T")

#: Keys whose ``null`` would be ambiguous ("default" or "disabled"?) are refused, with a hint.
NULL_HINTS = {
    "top_k": "use 0 to disable top-k",
    "top_p": "use 1.0 to disable top-p",
    "min_p": "use 0 to disable min-p",
}
NULLABLE = {"seed"}  # null seed: draw one (the effective seed is echoed)


class _TypeMismatch(TypeError):
    pass


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _TypeMismatch(f"must be an integer, got {_describe(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    """A finite number: Python's JSON reads ``NaN``, ``Infinity`` and ``1e999`` (infinite),
    none of which is a usable temperature or penalty."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _TypeMismatch(f"must be a number, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _TypeMismatch(f"must be a finite number, got {value!r}"[:200])
    return number


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _TypeMismatch(f"must be true or false, got {_describe(value)}")
    return value


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _TypeMismatch(f"must be a string, got {_describe(value)}")
    return value


def _list_of(value: Any, item_ok: Any, expected: str) -> tuple:
    if not isinstance(value, list):
        raise _TypeMismatch(f"must be {expected}, got {_describe(value)}")
    for position, item in enumerate(value):
        if not item_ok(item):
            raise _TypeMismatch(f"must be {expected}; item {position} is {_describe(item)}")
    return tuple(value)


def _strings(value: Any, _: type) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return _list_of(value, lambda v: isinstance(v, str), "a string or a list of strings")


def _ints(value: Any, _: type) -> tuple[int, ...]:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return _list_of(value, is_int, "a list of integers")


def _options(value: Any, _: type) -> Options:
    """A backend's options: an object here, checked against the backend's schema later."""
    if not isinstance(value, dict):
        raise _TypeMismatch(f"must be an object of the backend's options, got {_describe(value)}")
    return Options.of(value)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _strings)
    converter.register_structure_hook_func(lambda t: t == tuple[int, ...], _ints)
    converter.register_structure_hook(Options, _options)
    return converter


converter = _make_converter()


def did_you_mean(key: str, known: list[str] | set[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def structure_block(
    raw: Any, cls: type[T], path: str, line: int | None = None
) -> tuple[T | None, list[Problem]]:
    """Structure ``raw`` into ``cls``; return the instance (or None) and every problem found."""
    if not isinstance(raw, Mapping):
        return None, [Problem(line, path, f"must be an object, got {_describe(raw)}")]
    fields = {field.name: field for field in attrs.fields(attrs.resolve_types(cls))}
    prefix = f"{path}." if path else ""
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        field = fields.get(key)
        if field is None:
            problems.append(
                Problem(line, f"{prefix}{key}", f"unknown key{did_you_mean(key, fields)}")
            )
        elif value is None:
            if key not in NULLABLE:
                hint = NULL_HINTS.get(key, "omit the key to use the default")
                problems.append(Problem(line, f"{prefix}{key}", f"must not be null ({hint})"))
        else:
            # Field by field, so one bad type does not hide the next field's problems.
            try:
                values[key] = converter.structure(value, field.type)
            except _TypeMismatch as exc:
                problems.append(Problem(line, f"{prefix}{key}", str(exc)))
    with attrs.validators.disabled():
        instance = cls(**values)
    for name in values:
        field = fields[name]
        if field.validator is None:
            continue
        try:
            field.validator(instance, field, getattr(instance, name))
        except ValueError as exc:
            problems.append(Problem(line, f"{prefix}{name}", str(exc)))
    return (None if problems else instance), problems
