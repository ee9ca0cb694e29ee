"""The README's Python API snippet runs, as written, on a tiny zipped stage."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import zipper_pl
from tests.conftest import ROOT, tiny_config, zip_config
from tests.test_readers import _audio
from zipper_pl.data.corpora.audio import split_at_silences
from zipper_pl.errors import UserError
from zipper_pl.stages.chain import vocoder_stage, zip_stage

PLACEHOLDER = "runs/demo-embedded/zipper-asr-units-frac0p1-freeze_text-steps500-s0-<id>"


@pytest.fixture(scope="module")
def stage(data_root, tiny_towers, tmp_path_factory):
    """A tiny zipped stage with its codec's vocoder beside it (as the chain builds them)."""
    out = tmp_path_factory.mktemp("api") / "zip"
    vocoder_stage(
        tiny_config(data_root, out.parent, "vocoder.yaml", f"out={out.parent / 'vocoder-t'}")
    )
    return zip_stage(zip_config(data_root, tiny_towers, out, "train.max_steps=2"))


def test_readme_snippet_runs(stage, tmp_path, capsys, monkeypatch):
    block = re.search(r"<!-- api-snippet.*?```python\n(.*?)```", (ROOT / "README.md").read_text(),
                      re.S).group(1)  # fmt: skip
    _audio(tmp_path / "speech.wav", 0.6, sr=44100)  # another sample rate than the codec's
    monkeypatch.chdir(tmp_path)
    exec(compile(block.replace(PLACEHOLDER, str(stage)), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[") and printed[1].startswith("[")
    assert re.fullmatch(r"\[.*\] \(\d+,\)", printed[1])  # tokens, then the waveform's shape


def test_api_batches_arrays_and_names_bad_input(stage, tmp_path):
    model = zipper_pl.load(stage)
    wave = np.sin(np.arange(8000) / 10).astype(np.float32)
    stereo = np.stack([wave, wave], axis=1)
    out = model.transcribe([wave, stereo], sample_rate=8000)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    with pytest.raises(UserError, match="sample_rate"):
        model.transcribe(wave)
    with pytest.raises(UserError, match="cannot read audio"):
        model.transcribe(tmp_path / "missing.wav")
    speech = model.speak("hello", temperature=1.0, seed=3)
    assert len(speech) == 1 and speech[0].tokens.ndim == 1
    res = model.generate([[("speech", [1, 2, 3])]], ["text"])
    assert res[0][0][0] == "text"
    with pytest.raises(UserError, match="video"):
        model.generate([[("text", [5])]], ["video"])


def test_empty_and_non_finite_audio_are_refused_and_long_audio_is_transcribed_in_chunks(
    stage, capsys
):
    """Found by a user (#31): an all-NaN or empty array transcribed to '' and a long recording
    was refused; now the first two are one-line errors and the third is read in chunks."""
    model = zipper_pl.load(stage)
    with pytest.raises(UserError, match="empty"):
        model.transcribe(np.zeros(0, dtype=np.float32), sample_rate=16000)
    with pytest.raises(UserError, match="NaN"):
        model.transcribe(np.full(1600, np.nan, dtype=np.float32), sample_rate=16000)
    longest = model.longest_input()
    seconds = 3 * longest / model.ft.audio_tok.frame_rate  # > 2x what it reads at once
    wave = np.sin(np.arange(int(seconds * 16000)) / 7).astype(np.float32)
    (text,) = model.transcribe(wave, sample_rate=16000)
    assert isinstance(text, str)
    assert "chunks" in capsys.readouterr().err
    model.transcribe(wave, sample_rate=16000, chunk_seconds=1.0)
    chunks = int(re.search(r"in (\d+) chunks", capsys.readouterr().err).group(1))
    assert chunks >= math.ceil(seconds)  # no chunk longer than chunk_seconds
    with pytest.raises(UserError, match="chunk_seconds"):
        model.transcribe(wave, sample_rate=16000, chunk_seconds=0.01)


def test_long_audio_is_cut_at_its_pauses():
    """Three 'sentences' of tone with 0.3 s pauses: 1.5 s chunks end in the pauses, never
    inside a tone, and nothing is lost or repeated."""
    sr, tone, pause = 16000, np.sin(np.arange(16000) / 5).astype(np.float32), np.zeros(4800)
    wave = np.concatenate([tone, pause, tone, pause, tone]).astype(np.float32)
    pieces = split_at_silences(wave, longest=int(1.5 * sr), frame=320)
    assert np.array_equal(np.concatenate(pieces), wave) and len(pieces) == 3
    for piece in pieces[:-1]:
        assert len(piece) <= 1.5 * sr and not piece[-160:].any()  # ends inside a pause
    (short,) = split_at_silences(wave[:100], longest=200, frame=320)
    assert np.array_equal(short, wave[:100])
