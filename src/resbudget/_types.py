"""Checking plain data (from TOML, JSON or ``--set``) against a dataclass field's type hint, shared by the model
spec and the run config: a value of the wrong type is an error that names its key, never a later crash."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal


def key_text(key: Any) -> str:
    """A key as an error message shows it: as written where it is a plain name, else quoted (so a key holding a
    line break or an odd character cannot break the one-line message)."""
    return key if isinstance(key, str) and key.replace("-", "_").replace(".", "_").isidentifier() else repr(key)


def type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"list of {typing.get_args(hint)[0].__name__}"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, key: str, error: type[Exception] = ValueError) -> Any:
    """``value`` as the type ``hint`` names (an int is a fine float, a list a fine tuple), else ``error`` naming
    ``key``. Floats must be finite."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, (list, dict)) or value not in allowed:
            raise error(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise error(f"{key}: expected a list of {item.__name__}, got {value!r}")
        return tuple(coerce(v, item, f"{key}[{i}]", error) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return coerce(value, arg, key, error)
            except error:
                pass
        raise error(f"{key}: {value!r} is not a {type_name(hint)}")
    if hint is bool:
        if not isinstance(value, bool):
            raise error(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise error(f"{key}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise error(f"{key}: expected a string, got {value!r}")
        return value
    raise error(f"{key}: unsupported type {hint}")  # pragma: no cover - a bug in the dataclasses
