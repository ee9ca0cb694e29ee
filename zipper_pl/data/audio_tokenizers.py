"""Audio tokenizers behind one interface, registered by name: ``units``, ``encodec``, ``hubert``.

``units``: HuBERT-iteration-1-style "semantic" units: MFCC or log-mel frames at 50/s, normalised
per utterance, quantised by k-means fitted on the speech training pool. Needs no downloaded weights
(the offline default), cannot be turned back into audio.
``encodec``: the 24 kHz EnCodec codec; the first K residual codebooks flattened time-major with
per-codebook id offsets (frame t -> tokens ``c_0(t), 1024 + c_1(t), ...``); decodes to audio.
``hubert``: k-means units of a self-supervised speech encoder's hidden layer (``ssl_units.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchaudio.functional as TAF
import torchaudio.transforms as T

from zipper_pl.config.components import ENCODEC_CHECKPOINT as ENCODEC_CHECKPOINT
from zipper_pl.config.components import AudioTokenizerConfig
from zipper_pl.data.encodec_weights import pretrained_encodec
from zipper_pl.data.store import atomic_write_bytes, atomic_write_json
from zipper_pl.errors import UserError

AUDIO_TOKENIZER_DIR = "audio_tokenizer"  # a stage folder's copy of its audio tokenizer

ENCODEC_BINS = 1024
ENCODEC_HOP = 320  # samples per frame at 24 kHz: 75 frames/s
ENCODEC_MIN_FRAMES = 8  # > the 6-frame reflect padding of the encoder's last conv


class AudioTokenizer:
    """Interface: waves (mono float32 at ``sample_rate``) <-> 1-D integer token arrays."""

    name: ClassVar[str]
    sample_rate: ClassVar[int]
    vocab_size: int
    frame_rate: float  # tokens per second of audio (before any de-duplication)
    needs_fit: ClassVar[bool] = False
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
    def features(self, wave: np.ndarray) -> torch.Tensor:
        """[T, D] normalised frames, T = len(wave) // 320 + 1."""
        n_frames = len(wave) // self.hop + 1
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if len(x) <= 256:  # centre padding reflects n_fft/2 samples: very short clips need zeros
            x = torch.nn.functional.pad(x, (0, 257 - len(x)))
        x = self._feat(x)[:, :n_frames]  # [C, T]
        if self.cfg.units_features == "logmel":
            x = torch.log(x + 1e-6)
        if self.cfg.units_deltas:
            d1 = TAF.compute_deltas(x)
            x = torch.cat([x, d1, TAF.compute_deltas(d1)], dim=0)  # [3C, T]
        # per-utterance mean/variance normalisation removes channel and loudness differences
        x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True, unbiased=False) + 1e-5)
        return x.T.contiguous()

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


@torch.no_grad()
def random_encodec_model(seed: int = 0) -> torch.nn.Module:
    """An untrained 24 kHz EnCodec whose codebooks are drawn from its own encoder outputs.

    For tests and throughput benchmarks only: an untrained model with its default all-zero
    codebooks would emit a single code, this one emits varied (but meaningless) codes.
    """
    from encodec import EncodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    g = torch.Generator().manual_seed(seed)
    res = model.encoder(0.1 * torch.randn(1, 1, 4 * 24000, generator=g))[0].T  # [T, D]
    for layer in model.quantizer.vq.layers:
        cb = layer._codebook
        pick = torch.randint(0, res.shape[0], (cb.embed.shape[0],), generator=g)
        noise = 0.01 * res.std() * torch.randn(cb.embed.shape, generator=g)
        cb.embed.copy_(res[pick] + noise)
        cb.inited.fill_(1)
        res = res - cb.embed[torch.cdist(res, cb.embed).argmin(1)]  # next layer sees residuals
    return model.eval()


class EncodecTokenizer(AudioTokenizer):
    name = "encodec"
    sample_rate = 24000
    # batch_seconds too: long files are cut into chunks of that length, and the encoder's LSTM
    # starts afresh in each, so the chunk length changes the codes (55 of 450 on a 3 s file)
    identity_fields = ("encodec_bandwidth", "encodec_codebooks", "batch_seconds")
    reads = ("encodec_bandwidth", "encodec_codebooks", "encodec_weights_dir")

    def __init__(self, cfg: AudioTokenizerConfig, model: torch.nn.Module | None = None) -> None:
        super().__init__(cfg)
        n_q = int(cfg.encodec_bandwidth * 1000 // (75 * math.log2(ENCODEC_BINS)))
        if cfg.encodec_codebooks > n_q:
            raise UserError(
                f"audio.encodec_codebooks={cfg.encodec_codebooks} exceeds the {n_q} codebooks of "
                f"audio.encodec_bandwidth={cfg.encodec_bandwidth}: lower one or raise the other"
            )
        self.codebooks = cfg.encodec_codebooks or n_q
        self.vocab_size = self.codebooks * ENCODEC_BINS
        self.frame_rate = 75.0 * self.codebooks  # tokens per second: K per 75 Hz frame
        model = model if model is not None else pretrained_encodec(cfg.encodec_weights_dir)
        model.set_target_bandwidth(cfg.encodec_bandwidth)
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        self._weights_hash = h.digest()
        self.device = tokenizer_device(cfg.device)
        self.model = model.eval().to(self.device)

    def _state_bytes(self) -> bytes:
        return self._weights_hash

    @torch.no_grad()
    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L] waves -> [B, K, ceil(L / 320)] codes of the first K codebooks."""
        emb = self.model.encoder(x[:, None, :].to(self.device))
        codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.model.bandwidth)
        return codes[: self.codebooks].transpose(0, 1).cpu()  # [n_q, B, T] -> [B, K, T]

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        chunk = max(1, int(self.cfg.batch_seconds * self.sample_rate) // ENCODEC_HOP) * ENCODEC_HOP
        # long files are cut into chunks of whole frames, so chunk codes concatenate exactly
        pieces: list[tuple[int, np.ndarray]] = []
        for i, w in enumerate(waves):
            pieces += [(i, w[s : s + chunk]) for s in range(0, max(len(w), 1), chunk)]
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j][1]))
        codes: list[torch.Tensor | None] = [None] * len(pieces)
        budget = self.cfg.batch_seconds * self.sample_rate
        start = 0
        while start < len(order):
            longest = max(len(pieces[order[start]][1]), 1)
            n = max(1, int(budget // longest))
            batch = order[start : start + n]
            # pieces are zero-padded to whole frames (a multiple of the total stride 320) and to at
            # least ENCODEC_MIN_FRAMES: the encoder's convs then add no right-edge padding and
            # their left reflect padding never reaches past the end, so the encoder is causal and
            # the batch padding behind a piece cannot change its codes
            longest = max(-(-longest // ENCODEC_HOP), ENCODEC_MIN_FRAMES) * ENCODEC_HOP
            x = torch.zeros(len(batch), longest)
            for b, j in enumerate(batch):
                x[b, : len(pieces[j][1])] = torch.from_numpy(np.asarray(pieces[j][1], np.float32))
            c = self._codes(x)  # [B, K, T]
            for b, j in enumerate(batch):
                codes[j] = c[b, :, : math.ceil(len(pieces[j][1]) / ENCODEC_HOP)]
            start += n
        offsets = torch.arange(self.codebooks)[:, None] * ENCODEC_BINS  # [K, 1]
        out: list[list[np.ndarray]] = [[] for _ in waves]
        for (i, _), c in zip(pieces, codes, strict=True):
            out[i].append((c + offsets).T.reshape(-1).numpy().astype(np.uint16))  # time-major
        return [np.concatenate(parts) for parts in out]

    @torch.no_grad()
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Flat time-major tokens -> 24 kHz mono float32 waveform."""
        t = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        if t.ndim != 1 or t.numel() % self.codebooks:
            raise ValueError(
                f"need a 1-D multiple of {self.codebooks} tokens, got {tuple(t.shape)}"
            )
        codes = t.view(-1, self.codebooks) - torch.arange(self.codebooks) * ENCODEC_BINS  # [T, K]
        if codes.numel() and (codes.min() < 0 or codes.max() >= ENCODEC_BINS):
            raise ValueError("token ids do not match their codebook slot (time-major order?)")
        wav = self.model.decode([(codes.T[None].to(self.device), None)])  # [1, 1, T * 320]
        return wav[0, 0].float().cpu().numpy()

    @classmethod
    def _load(cls, cfg: AudioTokenizerConfig, dir: Path) -> EncodecTokenizer:
        return cls(cfg)


AUDIO_TOKENIZERS: dict[str, type[AudioTokenizer]] = {
    "units": UnitsTokenizer,
    "encodec": EncodecTokenizer,
    # "hubert": ssl_units.SSLUnitsTokenizer adds itself when imported (below)
}


def build_audio_tokenizer(cfg: AudioTokenizerConfig) -> AudioTokenizer:
    """A fresh tokenizer for ``cfg.codec`` (units still need ``fit``)."""
    return AUDIO_TOKENIZERS[cfg.codec](cfg)


# Last, and a plain import: ssl_units subclasses the classes above and registers "hubert" itself,
# so this module and ssl_units can be imported first in either order (no circular from-import).
import zipper_pl.data.ssl_units  # noqa: E402, F401
