"""Loading and validating audio: every problem becomes a ``BadAudio`` with a fixed-set reason.

Callers skip bad items and count them (``SkipCounter``); only a bad share above the configured
threshold stops a run, with one message that lists the reasons and example ids.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_json

REASONS = ("unreadable", "truncated", "empty", "non_finite", "too_long", "missing_transcript")


class BadAudio(Exception):
    """An item that cannot be used; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-audio reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _wav_data_truncated(path: str | os.PathLike) -> bool:
    """True when a RIFF/WAVE header promises more data bytes than the file holds.

    libsndfile silently shortens such files to what is there, so the check reads the header.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return False
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                # 0xFFFFFFFF / 0 mark a streamed file whose length was never written back
                return chunk_size not in (0, 0xFFFFFFFF) and pos + 8 + chunk_size > size
            pos += 8 + chunk_size + (chunk_size & 1)
    return False


def audio_info(path: str | os.PathLike) -> tuple[int, int]:
    """(frames, sample_rate) from the header only; ``BadAudio('unreadable')`` if it cannot open."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise BadAudio("unreadable", str(e).strip()) from None
    return int(info.frames), int(info.samplerate)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited polyphase resampling of a 1-D float32 wave; identity when the rates match.

    scipy's polyphase FIR is ~100x faster than torchaudio's sinc resampler for ratios like
    22050 -> 16000 (441:320), which dominated tokenization time of the embedded corpus.
    """
    if orig_sr == target_sr:
        return wave
    # imported here: scipy.signal costs ~0.9 s, and every command (make's `paths` included)
    # imports this module, while only the corpora that need resampling call it
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    out = resample_poly(np.ascontiguousarray(wave, dtype=np.float32), up, down,
                        window=_lowpass(up, down))  # fmt: skip
    return out.astype(np.float32, copy=False)


@functools.cache
def _lowpass(up: int, down: int) -> np.ndarray:
    """The FIR filter ``resample_poly`` designs on every call, designed once per rate pair: the
    same float32 taps (its default Kaiser window, cast to the input's dtype), so the same
    output bit for bit (tested), at ~0.4-1 ms less per file of the embedded corpus."""
    from scipy.signal import firwin

    rate = max(up, down)
    window = firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)).astype(np.float32)
    window.flags.writeable = False  # shared by every call: resample_poly copies it
    return window


def load_audio(
    path: str | os.PathLike,
    target_sr: int,
    max_seconds: float | None = None,
    *,
    offset: float | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Decode ``path`` (or, with ``offset``, the ``duration`` seconds from ``offset`` on: a
    segment of a long recording, read alone) to mono float32 at ``target_sr``; raise
    ``BadAudio`` on any problem.

    Stereo is down-mixed by averaging channels; ``max_seconds`` (None or <= 0: no limit) is
    checked from the header before decoding so over-long files cost nothing.
    """
    if not Path(path).is_file():
        raise BadAudio("unreadable", f"no such file: {path}")
    total, sr = audio_info(path)
    start = 0 if offset is None else round(offset * sr)
    frames = total - start if offset is None or duration is None else round(duration * sr)
    if start + frames > total:
        end, length = (start + frames) / sr, total / sr
        raise BadAudio("truncated", f"segment ends at {end:.2f}s of a {length:.2f}s recording")
    if frames <= 0:
        raise BadAudio("empty", "zero samples")
    if max_seconds and max_seconds > 0 and frames / sr > max_seconds:
        raise BadAudio("too_long", f"{frames / sr:.1f}s > max {max_seconds:g}s")
    if _wav_data_truncated(path):
        raise BadAudio("truncated", "WAV data chunk is shorter than its header says")
    try:  # a segment is read alone: soundfile seeks, the rest of the recording is not decoded
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        # the header opened, so the body is damaged (e.g. FLAC "decoder lost sync")
        raise BadAudio("truncated", str(e).strip()) from None
    if data.shape[0] < frames:
        raise BadAudio("truncated", f"decoded {data.shape[0]} of {frames} frames")
    if data.shape[0] == 0:
        raise BadAudio("empty", "zero samples")
    if not np.isfinite(data).all():
        raise BadAudio("non_finite", "NaN or inf samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # [T]
    return resample(np.ascontiguousarray(wave, dtype=np.float32), sr, target_sr)


def split_at_silences(wave: np.ndarray, longest: int, frame: int) -> list[np.ndarray]:
    """Pieces of at most ``longest`` samples, each cut at the quietest ``frame`` of the second
    half of its window (a pause between words or sentences, where a cut loses least)."""
    if len(wave) <= longest:
        return [wave]
    frame = max(1, min(frame, longest // 4))
    n = len(wave) // frame
    energy = np.square(wave[: n * frame].astype(np.float64)).reshape(n, frame).mean(axis=1)
    pieces, start = [], 0
    while len(wave) - start > longest:
        lo, hi = (start + longest // 2) // frame, (start + longest) // frame
        cut = (lo + int(np.argmin(energy[lo:hi]))) * frame + frame // 2
        pieces.append(wave[start:cut])
        start = cut
    return [*pieces, wave[start:]]


def load_record(record, target_sr: int, max_seconds: float | None = None) -> np.ndarray:
    """The audio of a manifest ``Record``: its whole file, or its segment (``offset``)."""
    return load_audio(record.audio or "", target_sr, max_seconds, offset=record.offset,
                      duration=record.duration)  # fmt: skip


class SkipCounter:
    """Counts skipped items by reason and stops a run when too many are bad."""

    def __init__(self, max_examples: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.details: dict[str, str] = {}  # first few ids -> what was wrong
        self.max_examples = max_examples

    def add(self, item_id: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(item_id)
            self.details[item_id] = f"{reason}: {detail}" if detail else reason

    def add_bad(self, item_id: str, err: BadAudio) -> None:
        self.add(item_id, err.reason, err.detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, total: int) -> dict[str, Any]:
        return {
            "total_items": total,
            "skipped": self.total,
            "bad_share": self.total / total if total else 0.0,
            "by_reason": dict(sorted(self.counts.items())),
            "examples": {r: self.examples[r] for r in sorted(self.examples)},
            "details": dict(sorted(self.details.items())),
        }

    def write(self, path: str | os.PathLike, total: int) -> None:
        atomic_write_json(Path(path), self.report(total))

    def summary(self) -> str:
        return ", ".join(
            f"{r} {n} (e.g. {', '.join(self.examples.get(r, []))})"
            for r, n in sorted(self.counts.items())
        )

    def check(
        self, total: int, max_bad_share: float = 0.05, key: str = "data.max_bad_share"
    ) -> None:
        """Raise ``UserError`` naming ``key`` when more than ``max_bad_share`` of items were bad."""
        if total == 0 or self.total / total <= max_bad_share:
            return
        raise UserError(
            f"{self.total} of {total} items ({self.total / total:.1%}) were bad, above "
            f"{key}={max_bad_share:g}: {self.summary()}. Fix or remove those files, or raise "
            f"{key} to skip them."
        )
