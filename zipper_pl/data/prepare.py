"""Data preparation shared by every stage: corpus -> manifests -> tokenizers -> token stores.

Every artefact is keyed by a hash of what produced it and written atomically, so a second run
finds it and does nothing, and several processes (DDP ranks, sweep cells) can share one cache.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from zipper_pl.config import Config
from zipper_pl.data.batches.aligned import Encoders, load_pairs
from zipper_pl.data.corpora.embedded import build_embedded_corpus, split_pools
from zipper_pl.data.corpora.length_test import build_length_test
from zipper_pl.data.corpora.manifest import Record, read_manifest, write_manifest
from zipper_pl.data.corpora.phonemes import PHONEME_TOKENIZER_FILE, PhonemeTokenizer, phoneme_rules
from zipper_pl.data.corpora.readers import CORPUS_READERS, READER_OPTIONS, summary_line
from zipper_pl.data.corpora.sources import split_fingerprints
from zipper_pl.data.corpora.text import TextTokenizer, read_text_file
from zipper_pl.data.corpora.textnorm import VERSION as TEXTNORM_VERSION
from zipper_pl.data.tokenizers.audio_tokenizers import build_audio_tokenizer
from zipper_pl.data.tokens.audio_cache import fit_audio_tokenizer, tokenize_manifest
from zipper_pl.data.tokens.sharding import Shard
from zipper_pl.data.tokens.store import ShardedTokenWriter, reusable_store, token_dtype
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_json, cache_intact, json_digest, read_json, record_checksums

POOLS = ("text", "speech", "aligned_train", "valid", "test")


def _digest(obj: object, n: int = 12) -> str:
    return json_digest(obj)[:n]


def cache_root(cfg: Config) -> Path:
    return Path(cfg.data.cache_dir)


# ---- corpora -> manifests ------------------------------------------------------------------


def corpus_manifests(cfg: Config) -> dict[str, Path]:
    """Manifest path per pool (text, speech, aligned_train, valid, test) for the configured corpus.

    The embedded corpus is generated on first use; real corpora are read from ``data.root``
    (LibriSpeech / LibriTTS / LibriLight trees, or a JSONL manifest). One console line per pool
    gives what was kept and what was skipped by reason, on the first run and on every reuse
    (from ``report.json`` next to the manifests).
    """
    d = cfg.data
    if d.corpus == "embedded":
        out = build_embedded_corpus(Path(d.root) / "embedded", d.embedded)
        _show_report(out["text"].parent)
        if cfg.eval.test_words:
            out["test"] = build_length_test(
                Path(d.root) / "embedded", d.embedded, cfg.eval.test_words
            )
            _show_report(out["test"].parent)
        return out
    if cfg.eval.test_words:
        raise UserError(
            f"eval.test_words={cfg.eval.test_words} generates test sentences: it needs "
            "data.corpus=embedded (a real corpus tests on its own test_splits)"
        )
    if d.corpus == "textfile":
        raise UserError("data.corpus=textfile only provides text: use it with modality=text")
    reader = CORPUS_READERS[d.corpus]
    # keyed by the sources' contents (file listings, manifest bytes), not by their names, and by
    # the normaliser's version: a better normaliser must not reuse transcripts cut by an old one
    splits = [d.train_splits, d.valid_splits, d.test_splits]
    key = _digest([d.corpus, split_fingerprints(d), *splits, TEXTNORM_VERSION])
    folder = cache_root(cfg) / "manifests" / f"{d.corpus}-{key}"
    out = {p: folder / f"{p}.jsonl" for p in ("speech", "aligned_train", "valid", "test")}
    report_path = folder / MANIFEST_REPORT
    if all(p.is_file() for p in (*out.values(), report_path)):
        _show_report(folder)
        return out
    counts: dict[str, Counter[str]] = {"train": Counter(), "valid": Counter(), "test": Counter()}
    options = READER_OPTIONS.get(d.corpus, lambda *_: {})(d, folder / "audio")
    train = reader(d.root, d.train_splits, counts["train"], **options)
    valid = reader(d.root, d.valid_splits, counts["valid"], **options) if d.valid_splits else []
    test = reader(d.root, d.test_splits, counts["test"], **options) if d.test_splits else []
    if not d.valid_splits:  # LibriLight has no dev split: hold some training utterances out
        train, valid = hold_out(train)
        counts["train"]["held_out_as_valid"] += len(valid)
        print(f"[data] no data.valid_splits: {len(valid)} train utterances held out as valid")
    check_disjoint({"train": train, "valid": valid, "test": test})
    aligned = [r for r in train if r.text]
    write_manifest(out["speech"], train)
    write_manifest(out["aligned_train"], aligned)
    write_manifest(out["valid"], valid)
    write_manifest(out["test"], test)
    report = {
        "speech": {"kept": len(train), "counts": dict(counts["train"])},
        "aligned_train": {
            "kept": len(aligned),
            "counts": {"no_usable_transcript": len(train) - len(aligned)},
        },
        "valid": {"kept": len(valid), "counts": dict(counts["valid"])},
        "test": {"kept": len(test), "counts": dict(counts["test"])},
    }
    atomic_write_json(report_path, report)  # last: manifests without it are rebuilt
    _show_report(folder, report)
    return out


def hold_out(records: list[Record], share: float = 0.01, cap: int = 1000):
    """(train, valid): ``share`` of the records (at least 1, at most ``cap``) as validation,
    chosen by a hash of their ids, so the choice is deterministic and stable as a corpus grows."""
    if len(records) < 2:
        raise UserError("no data.valid_splits and too few training utterances to hold any out")
    n = min(cap, max(1, round(share * len(records))))
    ranked = sorted(records, key=lambda r: hashlib.sha256(r.id.encode()).hexdigest())
    chosen = {r.id for r in ranked[:n]}
    return [r for r in records if r.id not in chosen], [r for r in records if r.id in chosen]


MANIFEST_REPORT = "report.json"
_SHOWN: set[Path] = set()  # corpus_manifests runs several times a run: one summary is enough


def _show_report(folder: Path, report: dict[str, dict] | None = None) -> None:
    """Print one ``[data]`` line per pool, once per manifest folder and process. Without
    ``report``: the folder's ``report.json``, else (the embedded corpus, which keeps every
    record) the record count of each manifest."""
    if folder in _SHOWN:
        return
    _SHOWN.add(folder)
    if report is None and (folder / MANIFEST_REPORT).is_file():
        report = read_json(folder / MANIFEST_REPORT)
    if report is None:
        report = {}
        for path in sorted(folder.glob("*.jsonl")):
            with path.open(encoding="utf-8") as f:
                report[path.stem] = {"kept": sum(1 for line in f if line.strip()), "counts": {}}
    for pool in sorted(report, key=lambda p: POOLS.index(p) if p in POOLS else len(POOLS)):
        print(summary_line(pool, report[pool]["kept"], report[pool]["counts"]))


def check_disjoint(groups: dict[str, list[Record]]) -> None:
    """No utterance id in two of train / valid / test (an error: results would be measured on
    training data); transcripts of valid / test also in train are counted and shown."""
    seen: dict[str, str] = {}
    for name, records in groups.items():
        for r in records:
            other = seen.setdefault(r.id, name)
            if other != name:
                shared = sorted(
                    {x.id for x in records} & {i for i, g in seen.items() if g == other}
                )
                raise UserError(
                    f"{len(shared)} utterance id(s) are in both the {other} and the {name} splits "
                    f"(e.g. {shared[0]!r}): the splits must be disjoint; fix data.*_splits"
                )
    train_texts = {r.text for r in groups.get("train", []) if r.text}
    for name in ("valid", "test"):
        n = sum(1 for r in groups.get(name, []) if r.text and r.text in train_texts)
        if n:
            print(f"[data] warning: {n} {name} transcript(s) also occur in the train split")


def text_lines(cfg: Config, pool: str) -> list[str]:
    """Sentences of a text pool: ``data.text_file`` for training if set, else manifest text."""
    if pool == "text" and cfg.data.text_file:
        return read_text_file(cfg.data.text_file)
    if cfg.data.corpus == "embedded":
        # sentences are known without synthesising any audio: text pretraining stays fast
        return split_pools(cfg.data.embedded)[pool]
    manifests = corpus_manifests(cfg)
    source = pool if pool in manifests else "aligned_train"
    lines = [r.text for r in read_manifest(manifests[source]) if r.text]
    if not lines:
        raise UserError(f"the {pool!r} text pool of data.corpus={cfg.data.corpus} is empty")
    return lines


# ---- text ----------------------------------------------------------------------------------


def text_tokenizer(cfg: Config) -> TextTokenizer:
    """SentencePiece trained on the text training pool (cached by content hash)."""
    lines = text_lines(cfg, "text")
    key = _digest([asdict(cfg.text_tokenizer), _digest(lines, 16)])
    path = cache_root(cfg) / "text_tokenizer" / key / "text_tokenizer.model"
    if path.is_file() and cache_intact(path.parent, [path.name], "text tokenizer"):
        return TextTokenizer(path)
    t = cfg.text_tokenizer
    tok = TextTokenizer.train(lines, path, t.vocab_size, t.model_type, t.max_sentences)
    record_checksums(path.parent, [path.name])
    return tok


def phoneme_tokenizer(cfg: Config) -> PhonemeTokenizer:
    """The phoneme symbol table of the text training pool (cached by content hash)."""
    lines = text_lines(cfg, "text")
    key = _digest([asdict(cfg.phonemes), phoneme_rules(cfg.phonemes.voice), _digest(lines, 16)])
    path = cache_root(cfg) / "phoneme_tokenizer" / key / PHONEME_TOKENIZER_FILE
    if path.is_file() and cache_intact(path.parent, [path.name], "phoneme tokenizer"):
        return PhonemeTokenizer(path, cfg.phonemes.voice)
    tok = PhonemeTokenizer.train(lines, path, cfg.phonemes.voice)
    record_checksums(path.parent, [path.name])
    return tok


def text_store(cfg: Config, tok: TextTokenizer, pool: str, lines: list[str] | None = None) -> Path:
    """Token store of a text pool (one item per sentence)."""
    lines = text_lines(cfg, pool) if lines is None else lines
    key_parts = [hashlib.sha256(tok.path.read_bytes()).hexdigest(), _digest(lines, 16)]
    if getattr(tok, "rules", None):  # phonemes: the language's rules make the tokens too
        key_parts.append(tok.rules)
    key = _digest(key_parts)
    folder = cache_root(cfg) / "text_tokens" / f"{pool}-{key}"
    if reusable_store(folder):
        return folder
    writer = ShardedTokenWriter(folder, token_dtype(tok.vocab_size), items_per_shard=50_000)
    done = writer.completed_shards()
    per = 50_000
    n_shards = (len(lines) + per - 1) // per
    for k in range(n_shards):
        if k in done:
            continue
        chunk = lines[k * per : (k + 1) * per]
        writer.write_shard(
            k, [f"{pool}-{k * per + i}" for i in range(len(chunk))], tok.encode(chunk)
        )
    writer.finalize({"vocab_size": tok.vocab_size, "pool": pool}, num_shards=n_shards)
    return folder


# ---- speech --------------------------------------------------------------------------------


def _records(cfg: Config, pool: str) -> list[Record]:
    return read_manifest(corpus_manifests(cfg)[pool])


def audio_tokenizer(cfg: Config):
    """(tokenizer, its saved folder); ``units`` is fitted on the speech pool once and cached."""
    tok = build_audio_tokenizer(cfg.audio)  # first: a codec without weights fails before any work
    records = _records(cfg, "speech")
    key = _digest([asdict(cfg.audio), _digest([r.row() for r in records], 16)])
    folder = cache_root(cfg) / "audio_tokenizer" / f"{cfg.audio.codec}-{key}" / "audio_tokenizer"
    return fit_audio_tokenizer(records, tok, folder), folder


def audio_store(
    cfg: Config, tok, pool: str, need_transcript: bool = False, *, shard: Shard | None = None
) -> Path:
    """Token store of an audio pool (resumable, bad files skipped and counted). ``shard=(i, n)``:
    only its store shards ``k % n == i``; the store is finished only if this call or another
    process found every one done (``data/tokens/sharding.py``)."""
    return tokenize_manifest(
        corpus_manifests(cfg)[pool],
        tok,
        cache_root(cfg) / "audio_tokens",
        max_bad_share=cfg.data.max_bad_share,
        need_transcript=need_transcript,
        shard=shard,
    )


# ---- what fine-tuning needs ------------------------------------------------------------------


def prepare_aligned(cfg: Config, encoders_of: Callable[[str], Encoders], max_total: int) -> dict:
    """Aligned pairs of train / valid / test, with the token arrays of every modality that
    ``encoders_of(pool)`` encodes (``data.modalities.prepare_pairs`` builds it)."""
    manifests = corpus_manifests(cfg)
    pairs, skipped = {}, {}
    for pool in ("aligned_train", "valid", "test"):
        pairs[pool], skip = load_pairs(manifests[pool], encoders_of(pool), max_total)
        for k, v in skip.items():
            skipped[f"{pool}_{k}"] = v
        dropped = ", ".join(f"{k} {v}" for k, v in skip.items() if v) or "none"
        print(f"[data] {pool:14s} pairs: {len(pairs[pool])} kept; dropped: {dropped}")
        if not pairs[pool]:
            raise UserError(
                f"no usable aligned pairs in the {pool!r} pool (skipped: {skip}); "
                "check data.corpus / data.*_splits or raise model.max_seq_len"
            )
    return {"pairs": pairs, "skipped": skipped}
