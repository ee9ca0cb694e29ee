"""Hugging Face datasets as a corpus (``DATA=hf DATA_ROOT=<folder>``), read offline.

A split is found in ``data.root`` as one of the layouts ``datasets`` writes or the Hub serves:

    <root>/<split>/                  a saved ``Dataset`` (``save_to_disk``: state.json + *.arrow),
                                     also each split folder of a saved ``DatasetDict``
    <root>/<split>.parquet           parquet files (``Dataset.to_parquet``)
    <root>/<split>-*.parquet, <root>/<split>/*.parquet, <root>/data/<split>-*.parquet (the Hub's)

A row's ``Audio`` column (``data.hf.audio``) holds encoded bytes and / or a path; it is read
undecoded (``datasets`` would need torchcodec and decode every row) and its bytes are written once
as a file (``held_audio``); a path without bytes is used where it lies. Text, speaker and id come
from the columns ``data.hf.*`` names. The corpus's identity is the content of these files (a
digest each, see ``data.corpora.sources``) and the column names.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import soundfile as sf

from zipper_pl.data.corpora.held_audio import write_held_bytes
from zipper_pl.data.corpora.manifest import SAFE_ID, Record
from zipper_pl.data.corpora.textnorm import clean_transcript
from zipper_pl.errors import UserError

ROWS_PER_BATCH = 256  # rows held in memory at a time: audio bytes of ~1 min each at most
_SAVED = ("state.json", "dataset_info.json")


def _split_files(folder: Path, split: str) -> list[Path]:
    saved = folder / split
    if (saved / "state.json").is_file():
        meta = [saved / n for n in _SAVED if (saved / n).is_file()]
        return [*meta, *sorted(saved.glob("*.arrow"))]
    for pattern in (f"{split}.parquet", f"{split}-*.parquet", f"{split}/*.parquet",
                    f"data/{split}-*.parquet"):  # fmt: skip
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def hf_files(root: str | os.PathLike, splits: Sequence[str]) -> dict[str, Path]:
    """``{"<split>/<file>": path}`` of every file the splits are read from (see the module doc),
    or a one-line error naming what is there."""
    folder = Path(root).expanduser()
    out: dict[str, Path] = {}
    for split in [splits] if isinstance(splits, str) else splits:
        files = _split_files(folder, split)
        if not files:
            have = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise UserError(
                f"no Hugging Face split {split!r} in {folder} (found: "
                f"{', '.join(have) or 'nothing'}): DATA=hf reads <root>/<split>/ (save_to_disk) "
                "or <root>/<split>*.parquet, one per name in data.*_splits"
            )
        out.update({f"{split}/{f.relative_to(folder).as_posix()}": f for f in files})
    return out


def _tables(files: list[Path], columns: list[str]) -> Iterator:
    """pyarrow tables / record batches of ``columns``, ``ROWS_PER_BATCH`` rows at a time."""
    if files[0].name in _SAVED:
        from datasets import load_from_disk  # the saved layout is theirs: read it with their code

        ds = load_from_disk(str(files[0].parent))
        _check_columns(ds.column_names, columns, files[0].parent)
        yield from ds.with_format("arrow").select_columns(columns).iter(batch_size=ROWS_PER_BATCH)
        return
    import pyarrow.parquet as pq

    for f in files:
        pf = pq.ParquetFile(f)
        _check_columns(pf.schema_arrow.names, columns, f)
        yield from pf.iter_batches(batch_size=ROWS_PER_BATCH, columns=columns)


def _check_columns(have: list[str], wanted: list[str], where: Path) -> None:
    missing = [c for c in wanted if c not in have]
    if missing:
        raise UserError(
            f"{where} has no column {', '.join(map(repr, missing))} (it has: {', '.join(have)}): "
            "name the dataset's columns with data.hf.audio / data.hf.text"
        )


def read_hf(
    root: str | os.PathLike,
    splits: Sequence[str],
    counts: Counter[str] | None = None,
    *,
    audio_dir: Path,
    columns,
) -> list[Record]:
    """The rows of ``splits`` as records, their audio bytes written under ``audio_dir/<split>/``.

    ``columns`` is a ``HFColumnsConfig``. Rows without audio are counted (``no_audio``), rows
    whose bytes soundfile cannot read are skipped and counted (``undecodable_audio``).
    """
    counts = counts if counts is not None else Counter()
    files_of: dict[str, list[Path]] = {}
    for key, f in hf_files(root, splits).items():
        files_of.setdefault(key.split("/", 1)[0], []).append(f)
    records = []
    for split, files in files_of.items():
        have = _available(files)
        optional = [c for c in (columns.speaker, columns.id) if c and c in have]
        wanted = [columns.audio, *([columns.text] if columns.text else []), *optional]
        row_no = 0
        for table in _tables(files, wanted):
            for row in table.to_pylist():
                own_id = columns.id in optional
                item_id = str(row[columns.id]) if own_id else f"{split}-{row_no:08d}"
                row_no += 1
                rec = _record(row, item_id, split, audio_dir / split, columns, counts)
                if rec is not None:
                    records.append(rec)
    bad = [r.id for r in records if not SAFE_ID.fullmatch(r.id)]
    if bad:
        raise UserError(
            f"{len(bad)} dataset id(s) are not plain names (e.g. {bad[0]!r}): ids name files, so "
            "set data.hf.id to a column of letters, digits and . _ - (or to '' for row numbers)"
        )
    return records


def _available(files: list[Path]) -> list[str]:
    if files[0].name in _SAVED:
        info = json.loads((files[0].parent / "dataset_info.json").read_text())
        return list(info.get("features", {}))
    import pyarrow.parquet as pq

    return pq.ParquetFile(files[0]).schema_arrow.names


def _record(row: dict, item_id: str, split: str, folder: Path, columns, counts) -> Record | None:
    audio = row[columns.audio] or {}
    data, path = audio.get("bytes"), audio.get("path")
    if data:
        written = write_held_bytes(folder, item_id, data, path)
        if written is None:
            counts["undecodable_audio"] += 1  # lilcom / opus bytes: soundfile cannot read them
            return None
        path = str(written)
    elif not (path and os.path.isfile(path)):
        counts["no_audio"] += 1
        path = None
    try:
        duration = sf.info(path).duration if path else 0.0
    except RuntimeError:  # soundfile's LibsndfileError
        duration = 0.0  # counted as unreadable when tokenized, as every corpus's bad file
    text = row.get(columns.text) if columns.text else None
    return Record(
        id=item_id,
        audio=path,
        text=clean_transcript(None if text is None else str(text), counts),
        duration=float(duration),
        speaker=str(row[columns.speaker]) if columns.speaker in row else "unknown",
    )
