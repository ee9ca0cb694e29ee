"""Fingerprints of a corpus's sources: what the manifests, token caches and stage identities of a
configuration are keyed by.

A name (corpus, root path, split names) says where data is, not what it is: a transcript fixed in
place, a file added under the same root or an edited JSONL manifest must give another
fingerprint. Trees of audio files (LibriSpeech, LibriTTS, LibriLight) are fingerprinted by their
listing (relative path, size, modification time of every file: a stat per file, no reads);
manifest and text files by their content; the generated corpus by its generation settings and
generator version. Paths are recorded relative to each split folder, so a corpus moved or
mounted elsewhere keeps its fingerprint.

Manifest-like files (lhotse CutSets and Shar shards, Hugging Face arrow / parquet files) can be
tens of GB: each one's sha256 is kept in ``<data.cache_dir>/digests/`` keyed by its (absolute
path, size, mtime_ns), so a file is read again only when one of those changes. An edit in place
changes the mtime (editors, ``sed -i``, ``datasets`` writers all do); what it would miss is an
edit that restores the old size and mtime on purpose (``touch -r``): delete the digests folder then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zipper_pl.data.corpora.embedded import corpus_fingerprint
from zipper_pl.data.corpora.hf_corpus import hf_files
from zipper_pl.data.corpora.lhotse_corpus import lhotse_files
from zipper_pl.data.corpora.readers import jsonl_files, split_dirs
from zipper_pl.data.corpora.textnorm import VERSION as TEXTNORM_VERSION
from zipper_pl.io import atomic_write_json, file_digest, json_digest

# corpora read from manifest files: corpus -> (root, splits) -> {split: manifest file}
MANIFEST_FILES = {"jsonl": jsonl_files, "lhotse": lhotse_files, "hf": hf_files}
# settings that choose what is read from a corpus's files: corpus -> data config -> JSON-able
SOURCE_SETTINGS = {"hf": lambda data: {"columns": dataclasses.asdict(data.hf)}}
TREE_CORPUS_DIRS = {
    "librispeech": "LibriSpeech",
    "libritts": "LibriTTS",
    "librilight": "librilight",
}


def tree_digest(folder: Path) -> str:
    """sha256 over (relative path, size, mtime_ns) of every file under ``folder``."""
    entries = _listing_by_find(folder)
    if entries is None:  # same digest, ~4x slower: said, as every fallback is
        print(f"[data] {folder}: no GNU find (or it failed): listing every file from Python")
        entries = _listing_by_walk(folder)
    entries.sort()
    return hashlib.sha256(b"".join(e + b"\n" for e in entries)).hexdigest()


def _entry(rel: str, size: int, mtime_ns: int) -> bytes:
    return f"{rel}\0{size}\0{mtime_ns}".encode("utf-8", "surrogateescape")


def _listing_by_walk(folder: Path) -> list[bytes]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            entries.append(_entry(os.path.relpath(p, folder), st.st_size, st.st_mtime_ns))
    return entries


def _listing_by_find(folder: Path) -> list[bytes] | None:
    """The same entries as ``_listing_by_walk``, stat-ed by GNU find, one process per core over
    the top folder's sub-folders: 1M files take ~3 s instead of ~12 s (the walk's cost is a
    Python stat call per file), which keeps naming a chain on LibriLight within seconds. None
    where find is not GNU's (no -printf) or fails, so the walk decides. Anything but a regular
    file (a symlink, a fifo) is listed by name and stat-ed here, following links, as the walk
    does."""
    entries, subdirs = [], []
    for e in os.scandir(folder):
        if e.is_dir(follow_symlinks=False):
            subdirs.append(f"./{e.name}")  # "./": a folder named like an option stays a path
        else:
            entries += _stat_entries(folder, [e.name])
    groups = [subdirs[k::_FIND_PROCESSES] for k in range(_FIND_PROCESSES)]
    with ThreadPoolExecutor(_FIND_PROCESSES) as pool:
        outputs = list(pool.map(lambda g: _find(folder, g), [g for g in groups if g]))
    if any(out is None for out in outputs):
        return None
    for out in outputs:
        links = []
        for rec in out.split(b"\0")[:-1]:  # "F<size> <seconds>.<fraction> ./<path>" or "L./<path>"
            if rec[:1] == b"F":
                size, stamp, rel = rec[1:].split(b" ", 2)
                sec, _, frac = stamp.partition(b".")
                mtime_ns = int(sec) * 10**9 + int((frac + b"000000000")[:9])
                entries.append(rel[2:] + b"\0" + size + b"\0" + str(mtime_ns).encode())
            else:
                links.append(os.fsdecode(rec[3:]))
        entries += _stat_entries(folder, links)
    return entries


_FIND_PROCESSES = max(1, min(4, os.cpu_count() or 1))  # stat calls are the kernel's: one a core


def _find(folder: Path, starts: list[str]) -> bytes | None:
    cmd = ["find", *starts, "(", "-type", "f", "-printf", "F%s %T@ %p\\0", ")",
           "-o", "(", "-not", "-type", "d", "-printf", "L%p\\0", ")"]  # fmt: skip
    try:
        r = subprocess.run(cmd, cwd=folder, capture_output=True, check=False)
    except OSError:
        return None
    return r.stdout if r.returncode == 0 else None  # unreadable folders, BSD find: the walk


def _stat_entries(folder: Path, names: list[str]) -> list[bytes]:
    """Entries of non-regular files, stat-ed through links; a link to a folder is not listed
    (the walk neither lists nor enters it)."""
    out = []
    for rel in names:
        st = os.stat(os.path.join(folder, rel))
        if not stat.S_ISDIR(st.st_mode):
            out.append(_entry(rel, st.st_size, st.st_mtime_ns))
    return out


def cached_file_digest(path: Path, cache_dir: str | os.PathLike) -> str:
    """``file_digest(path)``, read again only when the file's (path, size, mtime) changed."""
    st = os.stat(path)
    stamp = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    record = Path(cache_dir) / "digests" / f"{json_digest(stamp['path'])[:32]}.json"
    try:
        kept = json.loads(record.read_text())
        if {k: kept.get(k) for k in stamp} == stamp and isinstance(kept.get("sha256"), str):
            return kept["sha256"]
    except (OSError, ValueError):
        pass  # none yet, or unreadable: computed again and rewritten
    digest = file_digest(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run a re-read
        atomic_write_json(record, {**stamp, "sha256": digest})
    return digest


def split_fingerprints(data) -> dict[str, str]:
    """``{"train:<split>": digest, ...}`` for the audio corpus ``data`` (a ``DataConfig``)."""
    groups = {"train": data.train_splits, "valid": data.valid_splits, "test": data.test_splits}
    out: dict[str, str] = {}
    if data.corpus == "embedded":
        return {"embedded": corpus_fingerprint(data.embedded)}
    if data.corpus == "textfile":
        return {}
    if data.corpus in SOURCE_SETTINGS:
        out["settings"] = json_digest(SOURCE_SETTINGS[data.corpus](data))
    for group, splits in groups.items():
        if not splits and group != "train":
            continue
        if data.corpus in MANIFEST_FILES:  # the manifests' bytes, not the audio's listing
            for name, f in MANIFEST_FILES[data.corpus](data.root, splits).items():
                out[f"{group}:{name}"] = cached_file_digest(f, data.cache_dir)
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
