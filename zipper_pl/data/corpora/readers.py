"""Real corpora -> manifest ``Record``s. Every reader is ``reader(root, splits, counts=None)``.

Transcripts go through ``normalize_text`` (the same rule as the embedded corpus). Durations come
from the file header (``soundfile.info``), so reading a corpus decodes no audio; a file whose
header cannot be read keeps ``duration=0.0`` and is counted as ``unreadable`` when tokenized.
Records come out sorted by id, so every run sees the same order.

Nothing is passed over silently: a reader adds to ``counts`` (a ``collections.Counter``) every
file it does not use, every transcript line it cannot match and every record it keeps without a
transcript, by reason; ``REASON_KIND`` says what each reason means for the records.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import soundfile as sf

from zipper_pl.data.corpora.hf_corpus import read_hf
from zipper_pl.data.corpora.lhotse_corpus import read_lhotse
from zipper_pl.data.corpora.manifest import SAFE_ID, Record, read_manifest
from zipper_pl.data.corpora.textnorm import REASONS as TEXT_REASONS
from zipper_pl.data.corpora.textnorm import clean_transcript
from zipper_pl.errors import UserError

# first = preferred when one utterance has several files; ogg / mp3 need libsndfile >= 1.1
AUDIO_EXTS = tuple(
    e for e, fmt in ((".flac", "FLAC"), (".wav", "WAV"), (".ogg", "OGG"), (".mp3", "MP3"))
    if fmt in sf.available_formats()
)  # fmt: skip
SKIPPED, NO_TEXT, NO_AUDIO = "skipped", "kept without text", "kept without audio"
TEXT = "removed from text (characters)"
MOVED = "moved to valid"
REASON_KIND: dict[str, str] = {
    "held_out_as_valid": MOVED,  # no valid split (LibriLight): a share of train held out
    "orphan_transcript": SKIPPED,  # a transcript line / file whose audio is not there
    "malformed_line": SKIPPED,  # a transcript line without both an id and text
    "duplicate_transcript": SKIPPED,  # a second line for the same id (the first is used)
    "duplicate_audio": SKIPPED,  # a second audio file of one utterance (see AUDIO_EXTS)
    "other_file": SKIPPED,  # a file that is neither audio nor a known companion file
    "no_usable_transcript": SKIPPED,  # an aligned pool's record without transcript
    "blank_line": SKIPPED,  # text corpora (read_text_file)
    "empty_line": SKIPPED,  # a text line with nothing speakable
    "no_transcript": NO_TEXT,
    "empty_transcript": NO_TEXT,  # nothing speakable left after normalisation
    "no_audio": NO_AUDIO,
    **dict.fromkeys(TEXT_REASONS, TEXT),  # characters removed from kept transcripts
}


def summary_line(label: str, kept: int, counts: dict[str, int]) -> str:
    """``[data] <label> <kept> kept; skipped: ...`` with every non-zero count, grouped by kind;
    ``skipped: none`` is printed too, so a clean run says so."""
    groups: dict[str, list[str]] = {SKIPPED: []}
    for reason, n in sorted(counts.items()):
        if n > 0:
            groups.setdefault(REASON_KIND.get(reason, SKIPPED), []).append(f"{reason} {n}")
    parts = [f"{kind}: {', '.join(items) or 'none'}" for kind, items in groups.items()]
    return f"[data] {label:<13} {kept:>7} kept; " + "; ".join(parts)


def _add(counts: Counter[str], reason: str, n: int) -> None:
    if n:  # no zero entries: a reason shown is a reason that happened
        counts[reason] += n


def _counter(counts: Counter[str] | None) -> Counter[str]:
    return Counter() if counts is None else counts


def _walk(split_dir: Path) -> Iterator[tuple[Path, int, list[str]]]:
    """(folder, depth below ``split_dir``, sorted file names) of every folder, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(split_dir):
        dirnames.sort()
        folder = Path(dirpath)
        yield folder, len(folder.relative_to(split_dir).parts), sorted(filenames)


def _audio_files(folder: Path, names: list[str], counts: Counter[str]) -> dict[str, Path]:
    """Audio files of a folder by stem, any case of any ``AUDIO_EXTS`` extension."""
    found: dict[str, Path] = {}
    for name in sorted(names, key=lambda n: AUDIO_EXTS.index(_ext(n)) if _is_audio(n) else 0):
        if _is_audio(name):
            stem = name[: -len(_ext(name))]
            if stem in found:
                counts["duplicate_audio"] += 1
            else:
                found[stem] = folder / name
    return found


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _is_audio(name: str) -> bool:
    return _ext(name) in AUDIO_EXTS


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


def _other_files(names: list[str], known: Callable[[str], bool], counts: Counter[str]) -> None:
    _add(counts, "other_file", sum(1 for n in names if not _is_audio(n) and not known(n)))


def _transcript_lines(path: Path, counts: Counter[str]) -> dict[str, str]:
    """``<id> <text>`` lines; the id ends at the first run of spaces or tabs."""
    texts: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split(None, 1)
        if not parts:
            continue  # a blank line holds nothing to lose
        if len(parts) == 1:
            counts["malformed_line"] += 1
        elif parts[0] in texts:
            counts["duplicate_transcript"] += 1
        else:
            texts[parts[0]] = parts[1]
    return texts


def read_librispeech(
    root: str | os.PathLike, splits: Sequence[str], counts: Counter[str] | None = None
) -> list[Record]:
    """``<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + ``<spk>-<chapter>.trans.txt``
    (audio: any ``AUDIO_EXTS`` extension, any case)."""
    counts = _counter(counts)
    records = []
    for split_dir in split_dirs(root, splits, "LibriSpeech"):
        for chapter, depth, names in _walk(split_dir):
            if depth != 2:
                _add(counts, "other_file", len(names))
                continue
            spk = chapter.parent.name
            trans = f"{spk}-{chapter.name}.trans.txt"
            audio = _audio_files(chapter, names, counts)
            texts = _transcript_lines(chapter / trans, counts) if trans in names else {}
            _other_files(names, lambda n, t=trans: n == t, counts)
            _add(counts, "orphan_transcript", len(texts.keys() - audio.keys()))
            for utt, path in audio.items():
                text = clean_transcript(texts.get(utt), counts)
                records.append(Record(utt, str(path), text, _duration(path), spk))
    return sorted(records, key=lambda r: r.id)


_TTS_TEXT = ".normalized.txt"
_TTS_COMPANIONS = (".original.txt", ".book.tsv", ".trans.tsv")  # LibriTTS ships, we do not use


def read_libritts(
    root: str | os.PathLike, splits: Sequence[str], counts: Counter[str] | None = None
) -> list[Record]:
    """``<split>/<spk>/<chapter>/<id>.wav`` (any ``AUDIO_EXTS``) + ``<id>.normalized.txt``."""
    counts = _counter(counts)
    records = []
    for split_dir in split_dirs(root, splits, "LibriTTS"):
        for chapter, depth, names in _walk(split_dir):
            if depth != 2:
                _add(counts, "other_file", len(names))
                continue
            audio = _audio_files(chapter, names, counts)
            txts = {n[: -len(_TTS_TEXT)] for n in names if n.endswith(_TTS_TEXT)}
            _other_files(names, lambda n: n.endswith((_TTS_TEXT, *_TTS_COMPANIONS)), counts)
            _add(counts, "orphan_transcript", len(txts - audio.keys()))
            for utt, path in audio.items():
                txt = chapter / f"{utt}{_TTS_TEXT}"
                raw = txt.read_text(encoding="utf-8", errors="replace") if utt in txts else None
                speaker = chapter.parent.name
                records.append(
                    Record(utt, str(path), clean_transcript(raw, counts), _duration(path), speaker)
                )
    return sorted(records, key=lambda r: r.id)


def read_librilight(
    root: str | os.PathLike, splits: Sequence[str], counts: Counter[str] | None = None
) -> list[Record]:
    """``<split>/<spk>/<book>/<name>.flac``, no transcripts (``text=None``, by design: not
    counted as ``no_transcript``).

    Raw LibriLight files are whole chapters (minutes long): point ``data.root`` at the copy cut by
    libri-light's ``cut_by_vad.py`` (same layout), or long files are skipped as ``too_long``.
    """
    counts = _counter(counts)
    records = []
    for split_dir in split_dirs(root, splits, "librilight"):
        for folder, _, names in _walk(split_dir):
            _other_files(names, lambda n: n.endswith(".json"), counts)  # per-file metadata
            for stem, audio in _audio_files(folder, names, counts).items():
                rel = audio.relative_to(split_dir).with_name(stem)
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


def read_jsonl_manifest(
    root: str | os.PathLike, splits: Sequence[str], counts: Counter[str] | None = None
) -> list[Record]:
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
        rows = read_manifest(path, strict=True)
        chosen = [r for r, t in zip(rows, tags, strict=True) if t in splits]
    else:
        chosen = [r for f in files.values() for r in read_manifest(f, strict=True)]
    bad = [r.id for r in chosen if not SAFE_ID.fullmatch(r.id)]
    if bad:
        raise UserError(
            f"{len(bad)} manifest id(s) are not plain names (e.g. {bad[0]!r}): ids name output "
            "files, so use letters, digits and . _ - (no / or ..) in the manifest's id field"
        )
    counts = _counter(counts)
    for r in chosen:
        if r.audio is None:
            counts["no_audio"] += 1
        r.text = clean_transcript(r.text, counts)
    return chosen


CORPUS_READERS: dict[str, Callable[..., list[Record]]] = {
    "librispeech": read_librispeech,
    "libritts": read_libritts,
    "librilight": read_librilight,
    "jsonl": read_jsonl_manifest,
    "lhotse": read_lhotse,
    "hf": read_hf,
}
# what a corpus's reader needs beyond (root, splits, counts): (data config, the folder where audio
# held inside its files is written once) -> keyword arguments
READER_OPTIONS: dict[str, Callable[..., dict]] = {
    "lhotse": lambda data, audio_dir: {"audio_dir": audio_dir},
    "hf": lambda data, audio_dir: {"audio_dir": audio_dir, "columns": data.hf},
}
