"""Fingerprints of a corpus's sources: what the manifests, token caches and stage identities of a
configuration are keyed by.

A name (corpus, root path, split names) says where data is, not what it is: a transcript fixed in
place, a file added under the same root or an edited JSONL manifest must give another
fingerprint. Trees of audio files (LibriSpeech, LibriTTS, LibriLight) are fingerprinted by their
listing (relative path, size, modification time of every file: a stat per file, no reads);
manifest and text files by their content; the generated corpus by its generation settings and
generator version. Paths are recorded relative to each split folder, so a corpus moved or
mounted elsewhere keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from zipper_pl.data.corpora.embedded import corpus_fingerprint
from zipper_pl.data.corpora.lhotse_corpus import lhotse_files
from zipper_pl.data.corpora.readers import jsonl_files, split_dirs
from zipper_pl.data.corpora.textnorm import VERSION as TEXTNORM_VERSION
from zipper_pl.io import file_digest, json_digest

# corpora read from manifest files: corpus -> (root, splits) -> {split: manifest file}
MANIFEST_FILES = {"jsonl": jsonl_files, "lhotse": lhotse_files}
TREE_CORPUS_DIRS = {
    "librispeech": "LibriSpeech",
    "libritts": "LibriTTS",
    "librilight": "librilight",
}


def tree_digest(folder: Path) -> str:
    """sha256 over (relative path, size, mtime_ns) of every file under ``folder``."""
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            entries.append(f"{os.path.relpath(p, folder)}\0{st.st_size}\0{st.st_mtime_ns}")
    for e in sorted(entries):
        h.update(e.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def split_fingerprints(data) -> dict[str, str]:
    """``{"train:<split>": digest, ...}`` for the audio corpus ``data`` (a ``DataConfig``)."""
    groups = {"train": data.train_splits, "valid": data.valid_splits, "test": data.test_splits}
    out: dict[str, str] = {}
    if data.corpus == "embedded":
        return {"embedded": corpus_fingerprint(data.embedded)}
    if data.corpus == "textfile":
        return {}
    for group, splits in groups.items():
        if not splits and group != "train":
            continue
        if data.corpus in MANIFEST_FILES:  # the manifests' bytes, not the audio's listing
            for name, f in MANIFEST_FILES[data.corpus](data.root, splits).items():
                out[f"{group}:{name}"] = file_digest(f)
        else:
            dirs = split_dirs(data.root, splits, TREE_CORPUS_DIRS[data.corpus])
            for d in dirs:
                out[f"{group}:{d.name}"] = tree_digest(d)
    return out


def data_fingerprint(data) -> str:
    """One digest of every source the configured corpus (and ``data.text_file``) reads."""
    parts = {"corpus": data.corpus, "splits": split_fingerprints(data)}
    if data.corpus != "embedded":  # transcripts of read corpora pass through the normaliser
        parts["textnorm"] = TEXTNORM_VERSION
    if data.text_file:
        parts["text_file"] = file_digest(Path(data.text_file).expanduser())
    return json_digest(parts)
