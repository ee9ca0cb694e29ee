"""Tokenize a manifest's audio once, resumably, into a ``TokenStore``; fit the units model once.

The cache directory is named by a hash of what decides the tokens (the records' ids, audio paths
and durations, transcript presence when transcripts are needed, ``max_seconds``) and the
tokenizer's fingerprint, so a finished cache is found again without decoding any audio. Each
shard of ``items_per_shard`` records is written atomically together with the list of its bad
items, so a killed run resumes at the first unfinished shard and reproduces the same bytes;
several processes can each tokenize every n-th shard and one of them merges (``sharding.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from zipper_pl.data.corpora.audio import BadAudio, SkipCounter, load_record
from zipper_pl.data.corpora.manifest import Record, read_manifest
from zipper_pl.data.corpora.readers import summary_line
from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizer
from zipper_pl.data.tokens.sharding import Shard, merge_once, owns, shard_line
from zipper_pl.data.tokens.store import (
    ShardedTokenWriter,
    TokenStore,
    atomic_write_json,
    reusable_store,
    token_dtype,
)
from zipper_pl.errors import UserError
from zipper_pl.io import CHECKSUMS, cache_intact, record_checksums

REPORT = "bad_audio.json"


def _records(manifest: str | os.PathLike | Sequence[Record]) -> list[Record]:
    if isinstance(manifest, (str, os.PathLike)):
        return read_manifest(manifest)
    return list(manifest)


def _rel(audio: str | None, base: str | None) -> str | None:
    if audio is None or base is None:
        return audio
    audio = os.path.abspath(audio)
    return os.path.relpath(audio, base) if os.path.commonpath([audio, base]) == base else audio


def cache_key(
    records: Sequence[Record],
    tokenizer: AudioTokenizer,
    need_transcript: bool,
    max_seconds: float,
    base: str | None = None,
) -> str:
    """Hash of everything that decides the cached tokens (transcript text itself does not).

    Audio paths under ``base`` (the manifest's folder) count relative to it, so a moved corpus
    keeps its cache; each file's size and modification time count too (one stat, no read), so a
    file replaced in place under the same name is tokenized again.
    """
    h = hashlib.sha256()
    h.update(json.dumps([tokenizer.fingerprint(), need_transcript, max_seconds]).encode())
    for r in records:
        has_text = bool(r.text) if need_transcript else None
        row = [r.id, _rel(r.audio, base), round(float(r.duration), 3), has_text, _stat(r.audio)]
        h.update(json.dumps(row).encode())
    return h.hexdigest()[:16]


def _stat(audio: str | None) -> list[int] | None:
    try:
        st = os.stat(audio) if audio else None
    except OSError:
        return None  # counted as unreadable when tokenized
    return None if st is None else [st.st_size, st.st_mtime_ns]


def _bad_name(k: int) -> str:
    return f"bad_{k:05d}.json"


def _encode_shard(
    recs: Sequence[Record],
    tokenizer: AudioTokenizer,
    need_transcript: bool,
    max_seconds: float,
    bar: tqdm,
) -> tuple[list[str], list[np.ndarray], list[list[str]]]:
    """Decode + tokenize one slice; audio is held for at most ``batch_seconds`` at a time."""
    ids: list[str] = []
    tokens: list[np.ndarray] = []
    bad: list[list[str]] = []  # [id, reason, detail]
    budget = tokenizer.cfg.batch_seconds * tokenizer.sample_rate
    group_ids: list[str] = []
    group: list[np.ndarray] = []

    def flush() -> None:
        tokens.extend(tokenizer.encode(group))
        ids.extend(group_ids)
        group.clear()
        group_ids.clear()

    for r in recs:
        try:
            if need_transcript and not r.text:
                raise BadAudio("missing_transcript", "no text in the manifest")
            if not r.audio:
                raise BadAudio("unreadable", "no audio path in the manifest")
            wave = load_record(r, tokenizer.sample_rate, max_seconds)
        except BadAudio as e:
            bad.append([r.id, e.reason, e.detail])
            bar.update(1)
            continue
        if group and sum(map(len, group)) + len(wave) > budget:
            flush()
        group.append(wave)
        group_ids.append(r.id)
        bar.update(1)
    if group:
        flush()
    return ids, tokens, bad


def tokenize_manifest(
    manifest: str | os.PathLike | Sequence[Record],
    tokenizer: AudioTokenizer,
    cache_root: str | os.PathLike,
    *,
    items_per_shard: int = 1000,
    max_bad_share: float = 0.05,
    need_transcript: bool = False,
    max_seconds: float | None = None,
    bad_share_key: str = "data.max_bad_share",
    progress: bool = True,
    label: str | None = None,
    shard: Shard | None = None,
) -> Path:
    """Tokenize every record's audio into ``cache_root/<codec>-<key>/`` and return that folder.

    Bad items are skipped and counted by reason in ``<folder>/bad_audio.json``; more than
    ``max_bad_share`` of them stops the run with a ``UserError`` naming ``bad_share_key``.
    ``max_seconds`` defaults to the tokenizer's ``max_seconds`` (0 = no limit). Every call,
    fresh or reusing a finished store, prints one line of kept and skipped-by-reason counts for
    ``label`` (default: the manifest's name) and applies the ``max_bad_share`` check.
    ``shard=(i, n)``: tokenize only the store shards ``k % n == i`` (``sharding.py``); the folder
    returned is finished (``TokenStore.exists``) only when this call found every store shard
    done and merged them, or another process did.
    """
    records = _records(manifest)
    if len({r.id for r in records}) != len(records):
        raise UserError("the manifest repeats record ids: make every id unique")
    max_s = float(tokenizer.cfg.max_seconds if max_seconds is None else max_seconds)
    base = None
    if isinstance(manifest, (str, os.PathLike)):
        base = os.path.abspath(Path(manifest).parent)
    key = cache_key(records, tokenizer, need_transcript, max_s, base)
    out = Path(cache_root) / f"{tokenizer.name}-{key}"
    report = out / REPORT
    if label is None:
        label = Path(manifest).stem if isinstance(manifest, (str, os.PathLike)) else "records"
    check = {"label": label, "max_bad_share": max_bad_share, "key": bad_share_key}
    if reusable_store(out):
        # finished earlier: not a single file is decoded, but the skips are shown and checked
        # against today's threshold from the stored report (one small JSON file)
        _show_and_check(_stored_skips(out), len(records), len(records), report, **check)
        return out
    dtype = token_dtype(tokenizer.vocab_size)
    writes = None if shard is None else lambda k: owns(shard, k)  # others' temp files stay
    writer = ShardedTokenWriter(out, dtype, items_per_shard, writes=writes)
    n_shards = -(-len(records) // items_per_shard)
    size = [len(records[k * items_per_shard : (k + 1) * items_per_shard]) for k in range(n_shards)]
    # a shard counts as done with its bad-items list (written before it): resumed (and, with
    # ``shard``, other processes') shards keep their skip counts
    done = {k for k in writer.completed_shards() if (out / _bad_name(k)).is_file()}
    skips = _skips_of(out, sorted(done))
    todo = [k for k in range(n_shards) if owns(shard, k) and k not in done]
    share = sum(size[k] for k in range(n_shards) if owns(shard, k))
    bar = tqdm(
        total=share,
        initial=share - sum(size[k] for k in todo),
        desc=f"tokenize audio ({tokenizer.name})",
        unit="utt",
        disable=not progress,
    )
    checked = sum(size[k] for k in done)
    with bar:
        for k in todo:
            recs = records[k * items_per_shard : (k + 1) * items_per_shard]
            ids, tokens, bad = _encode_shard(recs, tokenizer, need_transcript, max_s, bar)
            atomic_write_json(out / _bad_name(k), bad)  # before the shard: a done shard has it
            writer.write_shard(k, ids, tokens)
            done.add(k)
            for item_id, reason, detail in bad:
                skips.add(item_id, reason, detail)
            checked += len(recs)
            if skips.total > max_bad_share * len(records):  # cannot end below the threshold
                break
    if skips.total > max_bad_share * len(records):
        skips.write(report, len(records))
        _show_and_check(skips, len(records), checked, report, **check)  # raises
    meta = {
        "codec": tokenizer.name,
        "fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "frame_rate": tokenizer.frame_rate,
        "sample_rate": tokenizer.sample_rate,
        "need_transcript": need_transcript,
        "max_seconds": max_s,
        "num_records": len(records),
    }

    def merge() -> None:
        # in shard order, whoever merges: the report's examples are those of a single run's
        merged = _skips_of(out, range(n_shards))
        merged.write(report, len(records))
        _show_and_check(merged, len(records), len(records), report, **check)
        writer.finalize({**meta, "skipped": dict(sorted(merged.counts.items()))}, n_shards)

    missing = merge_once(
        writer, n_shards, known=done, ready=lambda k: (out / _bad_name(k)).is_file(), merge=merge
    )
    if shard is not None:
        print(shard_line(label, shard, tokenized=len(todo), total=n_shards, missing=missing))
    return out


def _skips_of(out: Path, shards: Iterable[int]) -> SkipCounter:
    """The skipped items of ``shards`` (their ``bad_k.json``), in that order."""
    skips = SkipCounter()
    for k in shards:
        for item_id, reason, detail in json.loads((out / _bad_name(k)).read_text()):
            skips.add(item_id, reason, detail)
    return skips


def _stored_skips(out: Path) -> SkipCounter:
    """The skip counts of a finished store: its ``bad_audio.json``, or the counts in its index."""
    skips = SkipCounter()
    if (out / REPORT).is_file():
        stored = json.loads((out / REPORT).read_text())
        skips.counts.update(stored["by_reason"])
        skips.examples = stored.get("examples", {})
        skips.details = stored.get("details", {})
    else:
        skips.counts.update(TokenStore(out).meta.get("skipped", {}))
    return skips


def _show_and_check(
    skips: SkipCounter,
    total: int,
    checked: int,
    report: Path,
    *,
    label: str,
    max_bad_share: float,
    key: str,
) -> None:
    """One console line for the pool, then the ``max_bad_share`` check (``UserError``)."""
    print(summary_line(f"{label} audio", checked - skips.total, dict(skips.counts)))
    try:
        skips.check(total, max_bad_share, key=key)
    except UserError as e:
        early = f" (stopped after {checked} of {total} items)" if checked < total else ""
        raise UserError(f"{e}{early} Full list: {report}") from None


def fit_audio_tokenizer(
    manifest: str | os.PathLike | Sequence[Record],
    tokenizer: AudioTokenizer,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
) -> AudioTokenizer:
    """Fit (units) on a seeded sample of the manifest and save it to ``out_dir``, or load it.

    Audio is read until ``units_fit_max_frames`` frames are gathered; bad files are passed over
    (the tokenize step counts them). A pretrained codec is only saved.
    """
    out = Path(out_dir)
    saved = out / "audio_tokenizer.json"
    fit_keys = ("codec", *tokenizer.identity_fields, "units_fit_max_frames", "seed")
    if saved.is_file():
        old = json.loads(saved.read_text())
        same = all(old.get(k) == v for k, v in asdict(tokenizer.cfg).items() if k in fit_keys)
        if same and cache_intact(out, _files(out), "audio tokenizer"):
            # fitted before with the same settings; batch size, device... come from the caller
            return type(tokenizer)._load(tokenizer.cfg, out)
    if tokenizer.needs_fit:
        records = _records(manifest)
        max_s = tokenizer.cfg.max_seconds
        order = np.random.default_rng(tokenizer.cfg.seed).permutation(len(records))
        budget = tokenizer.cfg.units_fit_max_frames / tokenizer.frame_rate  # seconds
        waves, seconds = [], 0.0
        bar = tqdm(total=round(budget), desc="audio for k-means", unit="s", disable=not progress)
        with bar:
            for i in order:
                if seconds >= budget:
                    break
                r = records[int(i)]
                try:
                    wave = load_record(r, tokenizer.sample_rate, max_s)
                except BadAudio:
                    continue
                waves.append(wave)
                seconds += len(wave) / tokenizer.sample_rate
                bar.update(min(round(seconds), round(budget)) - bar.n)
        if not waves:
            raise UserError("no readable audio to fit the units tokenizer on: check data.root")
        tokenizer.fit(waves)
    tokenizer.save(out)
    record_checksums(out, _files(out))
    return tokenizer


def _files(folder: Path) -> list[str]:
    """A saved tokenizer's files (what its checksums cover)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
