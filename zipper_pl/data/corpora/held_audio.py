"""Audio held inside corpus files (a Hugging Face dataset's ``Audio`` column, a Lhotse Shar
``recording`` tar) written out once as plain files beside the manifests.

Every other part of the chain (the token caches, the vocoder, the gold audio of the listening
page) reads an utterance from a file by path and offset; giving these corpora files too keeps
one audio path instead of a second reader per container format. Encoded bytes are written as
they are (FLAC stays FLAC: no decode, no re-encode, no quality change); only bytes soundfile
cannot read (lilcom, opus) are decoded by their library and written as FLAC, which is lossless.
The folder sits in the manifests' cache folder, keyed by the sources' digests, so it is written
once per corpus version and never mistaken for another's.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from zipper_pl.io import atomic_write_bytes

# leading bytes -> the extension soundfile needs to pick the decoder
MAGIC = ((b"fLaC", ".flac"), (b"RIFF", ".wav"), (b"OggS", ".ogg"), (b"ID3", ".mp3"))
READABLE = {ext for _, ext in MAGIC}  # the extensions soundfile reads by name too


def sniff_extension(data: bytes, name_hint: str | None = None) -> str | None:
    """The container of encoded audio bytes by their first bytes (or the hint's extension for
    MPEG frames without an ID3 tag); None when soundfile cannot read them."""
    for magic, ext in MAGIC:
        if data.startswith(magic):
            return ext
    if data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return ".mp3"
    hint = os.path.splitext(name_hint or "")[1].lower()
    return hint if hint in READABLE else None


def write_held_bytes(
    folder: Path, item_id: str, data: bytes, name_hint: str | None = None
) -> Path | None:
    """``folder/<id><ext>`` holding ``data`` (written atomically, kept when already there with
    the same size); None when the bytes are in a container soundfile cannot read."""
    ext = sniff_extension(data, name_hint)
    if ext is None:
        return None
    path = folder / f"{item_id}{ext}"
    if not (path.is_file() and path.stat().st_size == len(data)):
        atomic_write_bytes(path, data)
    return path


def write_held_wave(folder: Path, item_id: str, wave: np.ndarray, sample_rate: int) -> Path:
    """``folder/<id>.flac`` with ``wave`` (decoded by the container's own library), at 16 bits:
    within 2^-15 of the decoded samples, the resolution every tokenizer here reads at."""
    path = folder / f"{item_id}.flac"
    if not path.is_file():
        buf = io.BytesIO()
        sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
        atomic_write_bytes(path, buf.getvalue())
    return path
