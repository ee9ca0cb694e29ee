"""Audio tokenizers behind one interface, registered by name: ``units``, ``encodec``, ``hubert``.

``units``: HuBERT-iteration-1-style "semantic" units: MFCC or log-mel frames at 50/s, normalised
per utterance, quantised by k-means fitted on the speech training pool. Needs no downloaded weights
(the offline default), cannot be turned back into audio.
``encodec``: the 24 kHz EnCodec codec; the first K residual codebooks flattened time-major with
per-codebook id offsets (frame t -> tokens ``c_0(t), 1024 + c_1(t), ...``); decodes to audio.
``hubert``: k-means units of a self-supervised speech encoder's hidden layer (``ssl_units.py``).
This module is the registry: it imports every codec (the interface is ``audio_tokenizer_base``).
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as TAF
import torchaudio.transforms as T

from zipper_pl.config.components import ENCODEC_CHECKPOINT as ENCODEC_CHECKPOINT
from zipper_pl.config.components import AudioTokenizerConfig
from zipper_pl.data.tokenizers.audio_tokenizer_base import (
    AUDIO_TOKENIZER_DIR as AUDIO_TOKENIZER_DIR,
)
from zipper_pl.data.tokenizers.audio_tokenizer_base import (
    AUDIO_TOKENIZERS,
    AudioTokenizer,
    fit_kmeans,
    nearest_units,
)
from zipper_pl.data.tokenizers.encodec_tokenizer import EncodecTokenizer
from zipper_pl.data.tokenizers.ssl_units import SSLUnitsTokenizer
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_bytes


class UnitFeatures(torch.nn.Module):
    """audio [..., S] -> the frames [..., D, T] that ``units`` quantises, before its per-utterance
    normalisation: MFCC (or log-mel) with their deltas. Differentiable: a vocoder can learn to
    give its units' own features back (``vocoder.feature_weight``)."""

    def __init__(self, transform: torch.nn.Module, *, log: bool, deltas: bool) -> None:
        super().__init__()
        self.transform, self.log, self.deltas = transform, log, deltas

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.transform(wave)  # [..., C, T]
        if self.log:
            x = torch.log(x + 1e-6)
        if self.deltas:
            d1 = TAF.compute_deltas(x)
            x = torch.cat([x, d1, TAF.compute_deltas(d1)], dim=-2)  # [..., 3C, T]
        return x


class UnitsTokenizer(AudioTokenizer):
    name = "units"
    sample_rate = 16000
    needs_fit = True
    identity_fields = ("units_k", "units_features", "units_deltas", "units_dedup")
    reads = (*identity_fields, "units_fit_max_frames")
    hop = 320  # 20 ms at 16 kHz: 50 frames/s

    def __init__(self, cfg: AudioTokenizerConfig, centroids: np.ndarray | None = None) -> None:
        super().__init__(cfg)
        self.vocab_size = cfg.units_k
        self.frame_rate = self.sample_rate / self.hop
        mel = {"n_fft": 512, "win_length": 400, "hop_length": self.hop, "center": True}
        if cfg.units_features == "mfcc":
            self._feat = T.MFCC(self.sample_rate, n_mfcc=13, melkwargs={**mel, "n_mels": 40})
        else:
            self._feat = T.MelSpectrogram(self.sample_rate, n_mels=80, **mel)
        logmel = cfg.units_features == "logmel"
        self._unit_features = UnitFeatures(self._feat, log=logmel, deltas=cfg.units_deltas)
        self.centroids: torch.Tensor | None = None  # [K, D]
        if centroids is not None:
            self._set_centroids(centroids)

    def _set_centroids(self, c: np.ndarray) -> None:
        if c.shape[0] != self.cfg.units_k:
            raise UserError(
                f"saved units model has {c.shape[0]} entries but audio.units_k={self.cfg.units_k}"
            )
        self.centroids = torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32))

    @torch.no_grad()
    def raw_features(self, wave: np.ndarray) -> torch.Tensor:
        """[D, T] frames before the per-utterance normalisation (statics first, then deltas),
        T = len(wave) // 320 + 1."""
        n_frames = len(wave) // self.hop + 1
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if len(x) <= 256:  # centre padding reflects n_fft/2 samples: very short clips need zeros
            x = torch.nn.functional.pad(x, (0, 257 - len(x)))
        # centred frames of hop 320 and window 512: the transform gives exactly n_frames
        return self._unit_features(x)[:, :n_frames]

    @torch.no_grad()
    def features(self, wave: np.ndarray) -> torch.Tensor:
        """[T, D] normalised frames, T = len(wave) // 320 + 1."""
        x = self.raw_features(wave)  # [D, T]
        # per-utterance mean/variance normalisation removes channel and loudness differences
        x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True, unbiased=False) + 1e-5)
        return x.T.contiguous()

    def feature_module(self) -> torch.nn.Module:
        """A copy of ``features``' transform before normalisation (the vocoder's feature loss
        moves it to its device; the tokenizer's own stays where it is)."""
        return copy.deepcopy(self._unit_features)

    def fit(self, waves: list[np.ndarray]) -> None:
        feats = torch.cat([self.features(w) for w in waves]).numpy()  # [N, D]
        self._set_centroids(fit_kmeans(feats, self.cfg))

    @torch.no_grad()
    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        if self.centroids is None:
            raise UserError("the units tokenizer is not fitted: run its fit step (or load it)")
        feats = [self.features(w) for w in waves]
        return nearest_units(feats, self.centroids, self.vocab_size, self.cfg.units_dedup)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        raise UserError(
            "units tokens cannot be turned back into audio: use audio.codec=encodec to listen"
        )

    def _state_bytes(self) -> bytes:
        return b"" if self.centroids is None else self.centroids.numpy().tobytes()

    def save(self, dir: str | os.PathLike) -> None:
        if self.centroids is None:
            raise RuntimeError("fit the units tokenizer before saving it")
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, centroids=self.centroids.numpy())
        atomic_write_bytes(d / "units_kmeans.npz", buf.getvalue())
        super().save(d)  # the config last: its presence marks a complete artefact

    @classmethod
    def _load(cls, cfg: AudioTokenizerConfig, dir: Path) -> UnitsTokenizer:
        with np.load(dir / "units_kmeans.npz", allow_pickle=False) as z:
            return cls(cfg, centroids=z["centroids"])


AUDIO_TOKENIZERS.update(units=UnitsTokenizer, encodec=EncodecTokenizer, hubert=SSLUnitsTokenizer)


def build_audio_tokenizer(cfg: AudioTokenizerConfig) -> AudioTokenizer:
    """A fresh tokenizer for ``cfg.codec`` (units still need ``fit``)."""
    return AUDIO_TOKENIZERS[cfg.codec](cfg)
