"""A training-free inversion of ``units`` speech tokens to a waveform: the vocoder's floor.

``units`` tokens (``UnitsTokenizer``) are k-means centroids of per-utterance-normalised MFCC or
log-mel frames, so they "cannot be turned back into audio" exactly. A trained units vocoder must
still be judged against something: the issue asks it to beat this inversion on audio WER. Here each
frame's centroid is mapped back through the tokenizer's own feature chain (de-normalise with typical
per-utterance statistics, undo the DCT / log, pseudo-invert the mel filterbank) to a magnitude
spectrogram, and Griffin-Lim supplies a phase. Nothing is trained: ``feature_stats`` only averages
the static features' per-utterance mean and std over some waves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.transforms as T

from zipper_pl.data.tokenizers.audio_tokenizers import UnitsTokenizer
from zipper_pl.errors import UserError

PEAK = 0.9  # the output's peak amplitude


@dataclass
class FeatureStats:
    """Typical per-utterance statistics of the un-normalised static features."""

    mean: np.ndarray  # [C] per static coefficient, averaged over utterances' means
    std: np.ndarray  # [C] averaged per-utterance std (population std, as the tokenizer's)


def _mel(tok: UnitsTokenizer) -> T.MelSpectrogram:
    """The tokenizer's own mel-spectrogram transform (inside its MFCC for ``mfcc``)."""
    return tok._feat.MelSpectrogram if isinstance(tok._feat, T.MFCC) else tok._feat


def _static(tok: UnitsTokenizer, wave: np.ndarray) -> torch.Tensor:
    """[C, T] un-normalised static features: the first rows of ``UnitsTokenizer.raw_features``."""
    mfcc = isinstance(tok._feat, T.MFCC)
    return tok.raw_features(wave)[: tok._feat.n_mfcc if mfcc else tok._feat.n_mels]


@torch.no_grad()
def feature_stats(tok: UnitsTokenizer, waves: list[np.ndarray]) -> FeatureStats:
    """The un-normalised static features' typical per-utterance mean and std over some waves
    (e.g. 50 of the speech pool): statistics, not training."""
    if not waves:
        raise UserError("units inversion needs at least one wave to take feature statistics from")
    feats = [_static(tok, w) for w in waves]
    mean = torch.stack([f.mean(dim=1) for f in feats]).mean(dim=0)
    std = torch.stack([f.std(dim=1, unbiased=False) for f in feats]).mean(dim=0)
    return FeatureStats(mean=mean.numpy().astype(np.float32), std=std.numpy().astype(np.float32))


def _check_units(tok: UnitsTokenizer, frame_units: np.ndarray) -> np.ndarray:
    if tok.centroids is None:
        raise UserError("the units tokenizer is not fitted: run its fit step (or load it)")
    units = np.asarray(frame_units)
    if units.ndim != 1 or units.size == 0:
        raise UserError(
            f"units inversion needs a non-empty 1-D array of unit ids, not shape {units.shape}"
        )
    if not np.issubdtype(units.dtype, np.integer):
        raise UserError(f"units inversion needs integer unit ids, got dtype {units.dtype}")
    bad = units[(units < 0) | (units >= tok.cfg.units_k)]
    if bad.size:
        raise UserError(
            f"unit id {int(bad[0])} is outside 0..{tok.cfg.units_k - 1} (audio.units_k="
            f"{tok.cfg.units_k}): these tokens come from another units model"
        )
    return units.astype(np.int64)


@torch.no_grad()
def griffin_lim_units(
    tok: UnitsTokenizer, frame_units: np.ndarray, stats: FeatureStats, *, n_iter: int = 32
) -> np.ndarray:
    """float32 waveform at 16 kHz, length ``len(frame_units) * 320``, from FRAME-level units.

    One unit per 20 ms frame: for a ``units_dedup`` codec the caller expands deduplicated units
    by their durations first. Centroid static part -> de-normalise with ``stats`` -> (mfcc:
    pseudo-inverse DCT -> dB -> mel power; logmel: exp) -> linear power spectrum through the
    pseudo-inverse of the tokenizer's mel filterbank (clamped >= 0) -> magnitude -> Griffin-Lim
    (zero initial phase: deterministic) -> peak-normalised to 0.9.
    """
    units = _check_units(tok, frame_units)
    mel = _mel(tok)
    fb = mel.mel_scale.fb.to(torch.float64)  # [n_freqs, n_mels]
    n_static = fb.shape[1] if tok.cfg.units_features == "logmel" else tok._feat.n_mfcc
    mean = torch.as_tensor(np.asarray(stats.mean), dtype=torch.float64)
    std = torch.as_tensor(np.asarray(stats.std), dtype=torch.float64)
    if mean.shape != (n_static,) or std.shape != (n_static,):
        raise UserError(
            f"feature statistics have {tuple(mean.shape)} / {tuple(std.shape)} entries but this "
            f"units model has {n_static} static features: take them with feature_stats(tok, ...)"
        )
    z = tok.centroids.to(torch.float64)[torch.from_numpy(units), :n_static]  # [T, C]
    x = z * (std + 1e-5) + mean  # undo the per-utterance normalisation (its +1e-5 included)
    if isinstance(tok._feat, T.MFCC):
        mel_db = x @ torch.linalg.pinv(tok._feat.dct_mat.to(torch.float64))  # [T, n_mels]
        adb = tok._feat.amplitude_to_DB
        mel_power = torch.pow(10.0, mel_db / adb.multiplier)  # dB of power: 10 * log10(x)
    else:
        mel_power = torch.exp(x).sub(1e-6).clamp_min(0.0)  # logmel is log(x + 1e-6)
    power = (mel_power @ torch.linalg.pinv(fb)).clamp_min(0.0)  # [T, n_freqs]
    # one more frame (the last repeated): a wave of len * hop samples has len + 1 centred frames
    mag = torch.cat([power, power[-1:]]).sqrt().T.contiguous().to(torch.float32)
    spec = mel.spectrogram
    gl = T.GriffinLim(
        n_fft=spec.n_fft,
        n_iter=n_iter,
        win_length=spec.win_length,
        hop_length=spec.hop_length,
        power=1.0,
        length=len(units) * spec.hop_length,
        rand_init=False,
    )
    wave = np.nan_to_num(gl(mag).numpy().astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.abs(wave).max())
    return wave * np.float32(PEAK / peak) if peak > 0 else wave
