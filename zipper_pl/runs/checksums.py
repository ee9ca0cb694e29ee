"""A finished stage folder's files are what their checksums say.

When a stage finishes, ``record_checksums`` writes ``checksums.json``: size, sha256 and mtime of its
exported weights. ``verify`` runs whenever a stage is read by another (``layout.require_stage``):
the size always; the sha256 whenever the file's mtime is not the recorded one (an edit, a copy,
a damaged disk), so an unchanged multi-GB tower is not hashed by every ``make`` call. Folders
finished before checksums carry none and are checked by their safetensors header alone.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from zipper_pl.io import atomic_write_json, file_sha256, read_json

CHECKSUMS = "checksums.json"


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_checksums(folder: Path, names: list[str]) -> None:
    """Size, sha256 and mtime of ``names`` in ``folder`` into ``checksums.json``."""
    entries = {n: {**_stamp(folder / n), "sha256": file_sha256(folder / n)} for n in names}
    atomic_write_json(folder / CHECKSUMS, entries)


def damaged(folder: Path) -> str | None:
    """The first recorded file whose size or content changed since its stage finished (or is
    gone), with what changed; None when all are intact or nothing was recorded."""
    path = folder / CHECKSUMS
    if not path.is_file():
        return None
    entries = read_json(path)
    changed = False
    for name, rec in entries.items():
        try:
            now = _stamp(folder / name)
        except OSError:
            return f"{name} is missing"
        if now["bytes"] != rec["bytes"]:
            return f"{name} holds {now['bytes']} bytes, {rec['bytes']} when its stage finished"
        if now["mtime_ns"] != rec["mtime_ns"]:
            if file_sha256(folder / name) != rec["sha256"]:
                return f"{name} differs from the sha256 recorded when its stage finished"
            rec["mtime_ns"], changed = now["mtime_ns"], True  # copied intact: hash it once
    if changed:
        with contextlib.suppress(OSError):  # a read-only folder is checked, not updated
            atomic_write_json(path, entries)
    return None
