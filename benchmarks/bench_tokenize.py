"""Audio tokenization throughput: seconds of audio tokenized per wall-clock second.

Run: ``python benchmarks/bench_tokenize.py [--seconds 60] [--encodec-seconds 20]
[--hubert-seconds 60] [--hubert-size base|tiny]``. Audio is generated (tone sweeps + noise, 2-8 s
clips); EnCodec and HuBERT use random weights (the compute of the pretrained models): HuBERT-base's
shape (12 x 768) cut at GSLM's layer 6 with 500 centroids, or a tiny one for ``--quick``. Target for
``units``: >= 100x real time on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

from zipper_pl.data.tokenizers.audio_tokenizers import (
    AudioTokenizerConfig,
    EncodecTokenizer,
    UnitsTokenizer,
)
from zipper_pl.data.tokenizers.encodec_tokenizer import random_encodec_model
from zipper_pl.data.tokenizers.ssl_units import SSLUnitsTokenizer

TINY_HUBERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32,) * 7,
}


def _clips(total_seconds: float, sr: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clips, have = [], 0.0
    while have < total_seconds:
        n = int(rng.uniform(2.0, 8.0) * sr)
        t = np.arange(n) / sr
        f = rng.uniform(100, 400) * (1 + t)  # a rising tone, like a crude voiced sweep
        x = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr) + rng.normal(0, 0.02, n)
        clips.append(x.astype(np.float32))
        have += n / sr
    return clips


def _rate(tok, clips: list[np.ndarray]) -> tuple[float, float]:
    tok.encode(clips[:1])  # warm-up: first-call allocations and kernel choices
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tok.encode(clips)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    seconds = sum(len(c) for c in clips) / tok.sample_rate
    return seconds, wall


def random_hubert(folder: Path, size: str = "base") -> SSLUnitsTokenizer:
    """The ``hubert`` tokenizer on a random HuBERT saved in ``folder``: ``base`` = HuBERT-base's
    shape at layer 6 with 500 random centroids (GSLM's km500), ``tiny`` = 2 layers of 32."""
    torch.manual_seed(0)
    HubertModel(HubertConfig(**({} if size == "base" else TINY_HUBERT))).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False).save_pretrained(
        folder
    )
    k, dim, layer = (500, 768, 6) if size == "base" else (16, 32, 2)
    centroids = np.random.default_rng(0).normal(size=(k, dim)).astype(np.float32)
    np.save(folder / "km.npy", centroids)
    cfg = AudioTokenizerConfig(
        codec="hubert",
        ssl_model=str(folder),
        ssl_layer=layer,
        ssl_centroids=str(folder / "km.npy"),
        units_k=k,
    )
    return SSLUnitsTokenizer(cfg)


def run(
    seconds: float = 60.0,
    encodec_seconds: float = 20.0,
    hubert_seconds: float = 60.0,
    hubert_size: str = "base",
) -> dict[str, dict[str, float]]:
    """Benchmark the tokenizers; returns {codec: {audio_s, wall_s, x_realtime}}."""
    results: dict[str, dict[str, float]] = {}
    units = UnitsTokenizer(AudioTokenizerConfig(units_k=256))
    units.fit(_clips(30.0, units.sample_rate, seed=1))
    enc = EncodecTokenizer(AudioTokenizerConfig(codec="encodec"), model=random_encodec_model(0))
    with tempfile.TemporaryDirectory() as tmp:  # the random HuBERT's safetensors folder
        hubert = random_hubert(Path(tmp), hubert_size)
        cases = [
            ("units", units, seconds),
            ("encodec", enc, encodec_seconds),
            (f"hubert-{hubert_size} L{hubert.cfg.ssl_layer}", hubert, hubert_seconds),
        ]
        for name, tok, secs in cases:
            audio_s, wall = _rate(tok, _clips(secs, tok.sample_rate))
            results[name] = {"audio_s": audio_s, "wall_s": wall, "x_realtime": audio_s / wall}
    device = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    print(f"audio tokenization throughput ({device})")
    print(f"{'codec':<16} {'audio s':>9} {'wall s':>8} {'x realtime':>11}")
    for name, r in results.items():
        print(f"{name:<16} {r['audio_s']:>9.1f} {r['wall_s']:>8.2f} {r['x_realtime']:>11.1f}")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="audio for the units tokenizer")
    p.add_argument("--encodec-seconds", type=float, default=20.0, help="audio for encodec")
    p.add_argument("--hubert-seconds", type=float, default=60.0, help="audio for hubert")
    p.add_argument("--hubert-size", choices=("base", "tiny"), default="base", help="its shape")
    args = p.parse_args()
    run(args.seconds, args.encodec_seconds, args.hubert_seconds, args.hubert_size)


if __name__ == "__main__":
    main()
