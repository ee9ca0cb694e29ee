"""espeak-ng synthesis, manifests and the generated embedded corpus (tiny preset)."""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from zipper_pl.data.corpora.embedded import (
    AUDIO_POOLS,
    EMBEDDED_PRESETS,
    POOLS,
    VOICES,
    EmbeddedCorpusConfig,
    build_embedded_corpus,
    corpus_dir,
)
from zipper_pl.data.corpora.espeak import SAMPLE_RATE, Speaker, Synthesizer, synthesize
from zipper_pl.data.corpora.manifest import Manifest, Record, read_manifest, write_manifest
from zipper_pl.errors import UserError

TINY = EmbeddedCorpusConfig(**EMBEDDED_PRESETS["tiny"])
SENTENCE = "the quick brown fox jumps over the lazy dog"

# --- espeak -------------------------------------------------------------------------------------


def test_synthesize_is_deterministic_whatever_came_before():
    s = Speaker("en-us+f3", rate=175, pitch=50)
    first = synthesize(SENTENCE, s)
    assert first.dtype == np.int16 and first.ndim == 1
    assert 1.0 < len(first) / SAMPLE_RATE < 6.0 and np.abs(first).max() > 1000
    synthesize("something else entirely first", Speaker("en+m3", rate=120, pitch=10))
    assert np.array_equal(synthesize(SENTENCE, s), first)
    time.sleep(1.1)  # espeak seeds its breath noise from the clock (seconds) at start-up
    with Synthesizer() as other:  # another helper process, started later: same samples
        assert np.array_equal(other(SENTENCE, s), first)


def test_speakers_differ_and_duration_grows_with_text():
    a = synthesize(SENTENCE, Speaker("en-us+f3", 175, 50))
    b = synthesize(SENTENCE, Speaker("en+m3", 175, 50))
    c = synthesize(SENTENCE, Speaker("en-us+f3", 175, 80))
    slow = synthesize(SENTENCE, Speaker("en-us+f3", 120, 50))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(slow) > 1.2 * len(a)
    short = synthesize("the dog", Speaker())
    long = synthesize(" ".join([SENTENCE] * 3), Speaker())
    assert len(short) < len(a) < len(long)
    assert len(synthesize("  ", Speaker())) == 0


def test_every_corpus_voice_exists_and_bad_input_is_a_user_error():
    for voice in VOICES:
        assert len(synthesize("hello", Speaker(voice))) > 0, voice
    with pytest.raises(UserError, match="no voice"):
        synthesize("hello", Speaker("xx-nonexistent"))
    assert len(synthesize("hello", Speaker())) > 0  # the helper survives a bad request
    with pytest.raises(UserError, match="rate"):
        Speaker(rate=10)


# --- manifest -----------------------------------------------------------------------------------


def test_manifest_roundtrip_relative_paths(tmp_path):
    audio = tmp_path / "wav" / "a.wav"
    outside = "/elsewhere/b.flac"
    recs = [
        Record("a", str(audio), "hello there", 1.5, "spk00"),
        Record("b", outside, None, 2.0, "x"),
        Record("t", None, "text only", 0.0, ""),
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(path, recs)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["audio"] == "wav/a.wav" and rows[1]["audio"] == outside
    assert read_manifest(path) == recs
    assert not list(tmp_path.glob("*.tmp"))


def test_manifest_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_manifest(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "audio": null, "text": "x", "duration": 1, "speaker": "s"}\n{"id": 3}\n'
    )
    with pytest.raises(UserError, match=r"bad.jsonl:2 .*missing keys"):
        read_manifest(bad)


def test_a_manifest_read_as_columns_is_the_records_the_line_reader_makes(tmp_path):
    """pyarrow's columns (``Manifest``) stand for exactly the records the line-by-line reader
    makes: unicode, nulls, segments, relative and absolute paths, blank lines, slices."""
    recs = [Record(f"u{i}", str(tmp_path / f"w/{i}.flac") if i % 3 else None,
                   None if i % 4 == 0 else f"sä{i} “quoted” text", 0.1 * i + 1e-7, f"spk{i % 5}",
                   offset=None if i % 2 else 2.5 * i) for i in range(200)]  # fmt: skip
    recs[7] = Record("abs", "/elsewhere/x.wav", "t", 3.0, "s")
    path = tmp_path / "m.jsonl"
    write_manifest(path, recs)
    path.write_text(path.read_text().replace("\n", "\n\n", 3))  # blank lines are skipped
    table, lines = read_manifest(path), read_manifest(path, strict=True)
    assert isinstance(table, Manifest) and isinstance(lines, list)
    assert table == lines == recs and len(table) == 200
    assert table[5:9] == recs[5:9] and table[-1] == recs[-1] and table[::50] == recs[::50]
    Manifest.CHUNK = 7  # iteration by chunks: their borders lose nothing
    try:
        assert list(table) == recs
    finally:
        Manifest.CHUNK = 65_536
    with pytest.raises(IndexError):
        table[200]


# --- embedded corpus ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("embedded")
    return root, build_embedded_corpus(root, TINY)


def test_pools_sizes_and_global_disjointness(corpus):
    _, manifests = corpus
    assert set(manifests) == set(POOLS)
    texts = {p: [r.text for r in read_manifest(m)] for p, m in manifests.items()}
    sizes = {p: len(t) for p, t in texts.items()}
    assert sizes == {"text": 200, "speech": 40, "aligned_train": 30, "valid": 8, "test": 8}
    train = set(texts["text"]) | set(texts["speech"]) | set(texts["aligned_train"])
    assert not (set(texts["valid"]) | set(texts["test"])) & train
    all_texts = [t for ts in texts.values() for t in ts]
    assert len(set(all_texts)) == len(all_texts)  # every sentence in exactly one pool, once
    txt = (manifests["text"].parent / "text.txt").read_text().splitlines()
    assert txt == texts["text"]


def test_manifests_audio_and_durations(corpus):
    _, manifests = corpus
    speakers = set()
    for pool in AUDIO_POOLS:
        for r in read_manifest(manifests[pool]):
            info = sf.info(r.audio)
            assert info.samplerate == SAMPLE_RATE and info.channels == 1
            assert info.subtype == "PCM_16"
            assert r.duration == pytest.approx(info.frames / SAMPLE_RATE, abs=1e-5)
            assert r.duration > 0.3 and r.text and r.id.startswith(pool)
            speakers.add(r.speaker)
    assert speakers == {f"spk{k:02d}" for k in range(TINY.n_speakers)}
    table = json.loads((manifests["text"].parent / "speakers.json").read_text())
    assert sorted(table) == sorted(speakers)
    done = json.loads((manifests["text"].parent / "DONE").read_text())
    assert done["utterances"] == 86 and done["audio_hours"] > 0


def test_reuse_and_determinism(corpus, tmp_path):
    root, manifests = corpus
    t0 = time.perf_counter()
    assert build_embedded_corpus(root, TINY) == manifests
    assert time.perf_counter() - t0 < 0.5
    # A fresh build elsewhere, with another worker count, gives the same bytes.
    other = build_embedded_corpus(tmp_path, dataclasses.replace(TINY, workers=1))
    a, b = manifests["text"].parent, other["text"].parent
    assert a.name == b.name  # worker count is not part of the fingerprint
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "DONE")
    assert len(files) > 80
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_interrupted_build_resumes(tmp_path):
    cfg = dataclasses.replace(TINY, n_speech=10, n_aligned_train=6, n_valid=3, n_test=3, n_text=20)
    first = build_embedded_corpus(tmp_path, cfg)
    folder = corpus_dir(tmp_path, cfg)
    reference = {p: p.read_bytes() for p in folder.rglob("*.wav")}
    # Simulate a crash: no DONE, one manifest and some WAVs missing.
    (folder / "DONE").unlink()
    first["valid"].unlink()
    victims = sorted(reference)[::3]
    for p in victims:
        p.unlink()
    assert build_embedded_corpus(tmp_path, cfg) == first
    assert (folder / "DONE").is_file() and first["valid"].is_file()
    assert {p: p.read_bytes() for p in folder.rglob("*.wav")} == reference


def test_config_changes_move_the_folder_and_bad_sizes_fail(tmp_path):
    assert corpus_dir(tmp_path, TINY) != corpus_dir(tmp_path, dataclasses.replace(TINY, seed=1))
    with pytest.raises(UserError, match="n_speakers"):
        build_embedded_corpus(tmp_path, dataclasses.replace(TINY, n_speakers=0))


def test_a_manifest_pyarrow_cannot_read_as_columns_is_read_line_by_line_and_said(tmp_path, capsys):
    """A speaker written as a number (a user's script) is no string column for pyarrow: the
    line reader reads it as always, and the console says so (it was silent)."""
    path = tmp_path / "m.jsonl"
    row = {"id": "a", "audio": None, "text": "x", "duration": 1, "speaker": 19}
    path.write_text(json.dumps(row) + "\n")
    assert read_manifest(path) == [Record("a", None, "x", 1.0, "19")]
    assert "m.jsonl: read line by line (pyarrow: " in capsys.readouterr().out
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert read_manifest(empty) == [] and capsys.readouterr().out == ""  # no records, nothing said
