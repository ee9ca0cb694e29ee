"""Batched generation for ZipperModel: cached (incremental) and uncached (reference) runners.

The caller names the output modalities (PAPER.md 3.2); both runners share one sampling loop, so
they consume the same random numbers and must produce the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zipper_pl.errors import UserError
from zipper_pl.models.sequences import (
    PAD_POS,
    Segment,
    collate_segments,
    collate_streams,
    cross_mask,
    wrap,
)


def _to(batch: dict, device: torch.device) -> dict:
    return {t: {k: v.to(device) for k, v in d.items()} for t, d in batch.items()}


class CachedRunner:
    """Incremental state: per-tower KV caches and per-direction, per-zipped-layer projected
    cross-attention keys/values, all indexed by the source tower's cache slot. Slots of
    finished samples hold padding (invalid keys); RoPE and original positions skip them."""

    def __init__(
        self,
        model: nn.Module,  # a ZipperModel: models/zipper.py imports this module, not back
        inputs: list[list[Segment]],
        outputs: list[str],
        budgets: dict[str, int],
        device: torch.device,
    ) -> None:
        self.model, B = model, len(inputs)
        pre = _to(collate_segments(inputs, model.specs), device)
        cap = {
            t: pre[t]["ids"].size(1) + sum(budgets[m] + 2 for m in outputs if m == t)
            for t in model.names
        }
        self.cache = {t: model.towers[t].new_cache(B, cap[t]) for t in model.names}
        self.valid = {t: torch.zeros(B, cap[t], dtype=torch.bool, device=device) for t in cap}
        self.opos = {t: torch.full((B, cap[t]), PAD_POS, device=device) for t in cap}
        self.spos = {t: torch.zeros(B, cap[t], dtype=torch.long, device=device) for t in cap}
        self.used = dict.fromkeys(model.names, 0)
        self.xkv = {}
        for dst, src in model.dirs:
            for n, layer in enumerate(model.fusion[f"{dst}_from_{src}"]):
                shape = (B, layer.xattn.n_heads, cap[src], layer.xattn.head_dim)
                w = model.towers[dst].tok_emb.weight
                self.xkv[(dst, src), n] = tuple(
                    torch.zeros(shape, dtype=w.dtype, device=device) for _ in range(2)
                )
        new = {}
        for t in model.names:
            if pre[t]["valid"].any():
                T = pre[t]["ids"].size(1)
                new[t] = {**pre[t], "pos": torch.arange(T, device=device).expand(B, T)}
        self.advance(new)
        self.next_pos = {t: pre[t]["valid"].sum(1) for t in model.names}  # [B] RoPE position
        self.next_orig = sum(self.next_pos.values())  # [B] original-order position
        self.next_seg = torch.zeros(B, dtype=torch.long, device=device)  # [B] in-segment index

    def advance(self, new: dict[str, dict]) -> dict[str, Tensor]:
        """Feed new[t] = {ids, valid, orig_pos, pos} [B,T] of the towers that get tokens."""
        end = dict(self.used)
        for t, x in new.items():
            s, T = self.used[t], x["ids"].size(1)
            end[t] = s + T
            self.valid[t][:, s : end[t]] = x["valid"]
            self.opos[t][:, s : end[t]] = torch.where(x["valid"], x["orig_pos"], PAD_POS)
            self.spos[t][:, s : end[t]] = x["seg_pos"]
        keys = {
            t: {
                "orig_pos": self.opos[t][:, : end[t]],
                "seg_pos": self.spos[t][:, : end[t]],
                "valid": self.valid[t][:, : end[t]],
            }
            for t in end
        }
        masks = {
            (a, b): cross_mask({"orig_pos": self.opos[a][:, self.used[a] : end[a]]}, keys[b])
            for a, b in self.model.dirs
            if a in new
        }
        run_kw = {
            t: {"positions": x["pos"], "key_valid": keys[t]["valid"], "cache": self.cache[t]}
            for t, x in new.items()
        }

        def kv_fn(d: tuple[str, str], n: int, kv: tuple[Tensor, Tensor] | None):
            K, V = self.xkv[d, n]
            src = d[1]
            if kv is not None:
                K[:, :, self.used[src] : end[src]] = kv[0]
                V[:, :, self.used[src] : end[src]] = kv[1]
            return K[:, :, : end[src]], V[:, :, : end[src]]

        h = {t: self.model.embed(t, x["ids"]) for t, x in new.items()}
        distances = self.model.distances(new, keys)
        logits = self.model.zip_pass(h, run_kw, masks, kv_fn, distances=distances)
        self.used = end
        return logits

    def feed(self, m: str, tok: Tensor, valid: Tensor, new_segment: bool) -> Tensor:
        """One token [B] of tower m (valid [B]: False = padding) -> next-token logits [B,V]."""
        if new_segment:
            self.next_seg = torch.zeros_like(self.next_seg)
        x = {
            "ids": tok[:, None],
            "valid": valid[:, None],
            "orig_pos": self.next_orig[:, None],
            "seg_pos": self.next_seg[:, None],
            "pos": self.next_pos[m][:, None],
        }
        logits = self.advance({m: x})[m][:, 0]
        self.next_pos[m] = self.next_pos[m] + valid
        self.next_orig = self.next_orig + valid
        self.next_seg = self.next_seg + valid
        return logits


class UncachedRunner:
    """Reference: rebuild every sample's interleaved sequence and run the full model each step."""

    def __init__(
        self,
        model: nn.Module,  # a ZipperModel: models/zipper.py imports this module, not back
        inputs: list[list[Segment]],
        outputs: list[str],
        budgets: dict[str, int],
        device: torch.device,
    ) -> None:
        self.model, self.device = model, device
        self.streams = [
            [(s.modality, wrap(s, model.specs[s.modality]).tolist(), False) for s in sample]
            for sample in inputs
        ]

    def feed(self, m: str, tok: Tensor, valid: Tensor, new_segment: bool) -> Tensor:
        for b, (t, ok) in enumerate(zip(tok.tolist(), valid.tolist(), strict=True)):
            if ok and new_segment:
                self.streams[b].append((m, [t], False))
            elif ok:
                self.streams[b][-1][1].append(t)
        batch = _to(collate_streams(self.streams, self.model.specs), self.device)
        logits = self.model(batch)[m]  # [B,T,V]
        last = (batch[m]["valid"].sum(1) - 1).clamp(min=0)
        return logits[torch.arange(logits.size(0), device=self.device), last]


def _sample(
    logits: Tensor, temperature: float, top_k: int | None, gen, banned: list[int]
) -> Tensor:
    """Next tokens [B] from logits [B,V]; draws the same random numbers whatever the logits."""
    logits = logits.float().clone()
    logits[:, banned] = float("-inf")  # bos / pad are never generated
    u = torch.rand(logits.size(0), 1, generator=gen, device=logits.device)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = logits.softmax(-1).cumsum(-1)
    return torch.searchsorted(cdf, u).squeeze(1).clamp(max=logits.size(-1) - 1)


def run_generation(
    model: nn.Module,  # a ZipperModel: models/zipper.py imports this module, not back
    runner_cls,
    inputs: list[list[Segment]],
    outputs: list[str],
    max_new_tokens: dict[str, int] | int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
) -> list[list[Segment]]:
    """Shared loop: every sample generates output segment k in lockstep; a sample that reached
    its eos (or budget: eos is then forced) feeds padding until all are done, then all switch."""
    for m in outputs:
        if m not in model.specs:
            raise UserError(f"output modality {m!r} is not a tower: choose from {model.names}")
    for x in inputs:
        for s in x:
            if s.modality not in model.specs:
                raise UserError(f"input modality {s.modality!r} is not a tower: use {model.names}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if isinstance(max_new_tokens, int):
        budgets = dict.fromkeys(outputs, max_new_tokens)
    else:
        budgets = {m: int(max_new_tokens[m]) for m in outputs if m in max_new_tokens}
        if len(budgets) != len(set(outputs)):
            raise UserError(f"max_new_tokens needs a budget for every output modality {outputs}")
    B = len(inputs)
    if B == 0:
        return []
    device = next(model.parameters()).device
    for t in model.names:
        extra = sum(budgets[m] + 2 for m in outputs if m == t)
        longest = max(sum(len(s.tokens) + 2 for s in x if s.modality == t) for x in inputs)
        if longest + extra > model.towers[t].cfg.max_seq_len:
            raise UserError(
                f"{t}: {longest} input + {extra} generated tokens exceed max_seq_len="
                f"{model.towers[t].cfg.max_seq_len}: lower max_new_tokens or shorten the input"
            )
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    try:
        runner = runner_cls(model, inputs, outputs, budgets, device)
        results: list[list[Segment]] = [[] for _ in range(B)]
        for m in outputs:
            spec = model.specs[m]
            banned = sorted({spec.bos_id, spec.pad_id} - {spec.eos_id})
            feed = torch.full((B,), spec.bos_id, device=device)
            live = torch.ones(B, dtype=torch.bool, device=device)
            ending = torch.zeros_like(live)  # the token being fed is this sample's eos
            count = torch.zeros(B, dtype=torch.long, device=device)
            toks, keeps, new_segment = [], [], True
            while True:
                logits = runner.feed(m, feed, live, new_segment)
                new_segment, live = False, live & ~ending
                if not bool(live.any()):
                    break
                tok = _sample(logits, temperature, top_k, gen, banned)
                tok = torch.where(count >= budgets[m], spec.eos_id, tok)
                ending = live & (tok == spec.eos_id)
                keep = live & ~ending
                toks.append(tok)
                keeps.append(keep)
                count += keep
                feed = torch.where(live, tok, spec.pad_id)
            T, K = torch.stack(toks, 1).cpu(), torch.stack(keeps, 1).cpu()
            for b in range(B):
                results[b].append(Segment(m, T[b][K[b]]))
        return results
    finally:
        model.train(was_training)
