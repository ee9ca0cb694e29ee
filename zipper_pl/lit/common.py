"""What every training LightningModule here shares: AdamW + warm-up/cosine, throughput and
gradient-norm logging, and a validation pass at step 0 (the "before" of every learning curve)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import lightning as L
import torch
from torch import nn

from zipper_pl.config import TrainConfig
from zipper_pl.errors import UserError
from zipper_pl.models.fusion import GATE_PARAM_NAMES


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to ``min_lr_ratio`` of it at max_steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def is_gate(name: str, p: nn.Parameter) -> bool:
    return p.dim() == 0 and name.rsplit(".", 1)[-1] in GATE_PARAM_NAMES


def adamw(named_params: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors and scalars (norms, biases, tanh gates) do not; tanh gates
    learn at ``gate_lr_mult`` x lr."""
    decay, no_decay, gates = [], [], []
    for name, p in named_params:
        if p.requires_grad:
            if is_gate(name, p):
                gates.append(p)
            else:
                (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if gates:
        groups.append({"params": gates, "weight_decay": 0.0, "lr": cfg.lr * cfg.gate_lr_mult})
    fused = use_fused_adamw(any(p.is_cuda for p in decay + no_decay + gates), cfg)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=fused or None,
        foreach=None if fused else True,
    )


def use_fused_adamw(on_cuda: bool, cfg: TrainConfig) -> bool:
    """Fused AdamW kernels exist for CUDA only, and Lightning's mixed-precision plugin (bf16-mixed
    is the GPU default) refuses gradient clipping with an optimizer that unscales internally, as
    fused ones do: clipped runs take the foreach (multi-tensor) path, which is as fast on CPU."""
    return on_cuda and cfg.grad_clip == 0


class NonFiniteTraining(UserError):
    """A NaN / inf loss or gradient: training stops before it spoils the weights further."""


class TrainModule(L.LightningModule):
    """Base for the LM and fine-tuning modules; subclasses define the steps."""

    train_cfg: TrainConfig

    def __init__(self, train_cfg: TrainConfig) -> None:
        super().__init__()
        self.train_cfg = train_cfg
        self._t_last: float | None = None
        self._tokens = 0
        self.initial_val: dict[str, float] = {}

    # -- optimisation ---------------------------------------------------------------------
    def trainable_named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        return self.named_parameters()

    def configure_optimizers(self):
        opt = adamw(self.trainable_named_parameters(), self.train_cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, self.train_cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        # fp16 loss scaling produces inf gradients on purpose (the scaler skips those steps)
        if grads and self.trainer.precision != "16-mixed":
            # every step: one non-finite gradient would make every weight NaN after this step
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
            if not torch.isfinite(norm):
                raise NonFiniteTraining(self._non_finite("gradient norm", norm))
            if self.global_step % self.train_cfg.log_every == 0:
                self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if self.global_step % self.train_cfg.log_every == 0:
            self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss.detach()):
            raise NonFiniteTraining(self._non_finite("loss", loss))

    def _non_finite(self, what: str, value: torch.Tensor) -> str:
        c = self.train_cfg
        return (
            f"training stopped at step {self.global_step}: the {what} is {float(value)}; "
            f"nothing was exported. Likely causes: train.lr={c.lr:g} too high (try a tenth), "
            f"or train.precision={c.precision} (try 32-true); re-run with a changed setting "
            "(a new stage folder)"
        )

    def log_throughput(self, n_tokens: int) -> None:
        """Tokens/s over all ranks, averaged over the training batches since the last log
        (validation time excluded: the clock restarts after each validation pass)."""
        now = time.perf_counter()
        if self._t_last is None:
            self._t_last, self._tokens = now, 0
            return
        self._tokens += n_tokens
        if self.global_step % self.train_cfg.log_every == 0:
            rate = self._tokens * self.trainer.world_size / max(now - self._t_last, 1e-9)
            self.log("train/tokens_per_s", rate, on_step=True)
            self._t_last, self._tokens = now, 0

    def on_validation_end(self) -> None:
        self._t_last = None

    # -- step-0 validation ------------------------------------------------------------------
    def on_train_start(self) -> None:
        t, c = self.trainer, self.train_cfg
        batch = getattr(t.datamodule, "batch_size", None)
        if batch and t.is_global_zero:
            # global batch = per-device batch x devices x nodes x accumulation
            global_batch = batch * t.world_size * c.accumulate
            print(
                f"[train] global batch {global_batch} = {batch} per device x {t.world_size} "
                f"processes x {c.accumulate} accumulation; peak lr {c.lr:g}"
            )
            self.logger_experiment_scalar("train/global_batch", global_batch, 0)
            self.logger_experiment_scalar("train/peak_lr", c.lr, 0)
        if self.global_step == 0 and not self.initial_val:
            self.initial_val = self.run_validation_pass()
            for k, v in self.initial_val.items():
                self.logger_experiment_scalar(f"{k}", v, 0)

    def run_validation_pass(self) -> dict[str, float]:
        """Validation metrics of the current weights, outside Lightning's loop (step 0)."""
        loader = self.trainer.datamodule.val_dataloader()
        was_training = self.training
        self.eval()
        totals: dict[str, float] = {}
        with torch.no_grad():
            for i, batch in enumerate(loader):
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                for k, v in self.validation_sums(batch).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                if i + 1 >= self.trainer.datamodule.valid_batches:
                    break
        self.train(was_training)
        # every rank saw its own shard of the validation subset: sum over ranks
        keys = sorted(totals)
        summed = self.all_gather(torch.tensor([totals[k] for k in keys], dtype=torch.float64))
        if summed.dim() == 2:
            summed = summed.sum(0)
        return self.reduce_validation_sums(dict(zip(keys, summed.tolist(), strict=True)))

    def validation_sums(self, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reduce_validation_sums(self, totals: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def logger_experiment_scalar(self, name: str, value: float, step: int) -> None:
        if self.trainer.is_global_zero and self.logger is not None:
            self.logger.experiment.add_scalar(name, value, step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["initial_val"] = dict(self.initial_val)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.initial_val = dict(checkpoint.get("initial_val", {}))
