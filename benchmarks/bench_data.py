"""Data-loading throughput of the real DataModules alone (no model), on synthetic token stores:
pretraining windows (``LMDataModule`` -> ``PackedWindows`` over a ``TokenStore``) and aligned
pairs (``AlignedDataModule`` -> ``PairTasks`` + the Zipper's / single decoder's collate), with
the configured ``num_workers`` (0: in the training process, the harshest case)."""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import synthetic as syn
from zipper_pl.config import Config
from zipper_pl.data.batches.aligned import Pair
from zipper_pl.data.batches.datamodules import AlignedDataModule, LMDataModule
from zipper_pl.data.tokens.store import LMData, ShardedTokenWriter, token_dtype
from zipper_pl.models.sequences import collate_segments


def _store(dir: Path, vocab: int, n: int, length: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(4, vocab, rng.integers(*length)) for _ in range(n)]
    w = ShardedTokenWriter(dir, token_dtype(vocab), items_per_shard=n)
    w.write_shard(0, [f"u{i}" for i in range(n)], arrays)
    w.finalize({}, num_shards=1)


def _rate(loader, n_batches: int, batch_size: int) -> float:
    """Samples/s over n_batches (after one untimed batch: worker start-up, first mmap)."""
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - t0)


def run(size: str, n_batches: int) -> dict[str, dict]:
    """{loader: {samples_per_s, batch}} for text windows, speech windows, ASR pairs (both
    models' collates)."""
    w = syn.WORKLOADS[size]
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="zipper-bench-") as tmp:
        for modality, vocab, seq, length in (
            ("text", syn.TEXT_VOCAB, w.text_seq, w.text_len),
            ("speech", syn.SPEECH_K + 2, w.speech_seq, w.speech_len),
        ):
            n_items = max(64, 4 * w.lm_batch * seq // length[0])
            store = Path(tmp) / modality
            _store(store, vocab, n_items, length, seed=len(modality))
            cfg = Config()
            cfg.data.seq_len, cfg.data.batch_size = seq, w.lm_batch
            data = LMData(vocab, 1, 2, store, store)
            dm = LMDataModule(cfg, lambda c, d=data: d)
            dm.setup("fit")
            out[f"{modality} windows"] = {
                "samples_per_s": _rate(dm.train_dataloader(), n_batches, w.lm_batch),
                "batch": f"{w.lm_batch}x{seq}",
            }
    sp = syn.specs()
    prs = syn.pairs(size, n=max(64, 8 * w.pairs), seed=5)
    pairs = [Pair(f"p{i}", "", {"text": t, "speech": s}) for i, (s, t) in enumerate(prs)]
    prepared = {"pairs": {"aligned_train": pairs, "valid": pairs[:8], "test": []}, "skipped": {}}
    single = syn.single("tiny")  # the collate depends on the vocab layout, not the tower size
    collates = {
        "zipper": functools.partial(collate_segments, specs=sp, loss_on="last"),
        "single": functools.partial(single.collate, loss_on="last"),
    }
    for arch, collate in collates.items():
        cfg = Config()
        cfg.data.batch_size, cfg.data.aligned_frac, cfg.data.task = w.pairs, 1.0, "asr"
        dm = AlignedDataModule(cfg, lambda c: prepared, collate)
        dm.setup("fit")
        out[f"ASR pairs ({arch} collate)"] = {
            "samples_per_s": _rate(dm.train_dataloader(), n_batches, w.pairs),
            "batch": f"{w.pairs} pairs",
        }
    return out
