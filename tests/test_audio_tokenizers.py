import numpy as np
import pytest
import torch

from zipper_pl.data.tokenizers.audio_tokenizers import (
    AUDIO_TOKENIZERS,
    ENCODEC_CHECKPOINT,
    AudioTokenizer,
    AudioTokenizerConfig,
    EncodecTokenizer,
    UnitsTokenizer,
    build_audio_tokenizer,
)
from zipper_pl.data.tokenizers.encodec_tokenizer import random_encodec_model
from zipper_pl.errors import UserError


def tone(seconds: float, freq: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _pool(sr: int = 16000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    waves = []
    for i in range(8):  # tone, silence-ish noise and chirp segments give k-means real structure
        f = 200 + 150 * i
        noise = rng.normal(0, 0.05, sr // 2).astype(np.float32)
        waves.append(np.concatenate([tone(0.5, f, sr), noise, tone(0.5, 2 * f, sr)]))
    return waves


@pytest.fixture(scope="module")
def units() -> UnitsTokenizer:
    tok = UnitsTokenizer(AudioTokenizerConfig(units_k=16))
    tok.fit(_pool())
    return tok


def test_config_derives_sample_rate_and_registry():
    assert AudioTokenizerConfig().sample_rate == 16000
    assert AudioTokenizerConfig(codec="encodec").sample_rate == 24000
    assert {"units": UnitsTokenizer, "encodec": EncodecTokenizer} == {
        k: v for k, v in AUDIO_TOKENIZERS.items() if k != "hubert"
    }  # hubert: tests/test_ssl_units.py
    assert isinstance(build_audio_tokenizer(AudioTokenizerConfig()), UnitsTokenizer)


def test_units_encode_frames_and_content(units):
    waves = [tone(1.0, 300), tone(0.37, 1200), np.zeros(100, np.float32)]
    out = units.encode(waves)
    assert [len(o) for o in out] == [len(w) // 320 + 1 for w in waves]
    assert all(o.dtype == np.uint16 and o.max() < 16 for o in out)
    assert units.frame_rate == 50 and units.vocab_size == 16
    # a steady tone maps to (nearly) one unit; two distant tones map to different units
    a, b = (np.bincount(o[5:-5]).argmax() for o in out[:2])
    assert a != b
    assert np.mean(out[0][5:-5] == a) > 0.9
    # batched encoding equals one-by-one encoding
    for w, o in zip(waves, out, strict=True):
        np.testing.assert_array_equal(units.encode([w])[0], o)


def test_units_fit_deterministic_save_load(units, tmp_path):
    again = UnitsTokenizer(AudioTokenizerConfig(units_k=16))
    again.fit(_pool())
    assert again.fingerprint() == units.fingerprint()
    other = UnitsTokenizer(AudioTokenizerConfig(units_k=16, seed=1))
    other.fit(_pool())
    assert other.fingerprint() != units.fingerprint()
    units.save(tmp_path)
    loaded = AudioTokenizer.load(tmp_path)
    assert isinstance(loaded, UnitsTokenizer) and loaded.fingerprint() == units.fingerprint()
    w = _pool()[3]
    np.testing.assert_array_equal(loaded.encode([w])[0], units.encode([w])[0])


def test_units_dedup_errors(units):
    dd = UnitsTokenizer(AudioTokenizerConfig(units_k=16, units_dedup=True), units.centroids.numpy())
    full, short = units.encode([tone(1.0, 300)])[0], dd.encode([tone(1.0, 300)])[0]
    assert len(short) < len(full) and np.all(short[1:] != short[:-1])
    assert dd.fingerprint() != units.fingerprint()
    with pytest.raises(UserError, match=r"not fitted"):
        UnitsTokenizer(AudioTokenizerConfig()).encode([tone(0.1, 300)])
    with pytest.raises(UserError, match=r"audio.codec=encodec"):
        units.decode(np.zeros(3, np.int64))
    with pytest.raises(UserError, match=r"audio.units_k"):
        UnitsTokenizer(AudioTokenizerConfig(units_k=4096)).fit([tone(0.2, 300)])
    logmel = UnitsTokenizer(AudioTokenizerConfig(units_k=8, units_features="logmel"))
    logmel.fit(_pool()[:2])
    assert len(logmel.encode([tone(0.5, 300)])[0]) == 26


@pytest.fixture(scope="module")
def encodec() -> EncodecTokenizer:
    torch.manual_seed(0)
    cfg = AudioTokenizerConfig(codec="encodec", batch_seconds=1.5, device="cpu")
    return EncodecTokenizer(cfg, model=random_encodec_model(0))


def test_encodec_flatten_batch_chunk_decode(encodec):
    assert encodec.codebooks == 2 and encodec.vocab_size == 2048 and encodec.frame_rate == 150
    rng = np.random.default_rng(0)
    lengths = [100, 320, 321, 24000, 50000]  # 50000 > batch_seconds: cut into chunks
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in lengths]
    out = encodec.encode(waves)
    assert [len(o) for o in out] == [2 * -(-n // 320) for n in lengths]
    for o in out:
        assert o[0::2].max() < 1024 and o[1::2].min() >= 1024 and o.max() < 2048
    assert len(np.unique(out[3][0::2])) > 5  # varied codes, not a constant stream
    # padded batches agree with one-by-one encoding (float near-ties may flip a rare code)
    for w, o in zip(waves, out, strict=True):
        assert np.mean(encodec.encode([w])[0] == o) > 0.95
    y = encodec.decode(out[3])
    assert y.dtype == np.float32 and y.shape == (24000,)
    with pytest.raises(ValueError, match=r"multiple of 2"):
        encodec.decode(out[3][:-1])
    with pytest.raises(ValueError, match=r"codebook slot"):
        encodec.decode(out[3][::-1].copy())


def test_encodec_config_errors_and_fingerprint(encodec, tmp_path):
    cfg = AudioTokenizerConfig(codec="encodec", encodec_codebooks=3)
    with pytest.raises(UserError, match=r"audio.encodec_codebooks"):
        EncodecTokenizer(cfg, model=random_encodec_model(0))
    cfg = AudioTokenizerConfig(codec="encodec", encodec_weights_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"audio.encodec_weights_dir"):
        EncodecTokenizer(cfg)  # empty folder
    (tmp_path / ENCODEC_CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(
        UserError, match=r"not the published EnCodec.*audio.encodec_weights_dir"
    ) as e:
        EncodecTokenizer(cfg)
    err = e.value  # one message, no chain
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    one = EncodecTokenizer(
        AudioTokenizerConfig(codec="encodec", encodec_codebooks=1), model=random_encodec_model(0)
    )
    assert one.vocab_size == 1024 and one.fingerprint() != encodec.fingerprint()
    other_weights = EncodecTokenizer(encodec.cfg, model=random_encodec_model(1))
    assert other_weights.fingerprint() != encodec.fingerprint()


def test_encodec_offline_error_names_the_key(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match=r"audio.encodec_weights_dir") as e:
        EncodecTokenizer(AudioTokenizerConfig(codec="encodec"))
    assert "name resolution" in str(e.value) and e.value.__suppress_context__


def test_encodec_token_cache_key_follows_the_chunk_length():
    """EnCodec cuts long files into batch_seconds chunks and its LSTM restarts in each: tokens
    cached at one chunk length must never be served for another."""
    wave = np.random.default_rng(0).standard_normal(24000 * 3).astype(np.float32) * 0.1
    toks = {}
    for seconds in (1.0, 4.0):
        cfg = AudioTokenizerConfig(codec="encodec", batch_seconds=seconds, device="cpu")
        torch.manual_seed(0)  # the same weights for both: only the chunk length differs
        tok = EncodecTokenizer(cfg, model=random_encodec_model(0))
        toks[seconds] = (tok.fingerprint(), tok.encode([wave])[0], tok._state_bytes())
    assert toks[1.0][2] == toks[4.0][2]
    assert not np.array_equal(toks[1.0][1], toks[4.0][1])  # the chunk length changes the codes
    assert toks[1.0][0] != toks[4.0][0]  # so it is part of the cache key
