"""The judge ASR: the paper's "eval ASR system" that transcribes speech tokens for TTS scoring.

It is deliberately independent of both systems under test: a small non-autoregressive,
bidirectional transformer encoder over speech tokens with a CTC head. It never shares weights,
vocabulary or training code with the towers, so it cannot favour either system.

Two output vocabularies (``judge.targets``):
- ``chars``: open vocabulary (LibriSpeech-style corpora). Without a language model a small judge
  makes spelling errors ("quens" for "queens"), each of which is a whole word error.
- ``words``: every word of the training transcripts is one CTC label (acoustic-to-word CTC);
  a word outside that list decodes as ``<unk>``, which always scores as an error. Right for a
  closed-vocabulary corpus such as the embedded demo world, where it removes spelling errors.

CTC needs at least as many frames as the target needs emissions (characters, plus one blank
between each pair of equal neighbours). De-duplicated units can be shorter than the transcript,
so every frame can be repeated ``upsample`` times before the encoder; training items that still
cannot be aligned are skipped and counted.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from zipper_pl.config.components import JudgeConfig
from zipper_pl.errors import UserError
from zipper_pl.metrics import error_rows, normalize_for_scoring, summarize_rows
from zipper_pl.models.judge_vocab import (
    BLANK,
    CHARS,
    Vocab,
    ctc_greedy_decode,
    ctc_min_frames,
)


class JudgeASR(nn.Module):
    """Bidirectional transformer encoder + CTC head over characters or words.

    ``vocab`` defaults to characters; a word judge needs its ``WordVocab`` (built from the
    training transcripts, saved beside the weights).
    """

    def __init__(self, cfg: JudgeConfig, vocab: Vocab | None = None) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise UserError(
                f"judge.d_model={cfg.d_model} is not divisible by judge.n_heads={cfg.n_heads}"
            )
        vocab = vocab if vocab is not None else CHARS
        if vocab.kind != cfg.targets:
            raise UserError(
                f"judge.targets={cfg.targets!r} but the vocabulary holds {vocab.kind}: "
                "build the vocabulary with build_vocab(cfg, texts)"
            )
        self.cfg = cfg
        self.vocab = vocab
        if cfg.upsample > 1 and cfg.downsample > 1:
            raise UserError("judge.upsample and judge.downsample cannot both exceed 1: pick one")
        if cfg.conv_kernel and cfg.conv_kernel % 2 == 0:
            raise UserError(f"judge.conv_kernel={cfg.conv_kernel} must be odd (or 0 for none)")
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)  # N(0, 1): same scale as positions
        # Local context before attention: a speech unit's meaning depends on its neighbours, and
        # this bias keeps a small judge from memorising whole utterances on little data.
        k = cfg.conv_kernel
        self.conv = nn.Conv1d(cfg.d_model, cfg.d_model, k, padding=k // 2) if k else None
        # Fixed sinusoidal positions: nothing to overfit, defined for every length up to max_len.
        self.register_buffer("pos", _sinusoids(cfg.max_len * cfg.upsample, cfg.d_model), False)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.n_heads,
            dim_feedforward=cfg.ff_mult * cfg.d_model,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(cfg.d_model, len(self.vocab))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return output_frames(self.cfg, lengths)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) long, lengths (B,) -> CTC log-probs (B, T', C) in float32.

        T' = T * upsample, or ceil(T / downsample).
        """
        n_in = tokens.shape[1]
        if n_in > self.cfg.max_len:
            raise UserError(
                f"speech sequence of {n_in} tokens exceeds judge.max_len={self.cfg.max_len}"
            )
        r, d = self.cfg.upsample, self.cfg.downsample
        valid = torch.arange(n_in, device=tokens.device)[None] < lengths[:, None]  # (B, T)
        x = self.embed(tokens) * valid[..., None]  # (B, T, D); zero padding cannot leak
        if self.conv is not None:
            x = x + Fn.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2))  # (B, T, D)
            x = x * valid[..., None]
        if d > 1:  # mean over the valid frames of each window of d
            n_out = -(-n_in // d)
            x = Fn.pad(x, (0, 0, 0, n_out * d - n_in)).view(x.shape[0], n_out, d, -1).sum(2)
            count = Fn.pad(valid, (0, n_out * d - n_in)).view(-1, n_out, d).sum(-1)  # (B, T/d)
            x = x / count.clamp(min=1)[..., None]  # (B, T/d, D)
        if r > 1:
            x = x.repeat_interleave(r, dim=1)  # (B, T*r, D)
        n_frames = x.shape[1]
        x = x + self.pos[None, :n_frames].to(x.dtype)
        frames = torch.arange(n_frames, device=tokens.device)  # (T',)
        pad = frames[None] >= self.output_lengths(lengths)[:, None]  # (B, T'), True = padding
        x = self.encoder(x, src_key_padding_mask=pad)  # (B, T', D)
        return Fn.log_softmax(self.head(x).float(), dim=-1)

    def loss(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Mean CTC loss (per target label); infeasible alignments contribute zero."""
        log_probs = self(tokens, lengths)  # (B, T', C)
        return Fn.ctc_loss(
            log_probs.transpose(0, 1),  # (T', B, C)
            targets,
            self.output_lengths(lengths),
            target_lengths,
            blank=BLANK,
            reduction="mean",
            zero_infinity=True,
        )

    @torch.no_grad()
    def transcribe(
        self,
        token_arrays: Sequence[Any],
        batch_size: int = 32,
        stats: dict[str, int] | None = None,
    ) -> list[str]:
        """Greedy transcripts for a list of 1-D speech token arrays, in input order.

        Sequences longer than ``max_len`` are cut to it (counted in ``stats["truncated"]`` and
        warned about): a runaway TTS generation should score badly, not stop the evaluation.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        seqs = [_as_token_tensor(a, self.cfg.vocab) for a in token_arrays]
        n_cut = sum(1 for s in seqs if len(s) > self.cfg.max_len)
        seqs = [s[: self.cfg.max_len] for s in seqs]
        if n_cut:
            warnings.warn(
                f"judge: {n_cut} sequences cut to judge.max_len={self.cfg.max_len}", stacklevel=2
            )
        if stats is not None:
            stats["truncated"] = stats.get("truncated", 0) + n_cut
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths per batch
        out: list[str] = [""] * len(seqs)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            tokens, lengths = pad_tokens([seqs[i] for i in idx])
            if tokens.shape[1] == 0:
                continue  # all empty: transcripts stay ""
            tokens, lengths = tokens.to(device), lengths.to(device)
            log_probs = self(tokens, lengths)
            texts = ctc_greedy_decode(log_probs, self.output_lengths(lengths), self.vocab)
            for i, text in zip(idx, texts, strict=True):
                out[i] = " ".join(text.split())
        self.train(was_training)
        return out


def output_frames(cfg: JudgeConfig, lengths: torch.Tensor) -> torch.Tensor:
    """CTC frames the encoder emits for inputs of ``lengths`` tokens."""
    return -(-lengths // cfg.downsample) * cfg.upsample


def _sinusoids(n: int, d: int) -> torch.Tensor:
    """Transformer sinusoidal position table (n, d)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]  # (n, 1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


def _as_token_tensor(arr: Any, vocab: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr), dtype=torch.long).reshape(-1)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise UserError(
            f"speech token ids must lie in [0, {vocab}), got [{int(t.min())}, {int(t.max())}]: "
            "set judge.vocab to the audio tokenizer's vocabulary size"
        )
    return t


def pad_tokens(seqs: Sequence[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D long tensors -> tokens (B, T_max), lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    tokens = torch.full((len(seqs), max((len(s) for s in seqs), default=0)), pad, dtype=torch.long)
    for b, s in enumerate(seqs):
        tokens[b, : len(s)] = s
    return tokens, lengths


# ---------------------------------------------------------------- training (plain loop)


@dataclass
class JudgeItem:
    tokens: torch.Tensor  # (T,) long
    target: list[int]  # label ids (characters or words)
    text: str  # normalised reference


def prepare_items(
    items: Sequence[tuple[Any, str]], cfg: JudgeConfig, vocab: Vocab = CHARS
) -> tuple[list[JudgeItem], Counter]:
    """Turn (token array, transcript) pairs into JudgeItems, skipping and counting bad ones.

    Skip counters: ``skip_empty_tokens``, ``skip_empty_text``, ``skip_too_long`` (> max_len
    frames) and ``skip_ctc_infeasible`` (fewer frames after upsampling than CTC needs);
    ``oov`` counts kept items with a character outside the alphabet (dropped) or a word
    outside the word list (trained as ``<unk>``).
    """
    kept, counts = [], Counter()
    for arr, text in items:
        tokens = _as_token_tensor(arr, cfg.vocab)
        target = vocab.encode(text)
        if tokens.numel() == 0:
            counts["skip_empty_tokens"] += 1
        elif not target:
            counts["skip_empty_text"] += 1
        elif len(tokens) > cfg.max_len:
            counts["skip_too_long"] += 1
        elif int(output_frames(cfg, torch.tensor(len(tokens)))) < ctc_min_frames(target):
            counts["skip_ctc_infeasible"] += 1
        else:
            counts["oov"] += bool(vocab.unknown(text))
            kept.append(JudgeItem(tokens, target, normalize_for_scoring(text)))
    return kept, counts


def collate_judge(batch: Sequence[JudgeItem]) -> dict[str, torch.Tensor]:
    tokens, lengths = pad_tokens([it.tokens for it in batch])
    targets = torch.tensor([c for it in batch for c in it.target], dtype=torch.long)  # concat
    target_lengths = torch.tensor([len(it.target) for it in batch], dtype=torch.long)
    return {
        "tokens": tokens,
        "lengths": lengths,
        "targets": targets,
        "target_lengths": target_lengths,
    }


def warmup_cosine(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup to ``peak`` then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate_judge(
    model: JudgeASR, items: Sequence[JudgeItem], batch_size: int = 32
) -> dict[str, float]:
    """Greedy-decode ``items`` and score against their references: CER and WER."""
    if not items:
        return {"cer": float("nan"), "wer": float("nan"), "n": 0}
    hyps = model.transcribe([it.tokens for it in items], batch_size=batch_size)
    refs = [it.text for it in items]
    cer = summarize_rows(error_rows(refs, hyps, unit="char"))["rate"]
    wer = summarize_rows(error_rows(refs, hyps, unit="word"))["rate"]
    return {"cer": float(cer), "wer": float(wer), "n": len(items)}


def train_judge(
    model: JudgeASR,
    train_items: Sequence[tuple[Any, str]],
    valid_items: Sequence[tuple[Any, str]],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    *,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    clip: float = 1.0,
    log_every: int = 50,
    batcher: Callable[[np.ndarray], Iterator[list[int]]] | None = None,
) -> dict[str, float]:
    """Train the judge with AdamW, warmup + cosine LR and gradient clipping; return metrics.

    Seeds torch's global RNG (dropout) and shuffles with its own generator, so a run is
    deterministic given ``seed``. ``log_fn(step, metrics)`` is called every ``log_every`` steps.
    ``batcher``: given the kept items' token lengths, the micro-batches to train on (e.g. by a
    token budget); None: ``batch_size`` items of a fresh permutation each time.
    """
    train, train_skips = prepare_items(train_items, model.cfg, model.vocab)
    valid, valid_skips = prepare_items(valid_items, model.cfg, model.vocab)
    if not train:
        raise UserError(f"no usable judge training items (skips: {dict(train_skips)})")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    warmup = warmup_steps if warmup_steps is not None else max(1, min(500, steps // 10))
    model.train()
    order: list[int] = []
    recent: list[float] = []
    given = batcher(np.array([len(it.tokens) for it in train])) if batcher else None
    for step in range(steps):
        if given is not None:
            idx = next(given)
        else:
            if len(order) < batch_size:
                order += torch.randperm(len(train), generator=gen).tolist()
            idx, order = order[:batch_size], order[batch_size:]
        batch = {k: v.to(device) for k, v in collate_judge([train[i] for i in idx]).items()}
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, steps, lr, warmup)
        loss = model.loss(**batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        recent = [*recent[-49:], float(loss.detach())]
        if log_fn is not None and (step + 1) % log_every == 0:
            lr_now = opt.param_groups[0]["lr"]
            log_fn(step + 1, {"loss": recent[-1], "lr": lr_now, "grad_norm": float(grad_norm)})
    metrics = {f"valid_{k}": v for k, v in evaluate_judge(model, valid, batch_size).items()}
    metrics |= {"train_loss": sum(recent) / max(1, len(recent)), "steps": steps}
    metrics |= {"n_train": len(train), **{f"train_{k}": v for k, v in train_skips.items()}}
    metrics |= {f"valid_{k}": v for k, v in valid_skips.items()}
    if log_fn is not None:
        log_fn(steps, metrics)
    return metrics
