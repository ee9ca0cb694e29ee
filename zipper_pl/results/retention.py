"""Text retention: text-only perplexity of the text tower before zipping and after fine-tuning
(and of the whole Zipper on text alone). With a frozen text tower the two are bit-identical.
Below the stage modules: ``evaluate`` reports it."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn

from zipper_pl.config import Config
from zipper_pl.data.prepare import text_lines
from zipper_pl.hub import is_hf_folder
from zipper_pl.models.choices import CHOICE
from zipper_pl.models.sequences import IGNORE, ModalitySpec, Segment
from zipper_pl.models.tower import Tower
from zipper_pl.runs.finetuned import Finetuned, load_tower
from zipper_pl.runs.layout import is_finished


@torch.no_grad()
def _nll(step: Callable, seqs: list[np.ndarray], batch_size: int) -> tuple[float, int]:
    """Summed next-token NLL and target count; ``step(seqs) -> (logits [B,T,V], targets [B,T])``.

    The same batches in the same order for every model: equal weights give bit-equal sums."""
    total, count = 0.0, 0
    for lo in range(0, len(seqs), batch_size):
        logits, targets = step(seqs[lo : lo + batch_size])
        nll = Fn.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        total += float(nll)
        count += int((targets != IGNORE).sum())
    return total, count


def _tower_step(tower: Tower, spec: ModalitySpec) -> Callable:
    """A tower run standalone on ``bos text eos`` (right-padded; causal, so pads cannot leak)."""

    def step(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.as_tensor(np.r_[spec.bos_id, s, spec.eos_id], dtype=torch.long) for s in seqs]
        ids = torch.full((len(rows), max(map(len, rows))), spec.pad_id, dtype=torch.long)
        targets = torch.full_like(ids, IGNORE)  # (B, T)
        for b, r in enumerate(rows):
            ids[b, : len(r)], targets[b, : len(r) - 1] = r, r[1:]
        return tower(ids), targets

    return step


def _model_step(ft: Finetuned) -> Callable:
    """The whole fine-tuned model on text alone (the Zipper: its input projection and fusion
    layers with no speech keys); the logits of the one stream that carries the text's targets."""

    def step(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [[Segment("text", torch.as_tensor(s, dtype=torch.long), loss=True)] for s in seqs]
        batch = ft.model.collate(samples)
        streams = [t for t in batch if CHOICE not in t]  # not the choice heads' targets
        (name,) = (t for t in streams if bool((batch[t]["targets"] != IGNORE).any()))
        return ft.model(batch, outputs={"text"})[name], batch[name]["targets"]

    return step


def text_retention(ft: Finetuned, cfg: Config) -> dict:
    """Text perplexity on held-out text: pretrained text tower (before) vs the fine-tuned model's
    text tower run standalone (after; the single decoder's extended tower, over its full
    vocabulary) and, for a model with fusion layers (gates), the whole model on text only."""
    after = ft.model.tower_for("text")
    lines = text_lines(cfg, "valid")[: cfg.eval.max_utterances or None]
    seqs = [s[: after.cfg.max_seq_len - 2] for s in ft.text_tok.encode(lines) if len(s)]
    spec, bs = ft.specs["text"], cfg.eval.batch_size
    nll_after, n = _nll(_tower_step(after, spec), seqs, bs)
    res: dict = {
        "folder": str(ft.folder),
        "sentences": len(seqs),
        "tokens": n,
        "ppl_after": math.exp(nll_after / n),
        "ppl_before": None,
        "identical": None,
        "frozen_text": "text" in ft.model.frozen,
    }
    before_dir = Path(ft.cfg.inputs.text) if ft.cfg.inputs.text else None
    if before_dir is not None and (is_finished(before_dir) or is_hf_folder(before_dir)):
        before = load_tower(before_dir).eval()
        nll_before, _ = _nll(_tower_step(before, spec), seqs, bs)
        res |= {"ppl_before": math.exp(nll_before / n), "identical": nll_before == nll_after}
        a, b = before.state_dict(), after.state_dict()
        res["weights_identical"] = a.keys() == b.keys() and all(
            a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
        )
    else:
        res["before_missing"] = f"pretrained text stage {before_dir} not found"
    if ft.model.gates():  # else the model on text alone is its tower alone: ppl_after
        res["ppl_zipped_text_only"] = math.exp(_nll(_model_step(ft), seqs, bs)[0] / n)
    return res
