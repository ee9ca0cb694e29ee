"""Plots as PNG files, never a window: the one place that sets matplotlib up and saves a figure."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from zipper_pl.io import atomic_write_bytes


def new_axes() -> tuple[Any, Any]:
    """(figure, axes) of one 6 x 4 inch plot at 120 dpi."""
    import matplotlib  # heavy, and only the plots need it: imported at the first plot

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4), dpi=120)


def save_png(fig: Any, path: Path) -> None:
    """Lay ``fig`` out, write it to ``path`` atomically and free it."""
    import matplotlib.pyplot as plt  # loaded by new_axes, which made ``fig``

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
