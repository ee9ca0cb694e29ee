"""The audio-tokenizer interface and the k-means helpers its unit codecs share.

``AudioTokenizer``: waves <-> 1-D integer token arrays, saved and loaded with its config. The
codecs live in ``audio_tokenizers`` (``units``, the registry), ``encodec_tokenizer`` and
``ssl_units`` (``hubert``); each imports this module and nothing imports them back.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from zipper_pl.config.components import ENCODEC_CHECKPOINT as ENCODEC_CHECKPOINT
from zipper_pl.config.components import AudioTokenizerConfig
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_json

AUDIO_TOKENIZER_DIR = "audio_tokenizer"  # a stage folder's copy of its audio tokenizer
# codec name -> class: a plain dict, filled in one place (audio_tokenizers.py, the registry)
AUDIO_TOKENIZERS: dict[str, type[AudioTokenizer]] = {}


class AudioTokenizer:
    """Interface: waves (mono float32 at ``sample_rate``) <-> 1-D integer token arrays."""

    name: ClassVar[str]
    sample_rate: ClassVar[int]
    vocab_size: int
    frame_rate: float  # tokens per second of audio (before any de-duplication)
    needs_fit: ClassVar[bool] = False
    decodes: ClassVar[bool] = False  # has a decoder of its own; else a unit vocoder voices it
    identity_fields: ClassVar[tuple[str, ...]] = ()  # config fields that change the tokens
    # every audio.* field this codec reads besides the shared ones (codec, seed, batch_seconds,
    # max_seconds, device): another codec's fields never enter a stage's identity
    reads: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: AudioTokenizerConfig) -> None:
        self.cfg = cfg

    def fit(self, waves: list[np.ndarray]) -> None:
        """Learn state from the speech training pool (no-op for pretrained codecs)."""

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def collapses_runs(self) -> bool:
        """Whether ``encode`` collapses runs of equal units (``units_dedup``): the tokens have
        lost their durations, which a vocoder must then predict."""
        return "units_dedup" in self.identity_fields and self.cfg.units_dedup

    def feature_module(self) -> torch.nn.Module | None:
        """A copy of the differentiable transform whose frames the tokens quantise (audio
        [B, S] -> features [B, D, T]), or None where torch does not compute them here."""
        return None

    def encode_frames(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """One token per frame, runs kept: what a unit vocoder learns to voice."""
        if not self.collapses_runs:
            return self.encode(waves)
        frames = copy.copy(self)  # shares the fitted state; only the config differs
        frames.cfg = dataclasses.replace(self.cfg, units_dedup=False)
        return frames.encode(waves)

    def _state_bytes(self) -> bytes:
        return b""

    def fingerprint(self) -> str:
        """Changes whenever the tokens would: config fields in use + fitted/loaded state."""
        h = hashlib.sha256(json.dumps(self._identity(), sort_keys=True).encode())
        h.update(self._state_bytes())
        return h.hexdigest()[:16]

    def _identity(self) -> dict[str, Any]:
        return {k: getattr(self.cfg, k) for k in ("codec", *self.identity_fields)}

    @classmethod
    def source_digests(cls, cfg: AudioTokenizerConfig) -> dict[str, str]:
        """Config keys naming files this tokenizer reads -> those files' content digests: a
        stage's identity takes the contents, never the names (``identity.result_config``)."""
        return {}

    def save(self, dir: str | os.PathLike) -> None:
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "audio_tokenizer.json", asdict(self.cfg))

    @classmethod
    def load(cls, dir: str | os.PathLike) -> AudioTokenizer:
        path = Path(dir) / "audio_tokenizer.json"
        if not path.is_file():
            raise UserError(f"no audio tokenizer saved in {dir}: run the stage that fits it first")
        fix = f"delete the stage folder holding {str(dir)!r} and re-run the stage that made it"
        try:
            cfg = AudioTokenizerConfig(**json.loads(path.read_text()))
            return AUDIO_TOKENIZERS[cfg.codec]._load(cfg, Path(dir))
        except (OSError, ValueError, TypeError, KeyError) as e:  # truncated, foreign, older
            raise UserError(f"audio tokenizer in {str(dir)!r} is unreadable ({e}): {fix}") from None

    @classmethod
    def _load(cls, cfg: AudioTokenizerConfig, dir: Path) -> AudioTokenizer:
        return cls(cfg)


def _dedup(units: np.ndarray) -> np.ndarray:
    if units.size == 0:
        return units
    keep = np.ones(units.size, dtype=bool)
    keep[1:] = units[1:] != units[:-1]
    return units[keep]


def tokenizer_device(name: str) -> torch.device:
    """``audio.device``: auto picks CUDA when present."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def fit_kmeans(feats: np.ndarray, cfg: AudioTokenizerConfig) -> np.ndarray:
    """[K, D] MiniBatchKMeans centroids of the frames ``feats`` [N, D] (K = ``units_k``), fitted
    on a seeded subsample of at most ``units_fit_max_frames`` frames."""
    from sklearn.cluster import MiniBatchKMeans

    if feats.shape[0] < cfg.units_k:
        raise UserError(
            f"k-means needs at least audio.units_k={cfg.units_k} frames, the speech pool "
            f"gave {feats.shape[0]}: add audio or lower audio.units_k"
        )
    rng = np.random.default_rng(cfg.seed)
    if feats.shape[0] > cfg.units_fit_max_frames:
        keep = np.sort(rng.choice(feats.shape[0], cfg.units_fit_max_frames, replace=False))
        feats = feats[keep]
    km = MiniBatchKMeans(
        n_clusters=cfg.units_k,
        batch_size=max(4096, 4 * cfg.units_k),
        n_init=3,
        max_no_improvement=20,
        random_state=cfg.seed,
    )
    km.fit(feats)
    return km.cluster_centers_


def nearest_units(
    feats: list[torch.Tensor], centroids: torch.Tensor, vocab_size: int, dedup: bool
) -> list[np.ndarray]:
    """Per-utterance arrays of the nearest centroid of every frame (``feats``: [T_i, D] each, on
    the centroids' device); runs collapsed when ``dedup``."""
    if not feats:
        return []
    x = torch.cat(feats)  # [N, D] all frames of the batch at once
    c = centroids
    # argmin |x - c|^2 = argmin (|c|^2 - 2 x.c): one matmul, no per-frame Python
    units = ((c * c).sum(1) - 2 * x @ c.T).argmin(dim=1).cpu().numpy()  # [N]
    dtype = np.uint16 if vocab_size <= 65536 else np.int32
    out = [a.astype(dtype) for a in np.split(units, np.cumsum([len(f) for f in feats])[:-1])]
    return [_dedup(a) for a in out] if dedup else out
