"""The embedded corpus: generated sentences spoken by espeak-ng voices, built once, offline.

Layout under ``root/embedded-<hash>/`` (the hash covers everything that changes the content):
``text.txt`` and ``<pool>.jsonl`` manifests for the pools ``text`` (text only), ``speech``
(speech pretraining; its transcripts are kept for inspection but never trained on),
``aligned_train``, ``valid`` and ``test``; ``wav/<pool>/<id>.wav`` (16-bit PCM, 22,050 Hz);
``speakers.json``; ``DONE`` (written last). Every sentence occurs in exactly one pool, once, so no
valid or test sentence is ever seen in training. Each WAV is written atomically, so an interrupted
build resumes where it stopped; once ``DONE`` exists a call returns at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from zipper_pl.config.components import VOICES, EmbeddedCorpusConfig
from zipper_pl.data.corpora.espeak import SAMPLE_RATE, Speaker, Synthesizer
from zipper_pl.data.corpora.manifest import Record, write_manifest
from zipper_pl.data.corpora.sentences import generate_sentences
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_bytes, atomic_write_text

# Bump when the grammar, the voice table or the layout changes: old corpora are then rebuilt.
CORPUS_VERSION = 1
POOLS = ("text", "speech", "aligned_train", "valid", "test")
AUDIO_POOLS = POOLS[1:]


EMBEDDED_PRESETS: dict[str, dict[str, int]] = {
    # tests: builds in about a second
    "tiny": {
        "n_text": 200,
        "n_speech": 40,
        "n_aligned_train": 30,
        "n_valid": 8,
        "n_test": 8,
        "n_speakers": 4,
    },
    # CPU demo (its files also set 1 voice and sentences of 4-8 words): ~23.4k utterances
    # (~2 GB of WAV), ~3.5 min of speaking and ~2 min of tokenizing on 2 cores
    "demo": {
        "n_text": 20_000,
        "n_speech": 3_000,
        "n_aligned_train": 20_000,
        "n_valid": 200,
        "n_test": 200,
        "n_speakers": 8,
    },
}


def embedded_speakers(n: int, voices: Sequence[str] = VOICES) -> list[Speaker]:
    """The first ``n`` speakers; speaker k is the same in every corpus (independent of the seed):
    voice ``voices[k % len(voices)]`` with slot k's own rate and pitch."""
    if n < 1 or not voices:
        raise UserError("data.embedded.n_speakers must be >= 1 and data.embedded.voices non-empty")
    out = []
    for k in range(n):
        rng = random.Random(f"embedded-speaker-{k}")
        voice = voices[k % len(voices)]
        out.append(Speaker(voice, rate=rng.randrange(140, 201, 5), pitch=rng.randrange(30, 71)))
    return out


def corpus_fingerprint(cfg: EmbeddedCorpusConfig) -> str:
    content = dataclasses.asdict(cfg)
    content.pop("workers")  # does not change a single byte
    try:
        espeak_version = metadata.version("espeakng-loader")
    except metadata.PackageNotFoundError:
        espeak_version = "unknown"
    key = {"cfg": content, "version": CORPUS_VERSION, "espeak": espeak_version}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def corpus_dir(root: str | os.PathLike, cfg: EmbeddedCorpusConfig) -> Path:
    """Folder of the corpus ``cfg`` describes under ``root`` (whether built yet or not)."""
    return Path(root) / f"embedded-{corpus_fingerprint(cfg)}"


def split_pools(cfg: EmbeddedCorpusConfig) -> dict[str, list[str]]:
    """Globally unique sentences per pool. Test and valid are drawn first, then training pools:
    as the generator stream is prefix-stable, growing a training pool never changes the others."""
    sizes = {"test": cfg.n_test, "valid": cfg.n_valid, "aligned_train": cfg.n_aligned_train,
             "speech": cfg.n_speech, "text": cfg.n_text}  # fmt: skip
    key = (*sizes.values(), cfg.seed, cfg.min_words, cfg.max_words, cfg.lexicon_frac)
    # A stage asks for its pools ~6 times (tokenizer, token stores, retention) and the demo's
    # 43k sentences take ~1.7 s to generate: kept once per process (copies: callers may edit).
    if key not in _POOLS_MEMO:
        _POOLS_MEMO[key] = _draw_pools(cfg, sizes)
    return {name: list(lines) for name, lines in _POOLS_MEMO[key].items()}


_POOLS_MEMO: dict[tuple, dict[str, tuple[str, ...]]] = {}


def _draw_pools(cfg: EmbeddedCorpusConfig, sizes: dict[str, int]) -> dict[str, tuple[str, ...]]:
    need = sum(sizes.values())
    n = need + need // 20 + 100
    while True:
        unique = list(
            dict.fromkeys(
                generate_sentences(n, cfg.seed, cfg.min_words, cfg.max_words, cfg.lexicon_frac)
            )
        )
        if len(unique) >= need:
            break
        if n > 4 * need + 10_000:
            raise UserError(
                f"the sentence generator yields only {len(unique)} distinct sentences of "
                f"{cfg.min_words}..{cfg.max_words} words, {need} needed: lower the "
                "data.embedded.n_* pool sizes or widen data.embedded.min_words/max_words"
            )
        n *= 2
    pools, start = {}, 0
    for name, size in sizes.items():
        pools[name] = tuple(unique[start : start + size])
        start += size
    return pools


def _write_wav(path: Path, samples) -> None:
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


def synthesize_all(jobs: list[tuple[Path, str, Speaker]], workers: int) -> list[float]:
    """Write each job's WAV unless it exists (resume); return durations in job order."""
    durations = [0.0] * len(jobs)
    bar = tqdm(total=len(jobs), desc="embedded corpus: speaking", unit="utt", mininterval=1.0)

    def run(worker: int) -> None:
        synth = None
        try:
            for i in range(worker, len(jobs), workers):
                path, text, speaker = jobs[i]
                if path.is_file():  # written atomically by an earlier, interrupted run
                    info = sf.info(str(path))
                    durations[i] = info.frames / info.samplerate
                else:
                    synth = synth or Synthesizer()
                    samples = synth(text, speaker)
                    _write_wav(path, samples)
                    durations[i] = len(samples) / SAMPLE_RATE
                bar.update(1)
        finally:
            if synth is not None:
                synth.close()

    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(run, w) for w in range(workers)]:
            f.result()  # re-raises a worker's error
    bar.close()
    return durations


def build_embedded_corpus(root: str | os.PathLike, cfg: EmbeddedCorpusConfig) -> dict[str, Path]:
    """Generate (first call) or find (later calls) the corpus; returns pool name -> manifest path.

    Safe to run from several processes at once (DDP ranks): every file is deterministic and
    replaced atomically, so concurrent builders only duplicate work.
    """
    folder = corpus_dir(root, cfg)
    manifests = {p: folder / f"{p}.jsonl" for p in POOLS}
    if (folder / "DONE").is_file() and all(m.is_file() for m in manifests.values()):
        return manifests
    if cfg.min_words > cfg.max_words:
        raise UserError("data.embedded.min_words must not exceed data.embedded.max_words")
    t0 = time.time()
    speakers = embedded_speakers(cfg.n_speakers, cfg.voices)
    pools = split_pools(cfg)
    records: dict[str, list[Record]] = {}
    jobs: list[tuple[Path, str, Speaker]] = []
    for pool in AUDIO_POOLS:
        (folder / "wav" / pool).mkdir(parents=True, exist_ok=True)
        rng = random.Random(f"embedded-{cfg.seed}-{pool}-speakers")
        records[pool] = []
        for i, text in enumerate(pools[pool]):
            k = rng.randrange(len(speakers))
            path = folder / "wav" / pool / f"{pool}-{i:06d}.wav"
            records[pool].append(Record(path.stem, str(path), text, 0.0, f"spk{k:02d}"))
            jobs.append((path, text, speakers[k]))
    durations = iter(synthesize_all(jobs, max(1, min(cfg.workers, len(jobs)))))
    for pool in AUDIO_POOLS:
        for r in records[pool]:
            r.duration = round(next(durations), 6)
        write_manifest(manifests[pool], records[pool])
    texts = pools["text"]
    text_records = [Record(f"text-{i:06d}", None, t, 0.0, "") for i, t in enumerate(texts)]
    write_manifest(manifests["text"], text_records)
    _write_text(folder / "text.txt", "".join(t + "\n" for t in texts))
    speaker_table = {f"spk{k:02d}": dataclasses.asdict(s) for k, s in enumerate(speakers)}
    _write_text(folder / "speakers.json", json.dumps(speaker_table, indent=2) + "\n")
    hours = sum(r.duration for pool in AUDIO_POOLS for r in records[pool]) / 3600
    seconds = round(time.time() - t0, 2)
    summary = {"config": dataclasses.asdict(cfg), "utterances": len(jobs),
               "audio_hours": round(hours, 4), "build_seconds": seconds}  # fmt: skip
    _write_text(folder / "DONE", json.dumps(summary, indent=2) + "\n")  # last: marks completion
    return manifests


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)
