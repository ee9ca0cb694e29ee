"""The training-free units -> waveform inversion (the floor a trained units vocoder must beat)."""

from __future__ import annotations

import numpy as np
import pytest

from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizerConfig, UnitsTokenizer
from zipper_pl.data.tokenizers.units_inversion import FeatureStats, feature_stats, griffin_lim_units
from zipper_pl.errors import UserError

SR = 16000
K = 16


def vowelish(seed: int) -> np.ndarray:
    """1 s of a speech-like wave: a wobbling f0's harmonics under two gliding formants, with a
    noise burst (fricative-like) and a near-silent gap, so k-means finds real structure."""
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    f0 = 110 + 40 * rng.random() + 20 * np.sin(2 * np.pi * rng.uniform(1, 3) * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    f1 = np.linspace(rng.uniform(300, 800), rng.uniform(300, 800), SR)
    f2 = np.linspace(rng.uniform(900, 2500), rng.uniform(900, 2500), SR)
    w = np.zeros(SR)
    for h in range(1, 40):
        fh = h * f0
        amp = np.exp(-(((fh - f1) / 150) ** 2)) + 0.6 * np.exp(-(((fh - f2) / 200) ** 2)) + 0.01
        w += amp * np.sin(h * phase) * (fh < SR / 2)
    s = rng.integers(0, SR - 4000)
    w[s : s + 3000] = rng.normal(0, 0.5, 3000)
    g = rng.integers(0, SR - 2000)
    w[g : g + 1600] *= 0.01
    return (0.3 * w / np.abs(w).max()).astype(np.float32)


POOL = [vowelish(i) for i in range(10)]
HELD_OUT = [vowelish(100 + i) for i in range(3)]


@pytest.fixture(scope="module", params=["mfcc", "logmel"])
def fitted(request) -> tuple[UnitsTokenizer, FeatureStats]:
    cfg = AudioTokenizerConfig(codec="units", units_k=K, units_features=request.param)
    assert cfg.units_deltas  # the static part is the first 13 / 80 dims of each centroid
    tok = UnitsTokenizer(cfg)
    tok.fit(POOL)
    return tok, feature_stats(tok, POOL)


def test_feature_stats_shapes(fitted):
    tok, stats = fitted
    c = 13 if tok.cfg.units_features == "mfcc" else 80
    assert stats.mean.shape == stats.std.shape == (c,)
    assert np.all(np.isfinite(stats.mean)) and np.all(stats.std > 0)


def test_waveform_shape_range_determinism(fitted):
    tok, stats = fitted
    units = tok.encode([HELD_OUT[0][:7000]])[0]  # 22 frames
    wave = griffin_lim_units(tok, units, stats, n_iter=8)
    assert wave.dtype == np.float32 and wave.shape == (len(units) * 320,)
    assert np.all(np.isfinite(wave))
    assert np.abs(wave).max() <= 0.9 + 1e-6 and np.abs(wave).max() > 0.5
    np.testing.assert_array_equal(wave, griffin_lim_units(tok, units, stats, n_iter=8))
    one = griffin_lim_units(tok, np.array([3]), stats, n_iter=4)  # a single frame still works
    assert one.shape == (320,) and np.all(np.isfinite(one))


def test_reencoding_recovers_units(fitted):
    """Measured (k=16, 32 iterations, these waves): 0.84 mfcc, 0.80 logmel; chance is 1/16 and
    two different waves' units agree on ~0.22 of frames."""
    tok, stats = fitted
    agree = []
    for w in HELD_OUT:
        units = tok.encode([w])[0]
        wave = griffin_lim_units(tok, units, stats)
        again = tok.encode([wave])[0]
        assert len(again) == len(units) + 1  # len * 320 samples -> len + 1 centred frames
        agree.append(np.mean(again[: len(units)] == units))
    assert np.mean(agree) > 0.5, agree  # 8x chance, with margin below what is measured


def test_errors(fitted):
    tok, stats = fitted
    wrong = FeatureStats(mean=np.zeros(5, np.float32), std=np.ones(5, np.float32))
    cases = [
        (lambda: griffin_lim_units(tok, np.array([], np.int64), stats), "non-empty"),
        (lambda: griffin_lim_units(tok, np.array([1, 16, 2]), stats), r"unit id 16 .*units_k=16"),
        (lambda: griffin_lim_units(tok, np.array([1, -1]), stats), "unit id -1"),
        (lambda: griffin_lim_units(tok, np.array([1.0, 2.0]), stats), "integer"),
        (lambda: griffin_lim_units(tok, np.array([1, 2]), wrong), "static features"),
        (lambda: griffin_lim_units(UnitsTokenizer(tok.cfg), np.array([1]), stats), "not fitted"),
        (lambda: feature_stats(tok, []), "at least one wave"),
    ]
    for call, match in cases:
        with pytest.raises(UserError, match=match) as err:
            call()
        assert "\n" not in str(err.value)  # the CLI prints it as one line
