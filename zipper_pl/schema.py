"""Field helper for config dataclasses: every field carries a one-line doc and its valid range.

Config dataclasses live next to the code they configure (``TowerConfig`` in ``models/tower.py``,
...) and are nested into the root schema in ``config.py``, which validates them generically.
"""

from __future__ import annotations

import dataclasses
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
