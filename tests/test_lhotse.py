"""lhotse CutSets as a corpus (DATA=lhotse) and any corpus as CutSets (export-lhotse). Every cut
set here is built locally: lhotse's own LibriSpeech recipe on a small generated tree, or
``export_lhotse``; nothing is downloaded."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import DatasetDict
from lhotse import CutSet
from lhotse.recipes import prepare_librispeech

from benchmarks.bench_scale import simulate_librilight
from tests.conftest import ROOT, run_make
from tests.test_hf_corpus import records_as_dataset
from tests.test_readers import _librispeech
from tests.test_towers_from_anywhere import SHRINK
from zipper_pl.config import load_config
from zipper_pl.data.corpora.audio import load_audio, load_record
from zipper_pl.data.corpora.lhotse_corpus import export_lhotse, read_lhotse
from zipper_pl.data.corpora.manifest import Record, read_manifest
from zipper_pl.data.corpora.readers import read_librispeech
from zipper_pl.data.corpora.sources import data_fingerprint
from zipper_pl.data.prepare import corpus_manifests
from zipper_pl.errors import UserError

PARTS = ("train-clean-100", "dev-clean", "test-clean")


def lhotse_librispeech(tmp_path: Path) -> Path:
    """``prepare_librispeech`` on a LibriSpeech-style tree, then one CutSet file per part, as
    lhotse's recipes write them."""
    _librispeech(tmp_path / "LibriSpeech")
    manifests = prepare_librispeech(tmp_path / "LibriSpeech", dataset_parts=list(PARTS))
    out = tmp_path / "cuts"
    out.mkdir()
    for part, m in manifests.items():
        cuts = CutSet.from_manifests(recordings=m["recordings"], supervisions=m["supervisions"])
        cuts.to_file(out / f"{part}.jsonl.gz")
    return out


def cut_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(x) for x in f]


def test_cuts_of_lhotses_librispeech_recipe_are_the_utterances_we_read_from_the_tree(tmp_path):
    cuts = lhotse_librispeech(tmp_path)
    counts: Counter[str] = Counter()
    records = read_lhotse(cuts, ["train-clean-100", "dev-clean"], counts)
    ours = {r.audio: r for r in read_librispeech(tmp_path / "LibriSpeech", PARTS[:2]) if r.text}
    assert len(records) == len(ours) == 4 and not counts  # lhotse keeps transcribed ones only
    for r in records:
        tree = ours[r.audio]
        assert (r.text, r.speaker, r.offset) == (tree.text, tree.speaker, 0.0)
        assert r.duration == pytest.approx(tree.duration)
        assert np.array_equal(load_record(r, 16000), load_audio(r.audio, 16000))
    with pytest.raises(
        UserError, match=r"cut set .*train-other-500.jsonl.gz not found, nor a Shar .* \(found: "
    ):
        read_lhotse(cuts, ["train-other-500"])


def test_a_cut_of_a_long_recording_is_read_alone_by_offset_and_duration(tmp_path):
    sr, long = 16000, tmp_path / "book.wav"
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 6 * sr).astype(np.float32)
    sf.write(long, wave, sr, subtype="FLOAT")
    segments = [Record(f"u{i}", str(long), f"part {w}", 1.5, "reader", offset=2.0 * i)
                for i, w in enumerate(("one", "two", "three"))]  # fmt: skip
    (path,) = export_lhotse({"train": segments}, tmp_path / "cuts")
    rows = cut_rows(path)
    assert len({row["recording"]["id"] for row in rows}) == 1  # one recording, three cuts
    back = read_lhotse(tmp_path / "cuts", ["train"])
    assert [(r.id, r.offset, r.duration, r.text) for r in back] == [
        (s.id, s.offset, s.duration, s.text) for s in segments
    ]
    for r in back:
        start = round(r.offset * sr)
        assert np.array_equal(load_record(r, sr), wave[start : start + round(1.5 * sr)])
    beyond = Record("x", str(long), "t", 2.0, "s", offset=5.0)
    with pytest.raises(Exception, match="segment ends at 7.00s of a 6.00s recording"):
        load_record(beyond, sr)


def test_a_recording_that_is_not_one_local_file_is_skipped_and_counted(tmp_path):
    cuts = lhotse_librispeech(tmp_path)
    path = cuts / "dev-clean.jsonl.gz"
    rows = cut_rows(path)
    rows[0]["recording"]["sources"][0] = {"type": "url", "channels": [0],
                                          "source": "https://example.org/a.flac"}  # fmt: skip
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    counts: Counter[str] = Counter()
    assert len(read_lhotse(cuts, ["dev-clean"], counts)) == 1
    assert counts == {"not_one_local_file": 1}


def test_the_identity_follows_the_cut_sets_content(tmp_path):
    cuts = lhotse_librispeech(tmp_path)
    over = ["data.corpus=lhotse", f"data.root={cuts}", "data.train_splits=train-clean-100",
            "data.valid_splits=dev-clean", "data.test_splits=test-clean"]  # fmt: skip
    cfg = load_config(ROOT / "experiments" / "tiny" / "zip_asr.yaml", over)
    before = data_fingerprint(cfg.data)
    assert data_fingerprint(cfg.data) == before  # nothing changed: the same identity
    path = cuts / "test-clean.jsonl.gz"
    rows = cut_rows(path)
    rows[0]["supervisions"][0]["text"] = "A TRANSCRIPT FIXED IN PLACE"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert data_fingerprint(cfg.data) != before


def cuts_as_shar(cuts: Path, out: Path, parts) -> Path:
    """Each part's CutSet as a Lhotse Shar folder ``out/<part>/`` (audio in FLAC tar shards)."""
    for part in parts:
        (out / part).mkdir(parents=True)
        CutSet.from_file(cuts / f"{part}.jsonl.gz").to_shar(
            out / part, fields={"recording": "flac"}, shard_size=2
        )
    return out


def test_a_shar_folder_is_read_as_the_cut_set_it_was_written_from(tmp_path):
    cuts = lhotse_librispeech(tmp_path)
    shar = cuts_as_shar(cuts, tmp_path / "shar", PARTS)
    assert (shar / "dev-clean" / "recording.000000.tar").is_file()
    counts: Counter[str] = Counter()
    held = tmp_path / "held"
    records = read_lhotse(shar, ["train-clean-100", "dev-clean"], counts, audio_dir=held)
    direct = {r.id: r for r in read_lhotse(cuts, ["train-clean-100", "dev-clean"])}
    assert sorted(r.id for r in records) == sorted(direct) and not counts
    for r in records:
        d = direct[r.id]
        assert (r.text, r.speaker, r.offset, r.duration) == (d.text, d.speaker, 0.0, d.duration)
        assert Path(r.audio).is_relative_to(held)
        assert np.array_equal(load_record(r, 16000), load_record(d, 16000))
    counts = Counter()  # without a folder to write held audio to, Shar audio is counted out
    assert read_lhotse(shar, ["dev-clean"], counts) == [] and counts == {"not_one_local_file": 2}


def test_a_shar_folders_identity_follows_its_shards(tmp_path):
    shar = cuts_as_shar(lhotse_librispeech(tmp_path), tmp_path / "shar", PARTS)
    over = ["data.corpus=lhotse", f"data.root={shar}", f"data.cache_dir={tmp_path / 'c'}",
            "data.train_splits=train-clean-100", "data.valid_splits=dev-clean",
            "data.test_splits=test-clean"]  # fmt: skip
    cfg = load_config(ROOT / "experiments" / "tiny" / "zip_asr.yaml", over)
    before = data_fingerprint(cfg.data)
    assert data_fingerprint(cfg.data) == before
    shard = shar / "test-clean" / "cuts.000000.jsonl.gz"
    rows = cut_rows(shard)
    rows[0]["supervisions"][0]["text"] = "A TRANSCRIPT FIXED IN PLACE"
    with gzip.open(shard, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert data_fingerprint(cfg.data) != before
    with pytest.raises(UserError, match=r"nor a Shar folder .*found: dev-clean/, "):
        read_lhotse(shar, ["train-other-500"])


@pytest.mark.slow
def test_make_zips_towers_on_lhotses_librispeech_cut_sets_as_shar_and_as_a_hf_dataset(tmp_path):
    """The acceptance's commands: ``prepare_librispeech`` on a LibriSpeech-shaped tree and
    ``CutSet.from_manifests(...).to_file(<part>.jsonl.gz)`` per part, then ``make zip-asr
    SCALE=tiny DATA=lhotse`` with LibriSpeech's split names; the same cut sets as Shar folders
    (``DATA=lhotse``) and as a saved Hugging Face dataset (``DATA=hf``), zipping the first run's
    towers (saves 4 fits). The tree is 9 utterances, so the tiny settings are shrunk."""
    cuts, runs = lhotse_librispeech(tmp_path), tmp_path / "runs"
    shar = cuts_as_shar(cuts, tmp_path / "shar", PARTS)
    hf = tmp_path / "hf"
    DatasetDict({p.replace("-", "_"): records_as_dataset(read_lhotse(cuts, [p]))
                 for p in PARTS}).save_to_disk(hf)  # fmt: skip
    towers: list[str] = []
    for data, root in (("lhotse", cuts), ("lhotse", shar), ("hf", hf)):
        sep = "_" if data == "hf" else "-"  # HF split names are identifiers (train_clean_100)
        splits = [f"data.{k}_splits={p.replace('-', sep)}" for k, p in zip(
            ("train", "valid", "test"), PARTS, strict=True)]  # fmt: skip
        args = [*SHRINK, "data.aligned_frac=1.0", "data.shrink_batch_to_subset=true", *splits]
        r = run_make("zip-asr", "SCALE=tiny", f"DATA={data}", f"DATA_ROOT={root}",
                     f"RUNS={runs / root.name}", f"ARGS={' '.join(args)}", *towers)  # fmt: skip
        assert r.returncode == 0, (root.name, r.stderr[-2000:])
        (metrics,) = (runs / root.name).glob(f"tiny-{data}/zipper-asr-*/metrics.json")
        assert json.loads(metrics.read_text())["test_utterances"] == 2, root.name  # transcribed
        if not towers:
            (text,) = (runs / root.name).glob("tiny-lhotse/pretrain-text-*/model.safetensors")
            (speech,) = (runs / root.name).glob("tiny-lhotse/pretrain-speech-*/model.safetensors")
            towers = [f"TEXT_TOWER={text.parent}", f"SPEECH_TOWER={speech.parent}"]


@pytest.mark.slow
def test_make_exports_our_corpus_as_cut_sets_that_read_back_as_its_records(tmp_path):
    """``make export-lhotse SCALE=tiny``: one CutSet per pool that reads back as the pool."""
    cuts = tmp_path / "cuts"
    r = run_make("export-lhotse", "SCALE=tiny", f"OUT={cuts}", f"RUNS={tmp_path / 'runs'}")
    assert r.returncode == 0, r.stderr[-2000:]
    pools = ["aligned_train", "speech", "test", "valid"]
    assert sorted(p.name for p in cuts.iterdir()) == [f"{p}.jsonl.gz" for p in pools]
    cfg = load_config(ROOT / "experiments" / "tiny" / "zip_asr.yaml")
    for pool, manifest in corpus_manifests(cfg).items():
        if pool not in pools:
            continue  # the text pool has no audio: nothing to export
        ours = [(x.id, x.text, x.speaker, round(x.duration, 3)) for x in read_manifest(manifest)]
        back = [(x.id, x.text, x.speaker, round(x.duration, 3)) for x in read_lhotse(cuts, [pool])]
        assert back == ours, pool


def test_the_librilight_simulator_lays_out_speakers_books_and_segments(tmp_path):
    """benchmarks/bench_scale.py's simulator (the 10k / 100k / 1M-file measurements): its tree
    is what our LibriLight reader walks, and the fingerprint sees one file more."""
    root = simulate_librilight(tmp_path, 250, per_book=10, books_per_speaker=5)
    files = sorted((root / "librilight" / "small").rglob("*.flac"))
    assert len(files) == 250 and len({f.parent.parent for f in files}) == 5  # 25 books / 5
    over = ["data.corpus=librilight", f"data.root={root}", "data.train_splits=[small]",
            "data.valid_splits=[]", "data.test_splits=[]"]  # fmt: skip
    cfg = load_config(ROOT / "experiments" / "l" / "pretrain_speech.yaml", over)
    before = data_fingerprint(cfg.data)
    assert data_fingerprint(cfg.data) == before
    (files[0].parent / "extra.flac").touch()
    assert data_fingerprint(cfg.data) != before
