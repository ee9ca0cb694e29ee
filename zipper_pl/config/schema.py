"""Field helper for config dataclasses: every field carries a one-line doc and its valid range;
``coerce`` and ``check_range`` turn a YAML / command-line value into the declared type and check
it against that range.

Part of the config layer (imports nothing but the standard library): the sections in
``config/components.py`` and ``config/sections.py`` (and ``TowerConfig`` in ``models/tower.py``)
declare their fields with ``F``; ``config/loading.py`` validates them generically.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any


def F(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its documentation and validation bounds in ``metadata``."""
    if not doc:
        raise ValueError("every config field needs a one-line doc")
    metadata = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def coerce(value: Any, tp: Any) -> Any:
    """Convert a YAML/CLI value to the declared type; raise ValueError with a short reason.

    Our own rather than OmegaConf's structured-config nodes, because those accept what a typo
    makes and then hide it: ``BooleanNode(2)`` is True, ``StringNode(True)`` is "True" (a
    ``name=true`` typo for a path), and a value is checked one key at a time, so a config with
    three mistakes would take three runs to find them (tests/test_config.py pins the
    difference). OmegaConf still reads the YAML files (``${...}`` interpolation)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (tp is float or float(value).is_integer())  # 3.0 is an integer, 3.5 is not
        ):
            return tp(value)
        raise ValueError(f"expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        elif isinstance(value, int | float | bool):
            value = [value]  # `seeds=0` on the command line means [0]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        return [coerce(v, item_tp) for v in value]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if isinstance(value, str):
            # "text:1,speech:2" on the command line
            pairs = [p.split(":", 1) for p in value.replace(" ", ",").split(",") if p]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"expected name:value pairs like 'text:1,speech:2', got {value!r}")
            value = dict(pairs)
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return {coerce(k, key_tp): coerce(v, val_tp) for k, v in value.items()}
    return value


def check_range(value: Any, meta: dict) -> str | None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}; got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number; got {value!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key, ok, word in (
            ("ge", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="),
            ("lt", lambda v, b: v < b, "<"),
        ):
            bound = meta.get(key)
            if bound is not None and not ok(value, bound):
                return f"must be {word} {bound}; got {value!r}"
    return None
