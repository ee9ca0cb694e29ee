"""Training the unit vocoder: Vocos' losses and discriminators around ``UnitVocoder``.

Generator loss (as Vocos trains): 45 x mel L1 + (once ``vocoder.gan_from`` is reached) the
multi-period and multi-resolution discriminators' adversarial and feature-matching losses; plus
the duration predictor's loss for de-duplicated codecs; plus, where set, the L1 of the log-mels'
frame-to-frame changes (``delta_weight``) and of the codec's own unit features
(``feature_weight``). The discriminators step first on every
batch once they are on. Their optimizer is kept out of Lightning's list on purpose: Lightning
counts every listed optimizer's step as a global step, and ``max_steps`` here counts generator
steps; its state still travels in ``last.ckpt`` (``on_save_checkpoint``).

Data: fixed, non-overlapping crops of ``segment_frames`` token frames (and the samples under
them) of every speech-pool utterance, batched by ``StepBatchSampler``: a resumed run continues
with the very batches an uninterrupted one would see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as Fn
from torch.utils.data import DataLoader, Dataset
from vocos.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from vocos.loss import (
    DiscriminatorLoss,
    FeatureMatchingLoss,
    GeneratorLoss,
    MelSpecReconstructionLoss,
)
from vocos.modules import safe_log

from zipper_pl.config import Config, VocoderConfig
from zipper_pl.data.batches.sampling import train_loader
from zipper_pl.errors import UserError
from zipper_pl.models.vocoder import UnitVocoder, duration_loss, runs_of

AUDIO_SAMPLES = 3  # validation utterances whose audio TensorBoard gets at every validation


@dataclass
class Clip:
    """One utterance: frame-level units [T] and its audio [T * hop] (padded or cut to fit)."""

    id: str
    units: np.ndarray
    wave: np.ndarray


def clip_of(uid: str, units: np.ndarray, wave: np.ndarray, hop: int) -> Clip:
    """Pair ``units`` with exactly ``len(units) * hop`` samples of ``wave``: frame t covers
    samples around t * hop (the codecs' centred frames), as the ISTFT head's output does."""
    n = len(units) * hop
    wave = np.pad(wave, (0, max(0, n - len(wave))))[:n]
    return Clip(uid, units.astype(np.int64), wave.astype(np.float32))


class CropDataset(Dataset):
    """Every whole ``frames``-long window of every clip, with the unit runs of ``dur_clips``
    whole clips: the crop's own and, beyond one, clips spread evenly over the pool (fixed per
    crop, so a resumed run sees the same batches)."""

    def __init__(self, clips: list[Clip], frames: int, hop: int, dur_clips: int = 1) -> None:
        self.clips, self.frames, self.hop = clips, frames, hop
        self.items = [
            (c, lo)
            for c, clip in enumerate(clips)
            for lo in range(0, len(clip.units) - frames + 1, frames)
        ]
        self.runs = [runs_of(clip.units) for clip in clips]
        self.dur_offsets = [j * len(clips) // dur_clips for j in range(dur_clips)]  # 0: its own

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        c, lo = self.items[i]
        clip, n = self.clips[c], len(self.clips)
        runs = [self.runs[(c + offset) % n] for offset in self.dur_offsets]
        return {
            "units": torch.from_numpy(clip.units[lo : lo + self.frames]),
            "wave": torch.from_numpy(clip.wave[lo * self.hop : (lo + self.frames) * self.hop]),
            "runs": [(torch.from_numpy(u), torch.from_numpy(f)) for u, f in runs],
        }


def collate_crops(items: list[dict]) -> dict:
    """Stack the crops; right-pad the runs (padding has 0 frames: masked out of the loss)."""
    runs = [r for it in items for r in it["runs"]]
    longest = max(len(u) for u, _ in runs)
    run_units = torch.zeros(len(runs), longest, dtype=torch.long)
    run_frames = torch.zeros(len(runs), longest, dtype=torch.long)
    for b, (units, frames) in enumerate(runs):
        run_units[b, : len(units)] = units
        run_frames[b, : len(frames)] = frames
    return {
        "units": torch.stack([it["units"] for it in items]),  # [B, F]
        "wave": torch.stack([it["wave"] for it in items]),  # [B, F * hop]
        "run_units": run_units,  # [B * dur_clips, N]
        "run_frames": run_frames,  # [B * dur_clips, N]
    }


class VocoderData(L.LightningDataModule):
    """Training crops (resumable, rank-sharded) and whole validation utterances."""

    def __init__(self, train: CropDataset, valid: list[Clip], cfg: Config) -> None:
        super().__init__()
        self.train, self.valid, self.cfg = train, valid, cfg

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train, self.cfg, self.trainer, collate_fn=collate_crops)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.valid, batch_size=1, collate_fn=lambda clips: clips[0])


def _cosine(step: int, total: int) -> float:
    """Vocos' schedule: cosine from the peak to 0 at ``total`` steps, no warm-up."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


def mel_loss_at(n_fft_16k: int, sample_rate: int) -> MelSpecReconstructionLoss:
    """Vocos' log-mel L1 at one scale; FFT sizes are given at 16 kHz and scale with the rate.
    Short windows get fewer mel bands (n_fft / 8, at most 80) so that no band is empty."""
    n_fft = max(64, round(n_fft_16k * sample_rate / 16000))
    return MelSpecReconstructionLoss(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=min(80, n_fft // 8)
    )


class VocoderModule(L.LightningModule):
    def __init__(
        self,
        cfg: VocoderConfig,
        *,
        vocab_size: int,
        hop: int,
        sample_rate: int,
        durations: bool,
        unit_features: torch.nn.Module | None = None,
    ) -> None:
        """``unit_features``: the codec's differentiable feature transform (audio [B, S] ->
        [B, D, T]; ``AudioTokenizer.feature_module``), needed when ``cfg.feature_weight`` > 0."""
        super().__init__()
        self.cfg, self.sample_rate, self.with_durations = cfg, sample_rate, durations
        self.automatic_optimization = False
        self.net = UnitVocoder(cfg, vocab_size=vocab_size, hop=hop)
        self.gan = cfg.gan_from < cfg.max_steps
        if self.gan:
            self.mpd, self.mrd = MultiPeriodDiscriminator(), MultiResolutionDiscriminator()
        if not cfg.mel_scales or min(cfg.mel_scales) < 64:
            raise UserError(
                f"vocoder.mel_scales={cfg.mel_scales}: give FFT sizes of at least 64, e.g. [1024]"
            )
        if cfg.feature_weight and unit_features is None:
            raise UserError(
                f"vocoder.feature_weight={cfg.feature_weight} needs a codec whose unit features "
                "torch computes here (audio.codec=units): set vocoder.feature_weight=0"
            )
        self.unit_features = unit_features if cfg.feature_weight else None
        self.mel_losses = torch.nn.ModuleList(mel_loss_at(n, sample_rate) for n in cfg.mel_scales)
        self.gen_loss, self.disc_loss = GeneratorLoss(), DiscriminatorLoss()
        self.fm_loss = FeatureMatchingLoss()
        self._disc_opt: torch.optim.Optimizer | None = None
        self._disc_sched: torch.optim.lr_scheduler.LambdaLR | None = None
        self._disc_state: dict | None = None  # from a checkpoint, until the optimizer exists
        self._val: list[float] = []
        self._gold_logged: set[str] = set()

    def configure_optimizers(self):
        betas = (0.8, 0.9)  # Vocos' and HiFi-GAN's
        total = self.cfg.max_steps
        gen = torch.optim.AdamW(self.net.parameters(), lr=self.cfg.lr, betas=betas)
        sched = torch.optim.lr_scheduler.LambdaLR(gen, lambda s: _cosine(s, total))
        if self.gan:
            disc = [*self.mpd.parameters(), *self.mrd.parameters()]
            self._disc_opt = torch.optim.AdamW(disc, lr=self.cfg.lr, betas=betas)
            self._disc_sched = torch.optim.lr_scheduler.LambdaLR(
                self._disc_opt, lambda s: _cosine(s + self.cfg.gan_from, total)
            )
            if self._disc_state is not None:
                self._disc_opt.load_state_dict(self._disc_state["optimizer"])
                self._disc_sched.load_state_dict(self._disc_state["scheduler"])
        return {"optimizer": gen, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._disc_opt is not None:
            checkpoint["discriminator_optimizer"] = {
                "optimizer": self._disc_opt.state_dict(),
                "scheduler": self._disc_sched.state_dict(),
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._disc_state = checkpoint.get("discriminator_optimizer")

    def _adversarial(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """Generator's adversarial + feature-matching losses from both discriminators."""
        total = y.new_zeros(())
        for disc, weight in ((self.mpd, 1.0), (self.mrd, self.cfg.mrd_weight)):
            _, fake, fmap_real, fmap_fake = disc(y=y, y_hat=y_hat)
            total = total + weight * (self.gen_loss(fake)[0] + self.fm_loss(fmap_real, fmap_fake))
        return total

    def _discriminator_step(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        loss = y.new_zeros(())
        for disc, weight in ((self.mpd, 1.0), (self.mrd, self.cfg.mrd_weight)):
            real, fake, _, _ = disc(y=y, y_hat=y_hat.detach())
            loss = loss + weight * self.disc_loss(real, fake)[0]
        self._disc_opt.zero_grad()
        self.manual_backward(loss)
        self._disc_opt.step()
        self._disc_sched.step()
        return loss.detach()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        gen = self.optimizers()
        y = batch["wave"]  # [B, F * hop]
        y_hat = self.net(batch["units"])  # [B, F * hop]
        adversarial = self.gan and self.global_step >= self.cfg.gan_from
        if adversarial:
            self.log("train/disc", self._discriminator_step(y, y_hat), on_step=True)
        mel, delta = self.spectral_losses(y_hat, y)
        loss = self.cfg.mel_weight * mel + self.cfg.delta_weight * delta
        if adversarial:
            loss = loss + self._adversarial(y, y_hat)
        if self.unit_features is not None:
            feature = self.feature_loss(y_hat, y)
            loss = loss + self.cfg.feature_weight * feature
            self.log("train/feature", feature.detach(), on_step=True)
        if self.with_durations:
            dur = duration_loss(self.net, batch["run_units"], batch["run_frames"])
            loss = loss + dur
            self.log("train/duration", dur.detach(), on_step=True)
        gen.zero_grad()
        self.manual_backward(loss)
        gen.step()
        self.lr_schedulers().step()
        self.log("train/mel", mel.detach(), on_step=True, prog_bar=True)
        self.log("train/loss", loss.detach(), on_step=True)
        return loss.detach()

    def mel_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mel L1 averaged over ``vocoder.mel_scales``."""
        return self.spectral_losses(y_hat, y)[0]

    def spectral_losses(
        self, y_hat: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mel L1, L1 of the log-mels' frame-to-frame changes), each averaged over the scales:
        Vocos' ``MelSpecReconstructionLoss`` computed once per scale for both terms."""
        mel = delta = y.new_zeros(())
        for scale in self.mel_losses:
            fake, real = safe_log(scale.mel_spec(y_hat)), safe_log(scale.mel_spec(y))
            mel = mel + Fn.l1_loss(fake, real)
            if self.cfg.delta_weight:
                delta = delta + Fn.l1_loss(fake.diff(dim=-1), real.diff(dim=-1))
        return mel / len(self.mel_losses), delta / len(self.mel_losses)

    def feature_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L1 between the codec's unit features of ``y_hat`` and ``y`` [B, S], both normalised
        by the gold crop's mean and deviation per feature (the units normalise per utterance;
        the crop stands in for it). Its units are k-means cells of exactly these features, so a
        vocoder that gives them back gives its units back (docs/audio.md). In fp32 even under
        bf16 autocast: the deltas are differences of cepstra that bf16 rounds in steps of ~1.
        Each crop gets its own MFCC dB floor ([B, 1, S]: torchaudio floors a 3-D batch as one);
        a feature constant over a gold crop (digital silence) is left out, not divided by ~0."""
        with torch.autocast(y.device.type, enabled=False):
            real = self.unit_features(y.float()[:, None]).squeeze(1)  # [B, D, T]
            fake = self.unit_features(y_hat.float()[:, None]).squeeze(1)
            std = real.std(-1, keepdim=True, unbiased=False)
            varies = (std > 1e-3).float()  # [B, D, 1]
            error = (fake - real).abs() / (std + 1e-5) * varies
            return error.sum() / (varies.sum() * real.size(-1)).clamp(min=1.0)

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, clip: Clip, batch_idx: int) -> None:
        units = torch.as_tensor(clip.units, device=self.device)[None]
        y = torch.as_tensor(clip.wave, device=self.device)[None]
        y_hat = self.net(units)
        self._val.append(float(self.mel_loss(y_hat, y)))
        if batch_idx < AUDIO_SAMPLES and self.trainer.is_global_zero:
            tb = self.logger.experiment
            audio = y_hat[0].float().clamp(-1, 1).cpu()
            tb.add_audio(f"vocoder/{clip.id}", audio, self.global_step, self.sample_rate)
            if clip.id not in self._gold_logged:  # once: the reference to listen against
                tb.add_audio(f"gold/{clip.id}", y[0].cpu(), 0, self.sample_rate)
                self._gold_logged.add(clip.id)

    def on_validation_epoch_end(self) -> None:
        if self._val:
            self.log("val/loss", float(np.mean(self._val)), prog_bar=True)
