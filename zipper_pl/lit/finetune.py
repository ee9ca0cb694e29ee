"""Fine-tuning on aligned pairs, for every architecture alike (the fine-tuned-model interface of
``models/generation.py``: the Zipper, the single-decoder baseline, ...).

The model produces per-stream logits with next-token targets (-100 = no loss); this module turns
them into the training loss (token mean, ``sequences.stream_losses``), per-stream and per-task
losses, validation WER on a small fixed subset (torchmetrics, so it is synchronised across DDP
ranks) and the gate values the model reports (the Zipper's tanh gates of every zipped layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchmetrics.text import CharErrorRate, WordErrorRate

from zipper_pl.config import Config
from zipper_pl.data.batches.aligned import TASKS, tasks_of
from zipper_pl.lit.common import TrainModule
from zipper_pl.models.choices import CHOICE
from zipper_pl.models.generation import FinetunedModel
from zipper_pl.models.sequences import IGNORE, Segment, stream_losses

TTS_SAMPLES = 2  # validation texts spoken into TensorBoard at every validation


class FinetuneModule(TrainModule):
    def __init__(
        self,
        model: FinetunedModel,
        cfg: Config,
        decode_text: Callable[[list[int]], str],
        wer_batches: int = 2,
        voice: Callable[[np.ndarray], np.ndarray] | None = None,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__(cfg.train)
        self.model = model
        self.cfg = cfg
        self.decode_text = decode_text
        self.wer_batches = wer_batches
        self.val_wer = WordErrorRate()
        self.val_cer = CharErrorRate()
        self._val: dict[str, torch.Tensor] = {}
        self._examples: list[str] = []
        self.voice, self.sample_rate = voice, sample_rate  # TTS samples in TensorBoard

    def trainable_named_parameters(self):
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    # ---- loss -----------------------------------------------------------------------------
    def _losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """Token-mean loss, plus summed losses/counts per stream and per task (for logging).

        The tasks name the output modalities, so a model can skip the softmax of the others.
        """
        tasks = batch["tasks"]
        logits = self.model(
            batch["model"], outputs={m for t in set(tasks) for m in TASKS[t].outputs}
        )
        total, count = 0.0, 0
        sums: dict[str, torch.Tensor] = {}
        for name, (per_sample, n_sample) in stream_losses(logits, batch["model"]).items():
            total = total + per_sample.sum()
            count = count + n_sample.sum()
            if n_sample.sum() > 0:
                sums[f"loss_{name}"] = torch.stack([per_sample.sum(), n_sample.sum().float()])
            if CHOICE in name:  # trained on, logged as loss_<tower>.next, kept out of val/loss
                continue
            for task in set(tasks):
                sel = torch.tensor([t == task for t in tasks], device=per_sample.device)
                key = f"loss_{task}"
                part = torch.stack([per_sample[sel].sum(), n_sample[sel].sum().float()])
                sums[key] = sums.get(key, 0) + part
        loss = total / torch.clamp(torch.as_tensor(count, device=self.device), min=1)
        streams = {t: (logits[t], batch["model"][t]["targets"]) for t in logits if CHOICE not in t}
        return loss, sums, streams

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, sums, _ = self._losses(batch)
        bs = len(batch["tasks"])
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=bs)
        if self.global_step % self.train_cfg.log_every == 0:
            for k, (s, n) in sums.items():
                if n > 0:
                    self.log(f"train/{k}", s / n, on_step=True, batch_size=bs)
            self.log_gates()
        streams = batch["model"].values()  # choice targets (CHOICE) are no tokens: no "valid"
        self.log_throughput(sum(int(v["valid"].sum()) for v in streams if "valid" in v))
        return loss

    def log_gates(self) -> None:
        for name, value in self.model.gates().items():
            self.log(f"gates/{name}", value, on_step=True)

    # ---- validation -------------------------------------------------------------------------
    def validation_sums(self, batch: dict) -> dict[str, torch.Tensor]:
        _, sums, streams = self._losses(batch)
        out = {}
        for k, v in sums.items():
            out[f"{k}_sum"], out[f"{k}_n"] = v[0].detach(), v[1].detach()
        # teacher-forced next-token accuracy on the output segments
        hit = n = 0
        for logits, targets in streams.values():
            mask = targets != IGNORE
            hit = hit + ((logits.argmax(-1) == targets) & mask).sum()
            n = n + mask.sum()
        out["acc_hit"], out["acc_n"] = torch.as_tensor(hit).float(), torch.as_tensor(n).float()
        return out

    def reduce_validation_sums(self, totals: dict[str, float]) -> dict[str, float]:
        res: dict[str, float] = {}
        for key in totals:
            if key.endswith("_sum"):
                base = key[: -len("_sum")]
                n = totals.get(f"{base}_n", 0.0)
                if n > 0:
                    res[f"val/{base}"] = totals[key] / n
        tasks_n = sum(totals.get(f"loss_{t}_n", 0.0) for t in TASKS)
        tasks_s = sum(totals.get(f"loss_{t}_sum", 0.0) for t in TASKS)
        if tasks_n:
            res["val/loss"] = tasks_s / tasks_n
            res["val/ppl"] = math.exp(min(res["val/loss"], 50.0))
        if totals.get("acc_n"):
            res["val/token_acc"] = totals["acc_hit"] / totals["acc_n"]
        return res

    def on_validation_epoch_start(self) -> None:
        self._val = {}
        self._examples = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        for k, v in self.validation_sums(batch).items():
            self._val[k] = self._val.get(k, 0) + v.to(self.device)
        for task in sorted(set(batch["tasks"])) if batch_idx < self.wer_batches else []:
            items = [i for i, t in enumerate(batch["tasks"]) if t == task]
            if TASKS[task].writes_text:
                inputs = [batch["segments"][i][: len(TASKS[task].inputs)] for i in items]
                hyps = self.transcribe(inputs, task)
                refs = [batch["texts"][i] for i in items]
                self.val_wer.update(hyps, refs)
                self.val_cer.update(hyps, refs)
                if batch_idx == 0:
                    pairs = zip(refs, hyps, strict=True)
                    self._examples += [f"REF: {r}  \nHYP: {h}" for r, h in pairs][:4]
            if TASKS[task].speaks and batch_idx == 0 and self.voice is not None:
                self._tts_samples(batch, task, items[:TTS_SAMPLES])

    def on_validation_epoch_end(self) -> None:
        keys = sorted(self._val)
        if keys:
            gathered = self.all_gather(torch.stack([self._val[k].float() for k in keys]))
            if gathered.dim() == 2:
                gathered = gathered.sum(0)
            metrics = self.reduce_validation_sums(dict(zip(keys, gathered.tolist(), strict=True)))
            for k, v in metrics.items():
                self.log(k, v, prog_bar=k == "val/loss", rank_zero_only=True)
        # decided by the task, the same on every rank: compute() gathers over ranks, and a
        # best.ckpt monitoring val/wer (train.select_on=wer) needs it on each. With data.task=mix
        # on an even number of ranks, a rank's validation shard can hold no ASR pair at all.
        if any(TASKS[t].writes_text for t in tasks_of(self.cfg.data.task)) and self.wer_batches:
            self.log("val/wer", self.val_wer.compute(), prog_bar=True)
            self.log("val/cer", self.val_cer.compute())
            self.val_wer.reset()
            self.val_cer.reset()
        if self._examples and self.trainer.is_global_zero and self.logger is not None:
            self.logger.experiment.add_text(
                "val/asr_examples", "\n\n".join(self._examples), self.global_step
            )

    @torch.no_grad()
    def _tts_samples(self, batch: dict, task: str, items: list[int]) -> None:
        """A few validation texts spoken greedily and voiced: TensorBoard's Audio tab."""
        if not self.trainer.is_global_zero or self.logger is None:
            return
        t = TASKS[task]
        words = max(len(batch["texts"][i].split()) for i in items)
        budget = math.ceil(self.cfg.eval.max_new_speech_per_word * max(1, words))
        inputs = [batch["segments"][i][: len(t.inputs)] for i in items]
        outs = self.model.generate(inputs, list(t.outputs), max_new_tokens=t.budgets(budget))
        tb = self.logger.experiment
        for k, (i, out) in enumerate(zip(items, outs, strict=True)):
            wave = self.voice(out[-1].tokens.cpu().numpy())
            if len(wave):
                tb.add_audio(f"val/tts_{k}", wave, self.global_step, self.sample_rate)
            tb.add_text(f"val/tts_{k}", batch["texts"][i], self.global_step)

    # ---- inference helpers -------------------------------------------------------------------
    @torch.no_grad()
    def transcribe(self, inputs: list[list[Segment]], task: str = "asr") -> list[str]:
        """Greedy transcripts (the last output of ``task``) -> normalised-free decoded strings."""
        t = TASKS[task]
        budgets = t.budgets(self.cfg.eval.max_new_text)
        outs = self.model.generate(inputs, list(t.outputs), max_new_tokens=budgets)
        return [self.decode_text(o[-1].tokens.tolist()) for o in outs]


__all__ = ["FinetuneModule"]
