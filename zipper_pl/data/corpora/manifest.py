"""The utterance record shared by every corpus, and its JSONL manifest (one record per line).

Audio paths under the manifest's folder are stored relative to it, so a generated corpus can be
moved or mounted elsewhere; ``read_manifest`` returns them resolved against the manifest's folder.

A manifest is parsed by pyarrow's JSON reader into columns (``Manifest``): at LibriLight's 7M
utterances, ``Record`` objects would hold ~400 bytes each (2.9 GB, 78 s to read); the columns hold
the strings' bytes. A ``Record`` is made when one is asked for. Where pyarrow cannot parse a line
(a corrupt or hand-written file), the line-by-line reader decides, and names the line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
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


# ids that come from users' files (JSONL, Hugging Face datasets) name output files: one name each
SAFE_ID = re.compile(r"(?!\.)[A-Za-z0-9._-]+")

_FIELDS = tuple(f.name for f in dataclasses.fields(Record) if f.name != "offset")


def read_manifest(path: str | os.PathLike, *, strict: bool = False) -> Sequence[Record]:
    """Records of a JSONL manifest; relative audio paths are resolved against its folder.
    ``strict``: a user's file, read line by line, so a row without one of the keys is an error
    naming its line (pyarrow reads a missing key as null)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path} not found: check data.root or rebuild the corpus")
    if path.stat().st_size == 0:
        return []  # a pool with no records (no test split): nothing for pyarrow to parse
    if not strict:
        table = _arrow_table(path)
        if not isinstance(table, str):
            return Manifest(table, Path(os.path.abspath(path.parent)))
        # not silent: the line reader either names the bad line or reads what pyarrow would not
        print(f"[data] {path}: read line by line ({table}): slower, ~5x the memory of columns")
    return _read_lines(path)


_SCHEMA = {"id": "string", "audio": "string", "text": "string", "duration": "float64",
           "speaker": "string", "offset": "float64"}  # fmt: skip


def _arrow_table(path: Path):
    """The manifest's columns, or why not (a string) where pyarrow cannot parse it or a
    required value is null (the line-by-line reader then names the line)."""
    import pyarrow as pa
    import pyarrow.json as paj

    schema = pa.schema([(k, getattr(pa, t)()) for k, t in _SCHEMA.items()])
    options = paj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore",
                               newlines_in_values=False)  # fmt: skip
    # 4 MB blocks, one thread: peak memory is the columns plus one block (2M lines: 280 MB
    # against 326 MB with pyarrow's default 1 MB blocks parsed in parallel, 1.5 s against 1.2 s)
    blocks = paj.ReadOptions(block_size=1 << 22, use_threads=False)
    try:
        table = paj.read_json(path, parse_options=options, read_options=blocks)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        return f"pyarrow: {str(e).splitlines()[0]}"
    nulls = [k for k in ("id", "duration", "speaker") if table.column(k).null_count]
    if nulls:
        return f"no {', '.join(nulls)} in some rows"
    return table  # chunked as parsed: combining them would copy every column once more


class Manifest(Sequence[Record]):
    """A manifest's records held as pyarrow columns; indexing and iterating make ``Record``s."""

    CHUNK = 65_536  # rows turned into Python objects at a time while iterating

    def __init__(self, table, base: Path) -> None:
        self._table, self._base = table, base

    def __len__(self) -> int:
        return self._table.num_rows

    def _records(self, start: int, stop: int) -> list[Record]:
        cols = self._table.slice(start, stop - start).to_pydict()
        out = []
        base = str(self._base) + os.sep
        for i, audio in enumerate(cols["audio"]):
            if audio is not None and not os.path.isabs(audio):
                audio = base + audio if _plain(audio) else str(self._base / audio)
            out.append(Record(cols["id"][i], audio, cols["text"][i], cols["duration"][i],
                              cols["speaker"][i], cols["offset"][i]))  # fmt: skip
        return out

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._records(start, max(start, stop))
            return [self[i] for i in range(start, stop, step)]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(index)
        return self._records(index % n, index % n + 1)[0]

    def __iter__(self) -> Iterator[Record]:
        for start in range(0, len(self), self.CHUNK):
            yield from self._records(start, min(len(self), start + self.CHUNK))

    def __eq__(self, other: object) -> bool:  # as the list of records it stands for
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics, as a list's


def _plain(rel: str) -> bool:
    """A relative path that pathlib would join unchanged (no "." parts, no doubled or trailing
    separator): joined as strings, ~3x faster than ``Path /`` on millions of records."""
    return not (rel.startswith("./") or rel.endswith(("/", "/.")) or rel == "."
                or "//" in rel or "/./" in rel)  # fmt: skip


def _read_lines(path: Path) -> list[Record]:
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
