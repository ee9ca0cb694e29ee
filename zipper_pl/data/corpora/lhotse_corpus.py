"""lhotse CutSets as a corpus, and any corpus we read as a CutSet.

``DATA=lhotse DATA_ROOT=<folder>`` reads, per split, one CutSet file ``<folder>/<split>.jsonl.gz``
as lhotse's own recipes write them (``prepare_librispeech``, then ``CutSet.from_manifests(...)
.to_file(...)``), or one Lhotse Shar folder ``<folder>/<split>/`` (``CutSet.to_shar``: cut shards
``cuts.NNNNNN.jsonl.gz`` beside tar shards of their audio). A cut becomes a ``Record``: its
recording's file, its start (``offset``) and duration, so a cut of a long recording is read alone,
never as the whole file; the text of its supervisions (normalised as every corpus's) and their
speaker. Audio held in memory (Shar's tars, ``memory`` sources) is written out once as files
(``held_audio``); recordings that are neither (URLs, commands, several files) are skipped and
counted. The corpus's identity is the manifests' bytes, Shar's tars included
(``data.corpora.sources``), not the audio files' listing.

``export_lhotse`` goes the other way: the records of any corpus we read, as a CutSet file per
split that icefall / k2 or NeMo can load.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from zipper_pl.data.corpora.held_audio import write_held_bytes, write_held_wave
from zipper_pl.data.corpora.manifest import Record
from zipper_pl.data.corpora.textnorm import clean_transcript
from zipper_pl.errors import UserError

CUTS_SUFFIX = ".jsonl.gz"  # lhotse's manifest format: one JSON object per cut, gzipped
SHAR_CUTS = "cuts.*.jsonl.gz"  # a Shar folder's cut shards (its audio: recording.*.tar)


def lhotse_files(root: str | os.PathLike, splits: Sequence[str]) -> dict[str, Path]:
    """Every file the splits are read from: ``{split: <root>/<split>.jsonl.gz}``, and for a Shar
    split ``{"<split>/<shard file>": path}`` (cuts and audio tars); or a one-line error naming
    what is there."""
    folder = Path(root).expanduser()
    out: dict[str, Path] = {}
    for split in [splits] if isinstance(splits, str) else splits:
        cuts, shar = folder / f"{split}{CUTS_SUFFIX}", folder / split
        if cuts.is_file():
            out[split] = cuts
        elif any(shar.glob(SHAR_CUTS)):
            out.update({f"{split}/{f.name}": f for f in sorted(shar.iterdir()) if f.is_file()})
        else:
            have = sorted(
                [p.name.removesuffix(CUTS_SUFFIX) for p in folder.glob(f"*{CUTS_SUFFIX}")]
                + [p.parent.name + "/" for p in folder.glob(f"*/{SHAR_CUTS}")]
            )
            raise UserError(
                f"cut set {cuts} not found, nor a Shar folder {shar}/ (found: "
                f"{', '.join(sorted(set(have))) or 'none'}): DATA=lhotse reads <data.root>/<split>"
                f"{CUTS_SUFFIX} or <data.root>/<split>/{SHAR_CUTS}, one per name in data.*_splits"
            )
    return out


def _cut_sets(root: str | os.PathLike, splits: Sequence[str]):
    from lhotse import CutSet  # optional at import time: only this corpus needs it

    for split in [splits] if isinstance(splits, str) else splits:
        files = lhotse_files(root, [split])
        if split in files:
            yield split, CutSet.from_file(files[split])
        else:  # lazily, shard by shard: the audio of one cut is in memory at a time
            yield split, CutSet.from_shar(in_dir=Path(root).expanduser() / split)


def read_lhotse(
    root: str | os.PathLike,
    splits: Sequence[str],
    counts: Counter[str] | None = None,
    *,
    audio_dir: Path | None = None,
) -> list[Record]:
    """The cuts of ``splits`` as records (see the module doc); skips are added to ``counts``.
    Audio held in memory is written under ``audio_dir/<split>/`` (without one: skipped)."""
    counts = counts if counts is not None else Counter()
    records = []
    for split, cuts in _cut_sets(root, splits):
        held = None if audio_dir is None else audio_dir / split
        for cut in cuts:
            rec = _record(cut, counts, held)
            if rec is not None:
                records.append(rec)
    return records


def _audio_path(cut, counts: Counter[str], held: Path | None) -> str | None:
    recording = getattr(cut, "recording", None)
    sources = recording.sources if recording is not None else []
    if len(sources) == 1 and sources[0].type == "file":
        return os.path.abspath(sources[0].source)
    if len(sources) == 1 and sources[0].type == "memory" and held is not None:
        path = write_held_bytes(held, cut.id, sources[0].source)
        if path is None:  # lilcom / opus: decoded by lhotse, kept as 16-bit FLAC
            path = write_held_wave(held, cut.id, recording.load_audio()[0], recording.sampling_rate)
        return str(path)
    counts["not_one_local_file"] += 1  # URL, command or several files: not read here
    return None


def _record(cut, counts: Counter[str], held: Path | None) -> Record | None:
    audio = _audio_path(cut, counts, held)
    if audio is None:
        return None
    texts = [s.text for s in cut.supervisions if s.text]
    speaker = next((s.speaker for s in cut.supervisions if s.speaker), None)
    return Record(
        id=cut.id,
        audio=audio,
        text=clean_transcript(" ".join(texts) if texts else None, counts),
        duration=float(cut.duration),
        speaker=speaker or "unknown",
        offset=float(cut.start),
    )


def export_lhotse(records_of: dict[str, list[Record]], out: str | os.PathLike) -> list[Path]:
    """One CutSet file per split (``<out>/<split>.jsonl.gz``) of the records with audio: a
    recording per audio file (shared by its segments), a cut and a supervision per record."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, records in records_of.items():
        recordings: dict[str, Recording] = {}
        cuts = []
        for r in (r for r in records if r.audio):
            if r.audio not in recordings:
                recordings[r.audio] = Recording.from_file(r.audio, recording_id=f"{r.id}-rec")
            rec = recordings[r.audio]
            start = r.offset or 0.0
            duration = r.duration if r.offset is not None else rec.duration
            sup = SupervisionSegment(id=r.id, recording_id=rec.id, start=0.0, duration=duration,
                                     text=r.text, speaker=r.speaker)  # fmt: skip
            cuts.append(MonoCut(id=r.id, start=start, duration=duration, channel=0,
                                recording=rec, supervisions=[sup]))  # fmt: skip
        path = folder / f"{split}{CUTS_SUFFIX}"
        CutSet.from_cuts(cuts).to_file(path)
        written.append(path)
    return written
