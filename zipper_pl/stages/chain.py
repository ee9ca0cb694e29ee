"""Stage entry points of the training chain: pretrain, zip, finetune, judge, vocoder and data. Each
checks the machine (``check_machine``) before any work, then runs its stage's work from the layer
below (``training.py``, ``judging.py``, ``data/prepare.py``). Stage modules (this one,
``evaluate.py``, ``ablation.py``) sit side by side and never import each other
(tests/test_layers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import filelock

from zipper_pl.config import Config
from zipper_pl.data.corpora.lhotse_corpus import export_lhotse
from zipper_pl.data.corpora.manifest import read_manifest
from zipper_pl.data.prepare import audio_store, audio_tokenizer, corpus_manifests, text_tokenizer
from zipper_pl.data.tokens.sharding import Shard, data_shard, pin_gpu
from zipper_pl.data.tokens.store import TokenStore
from zipper_pl.errors import UserError
from zipper_pl.fitting.judging import run_judge
from zipper_pl.fitting.towers import run_finetune, run_pretrain, run_zip
from zipper_pl.fitting.vocoding import run_vocoder
from zipper_pl.runs.machine import check_machine


def pretrain(cfg: Config) -> Path:
    """Unimodal next-token pretraining of a text or speech tower."""
    return run_pretrain(check_machine(cfg))


def zip_stage(cfg: Config) -> Path:
    """Zip the pretrained towers (or extend the text tower: arch=single) and fine-tune them."""
    return run_zip(check_machine(cfg))


def finetune(cfg: Config) -> Path:
    """Continue training a zipped stage (e.g. task=mix, or zip.freeze=none to unfreeze speech)."""
    return run_finetune(check_machine(cfg))


def judge_stage(cfg: Config) -> Path:
    """Train the judge ASR on the gold speech tokens of the full aligned training pool."""
    return run_judge(check_machine(cfg))


def vocoder_stage(cfg: Config) -> Path:
    """Train the unit vocoder of the active codec (speech tokens -> audio) on the speech pool."""
    return run_vocoder(check_machine(cfg))


def export_lhotse_stage(cfg: Config) -> Path:
    """The corpus ``cfg.data`` names as lhotse CutSets, ``<out>/<pool>.jsonl.gz`` for each pool
    with audio (speech, aligned_train, valid, test): for icefall / k2, NeMo, or ``DATA=lhotse``."""
    check_machine(cfg)
    if not cfg.out:
        raise UserError("export-lhotse needs out=<folder> (make: OUT=<folder>) for the CutSets")
    pools = {pool: read_manifest(path) for pool, path in corpus_manifests(cfg).items()}
    for path in export_lhotse({p: r for p, r in pools.items() if any(x.audio for x in r)}, cfg.out):
        print(f"[export] {path}")
    return Path(cfg.out)


def prepare_data(cfg: Config, *, shard: str | None = None) -> Path:
    """``make data``: corpus manifests, text tokenizer, audio tokenizer and every token cache.

    ``shard``: ``"i/n"`` (the command line's ``--shard``; else the launcher's environment,
    ``data/tokens/sharding.py``): this process tokenizes only the store shards ``k % n == i`` of
    each audio store, and whichever process finds all of a store's shards done merges it.
    """
    check_machine(cfg)
    part, source = data_shard(flag=shard, environ=os.environ)
    if part is not None:
        i, n = part
        gpu = pin_gpu(os.environ)
        where = "" if gpu is None else f" on GPU {gpu}"
        print(f"[data] shard {i}/{n} (from {source}): tokenizing the store shards k % {n} == {i}"
              f"{where}")  # fmt: skip
    # manifests and tokenizers under the cache's lock: of n shard processes started together,
    # exactly one builds and fits them (a second k-means fit could differ, on a GPU) and the
    # others wait here, then load what it saved
    with filelock.FileLock(str(Path(cfg.data.cache_dir).with_suffix(".lock"))):
        manifests = corpus_manifests(cfg)
        for pool, path in manifests.items():
            print(f"[data] {pool:14s} {len(read_manifest(path)):7d} records  {path}")
        tok = text_tokenizer(cfg)
        print(f"[data] text tokenizer: {tok.vocab_size} pieces  {tok.path}")
        atok, folder = audio_tokenizer(cfg)
        print(f"[data] audio tokenizer: {atok.vocab_size} tokens  {folder}")
        if part is None:
            _audio_stores(cfg, atok, None)
    if part is not None:  # outside the lock: the shard processes tokenize side by side
        _audio_stores(cfg, atok, part)
    return Path(cfg.data.cache_dir)


def _audio_stores(cfg: Config, atok, part: Shard | None) -> None:
    """Every audio pool's token store, or ``part``'s store shards of each."""
    for pool in ("speech", "aligned_train", "valid", "test"):
        store = audio_store(cfg, atok, pool, need_transcript=pool != "speech", shard=part)
        if TokenStore.exists(store):
            print(f"[data] {pool:14s} tokens cached in {store}")
