"""The utterance record shared by every corpus, and its JSONL manifest (one record per line).

Audio paths under the manifest's folder are stored relative to it, so a generated corpus can be
moved or mounted elsewhere; ``read_manifest`` returns them resolved against the manifest's folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path

from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_text


@dataclasses.dataclass
class Record:
    """One utterance: audio path and transcript (either may be None), seconds, speaker id."""

    id: str
    audio: str | None
    text: str | None
    duration: float
    speaker: str
    # seconds into ``audio`` where the utterance starts, for a segment of a longer recording (a
    # lhotse cut): it is read by offset and ``duration``; None: the whole file
    offset: float | None = None

    def row(self) -> dict:
        """The record as a manifest row; ``offset`` only for a segment, so the manifests (and
        the caches keyed by them) of whole-file corpora are what they were before it existed."""
        row = dataclasses.asdict(self)
        if self.offset is None:
            del row["offset"]
        return row


_FIELDS = tuple(f.name for f in dataclasses.fields(Record) if f.name != "offset")


def read_manifest(path: str | os.PathLike) -> list[Record]:
    """Records of a JSONL manifest; relative audio paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path} not found: check data.root or rebuild the corpus")
    base = Path(os.path.abspath(path.parent))
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [k for k in _FIELDS if k not in row]
                if missing:
                    raise ValueError(f"missing keys {missing}")
                rec = Record(
                    id=str(row["id"]),
                    audio=None if row["audio"] is None else str(row["audio"]),
                    text=None if row["text"] is None else str(row["text"]),
                    duration=float(row["duration"]),
                    speaker=str(row["speaker"]),
                    offset=None if row.get("offset") is None else float(row["offset"]),
                )
            except (ValueError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
                raise UserError(
                    f"{path}:{lineno} is not a manifest record ({e}); each line must be a JSON "
                    f"object with keys {', '.join(_FIELDS)}"
                ) from e
            if rec.audio is not None and not os.path.isabs(rec.audio):
                rec.audio = str(base / rec.audio)
            records.append(rec)
    return records


def write_manifest(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Write records as JSONL atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = os.path.abspath(path.parent)
    lines = []
    for r in records:
        row = r.row()
        if r.audio is not None:
            audio = os.path.abspath(r.audio)
            if os.path.commonpath([audio, base]) == base:
                row["audio"] = Path(os.path.relpath(audio, base)).as_posix()
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))
