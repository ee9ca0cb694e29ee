"""A test pool of the embedded world by sentence length (``eval.test_words``: the paper's Fig. 2).

The demo world's sentences have 4-8 words, too few lengths to see a trend. This pool is generated
beside the corpus, in its own folder (``<corpus>-test-<min>-<max>-<n>/``: ``test.jsonl`` and
``wav/test/``), from the same grammar, lexicon and voices, with its own seed stream, so the
corpus, its pools, the towers and the judge keep their identities (a fine-tuning stage run with
``eval.test_words`` reports its test figures on this pool, so it is a stage of its own; evaluate
trained ones with ``eval.stages``). Sentences of any
training, valid or test pool are left out, so nothing tested was ever trained on; lengths are
drawn evenly over [min, max] (so long sentences are not rare).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import filelock

from zipper_pl.config.components import EmbeddedCorpusConfig
from zipper_pl.data.corpora.embedded import (
    corpus_dir,
    embedded_speakers,
    split_pools,
    synthesize_all,
)
from zipper_pl.data.corpora.manifest import Record, write_manifest
from zipper_pl.data.corpora.sentences import generate_sentences
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_text

LENGTH_SEED = 7_919  # added to data.embedded.seed: a stream no corpus pool is drawn from
ANY_LENGTH = 1_000  # words: longer than any sentence the grammar makes


def length_test_sentences(cfg: EmbeddedCorpusConfig, lo: int, hi: int) -> list[str]:
    """``cfg.n_test`` distinct sentences, each length in [lo, hi] about equally often, none in
    any pool of the corpus ``cfg`` describes."""
    taken = {s for pool in split_pools(cfg).values() for s in pool}
    per_length = -(-cfg.n_test // (hi - lo + 1))
    n = max(20 * per_length * (hi - lo + 1), 20_000)
    while True:  # the grammar makes some lengths rarely: draw until each has enough
        # every length the grammar makes (1..ANY_LENGTH), sorted here: the generator's own
        # length filter would loop forever on lengths it never makes
        drawn = generate_sentences(n, cfg.seed + LENGTH_SEED, 1, ANY_LENGTH, cfg.lexicon_frac)
        by_length: dict[int, list[str]] = {w: [] for w in range(lo, hi + 1)}
        for s in dict.fromkeys(drawn):
            if s not in taken and len(s.split()) in by_length:
                by_length[len(s.split())].append(s)
        short = {w: len(v) for w, v in by_length.items() if len(v) < per_length}
        if not short:
            break
        never = [w for w, found in short.items() if not found]
        if never:
            raise UserError(
                f"eval.test_words={[lo, hi]}: the grammar made no sentence of {never} words in "
                f"{n:,} draws: choose lengths it makes (the demo world's: 4-8; up to ~20 work)"
            )
        if n > 500_000:
            raise UserError(
                f"too few new sentences of these lengths (words: found) {short}, "
                f"{per_length} each needed: narrow eval.test_words or lower data.embedded.n_test"
            )
        n *= 4
    chosen = [s for w in by_length for s in by_length[w][:per_length]]
    order = random.Random(cfg.seed + LENGTH_SEED).sample(range(len(chosen)), cfg.n_test)
    return [chosen[i] for i in order]


def build_length_test(root: str | os.PathLike, cfg: EmbeddedCorpusConfig, words: list[int]) -> Path:
    """The pool's manifest (generated and spoken on first use; resumable like the corpus)."""
    if len(words) != 2 or not 1 <= words[0] <= words[1]:
        raise UserError(f"eval.test_words={words}: give [min, max] words, 1 <= min <= max")
    lo, hi = words
    base = corpus_dir(root, cfg)
    folder = base.with_name(f"{base.name}-test-{lo}-{hi}-{cfg.n_test}")
    manifest = folder / "test.jsonl"
    if (folder / "DONE").is_file() and manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder / ".build.lock")):  # one builder; the others then reuse
        if not (folder / "DONE").is_file():
            _build(folder, cfg, lo, hi)
    return manifest


def _build(folder: Path, cfg: EmbeddedCorpusConfig, lo: int, hi: int) -> None:
    manifest = folder / "test.jsonl"
    speakers = embedded_speakers(cfg.n_speakers, cfg.voices)
    rng = random.Random(f"embedded-{cfg.seed}-test-{lo}-{hi}-speakers")
    (folder / "wav" / "test").mkdir(parents=True, exist_ok=True)
    records, jobs = [], []
    for i, text in enumerate(length_test_sentences(cfg, lo, hi)):
        k = rng.randrange(len(speakers))
        path = folder / "wav" / "test" / f"test{lo}-{hi}-{i:06d}.wav"
        records.append(Record(path.stem, str(path), text, 0.0, f"spk{k:02d}"))
        jobs.append((path, text, speakers[k]))
    for r, seconds in zip(records, synthesize_all(jobs, max(1, cfg.workers)), strict=True):
        r.duration = round(seconds, 6)
    write_manifest(manifest, records)
    summary = {"words": [lo, hi], "utterances": len(records), "corpus": folder.name}
    atomic_write_text(folder / "DONE", json.dumps(summary, indent=2) + "\n")  # last
