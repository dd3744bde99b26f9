"""Data read back from prm's own files, checked against the types prm wrote it with.

A run's plan.json and status.json can be damaged or edited by hand. One such file must
never break a command over every run (`prm ls`), so what is read is checked against the
dataclass or TypedDict it stands for, and each wrong part is named here instead of raising
a TypeError far from the file.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import is_dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints, is_typeddict

WRONG: Any = object()  # what `clean` returns for a value that is not of its type at all


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def clean(value: Any, hint: Any, where: str, found: list[str]) -> Any:
    """``value`` as type ``hint``: a TypedDict loses its keys of the wrong type and a list
    its items of the wrong type; a dataclass (or mapping) is only checked; WRONG when the
    value itself is not of that type. Each wrong part is added to ``found``, named by its
    path from ``where`` (the top: ""). A TypedDict key that is absent or null is accepted
    (not known yet); an int is a float."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            attempt: list[str] = []
            out = clean(value, option, where, attempt)
            if out is not WRONG and not attempt:
                return out
        return _wrong(value, hint, where, found)
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return _wrong(value, hint, where, found)
        out = dict(value)
        for key, sub in _hints(hint).items():
            if out.get(key) is not None:
                kept = clean(out[key], sub, _at(where, key), found)
                if kept is WRONG:
                    del out[key]
                else:
                    out[key] = kept
        return out
    if isinstance(hint, type) and is_dataclass(hint):
        if not isinstance(value, hint):
            return _wrong(value, hint, where, found)
        for key, sub in _hints(hint).items():
            clean(getattr(value, key), sub, _at(where, key), found)
        return value
    if origin in (list, tuple):
        if not isinstance(value, origin):
            return _wrong(value, hint, where, found)
        items = (clean(item, args[0] if args else Any, f"{where}[{n}]", found)
                 for n, item in enumerate(value))
        return origin(item for item in items if item is not WRONG)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            return _wrong(value, hint, where, found)
        key_hint, value_hint = args or (Any, Any)
        for key, item in value.items():
            clean(key, key_hint, _at(where, "(key)"), found)
            clean(item, value_hint, _at(where, str(key)), found)
        return value
    if isinstance(value, bool) and hint is not bool:  # JSON true is not a number here
        return _wrong(value, hint, where, found)
    if isinstance(value, (int, float) if hint is float else hint):
        return value
    return _wrong(value, hint, where, found)


def summary(found: list[str]) -> str:
    """The first problem, and how many more there are."""
    return found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _wrong(value: Any, hint: Any, where: str, found: list[str]) -> Any:
    found.append(f"{where + ' is ' if where else ''}{_kind(value)}, not {_name(hint)}")
    return WRONG


def _kind(value: Any) -> str:
    return {type(None): "null", dict: "an object", list: "a list", str: "a string",
            bool: "a boolean", int: "a number", float: "a number"}.get(type(value),
                                                                     type(value).__name__)


def _name(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_name(a) for a in get_args(hint))
    if is_typeddict(hint) or get_origin(hint) in (dict, Mapping) or (
            is_dataclass(hint) and isinstance(hint, type)):
        return "an object"
    if get_origin(hint) in (list, tuple):
        return "a list"
    return {type(None): "null", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(hint, str(hint))
