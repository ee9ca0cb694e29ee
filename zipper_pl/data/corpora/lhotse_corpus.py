"""lhotse CutSets as a corpus, and any corpus we read as a CutSet.

``DATA=lhotse DATA_ROOT=<folder>`` reads one CutSet per split, ``<folder>/<split>.jsonl.gz``, as
lhotse's own recipes write them (``prepare_librispeech``, then ``CutSet.from_manifests(...)
.to_file(...)``). A cut becomes a ``Record``: its recording's file, its start (``offset``) and
duration, so a cut of a long recording is read alone, never as the whole file; the text of its
supervisions (normalised as every corpus's) and their speaker. Recordings that are not one local
file (URLs, commands, in-memory or Shar audio) are skipped and counted. The corpus's identity is
the manifests' bytes (``data.corpora.sources``), not the audio files' listing.

``export_lhotse`` goes the other way: the records of any corpus we read, as a CutSet file per
split that icefall / k2 or NeMo can load.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from zipper_pl.data.corpora.manifest import Record
from zipper_pl.data.corpora.textnorm import clean_transcript
from zipper_pl.errors import UserError

CUTS_SUFFIX = ".jsonl.gz"  # lhotse's manifest format: one JSON object per cut, gzipped


def lhotse_files(root: str | os.PathLike, splits: Sequence[str]) -> dict[str, Path]:
    """``{split: <root>/<split>.jsonl.gz}``, or a one-line error naming what is there."""
    folder = Path(root).expanduser()
    files = {
        s: folder / f"{s}{CUTS_SUFFIX}" for s in ([splits] if isinstance(splits, str) else splits)
    }
    for f in files.values():
        if not f.is_file():
            have = sorted(p.name.removesuffix(CUTS_SUFFIX) for p in folder.glob(f"*{CUTS_SUFFIX}"))
            raise UserError(
                f"cut set {f} not found (found: {', '.join(have) or 'none'}): DATA=lhotse reads "
                f"<data.root>/<split>{CUTS_SUFFIX}, one CutSet per name in data.*_splits"
            )
    return files


def read_lhotse(
    root: str | os.PathLike, splits: Sequence[str], counts: Counter[str] | None = None
) -> list[Record]:
    """The cuts of ``splits`` as records (see the module doc); skips are added to ``counts``."""
    from lhotse import CutSet  # optional at import time: only this corpus needs it

    counts = counts if counts is not None else Counter()
    records = []
    for path in lhotse_files(root, splits).values():
        for cut in CutSet.from_file(path):
            rec = _record(cut, counts)
            if rec is not None:
                records.append(rec)
    return records


def _record(cut, counts: Counter[str]) -> Record | None:
    recording = getattr(cut, "recording", None)
    sources = recording.sources if recording is not None else []
    if len(sources) != 1 or sources[0].type != "file":
        counts["not_one_local_file"] += 1  # URL, command, memory or Shar audio: not read here
        return None
    texts = [s.text for s in cut.supervisions if s.text]
    speaker = next((s.speaker for s in cut.supervisions if s.speaker), None)
    return Record(
        id=cut.id,
        audio=os.path.abspath(sources[0].source),
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
