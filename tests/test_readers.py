from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from zipper_pl.data.corpora.manifest import Record, write_manifest
from zipper_pl.data.corpora.readers import (
    CORPUS_READERS,
    read_jsonl_manifest,
    read_librilight,
    read_librispeech,
    read_libritts,
)
from zipper_pl.errors import UserError


def _audio(path: Path, seconds: float, sr: int = 16000, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.2 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 0.01, t.size)
    sf.write(path, x.astype(np.float32), sr)


def _librispeech(root: Path) -> None:
    splits = [("train-clean-100", "19", "198"), ("dev-clean", "84", "121123"),
              ("test-clean", "1089", "134686")]  # fmt: skip
    for split, spk, ch in splits:
        d = root / split / spk / ch
        lines = []
        for u in range(3):
            utt = f"{spk}-{ch}-{u:04d}"
            _audio(d / f"{utt}.flac", 0.5 + 0.25 * u, seed=u)
            if u < 2:  # the third utterance has no transcript line
                lines.append(f"{utt} HELLO, WORLD NUMBER {u}!")
        (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")


def test_librispeech(tmp_path):
    _librispeech(tmp_path)
    recs = read_librispeech(tmp_path, ["train-clean-100"])
    assert [r.id for r in recs] == ["19-198-0000", "19-198-0001", "19-198-0002"]
    assert recs[0].text == "hello world number zero" and recs[2].text is None
    assert recs[1].duration == pytest.approx(0.75) and recs[0].speaker == "19"
    assert Path(recs[0].audio).is_file()
    assert len(read_librispeech(tmp_path, ["train-clean-100", "dev-clean"])) == 6
    # the archive's top folder is accepted as root too
    (tmp_path / "x").mkdir()
    _librispeech(tmp_path / "x" / "LibriSpeech")
    assert len(read_librispeech(tmp_path / "x", "dev-clean")) == 3


def test_libritts(tmp_path):
    d = tmp_path / "train-clean-100" / "103" / "1241"
    for i, text in enumerate(["Matthew Cuthbert is surprised.", "“It’s fine,” she said."]):
        stem = f"103_1241_000000_00000{i}"
        _audio(d / f"{stem}.wav", 0.3, sr=24000, seed=i)
        (d / f"{stem}.normalized.txt").write_text(text)
        (d / f"{stem}.original.txt").write_text(text.upper())
    _audio(d / "103_1241_000000_000009.wav", 0.3, sr=24000)  # no transcript file
    (d / "broken_0.wav").write_bytes(b"not audio")
    recs = {r.id: r for r in read_libritts(tmp_path, ["train-clean-100"])}
    assert recs["103_1241_000000_000000"].text == "matthew cuthbert is surprised"
    assert recs["103_1241_000000_000001"].text == "it's fine she said"
    assert recs["103_1241_000000_000009"].text is None
    assert recs["103_1241_000000_000001"].duration == pytest.approx(0.3)
    assert recs["broken_0"].duration == 0.0  # counted as unreadable later, not a crash here
    assert {r.speaker for r in recs.values()} == {"103"}


def test_librilight(tmp_path):
    for spk, book in [("100", "sea_fairies_0812_librivox_64kb_mp3"), ("200", "other_book")]:
        _audio(tmp_path / "small" / spk / book / "01_baum_sea_fairies_64kb.flac", 0.4)
    recs = read_librilight(tmp_path, ["small"])
    assert len(recs) == 2 and len({r.id for r in recs}) == 2  # same file name, unique ids
    assert all(r.text is None for r in recs)
    assert [r.speaker for r in recs] == ["100", "200"]


def test_jsonl_and_registry(tmp_path):
    _audio(tmp_path / "a.wav", 0.2)
    recs = [Record("a", str(tmp_path / "a.wav"), "Hi THERE.", 0.2, "s1")]
    write_manifest(tmp_path / "train.jsonl", recs)
    out = read_jsonl_manifest(tmp_path, ["train"])
    assert out[0].text == "hi there" and Path(out[0].audio).is_file()
    assert read_jsonl_manifest(tmp_path, ["train"])[0].id == "a"
    assert set(CORPUS_READERS) == {"librispeech", "libritts", "librilight", "jsonl", "lhotse", "hf"}
    assert CORPUS_READERS["librispeech"] is read_librispeech


def test_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"data\.root"):
        read_librispeech(tmp_path / "nope", ["train-clean-100"])
    _librispeech(tmp_path)
    with pytest.raises(UserError, match=r"data\.train_splits.*") as e:
        read_librispeech(tmp_path, ["test-other"])
    assert "dev-clean, test-clean, train-clean-100" in str(e.value)
    with pytest.raises(UserError, match=r"data\.train_splits"):
        read_libritts(tmp_path, [])
    with pytest.raises(UserError, match=r"data\.root"):
        read_jsonl_manifest(tmp_path / "missing.jsonl", ["train"])
