"""Real corpora -> manifest ``Record``s. Every reader is ``reader(root, splits) -> list[Record]``.

Transcripts go through ``normalize_text`` (the same rule as the embedded corpus). Durations come
from the file header (``soundfile.info``), so reading a corpus decodes no audio; a file whose
header cannot be read keeps ``duration=0.0`` and is counted as ``unreadable`` when tokenized.
Records come out sorted by id, so every run sees the same order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import soundfile as sf

from zipper_pl.data.manifest import Record, read_manifest
from zipper_pl.data.sentences import normalize_text
from zipper_pl.errors import UserError


def _duration(path: Path) -> float:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0.0
    return info.frames / info.samplerate if info.samplerate else 0.0


def split_dirs(root: str | os.PathLike, splits: Sequence[str], corpus_dir: str) -> list[Path]:
    """Resolve ``root/<split>``; also accepts the archive top folder (``root/LibriSpeech/...``)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"corpus root {base} does not exist: set data.root to the corpus folder")
    if isinstance(splits, str):
        splits = [splits]
    if not splits:
        raise UserError(
            "no splits given: set data.train_splits (and valid_splits / test_splits), "
            "e.g. data.train_splits=[train-clean-100]"
        )
    if not (base / splits[0]).is_dir() and (base / corpus_dir).is_dir():
        base = base / corpus_dir
    out = []
    for split in splits:
        d = base / split
        if not d.is_dir():
            have = sorted(p.name for p in base.iterdir() if p.is_dir())
            raise UserError(
                f"split {split!r} not found under {base} (found: {', '.join(have) or 'nothing'}): "
                "fix data.train_splits / valid_splits / test_splits or data.root"
            )
        out.append(d)
    return out


def _text_or_none(s: str | None) -> str | None:
    if s is None:
        return None
    t = normalize_text(s)
    return t or None  # an empty transcript is a missing one


def read_librispeech(root: str | os.PathLike, splits: Sequence[str]) -> list[Record]:
    """``<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + ``<spk>-<chapter>.trans.txt``."""
    records = []
    for split_dir in split_dirs(root, splits, "LibriSpeech"):
        for chapter in sorted(p for p in split_dir.glob("*/*") if p.is_dir()):
            spk = chapter.parent.name
            texts: dict[str, str] = {}
            trans = chapter / f"{spk}-{chapter.name}.trans.txt"
            if trans.is_file():
                for line in trans.read_text(encoding="utf-8").splitlines():
                    utt, _, text = line.strip().partition(" ")
                    if utt:
                        texts[utt] = text
            for audio in sorted(chapter.glob("*.flac")):
                records.append(
                    Record(
                        id=audio.stem,
                        audio=str(audio),
                        text=_text_or_none(texts.get(audio.stem)),
                        duration=_duration(audio),
                        speaker=spk,
                    )
                )
    return sorted(records, key=lambda r: r.id)


def read_libritts(root: str | os.PathLike, splits: Sequence[str]) -> list[Record]:
    """``<split>/<spk>/<chapter>/<id>.wav`` + ``<id>.normalized.txt`` (one line)."""
    records = []
    for split_dir in split_dirs(root, splits, "LibriTTS"):
        for audio in sorted(split_dir.glob("*/*/*.wav")):
            txt = audio.with_name(f"{audio.stem}.normalized.txt")
            text = txt.read_text(encoding="utf-8") if txt.is_file() else None
            records.append(
                Record(
                    id=audio.stem,
                    audio=str(audio),
                    text=_text_or_none(text),
                    duration=_duration(audio),
                    speaker=audio.parent.parent.name,
                )
            )
    return sorted(records, key=lambda r: r.id)


def read_librilight(root: str | os.PathLike, splits: Sequence[str]) -> list[Record]:
    """``<split>/<spk>/<book>/<name>.flac``, no transcripts (``text=None``).

    Raw LibriLight files are whole chapters (minutes long): point ``data.root`` at the copy cut by
    libri-light's ``cut_by_vad.py`` (same layout), or long files are skipped as ``too_long``.
    """
    records = []
    for split_dir in split_dirs(root, splits, "librilight"):
        for audio in sorted(split_dir.rglob("*.flac")):
            rel = audio.relative_to(split_dir).with_suffix("")
            records.append(
                Record(
                    id=f"{split_dir.name}/{rel.as_posix()}",  # names repeat across books
                    audio=str(audio),
                    text=None,
                    duration=_duration(audio),
                    speaker=rel.parts[0] if len(rel.parts) > 1 else "unknown",
                )
            )
    return sorted(records, key=lambda r: r.id)


def jsonl_files(root: str | os.PathLike, splits: Sequence[str]) -> dict[str, Path]:
    """The manifest files of a JSONL corpus: ``{split: <root>/<split>.jsonl}`` for a folder, or
    ``{"*": root}`` for one file whose records carry a ``split`` field."""
    path = Path(root).expanduser()
    if isinstance(splits, str):
        splits = [splits]
    if path.is_dir():
        files = {s: path / f"{s}.jsonl" for s in splits}
        for f in files.values():
            if not f.is_file():
                have = sorted(p.stem for p in path.glob("*.jsonl"))
                raise UserError(
                    f"manifest {f} not found (found: {', '.join(have) or 'no .jsonl files'}): "
                    "fix data.train_splits / valid_splits / test_splits or data.root"
                )
        return files
    if path.is_file():
        return {"*": path}
    raise UserError(
        f"manifest {path} not found: set data.root to a .jsonl file or a folder of them"
    )


SPLIT_FORMS = (
    "give each split its own file (data.root=<folder> holding <split>.jsonl for every name in "
    'data.train_splits / valid_splits / test_splits), or add a "split" field to every record '
    "of the one file and name those splits in data.*_splits"
)


def _record_splits(path: Path) -> list[str | None]:
    """The ``split`` field of every record line of a JSONL file (None where absent)."""
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    row = {}  # read_manifest names the bad line
                out.append(row.get("split") if isinstance(row, dict) else None)
    return out


def read_jsonl_manifest(root: str | os.PathLike, splits: Sequence[str]) -> list[Record]:
    """Records of the ``splits`` of a JSONL corpus (see ``jsonl_files``); transcripts are
    normalised like every other corpus. One file without ``split`` fields is refused: training,
    validation and test would be the same records."""
    if isinstance(splits, str):
        splits = [splits]
    files = jsonl_files(root, splits)
    if "*" in files:
        path = files["*"]
        tags = _record_splits(path)
        if any(t is None for t in tags):
            raise UserError(f'{path} has records without a "split" field: {SPLIT_FORMS}')
        missing = sorted(set(splits) - set(tags))
        if missing:
            raise UserError(
                f"{path} has no records of split {', '.join(missing)} (it has: "
                f"{', '.join(sorted(set(tags)))}): name those in data.*_splits"
            )
        chosen = [r for r, t in zip(read_manifest(path), tags, strict=True) if t in splits]
    else:
        chosen = [r for f in files.values() for r in read_manifest(f)]
    for r in chosen:
        r.text = _text_or_none(r.text)
    return chosen


CORPUS_READERS: dict[str, Callable[..., list[Record]]] = {
    "librispeech": read_librispeech,
    "libritts": read_libritts,
    "librilight": read_librilight,
    "jsonl": read_jsonl_manifest,
}
