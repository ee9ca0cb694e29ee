"""One place builds the Lightning Trainer, from the config's ``train.*`` keys, and runs its fit
(resume, SIGTERM and Ctrl-C as the stages need them)."""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from zipper_pl.config import Config
from zipper_pl.config.components import MIX, TASKS
from zipper_pl.errors import Terminated, UserError
from zipper_pl.io import disk_errors_name
from zipper_pl.runs.machine import use_threads
from zipper_pl.runs.provenance import cpu_bf16_flags

LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


# Noise that is expected here: frozen towers are in eval mode on purpose, the pytree deprecation
# is Lightning's own, and the cloud-logging advert is not a message about this run.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvert())
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# the vocoder steps its optimizers by hand: its step checkpoints hold the state after that step,
# which is what resuming at that step needs
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
# a stage folder holds its identity record before its first checkpoint (layout.claim_stage)
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def compile_forward(net: torch.nn.Module) -> int:
    """``torch.compile`` the repeated regions of ``net`` in place (``train.compile``; ``make
    bench BENCH_ARGS=--compile``): each module whose class sets ``compile_region`` (a tower's
    block, a gated cross-attention layer). Returns how many.

    Regions, not the whole forward (PyTorch's "regional compilation" recipe): one graph serves
    every layer, tower and later model of the same shapes in the process, so a study's cells
    after its first compile nothing (the demo's Zipper step: 53 s cold, then 0.8 s for a second
    model, against 153 s for its whole forward; docs/performance.md). Only passes that record
    gradients run compiled: validation and generation (no grad, KV caches whose length grows
    every token) stay eager. Modules, ``state_dict`` keys and checkpoints stay the eager
    model's; the numbers do not (fused kernels round differently: ``runs/identity.py``)."""
    if not (os.environ.get("CXX") or any(map(shutil.which, ("g++", "c++", "clang++")))):
        raise UserError(
            "train.compile=true needs a C++ compiler for torch.compile: install g++ (Debian: apt "
            'install g++) or set train.compile=false (make: ARGS="train.compile=false")'
        )
    regions = [m for m in net.modules() if getattr(type(m), "compile_region", False)]
    for module in regions:
        module.forward = _compiled_when_training(module.forward)
    return len(regions)


def _compiled_when_training(eager):
    compiled = torch.compile(eager, dynamic=True)  # batches vary in length: one graph for all

    def forward(*args, **kwargs):
        return (compiled if torch.is_grad_enabled() else eager)(*args, **kwargs)

    return forward


def resolve_devices(devices: str) -> int | str | list[int]:
    d = devices.strip()
    if d == "auto":
        return "auto"
    if "," in d:
        return [int(x) for x in d.split(",") if x]
    if d.lstrip("-").isdigit():
        return int(d)
    raise UserError(f"train.devices={devices!r}: use a count, 'auto' or a list like '0,1'")


def resolve_precision(cfg: Config) -> str:
    """bf16-mixed on GPUs and on CPUs with bf16 matrix kernels (``provenance.BF16_FLAGS``: the
    demo's stages ran 1.2-1.5x faster there, its table within the seed spread: docs/results.md);
    full fp32 on other CPUs, where autocast to bf16 only adds casts."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    gpu = cfg.train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu or cpu_bf16_flags() else "32-true"


# train.select_on -> the logged validation metric best.ckpt minimises
SELECT_METRICS = {"loss": "val/loss", "wer": "val/wer"}


def selection_metric(cfg: Config) -> tuple[str, str]:
    """(metric best.ckpt minimises, why it is not the one ``train.select_on`` asked for, or "").

    A TTS-only stage logs no WER (no ASR pairs to transcribe). It falls back to the validation
    loss rather than stopping, because one train section serves both tasks: evaluate.yaml trains
    the ASR and TTS stages with it (tests/test_config.py holds it equal to zip_asr.yaml and
    zip_tts.yaml's), and ``make ablation`` runs its TTS cells from ablation.yaml. The paper selects
    on ASR validation WER a model trained on an ASR+TTS mixture (data.task=mix logs WER)."""
    tasks = MIX if cfg.data.task == "mix" else (cfg.data.task,)
    if cfg.train.select_on == "wer" and not any(TASKS[t].writes_text for t in tasks):
        why = f"data.task={cfg.data.task} logs no validation WER: selecting on the validation loss"
        return "val/loss", why
    return SELECT_METRICS[cfg.train.select_on], ""


class CheckpointOnSigterm(Callback):
    """``last.ckpt`` at the step a SIGTERM stopped training (a scheduler's preemption or time
    limit, ``timeout``), so the resumed stage repeats nothing (tested: it ends as an
    uninterrupted one). Lightning checks the signal after each batch, after that step's
    validation, so the state is one an uninterrupted run passed through, except where the
    previous ``last.ckpt`` is kept instead: inside an accumulation window (the gradients of its
    first batches are not in a checkpoint), in the middle of a validation (resuming would skip
    the rest of it and lose its score), and with several processes (the signal reaches ranks at
    different batches; a save, which ends in a barrier, could hang them). Lightning's save is
    atomic."""

    def __init__(self, out: Path) -> None:
        self.path = out / LAST_CKPT
        self.saved_at: int | None = None
        self.kept_because = ""  # why the previous last.ckpt was kept
        self._step, self._stepped = 0, False  # the optimizer step count; did the last batch step

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._step = trainer.global_step  # a resumed run starts where its checkpoint was

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self._stepped, self._step = trainer.global_step != self._step, trainer.global_step

    def on_exception(
        self, trainer: L.Trainer, module: L.LightningModule, error: BaseException
    ) -> None:
        if isinstance(error, SIGTERMException):
            self.save(trainer, finished=False)

    def save(self, trainer: L.Trainer, *, finished: bool) -> None:
        """Save, unless it is not a step boundary (``finished``: fit ran to its last step)."""
        if trainer.world_size > 1:
            self.kept_because = f"{trainer.world_size} processes"
        elif not finished and not trainer.training:
            self.kept_because = "during a validation"
        elif not finished and not self._stepped:
            self.kept_because = "inside an accumulation window (train.accumulate)"
        else:
            trainer.save_checkpoint(self.path)
            self.saved_at = trainer.global_step

    def stopped(self, step: int) -> str:
        """What a SIGTERM at ``step`` left behind, for the one-line message."""
        if self.saved_at is not None:
            return f"stopped by SIGTERM at step {step}: last.ckpt saved there"
        kept = "last.ckpt is the previous one" if self.path.is_file() else "there is no last.ckpt"
        return f"stopped by SIGTERM at step {step} ({self.kept_because}): {kept}"


def sigterm_checkpoint(trainer: L.Trainer) -> CheckpointOnSigterm:
    """The trainer's ``CheckpointOnSigterm`` (every ``make_trainer`` trainer has one)."""
    found = [c for c in trainer.callbacks if isinstance(c, CheckpointOnSigterm)]
    if not found:
        raise RuntimeError("a trainer not built by make_trainer: it has no CheckpointOnSigterm")
    return found[0]


def make_trainer(
    cfg: Config,
    out: Path,
    *,
    progress: bool = True,
    select_best: bool = False,
    unused_parameters: bool = False,
) -> L.Trainer:
    """Trainer writing TensorBoard events and ``last.ckpt`` into the stage folder ``out``;
    with ``select_best`` also ``best.ckpt``, the weights of the lowest validation loss or WER
    (``train.select_on``, see ``selection_metric``). ``unused_parameters``: the module has
    parameters some steps leave out of the loss (a zipped model's past its input tower's last
    fusion layer, the vocoder's discriminators before ``vocoder.gan_from``), so DDP must search
    for them at every step, a walk of the autograd graph that the towers' pretraining, which
    uses every parameter, is spared."""
    t = use_threads(cfg).train
    checkpoint = ModelCheckpoint(
        dirpath=out,
        filename="step{step}",
        save_top_k=0,
        save_last=True,
        every_n_train_steps=t.ckpt_every,
        save_on_train_epoch_end=False,
    )
    precision = resolve_precision(cfg)
    if t.precision == "auto":  # nothing silent: the machine decided
        print(f"[train] precision {precision} (train.precision=auto on this machine)")
    return L.Trainer(
        accelerator=t.accelerator,
        devices=resolve_devices(t.devices),
        num_nodes=t.num_nodes,
        strategy=_strategy(cfg, unused_parameters),
        precision=precision,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.grad_clip or None,
        val_check_interval=t.val_every * t.accumulate,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.data.valid_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        logger=TensorBoardLogger(save_dir=str(out), name="tb", version="", default_hp_metric=False),
        callbacks=[
            checkpoint,
            CheckpointOnSigterm(out),
            *_best_checkpoint(out, select_best, selection_metric(cfg)[0], t.patience),
        ],
        # our StepBatchSampler shards by rank itself, exactly and resumably
        use_distributed_sampler=False,
        enable_model_summary=False,
        enable_progress_bar=progress and t.progress_bar,
        default_root_dir=str(out),
    )


def _strategy(cfg: Config, unused_parameters: bool) -> str | DDPStrategy:
    """``train.strategy`` for the Trainer; with ``unused_parameters``, DDP searching for them,
    "auto" included where Lightning's auto picks DDP (several nodes or devices): without the
    search DDP stops at the first step of a model with parameters that do not reach the loss."""
    t = cfg.train
    several = t.num_nodes > 1 or _device_count(cfg) > 1
    ddp = t.strategy in ("ddp", "ddp_spawn") or (t.strategy == "auto" and several)
    if not ddp or (t.strategy == "auto" and not unused_parameters):
        return t.strategy
    return DDPStrategy(
        start_method="spawn" if t.strategy == "ddp_spawn" else "popen",
        find_unused_parameters=unused_parameters,
        process_group_backend="gloo" if t.accelerator == "cpu" else None,  # None: NCCL on GPUs
    )


def _device_count(cfg: Config) -> int:
    """Devices per node ``train.devices`` gives, as Lightning counts them."""
    devices = resolve_devices(cfg.train.devices)
    if isinstance(devices, list):
        return len(devices)
    if devices in ("auto", -1):  # every GPU; one device for the CPU accelerator
        gpu = cfg.train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return torch.cuda.device_count() if gpu else 1
    return int(devices)


def _best_checkpoint(out: Path, enabled: bool, monitor: str, patience: int) -> list:
    """best.ckpt, and with ``patience`` a stop once that many validations brought no new best
    (both callbacks' states are in last.ckpt as of the latest validation, so a resumed stage
    selects and stops where an uninterrupted one would)."""
    if not enabled:
        return []
    best = ModelCheckpoint(
        dirpath=out,
        filename=Path(BEST_CKPT).stem,
        monitor=monitor,
        mode="min",
        save_top_k=1,
        # last.ckpt again after each validation: the step checkpoint is written before that
        # step's validation, and Lightning resumes from it past the validation, so a run killed
        # between the two would forget that score (best weights and patience alike)
        save_last=True,
        enable_version_counter=False,
    )
    if not patience:
        return [best]
    return [
        best,
        EarlyStopping(monitor, patience=patience, mode="min", check_on_train_epoch_end=False),
    ]


def fit_unless_terminated(trainer: L.Trainer, module, dm, ckpt: Path) -> None:
    """``trainer.fit`` (from ``ckpt`` where it exists); a disk error naming no file names the
    stage folder. A SIGTERM raises ``Terminated`` saying what ``last.ckpt`` holds: Lightning ends
    fit on it with ``SIGTERMException``, a ``SystemExit`` without a code, which the process (and
    make, going on) would read as success. Ctrl-C raises ``KeyboardInterrupt``: Lightning turns
    it into ``sys.exit(1)``."""
    on_sigterm = sigterm_checkpoint(trainer)
    try:
        with disk_errors_name(ckpt.parent):  # every write of a fit is under the stage folder
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt.is_file() else None)
    except SIGTERMException as e:
        raise Terminated(on_sigterm.stopped(trainer.global_step)) from e
    except SystemExit as e:
        if trainer.interrupted:  # Lightning's answer to Ctrl-C
            raise KeyboardInterrupt from e
        raise
    if trainer.received_sigterm:  # after the last step Lightning finishes without raising
        on_sigterm.save(trainer, finished=True)
        raise Terminated(on_sigterm.stopped(trainer.global_step))


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The scalar metrics Lightning holds at the end of fit."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def set_aside_if_unreadable(ckpt: Path) -> None:
    """A truncated ``last.ckpt`` (its zip central directory lost) is renamed aside with a
    warning, so that the stage starts again from step 0 instead of failing to resume."""
    if ckpt.is_file() and not zipfile.is_zipfile(ckpt):
        aside = ckpt.with_name(f"{ckpt.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        ckpt.replace(aside)
        print(f"[resume] warning: {ckpt} is unreadable (truncated?): kept as {aside.name}; "
              "this stage starts again from step 0")  # fmt: skip
