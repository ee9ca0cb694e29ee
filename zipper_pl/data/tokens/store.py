"""Flat memory-mapped token storage: sharded concatenated token ids plus one index.

Layout of a store directory::

    shard_00000.bin    concatenated token ids of items [0, n) of the input order (raw, no header)
    shard_00000.json   that shard's sub-index: ids, lengths (written after the .bin: "shard done")
    ...
    index.npy          int64 [num_items, 3] = (shard, offset, length), offsets in tokens
    index.json         dtype, ids, counts and the caller's meta; written LAST: "store finished"
    verified.json      (size, mtime) of each shard whose sha256 was last checked and found intact

Items are written in fixed slices of the input order (slice k = items [k*n, (k+1)*n)), one shard per
slice, so a writer that was killed can be restarted: it asks ``completed_shards()`` and skips them.
Every file is written to a temp name in the same directory and renamed into place, so a reader
never sees half a file; stray temp files of a killed writer are removed on the next start. Each
sub-index records its shard's sha256: a finished store is reused only while every shard has its
recorded size and content (``reusable_store``); a damaged shard is said on the console and
tokenized again, never read as fewer or other tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zipper_pl.io import TMP_MARK, atomic_write_bytes, atomic_write_json, file_sha256

INDEX_JSON = "index.json"
INDEX_NPY = "index.npy"
WRITER_JSON = "writer.json"
VERIFIED_JSON = "verified.json"
_SHARD_RE = re.compile(r"^shard_(\d{5,})\.json$")
# a temp file of slice k's files (shard_k.bin / .json, and a caller's per-slice files: bad_k.json)
_TMP_SLICE_RE = re.compile(r"^\.[a-z]+_(\d{5,})\.")


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest storage dtype for ids in ``[0, vocab_size)``: uint16 below 65536, else int32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def _shard_name(k: int, ext: str) -> str:
    return f"shard_{k:05d}.{ext}"


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


class ShardedTokenWriter:
    """Writes items slice by slice into ``dir``; restartable after a kill.

    ``items_per_shard`` fixes the slicing of the input order: the caller feeds slice ``k`` (items
    ``[k*items_per_shard, (k+1)*items_per_shard)``, possibly minus skipped items) to
    ``write_shard(k, ...)``. A directory written with another dtype or slicing is reset.
    ``writes``: which slices this writer writes while other processes write the others (None:
    all); it then removes only those slices' leftover temp files, as another process's may be a
    write in progress.
    """

    def __init__(
        self,
        dir: str | os.PathLike,
        dtype: Any,
        items_per_shard: int,
        *,
        writes: Callable[[int], bool] | None = None,
    ) -> None:
        if items_per_shard < 1:
            raise ValueError(f"items_per_shard must be >= 1, got {items_per_shard}")
        self.dir = Path(dir)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.int32)):
            raise ValueError(f"token dtype must be uint16 or int32, got {self.dtype}")
        self.items_per_shard = int(items_per_shard)
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in self.dir.iterdir():  # leftovers of a killed writer: never valid
            if p.name.startswith(".") and TMP_MARK in p.name:
                k = _TMP_SLICE_RE.match(p.name)
                if writes is None or (k is not None and writes(int(k.group(1)))):
                    p.unlink(missing_ok=True)
        layout = {"dtype": self.dtype.name, "items_per_shard": self.items_per_shard}
        wj = self.dir / WRITER_JSON
        if wj.exists() and json.loads(wj.read_text()) != layout:
            self._reset()  # shards sliced or typed differently cannot be reused
        if not wj.exists():
            atomic_write_json(wj, layout)

    def _reset(self) -> None:
        for p in self.dir.iterdir():
            if p.name.startswith("shard_") or p.name in (INDEX_JSON, INDEX_NPY, WRITER_JSON,
                                                         VERIFIED_JSON):  # fmt: skip
                p.unlink()

    def completed_shards(self, among: Iterable[int] | None = None) -> set[int]:
        """Slices whose shard (.bin + .json, sizes consistent) is fully on disk; only those of
        ``among`` are checked when given (each check hashes the shard)."""
        done = set()
        wanted = None if among is None else set(among)
        for p in self.dir.iterdir():
            m = _SHARD_RE.match(p.name)
            if not m or (wanted is not None and int(m.group(1)) not in wanted):
                continue
            k = int(m.group(1))
            if _intact(self.dir, k, self.dtype, None):
                done.add(k)
        return done

    def write_shard(self, k: int, ids: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Write slice ``k``: ``arrays[i]`` = 1-D token ids of item ``ids[i]`` (may be empty)."""
        if len(ids) != len(arrays):
            raise ValueError(f"{len(ids)} ids but {len(arrays)} arrays")
        if len(ids) > self.items_per_shard:
            raise ValueError(f"{len(ids)} items exceed items_per_shard={self.items_per_shard}")
        info = np.iinfo(self.dtype)
        parts = []
        for item_id, a in zip(ids, arrays, strict=True):
            a = np.asarray(a)
            if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"item {item_id!r}: need 1-D integer ids, got {a.dtype}{a.shape}")
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise ValueError(f"item {item_id!r}: ids out of range for {self.dtype}")
            parts.append(a.astype(self.dtype, copy=False))
        (self.dir / INDEX_JSON).unlink(missing_ok=True)  # the store is no longer finished
        flat = np.concatenate(parts) if parts else np.empty(0, self.dtype)
        atomic_write_bytes(self.dir / _shard_name(k, "bin"), flat.tobytes())
        sub = {
            "ids": [str(i) for i in ids],
            "lengths": [int(p.size) for p in parts],
            "sha256": hashlib.sha256(flat.tobytes()).hexdigest(),
        }
        atomic_write_json(self.dir / _shard_name(k, "json"), sub)

    def finalize(self, meta: dict[str, Any], num_shards: int | None = None) -> None:
        """Join the shard sub-indexes into ``index.npy`` + ``index.json`` (the latter last).

        ``num_shards`` (when known) checks that every slice ``0..num_shards-1`` was written.
        """
        done = self.completed_shards()
        n = num_shards if num_shards is not None else (max(done) + 1 if done else 0)
        missing = sorted(set(range(n)) - done)
        if missing:
            raise RuntimeError(f"cannot finalize {self.dir}: shards {missing[:10]} not written")
        ids: list[str] = []
        rows = []
        for k in range(n):
            sub = json.loads((self.dir / _shard_name(k, "json")).read_text())
            lengths = np.asarray(sub["lengths"], dtype=np.int64)
            offsets = np.cumsum(lengths) - lengths
            rows.append(np.stack([np.full_like(lengths, k), offsets, lengths], axis=1))
            ids.extend(sub["ids"])
        index = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)  # [N, 3]
        _atomic_save_npy(self.dir / INDEX_NPY, index.reshape(-1, 3).astype(np.int64))
        head = {
            "dtype": self.dtype.name,
            "num_shards": n,
            "num_items": len(ids),
            "total_tokens": int(index[:, 2].sum()) if len(ids) else 0,
            "ids": ids,
            "meta": meta,
        }
        # the shards were hashed as they were written: a first reuse need not hash them again
        stamps = {}
        for k in range(n):
            st = (self.dir / _shard_name(k, "bin")).stat()
            stamps[_shard_name(k, "bin")] = [st.st_size, st.st_mtime_ns]
        atomic_write_json(self.dir / VERIFIED_JSON, stamps)
        atomic_write_json(self.dir / INDEX_JSON, head)


def _intact(folder: Path, k: int, dtype: np.dtype, seen: dict | None) -> list[int] | None:
    """(size, mtime) of shard ``k`` when its size and sha256 match its sub-index, else None.
    ``seen``: shards found intact before at that (size, mtime) are not hashed again (a write
    changes the mtime); shards from before checksums are checked by size alone."""
    b = folder / _shard_name(k, "bin")
    try:
        sub = json.loads((folder / _shard_name(k, "json")).read_text())
        st = b.stat()
        if st.st_size != sum(sub["lengths"]) * dtype.itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):  # missing or unreadable
        return None
    stamp = [st.st_size, st.st_mtime_ns]
    if "sha256" in sub and (seen or {}).get(b.name) != stamp and file_sha256(b) != sub["sha256"]:
        return None
    return stamp


def reusable_store(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a finished store whose every shard is intact. A damaged one is
    said on the console and un-finished (its damaged shards removed), so its writer tokenizes
    exactly those again."""
    folder = Path(folder)
    if not TokenStore.exists(folder):
        return False
    head = json.loads((folder / INDEX_JSON).read_text())
    dtype = np.dtype(head["dtype"])
    try:
        seen = json.loads((folder / VERIFIED_JSON).read_text())
    except (OSError, ValueError):
        seen = {}
    stamps = {k: _intact(folder, k, dtype, seen) for k in range(head["num_shards"])}
    bad = [k for k, stamp in stamps.items() if stamp is None]
    if not bad:
        now = {_shard_name(k, "bin"): stamp for k, stamp in stamps.items()}
        if now != seen:
            with contextlib.suppress(OSError):  # a read-only cache is checked, not recorded
                atomic_write_json(folder / VERIFIED_JSON, now)
        return True
    names = ", ".join(_shard_name(k, "bin") for k in bad[:5])
    print(f"[cache] {folder}: {len(bad)} shard(s) ({names}) differ from their recorded size or "
          "sha256 (damaged on disk): tokenizing them again")  # fmt: skip
    for name in (
        INDEX_JSON,
        VERIFIED_JSON,
        *(_shard_name(k, e) for k in bad for e in ("json", "bin")),
    ):
        (folder / name).unlink(missing_ok=True)
    return False


class TokenStore:
    """Read-only view of a finished store; items are memory-mapped slices (no copy)."""

    def __init__(self, dir: str | os.PathLike) -> None:
        self.dir = Path(dir)
        if not TokenStore.exists(self.dir):
            raise FileNotFoundError(f"no finished token store in {self.dir} (missing {INDEX_JSON})")
        head = json.loads((self.dir / INDEX_JSON).read_text())
        self.dtype = np.dtype(head["dtype"])
        self.num_shards: int = head["num_shards"]
        self.ids: list[str] = head["ids"]
        self.meta: dict[str, Any] = head["meta"]
        index = np.load(self.dir / INDEX_NPY, allow_pickle=False)  # [N, 3]
        self._shard = index[:, 0]
        self._offset = index[:, 1]
        self.lengths: np.ndarray = index[:, 2]
        self.total_tokens = int(self.lengths.sum())
        self._maps: dict[int, np.ndarray] = {}

    @staticmethod
    def exists(dir: str | os.PathLike) -> bool:
        return (Path(dir) / INDEX_JSON).is_file() and (Path(dir) / INDEX_NPY).is_file()

    def __len__(self) -> int:
        return len(self.ids)

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            path = self.dir / _shard_name(k, "bin")
            if path.stat().st_size == 0:  # np.memmap refuses empty files
                self._maps[k] = np.empty(0, self.dtype)
            else:
                self._maps[k] = np.memmap(path, dtype=self.dtype, mode="r")
        return self._maps[k]

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for a store of {len(self)} items")
        i = i % len(self)
        off = int(self._offset[i])
        return self._map(int(self._shard[i]))[off : off + int(self.lengths[i])]

    def __getstate__(self) -> dict[str, Any]:
        # memmaps would pickle as full copies: DataLoader workers reopen them lazily instead
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


@dataclass
class LMData:
    """What pretraining reads: a modality's train and valid token stores and its tower
    vocabulary (``data/modalities.py`` builds it; ``data/batches/datamodules.py`` trains on it)."""

    vocab_size: int  # tower vocabulary: tokenizer entries + begin/end ids
    bos_id: int
    eos_id: int
    train_store: Path
    valid_store: Path
    artefacts: list[Path] = field(default_factory=list)  # tokenizer files to copy into the stage
    info: dict = field(default_factory=dict)  # counts for metrics.json
