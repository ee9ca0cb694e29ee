import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from zipper_pl.data.corpora.audio import REASONS, BadAudio, SkipCounter, load_audio, resample
from zipper_pl.errors import UserError


def sine(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def plant_audio(d: Path, sr: int = 16000) -> dict[str, tuple[Path, str | None]]:
    """One file per case: name -> (path, expected bad reason or None for a good file)."""
    d.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str | None]] = {}

    def wav(name, data, rate=sr, subtype="PCM_16", bad=None, fmt="WAV"):
        p = d / f"{name}.{fmt.lower()}"
        sf.write(p, data, rate, subtype=subtype, format=fmt)
        cases[name] = (p, bad)
        return p

    wav("good", sine(0.5, sr))
    wav("good_flac", sine(0.4, sr, 300), fmt="FLAC")
    wav("stereo", np.stack([sine(0.5, sr), -sine(0.5, sr)], axis=1) * 0.5 + 0.1)
    wav("wrong_rate", sine(0.5, 22050), rate=22050)
    wav("too_long", sine(3.0, sr), bad="too_long")
    wav("empty", np.zeros(0, np.float32), bad="empty")
    nan = sine(0.5, sr)
    nan[100] = np.nan
    wav("nan", nan, subtype="FLOAT", bad="non_finite")
    p = wav("truncated", sine(0.5, sr), bad="truncated")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    p = wav("truncated_flac", np.random.default_rng(0).normal(0, 0.1, sr), fmt="FLAC")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    cases["truncated_flac"] = (p, "truncated")
    junk = d / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    cases["junk"] = (junk, "unreadable")
    cases["missing"] = (d / "missing.wav", "unreadable")
    return cases


def test_load_good_and_bad(tmp_path):
    cases = plant_audio(tmp_path)
    for name, (path, bad) in cases.items():
        if bad is None:
            x = load_audio(path, 16000, max_seconds=2.0)
            assert x.dtype == np.float32 and x.ndim == 1, name
            assert np.isfinite(x).all()
        else:
            with pytest.raises(BadAudio) as e:
                load_audio(path, 16000, max_seconds=2.0)
            assert e.value.reason == bad, (name, e.value)
    assert load_audio(cases["too_long"][0], 16000, max_seconds=None).shape == (48000,)


def test_stereo_downmix_and_resample(tmp_path):
    cases = plant_audio(tmp_path)
    st = load_audio(cases["stereo"][0], 16000)
    np.testing.assert_allclose(st, 0.1, atol=1e-3)  # channels cancel except the offset
    x = load_audio(cases["wrong_rate"][0], 16000)
    assert x.shape == (8000,)
    # the 440 Hz tone survives resampling: its spectrum peak stays at 440 Hz
    spec = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spec) * 16000 / len(x) - 440) < 5
    y = load_audio(cases["good"][0], 24000)
    assert y.shape == (12000,)


def test_skip_counter_report_and_check(tmp_path):
    c = SkipCounter(max_examples=2)
    for i in range(3):
        c.add(f"u{i}", "unreadable", "bad header")
    c.add_bad("u9", BadAudio("non_finite", "NaN"))
    with pytest.raises(ValueError):
        c.add("x", "not_a_reason")
    c.check(total=100, max_bad_share=0.05)  # 4% passes
    with pytest.raises(UserError) as e:
        c.check(total=40, max_bad_share=0.05, key="audio.max_bad_share")
    msg = str(e.value)
    assert "audio.max_bad_share" in msg and "unreadable 3" in msg and "u0, u1" in msg
    assert "u2" not in msg and "non_finite 1" in msg
    c.write(tmp_path / "skips.json", total=40)
    rep = json.loads((tmp_path / "skips.json").read_text())
    assert rep["by_reason"] == {"non_finite": 1, "unreadable": 3} and rep["skipped"] == 4
    assert rep["details"]["u9"] == "non_finite: NaN"
    assert set(REASONS) >= set(rep["by_reason"])


@pytest.mark.parametrize("rates", [(22050, 16000), (44100, 16000), (8000, 16000), (24000, 16000)])
def test_resampling_with_the_cached_filter_is_scipys_bit_for_bit(rates):
    """The low-pass filter is designed once per rate pair; the waves are exactly those of
    ``resample_poly`` designing it itself (cached token stores stay what they say)."""
    from scipy.signal import resample_poly

    orig, target = rates
    g = math.gcd(orig, target)
    rng = np.random.default_rng(0)
    for n in (5, 999, orig * 2 + 7):
        wave = rng.standard_normal(n).astype(np.float32)
        expected = resample_poly(wave, target // g, orig // g).astype(np.float32)
        assert np.array_equal(resample(wave, orig, target), expected)
