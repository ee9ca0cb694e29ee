"""The evaluation folder's listening page: ``listen.html``, to hear what the numbers mean.

One static page per evaluation, opened straight from disk (``file://``): no server, no network,
no external CSS, scripts or fonts. Each test sentence is a table row with its text, and one
``<audio>`` player per system column (gold, resynthesis, griffin-lim, zipper, ...) with that
clip's word error rate under it, so a reader can check by ear what a WER of 30 % sounds like.
The clips are 16-bit PCM wav files next to the page (``write_wav``), linked by relative paths.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import soundfile as sf

from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_bytes, atomic_write_text

PAGE = "listen.html"

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.3em; }
ul.notes { color: #555; margin-top: 0; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.4em 0.6em; vertical-align: top; }
th { background: #f2f2f2; position: sticky; top: 0; }
td.text { max-width: 28em; }
td.id, .hyp { color: #777; font-size: 0.8em; }
.wer { font-size: 0.9em; margin-top: 0.2em; }
.missing { color: #a00; font-style: italic; }
audio { width: 14em; display: block; }
"""


@dataclass
class ListenRow:
    """One test sentence: its text, and per column the clip (relative path), WER and hypothesis."""

    id: str
    text: str
    clips: dict[str, str]  # column -> wav path relative to the page's folder (absent = no clip)
    wers: dict[str, float | None]  # column -> per-utterance WER in [0, inf) (None = not scored)
    hyps: dict[str, str] = field(default_factory=dict)  # column -> what the recogniser heard


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """Write ``wave`` (mono, floats in [-1, 1]; louder samples are clipped) as 16-bit PCM wav,
    atomically. A wave holding NaN / inf is refused rather than written as noise."""
    path = Path(path)
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise UserError(f"not writing {str(path)!r}: expected a mono wave, got shape {x.shape}")
    if int(sample_rate) <= 0:
        raise UserError(f"not writing {str(path)!r}: sample rate {sample_rate} must be positive")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise UserError(
            f"not writing {str(path)!r}: {bad} of {x.size} samples are NaN / inf; "
            "the model that made this audio diverged: check its training run"
        )
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), int(sample_rate), subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


def _wer(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{100.0 * value:.1f} %"


def _cell(row: ListenRow, column: str) -> str:
    clip = row.clips.get(column)
    parts = []
    if clip:
        src = html.escape(quote(Path(clip).as_posix()))
        parts.append(
            f'<audio controls preload="metadata" src="{src}" '
            f'data-column="{html.escape(column)}" data-id="{html.escape(row.id)}"></audio>'
        )
    else:
        parts.append('<div class="missing">no audio</div>')
    parts.append(f'<div class="wer">WER {_wer(row.wers.get(column))}</div>')
    hyp = row.hyps.get(column)
    if hyp:
        parts.append(f'<div class="hyp">heard: {html.escape(hyp)}</div>')
    return f"<td>{''.join(parts)}</td>"


def render_listen_page(
    rows: Sequence[ListenRow], columns: Sequence[str], *, title: str, notes: Sequence[str] = ()
) -> str:
    """The page's HTML: a header (title, notes), then one table row per sentence."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = [
        f'<tr><td class="id">{html.escape(r.id)}</td>'
        f'<td class="text">{html.escape(r.text)}</td>'
        f"{''.join(_cell(r, c) for c in columns)}</tr>"
        for r in rows
    ]
    note_list = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<ul class="notes">{note_list}</ul>' if notes else "",
            f"<p>{len(rows)} sentence(s), {len(columns)} column(s).</p>",
            "<table>",
            f"<thead><tr><th>id</th><th>text</th>{head}</tr></thead>",
            "<tbody>",
            *body,
            "</tbody>",
            "</table>",
            "</body>",
            "</html>",
            "",
        ]
    )


def write_listen_page(
    out: Path,
    rows: list[ListenRow],
    columns: list[str],
    *,
    title: str,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``out / "listen.html"`` atomically (columns in the given order) and return its path.
    Clip paths are relative to ``out``; text, ids, columns and notes are HTML-escaped."""
    path = Path(out) / PAGE
    atomic_write_text(path, render_listen_page(rows, columns, title=title, notes=notes))
    return path
