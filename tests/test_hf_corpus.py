"""Hugging Face datasets as a corpus (DATA=hf). Every dataset here is built locally from a small
LibriSpeech-style tree (``Dataset.from_dict`` + ``cast_column(Audio())`` + ``save_to_disk`` or
``to_parquet``), never downloaded; rows carry encoded bytes, as the Hub's audio datasets do."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from datasets import Audio, Dataset, DatasetDict

from tests.conftest import ROOT
from tests.test_readers import _librispeech
from zipper_pl.config import load_config
from zipper_pl.data.corpora import sources
from zipper_pl.data.corpora.audio import load_audio, load_record
from zipper_pl.data.corpora.hf_corpus import read_hf
from zipper_pl.data.corpora.readers import read_librispeech
from zipper_pl.data.corpora.sources import data_fingerprint
from zipper_pl.errors import UserError

PARTS = ("train-clean-100", "dev-clean", "test-clean")


def records_as_dataset(records) -> Dataset:
    """Records with audio files as a dataset of encoded bytes (the file's own FLAC bytes)."""
    rows = {"audio": [], "text": [], "speaker_id": [], "id": []}
    for r in records:
        rows["audio"].append({"bytes": Path(r.audio).read_bytes(), "path": None})
        rows["text"].append(r.text or "")
        rows["speaker_id"].append(int(r.speaker) if r.speaker.isdigit() else r.speaker)
        rows["id"].append(r.id)
    return Dataset.from_dict(rows).cast_column("audio", Audio(sampling_rate=16000))


def hf_librispeech(tmp_path: Path, layout: str = "saved") -> tuple[Path, Path]:
    """(dataset root, LibriSpeech tree) with the tree's transcribed utterances per part, as a
    saved DatasetDict or as the Hub's parquet layout (``data/<split>-00000-of-00001.parquet``)."""
    tree = tmp_path / "LibriSpeech"
    _librispeech(tree)
    parts = {
        p: records_as_dataset([r for r in read_librispeech(tree, [p]) if r.text]) for p in PARTS
    }
    root = tmp_path / f"hf-{layout}"
    if layout == "saved":
        DatasetDict(parts).save_to_disk(str(root))
    else:
        for p, ds in parts.items():
            ds.to_parquet(str(root / "data" / f"{p}-00000-of-00001.parquet"))
    return root, tree


def columns(**kw):
    return load_config(ROOT / "experiments" / "tiny" / "zip_asr.yaml",
                       [f"data.hf.{k}={v}" for k, v in kw.items()]).data.hf  # fmt: skip


@pytest.mark.parametrize("layout", ["saved", "parquet"])
def test_rows_of_a_saved_dataset_or_parquet_files_are_the_utterances_of_the_tree(tmp_path, layout):
    root, tree = hf_librispeech(tmp_path, layout)
    counts: Counter[str] = Counter()
    held = tmp_path / "held"
    records = read_hf(
        root, ["train-clean-100", "dev-clean"], counts, audio_dir=held, columns=columns()
    )
    ours = {r.id: r for r in read_librispeech(tree, PARTS[:2]) if r.text}
    assert sorted(r.id for r in records) == sorted(ours) and not counts
    for r in records:
        tree_rec = ours[r.id]
        assert (r.text, r.speaker, r.offset) == (tree_rec.text, tree_rec.speaker, None)
        assert r.duration == pytest.approx(tree_rec.duration)
        assert Path(r.audio).is_relative_to(held) and r.audio.endswith(".flac")
        assert np.array_equal(load_record(r, 16000), load_audio(tree_rec.audio, 16000))
    mtimes = {r.audio: Path(r.audio).stat().st_mtime_ns for r in records}
    read_hf(root, ["train-clean-100", "dev-clean"], audio_dir=held, columns=columns())
    assert all(Path(a).stat().st_mtime_ns == t for a, t in mtimes.items())  # written once


def test_columns_are_configurable_and_missing_ones_are_one_line_errors(tmp_path):
    root, _ = hf_librispeech(tmp_path)
    with pytest.raises(UserError, match=r"no column 'transcript' .*data.hf.audio / data.hf.text"):
        read_hf(root, ["dev-clean"], audio_dir=tmp_path / "h", columns=columns(text="transcript"))
    with pytest.raises(UserError, match=r"no Hugging Face split 'train-other-500' .*found: "):
        read_hf(root, ["train-other-500"], audio_dir=tmp_path / "h", columns=columns())
    # no id column: ids are <split>-<row>; no text column: speech only, counted
    counts: Counter[str] = Counter()
    recs = read_hf(root, ["dev-clean"], counts, audio_dir=tmp_path / "h",
                   columns=columns(id="utt", text="''"))  # fmt: skip
    assert [r.id for r in recs] == ["dev-clean-00000000", "dev-clean-00000001"]
    assert all(r.text is None for r in recs) and counts == {"no_transcript": 2}


def test_rows_without_readable_audio_are_skipped_or_kept_and_counted(tmp_path):
    wav = io.BytesIO()
    sf.write(wav, np.zeros(1600, np.float32), 16000, format="WAV")
    rows = {"audio": [{"bytes": wav.getvalue(), "path": None}, {"bytes": b"LILCOM..", "path": None},
                      None], "text": ["one", "two", "three"], "id": ["a", "b", "c"]}  # fmt: skip
    ds = Dataset.from_dict(rows).cast_column("audio", Audio(decode=False))
    ds.to_parquet(str(tmp_path / "d" / "train.parquet"))
    counts: Counter[str] = Counter()
    recs = read_hf(tmp_path / "d", ["train"], counts, audio_dir=tmp_path / "h", columns=columns())
    assert [(r.id, r.duration > 0) for r in recs] == [("a", True), ("c", False)]
    assert recs[0].audio.endswith(".wav") and recs[1].audio is None
    assert counts == {"undecodable_audio": 1, "no_audio": 1}


def test_the_identity_follows_the_files_content_and_columns_and_digests_are_kept(
    tmp_path, monkeypatch
):
    root, _ = hf_librispeech(tmp_path, "parquet")
    over = ["data.corpus=hf", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.train_splits=train-clean-100", "data.valid_splits=dev-clean",
            "data.test_splits=test-clean"]  # fmt: skip
    cfg = load_config(ROOT / "experiments" / "tiny" / "zip_asr.yaml", over)
    before = data_fingerprint(cfg.data)
    reads = Counter()
    real = sources.file_digest
    monkeypatch.setattr(sources, "file_digest", lambda p: reads.update([p]) or real(p))
    assert data_fingerprint(cfg.data) == before and not reads  # unchanged: not one file read
    other = load_config(ROOT / "experiments" / "tiny" / "zip_asr.yaml", [*over, "data.hf.text=id"])
    assert data_fingerprint(other.data) != before  # another column is other data
    test_file = root / "data" / "test-clean-00000-of-00001.parquet"
    table = pq.read_table(test_file)
    texts = ["A TRANSCRIPT FIXED IN PLACE", *table.column("text").to_pylist()[1:]]
    index = table.schema.get_field_index("text")
    pq.write_table(table.set_column(index, "text", pa.array(texts)), test_file)
    assert data_fingerprint(cfg.data) != before
    assert list(reads) == [test_file]  # only the file that changed was read again
