"""Unimodal next-token pretraining of one tower (text or speech tokens)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zipper_pl.config import TrainConfig
from zipper_pl.lit.common import TrainModule
from zipper_pl.models.tower import Tower, TowerConfig


class LMModule(TrainModule):
    """Next-token loss on packed windows; validation loss and perplexity."""

    def __init__(self, tower_cfg: TowerConfig, train_cfg: TrainConfig) -> None:
        super().__init__(train_cfg)
        self.tower = Tower(tower_cfg)
        self._val_sums: dict[str, float] = {}

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tower(idx)

    def _loss_sum(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch  # [B,T] inputs, [B,T] next-token targets (-100 = ignore)
        logits = self.tower(x)  # [B,T,V]
        loss_sum = F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum"
        )
        return loss_sum, int((y != -100).sum())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss_sum, n = self._loss_sum(batch)
        loss = loss_sum / max(n, 1)
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        if self.global_step % self.train_cfg.log_every == 0:
            self.log("train/ppl", torch.exp(loss.detach()), on_step=True)
        self.log_throughput(batch[0].numel())
        return loss

    def validation_sums(self, batch) -> dict[str, torch.Tensor]:
        loss_sum, n = self._loss_sum(batch)
        return {"loss_sum": loss_sum.detach(), "tokens": torch.tensor(float(n))}

    def reduce_validation_sums(self, totals: dict[str, float]) -> dict[str, float]:
        loss = totals["loss_sum"] / max(totals["tokens"], 1.0)
        return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(self, batch, batch_idx: int) -> None:
        for k, v in self.validation_sums(batch).items():
            self._val_sums[k] = self._val_sums.get(k, 0.0) + v.to(self.device)

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        sums = {k: self.all_gather(v).sum() for k, v in self._val_sums.items()}
        metrics = self.reduce_validation_sums({k: float(v) for k, v in sums.items()})
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k == "val/ppl", rank_zero_only=True)
