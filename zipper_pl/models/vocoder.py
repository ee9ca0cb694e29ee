"""The unit vocoder: speech tokens -> waveform, for codecs that have no decoder of their own.

Built from the parts of ``vocos`` (Siuzdak 2023), a maintained vocoder library: its ConvNeXt
backbone runs at the token rate and its ISTFT head turns every frame into ``hop`` samples, so
a 50/s unit sequence at 16 kHz needs no upsampling layers (HiFi-GAN's transposed convolutions
are the costly part of a unit HiFi-GAN on a CPU). Ours is only the glue: a unit embedding in
place of Vocos' mel input, and a duration predictor for de-duplicated units (fairseq's unit
HiFi-GAN ``dur_prediction``: two convolutions predicting log(1 + frames) per unit, MSE).

Shapes: units [B, T] (frame-level) -> audio [B, T * hop]; deduplicated units [B, N] ->
log-durations [B, N].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import Tensor, nn
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone

from zipper_pl.config.components import VocoderConfig
from zipper_pl.errors import UserError


class DurationPredictor(nn.Module):
    """fairseq's ``VariancePredictor`` (conv-ReLU-LayerNorm-dropout, then one linear), with its
    depth, kernel and dropout as settings, regressing log(1 + frames) or (``classes`` = K)
    classifying 1..K frames. On the demo's units (200 test utterances, the demo vocoder voicing
    the durations; ``docs/audio.md``) classifying with 4 layers of kernel 5 cut the judge WER from
    7.0 (fairseq's 2 x 3, MSE) to ~5.1 against 4.5 from the true durations: MSE on log durations
    under-predicts (91% of the true frames) and rounding loses the runs of one frame.

    ``context`` = C > 0 (with classes) also reads the durations of the C previous runs:
    teacher-forced in training, decoded run by run. Where the 20 ms frame grid cuts a sound
    into runs is not in the units, but a long run makes its neighbour short: C = 2 voiced 400
    held-out demo utterances at judge WERs 4.08-4.64 over three vocoder seeds against 4.40-4.80
    with C = 0 (docs/audio.md).
    """

    def __init__(self, vocab_size: int, hidden: int, kernel: int = 3, dropout: float = 0.5,
                 layers: int = 2, classes: int = 0, context: int = 0) -> None:  # fmt: skip
        super().__init__()
        if context and not classes:
            raise UserError(
                f"vocoder.dur_context={context} reads previous durations as classes: set "
                "vocoder.dur_classes (e.g. 6) or vocoder.dur_context=0"
            )
        self.classes, self.context = classes, context
        self.embed = nn.Embedding(vocab_size, hidden)
        self.convs = nn.ModuleList(
            [nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2) for _ in range(layers)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers)])
        self.dropout = nn.Dropout(dropout)
        # class 0 = no run (before the first); 1..K as predicted
        self.previous = nn.ModuleList([nn.Embedding(classes + 1, hidden) for _ in range(context)])
        self.out = nn.Linear(hidden, classes or 1)

    def unit_states(self, units: Tensor) -> Tensor:
        """units [B, N] -> states [B, N, H] (both directions: the convolutions are centred)."""
        x = self.embed(units)  # [B, N, H]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x.transpose(1, 2)).transpose(1, 2).relu()
            x = self.dropout(norm(x))
        return x

    def head(self, x: Tensor, previous: Tensor | None = None) -> Tensor:
        """states [..., H] (+ previous runs' classes [..., C], 0 = none) -> outputs [..., K|1]."""
        if self.context:
            for j, embed in enumerate(self.previous):
                x = x + embed(previous[..., j])
            x = x.relu()
        y = self.out(x)
        return y if self.classes else y.squeeze(-1)

    def forward(self, units: Tensor, frames: Tensor | None = None) -> Tensor:
        """units [B, N] -> log(1 + frames) [B, N], or logits of 1..K frames [B, N, K]; with
        ``context``, teacher-forced by the true ``frames`` [B, N]."""
        if self.context and frames is None:
            raise ValueError("a duration predictor with context is teacher-forced by the true "
                             "frames; decode with .frames(units)")  # fmt: skip
        return self.head(self.unit_states(units), self._previous(frames) if self.context else None)

    def _previous(self, frames: Tensor) -> Tensor:
        """[B, N] frames -> the classes of the C runs before each [B, N, C] (0 before the first)."""
        f = frames.clamp(max=self.classes)
        return torch.stack([Fn.pad(f, (j + 1, 0))[:, : f.size(1)] for j in range(self.context)], -1)

    def frames(self, units: Tensor) -> Tensor:
        """Frames per unit [B, N], at least 1: the most likely class (run by run, each reading
        the ones decoded before it, with ``context``), or the rounded regression (as fairseq)."""
        if self.context:
            return self._decode_runs(units)
        y = self(units)
        if self.classes:
            return y.argmax(-1) + 1
        return torch.clamp(torch.round(torch.exp(y) - 1), min=1).long()

    def _decode_runs(self, units: Tensor) -> Tensor:
        """Greedy, run by run: run i reads the classes decoded for runs i-1 .. i-C."""
        x = self.unit_states(units)  # [B, N, H]: computed once; only the head runs per run
        out = units.new_zeros(units.shape)
        none = torch.zeros_like(out[:, 0])  # class 0: no run before the first
        for i in range(units.size(1)):
            previous = [out[:, i - 1 - j] if i > j else none for j in range(self.context)]
            out[:, i] = self.head(x[:, i], torch.stack(previous, -1)).argmax(-1) + 1
        return out

    def loss(self, units: Tensor, frames: Tensor) -> Tensor:
        """Over real (frames > 0) runs of [B, N]: cross-entropy over 1..K, or MSE on log."""
        mask = frames > 0
        y = self(units, frames)[mask]
        if self.classes:
            return Fn.cross_entropy(y, frames[mask].clamp(max=self.classes) - 1)
        return Fn.mse_loss(y, torch.log1p(frames[mask].float()))


class UnitVocoder(nn.Module):
    """Unit embedding -> Vocos ConvNeXt backbone -> ISTFT head, plus a duration predictor."""

    def __init__(self, cfg: VocoderConfig, *, vocab_size: int, hop: int) -> None:
        super().__init__()
        self.vocab_size, self.hop = vocab_size, hop
        self.embed = nn.Embedding(vocab_size, cfg.dim)
        self.backbone = VocosBackbone(
            input_channels=cfg.dim,
            dim=cfg.dim,
            intermediate_dim=cfg.intermediate_dim,
            num_layers=cfg.n_layers,
        )
        self.head = ISTFTHead(cfg.dim, n_fft=cfg.n_fft_hops * hop, hop_length=hop, padding="same")
        self.duration = DurationPredictor(
            vocab_size,
            cfg.dur_hidden,
            cfg.dur_kernel,
            cfg.dur_dropout,
            cfg.dur_layers,
            cfg.dur_classes,
            cfg.dur_context,
        )

    def forward(self, units: Tensor) -> Tensor:
        """units [B, T] -> audio [B, T * hop]."""
        x = self.embed(units).transpose(1, 2)  # [B, C, T]: Vocos' input layout
        return self.head(self.backbone(x))  # backbone: [B, T, C]; head: [B, T * hop]

    def check_units(self, units: np.ndarray) -> np.ndarray:
        """A 1-D integer array of known ids, or a one-line error naming the fix."""
        units = np.asarray(units)
        if units.ndim != 1 or units.size == 0:
            raise UserError(
                f"the vocoder takes a non-empty 1-D array of speech tokens, got shape "
                f"{units.shape}: generate speech first (model.speak)"
            )
        if not np.issubdtype(units.dtype, np.integer):
            raise UserError(f"speech tokens must be integers, got {units.dtype}")
        if units.min() < 0 or units.max() >= self.vocab_size:
            raise UserError(
                f"speech tokens {int(units.min())}..{int(units.max())} lie outside this "
                f"vocoder's 0..{self.vocab_size - 1}: use the vocoder trained for this codec"
            )
        return units.astype(np.int64)

    @torch.no_grad()
    def durations(self, units: Tensor) -> Tensor:
        """Frames per deduplicated unit [N] (at least 1)."""
        return self.duration.frames(units[None])[0]

    @torch.no_grad()
    def synthesize(self, units: np.ndarray, *, expand: bool) -> np.ndarray:
        """One utterance's tokens -> float32 audio; ``expand``: the tokens are deduplicated and
        each is repeated by its predicted duration first."""
        device = self.embed.weight.device
        x = torch.as_tensor(self.check_units(units), device=device)
        if expand:
            x = torch.repeat_interleave(x, self.durations(x))
        audio = self(x[None])[0].float().clamp(-1.0, 1.0)
        return audio.cpu().numpy().astype(np.float32)


def duration_loss(model: UnitVocoder, units: Tensor, frames: Tensor) -> Tensor:
    """The duration predictor's loss over real (frames > 0) runs: [B, N]."""
    return model.duration.loss(units, frames)


def runs_of(frame_units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(units, frames per unit): the runs of a frame-level unit sequence."""
    if frame_units.size == 0:
        return frame_units.astype(np.int64), np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(frame_units[1:] != frame_units[:-1]) + 1]
    lengths = np.diff(np.r_[starts, frame_units.size])
    return frame_units[starts].astype(np.int64), lengths.astype(np.int64)
