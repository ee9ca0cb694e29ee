"""Nothing silent: spelled-out numbers, and every skipped file, line, character and bad audio item
counted by reason and shown on the console (readers, manifests, text files, audio tokenization)."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from test_audio import plant_audio, sine

import zipper_pl.data.corpora.embedded as embedded
import zipper_pl.data.corpora.sentences as sentences
import zipper_pl.data.prepare as prepare
import zipper_pl.data.tokens.audio_cache as audio_cache
from tests.conftest import tiny_config
from tests.test_readers import _audio, _librispeech
from zipper_pl.data.corpora.embedded import EmbeddedCorpusConfig, split_pools
from zipper_pl.data.corpora.manifest import Record, read_manifest, write_manifest
from zipper_pl.data.corpora.readers import (
    read_jsonl_manifest,
    read_librilight,
    read_librispeech,
    read_libritts,
    summary_line,
)
from zipper_pl.data.corpora.text import read_text_file
from zipper_pl.data.corpora.textnorm import normalize_text
from zipper_pl.data.modalities import load_tokenizers, prepare_pairs
from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizerConfig, UnitsTokenizer
from zipper_pl.data.tokens.audio_cache import tokenize_manifest
from zipper_pl.errors import UserError

_CHARSET = re.compile(r"^([a-z']+( [a-z']+)*)?$")

# ---- the normaliser ----------------------------------------------------------------------------

SPOKEN = {
    "The train leaves at 7:45 from platform 9": (
        "the train leaves at seven forty five from platform nine"
    ),
    "It costs $20 (1 of 3).": "it costs twenty dollars one of three",
    "£3.50 or €5 or $1": "three pounds fifty pence or five euros or one dollar",
    "$0.05 and $2.5 million": "five cents and two point five million dollars",
    "1,000 people, 3.5 each, 5% of them": (
        "one thousand people three point five each five percent of them"
    ),
    "the 1st and 22nd floor": "the first and twenty second floor",
    "In 1995, 1,995 men": "in nineteen ninety five one thousand nine hundred and ninety five men",
    "at 7:00 p.m. or 7:05": "at seven o'clock p m or seven oh five",
    "Mr. Smith & Mrs. Jones, Dr. Who, St. Paul vs. Rome": (
        "mister smith and missus jones doctor who saint paul versus rome"
    ),
    "agent 007": "agent zero zero seven",
    "Straße, œuvre, café": "strasse oeuvre cafe",
}


@pytest.mark.parametrize("raw", SPOKEN)
def test_numbers_money_times_and_abbreviations_are_spoken(raw):
    assert normalize_text(raw) == SPOKEN[raw]
    assert _CHARSET.match(normalize_text(raw))  # num2words' hyphens and commas are gone


def test_unspoken_characters_are_counted_by_reason():
    report: Counter[str] = Counter()
    out = normalize_text("hi 😀 there ★ 日本 #tag @you, well—known…", report)
    assert out == "hi there tag you well known"
    assert report == {"unspoken_symbol": 4, "foreign_script": 2}
    report.clear()
    assert normalize_text("  Hello, World!  it's fine ", report) == "hello world it's fine"
    assert not report  # punctuation and spaces are not content: nothing to count
    assert normalize_text("$ and %", report) == "and" and report == {"unspoken_symbol": 2}


def _old_normalize_text(s: str) -> str:
    """The rule before numbers were spelled out (digits and symbols deleted)."""
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii").lower()
    s = re.sub(r"[^a-z' ]+", " ", s)
    s = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", s)
    return re.sub(r" +", " ", s).strip()


def test_embedded_sentences_are_unchanged(monkeypatch):
    cfg = EmbeddedCorpusConfig(n_text=300, n_speech=50, n_aligned_train=50, n_valid=10, n_test=10)
    new_pools, new_many = split_pools(cfg), sentences.generate_sentences(5000, seed=3)
    monkeypatch.setattr(sentences, "normalize_text", _old_normalize_text)
    monkeypatch.setattr(embedded, "_POOLS_MEMO", {})  # drawn again, not remembered
    assert split_pools(cfg) == new_pools
    assert sentences.generate_sentences(5000, seed=3) == new_many
    for s in ["what did my friendly dancer wrap", "if molly doesn't read", "'tis rock 'n' roll"]:
        assert normalize_text(s) == _old_normalize_text(s)


def test_embedded_pools_are_drawn_once_per_process(monkeypatch):
    """Every stage asks for its pools several times; the sentences are generated once."""
    monkeypatch.setattr(embedded, "_POOLS_MEMO", {})
    calls = []
    real = embedded.generate_sentences
    monkeypatch.setattr(embedded, "generate_sentences", lambda *a: calls.append(a) or real(*a))
    cfg = EmbeddedCorpusConfig(n_text=300, n_speech=50, n_aligned_train=50, n_valid=10, n_test=10)
    first = split_pools(cfg)
    first["text"].clear()  # a caller's edit does not reach the next caller
    again = split_pools(cfg)
    assert len(calls) == 1 and len(again["text"]) == 300
    assert split_pools(dataclasses.replace(cfg, seed=1))["test"] != again["test"]
    assert len(calls) == 2


# ---- readers -------------------------------------------------------------------------------------


def test_librispeech_reads_every_audio_kind_and_counts_what_it_leaves(tmp_path):
    _librispeech(tmp_path)
    ch = tmp_path / "train-clean-100" / "19" / "198"
    _audio(ch / "19-198-0003.WAV", 0.3)
    _audio(ch / "19-198-0004.wav", 0.3)
    _audio(ch / "19-198-0005.flac", 0.3)
    _audio(ch / "19-198-0005.wav", 0.3)  # a second file of one utterance
    _audio(ch / "19-198-0006.flac", 0.3)
    with (ch / "19-198.trans.txt").open("a") as f:
        f.write("19-198-0003\tTAB SEPARATED\n")  # read before as an id with no transcript
        f.write("19-198-0004   AT 7:45 😀\n")
        f.write("19-198-0006 ...\n")  # nothing speakable
        f.write("19-198-0099 NO AUDIO FOR THIS LINE\n")
        f.write("19-198-0005\n\n")  # an id and no text; then a blank line (not counted)
    (ch / "notes.txt").write_text("x")
    counts: Counter[str] = Counter()
    recs = {r.id: r for r in read_librispeech(tmp_path, ["train-clean-100"], counts)}
    assert sorted(recs) == [f"19-198-000{i}" for i in range(7)]
    assert recs["19-198-0003"].text == "tab separated"
    assert recs["19-198-0004"].text == "at seven forty five"
    assert recs["19-198-0005"].audio.endswith(".flac") and recs["19-198-0005"].text is None
    assert counts == {
        "no_transcript": 2, "empty_transcript": 1, "orphan_transcript": 1, "malformed_line": 1,
        "duplicate_audio": 1, "other_file": 1, "unspoken_symbol": 1,
    }  # fmt: skip
    assert recs["19-198-0006"].text is None
    assert len(read_librispeech(tmp_path, ["dev-clean"])) == 3  # counts stay optional


def test_libritts_and_librilight_count_unmatched_files(tmp_path):
    d = tmp_path / "train-clean-100" / "103" / "1241"
    _audio(d / "103_1241_000000_000000.wav", 0.3, sr=24000)
    (d / "103_1241_000000_000000.normalized.txt").write_text("It's 5 o'clock.")
    (d / "103_1241_000000_000000.original.txt").write_text("It's 5 o'clock.")
    (d / "103_1241.trans.tsv").write_text("")
    _audio(d / "103_1241_000000_000001.FLAC", 0.3)  # no transcript file
    (d / "103_1241_000000_000002.normalized.txt").write_text("no audio")
    counts: Counter[str] = Counter()
    recs = {r.id: r for r in read_libritts(tmp_path, ["train-clean-100"], counts)}
    assert recs["103_1241_000000_000000"].text == "it's five o'clock"
    assert recs["103_1241_000000_000001"].text is None
    assert counts == {"no_transcript": 1, "orphan_transcript": 1}

    _audio(tmp_path / "small" / "100" / "book" / "a.FLAC", 0.2)
    _audio(tmp_path / "small" / "100" / "book" / "b.wav", 0.2)
    (tmp_path / "small" / "100" / "book" / "a.json").write_text("{}")
    (tmp_path / "small" / "100" / "book" / "readme.md").write_text("")
    counts.clear()
    recs = read_librilight(tmp_path, ["small"], counts)
    assert [r.id for r in recs] == ["small/100/book/a", "small/100/book/b"]
    assert counts == {"other_file": 1}


def test_jsonl_counts_records_without_text_or_audio(tmp_path):
    recs = [Record("a", "a.wav", "Hi 42", 0.2, "s"), Record("b", "b.wav", None, 0.2, "s"),
            Record("c", None, "???", 0.0, "s")]  # fmt: skip
    write_manifest(tmp_path / "train.jsonl", recs)
    counts: Counter[str] = Counter()
    out = read_jsonl_manifest(tmp_path, ["train"], counts)
    assert [r.text for r in out] == ["hi forty two", None, None]
    assert counts == {"no_transcript": 1, "empty_transcript": 1, "no_audio": 1}


def test_text_file_counts_dropped_lines(tmp_path, capsys):
    f = tmp_path / "lm.txt"
    f.write_text("HELLO 2 you\n\n...\n★ ok\n")
    counts: Counter[str] = Counter()
    assert read_text_file(f, counts) == ["hello two you", "ok"]
    assert counts == {"blank_line": 1, "empty_line": 1, "unspoken_symbol": 1}
    line = capsys.readouterr().out
    assert "2 kept; skipped: blank_line 1, empty_line 1" in line
    assert "removed from text (characters): unspoken_symbol 1" in line


def test_summary_line_says_none_when_clean():
    assert summary_line("valid", 12, {}).split() == [
        "[data]",
        "valid",
        "12",
        "kept;",
        "skipped:",
        "none",
    ]


# ---- manifests -----------------------------------------------------------------------------------


def _librispeech_cfg(tmp_path: Path):
    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    (root / "dev-clean" / "84" / "121123" / "stray.txt").write_text("")
    return tiny_config(
        root, tmp_path, "pretrain_speech.yaml", "data.corpus=librispeech",
        "data.train_splits=train-clean-100", "data.valid_splits=dev-clean",
        "data.test_splits=test-clean", f"data.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip


def test_manifest_summary_on_first_run_and_on_reuse(tmp_path, capsys, monkeypatch):
    cfg = _librispeech_cfg(tmp_path)
    monkeypatch.setattr(prepare, "_SHOWN", set())
    out = prepare.corpus_manifests(cfg)
    printed = capsys.readouterr().out.splitlines()
    first = [line for line in printed if "warning" not in line]  # check_disjoint's own line
    assert [line.split()[1:3] for line in first] == [
        ["speech", "3"], ["aligned_train", "2"], ["valid", "3"], ["test", "3"]
    ]  # fmt: skip
    assert "skipped: none; kept without text: no_transcript 1" in first[0]
    assert "skipped: no_usable_transcript 1" in first[1]
    assert "skipped: other_file 1; kept without text: no_transcript 1" in first[2]
    report = json.loads((out["speech"].parent / "report.json").read_text())
    assert report["aligned_train"] == {"kept": 2, "counts": {"no_usable_transcript": 1}}
    assert len(read_manifest(out["aligned_train"])) == 2
    prepare.corpus_manifests(cfg)
    assert capsys.readouterr().out == ""  # once per process, not at every call
    monkeypatch.setattr(prepare, "_SHOWN", set())  # a new run reuses the manifests
    assert prepare.corpus_manifests(cfg) == out
    assert capsys.readouterr().out.splitlines() == first  # reuse is not quieter


def test_embedded_manifests_show_kept_counts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prepare, "_SHOWN", set())
    write_manifest(tmp_path / "text.jsonl", [Record("t", None, "a b", 0.0, "")] * 3)
    write_manifest(tmp_path / "valid.jsonl", [Record("v", "v.wav", "a b", 1.0, "s")])
    prepare._show_report(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:3] for line in lines] == [["text", "3"], ["valid", "1"]]


# ---- audio tokenization --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> UnitsTokenizer:
    tok = UnitsTokenizer(AudioTokenizerConfig(units_k=8, max_seconds=2.0))
    tok.fit([sine(0.5, 16000, f) for f in (200, 500, 900, 1500)])
    return tok


def test_tokenization_shows_skips_and_checks_them_on_reuse(
    tmp_path, tokenizer, capsys, monkeypatch
):
    cases = plant_audio(tmp_path / "audio")
    recs = [Record(n, str(p), "text", 0.5, "s") for n, (p, _) in cases.items()]
    write_manifest(tmp_path / "valid.jsonl", recs)
    kw = {"items_per_shard": 4, "progress": False}
    cache = tmp_path / "cache"
    out = tokenize_manifest(tmp_path / "valid.jsonl", tokenizer, cache, max_bad_share=0.9, **kw)
    fresh = capsys.readouterr().out.strip()
    assert fresh.split()[1:4] == ["valid", "audio", "4"]
    assert "skipped: empty 1, non_finite 1, too_long 1, truncated 2, unreadable 2" in fresh

    def no_decoding(*args, **kwargs):
        raise AssertionError("audio decoded although the store is finished")

    monkeypatch.setattr(audio_cache, "load_record", no_decoding)
    t0 = time.perf_counter()
    again = tokenize_manifest(tmp_path / "valid.jsonl", tokenizer, cache, max_bad_share=0.9, **kw)
    assert again == out and capsys.readouterr().out.strip() == fresh
    assert time.perf_counter() - t0 < 1.0
    # a stricter threshold now refuses the finished store, as a fresh run would
    with pytest.raises(UserError) as e:
        tokenize_manifest(
            tmp_path / "valid.jsonl", tokenizer, cache, max_bad_share=0.05,
            bad_share_key="audio.max_bad_share", **kw,
        )  # fmt: skip
    msg = str(e.value)
    assert "7 of 11 items" in msg and "audio.max_bad_share=0.05" in msg
    assert "empty 1 (e.g. empty)" in msg and "bad_audio.json" in msg


def test_dropped_pairs_are_said_on_the_console(data_root, tiny_towers, capsys):
    """Found by a user (#31): pairs dropped as too long were visible only in metrics.json."""
    cfg = tiny_config(data_root, tiny_towers["runs"], "zip_asr.yaml")
    tokenizers = load_tokenizers({"text": tiny_towers["text"], "speech": tiny_towers["speech"]})
    every = prepare_pairs(cfg, tokenizers, max_total=10_000)["pairs"]["aligned_train"]
    totals = sorted(sum(map(len, p.tokens.values())) for p in every)
    capsys.readouterr()
    # about half of the pairs are longer than this (with their begin / end tokens)
    prepared = prepare_pairs(cfg, tokenizers, max_total=totals[len(totals) // 2] + 4)
    out = capsys.readouterr().out
    dropped = prepared["skipped"]["aligned_train_too_long_or_empty"]
    assert dropped > 0 and f"too_long_or_empty {dropped}" in out
    for pool in ("aligned_train", "valid", "test"):
        assert f"{pool:14s} pairs: {len(prepared['pairs'][pool])} kept; dropped: " in out
