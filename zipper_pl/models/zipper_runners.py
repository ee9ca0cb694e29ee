"""The Zipper's generation runners: what one decoding step of ``ZipperModel`` computes.

``CachedRunner`` (the ``dynamic`` engine) keeps per-tower KV caches and each zipped layer's
projected cross-attention keys/values, sliced to their fill level each step; ``StaticRunner`` (the
``static`` engine) runs the same step over preallocated buffers written at device-side slots,
read whole on CUDA, so its shapes never change and CUDA replays it as a graph, and on a CPU up to
the written slots (the ``compiled`` engine: the same step through torch.compile);
``UncachedRunner`` rebuilds the interleaved batch and runs the full model (the reference both
must equal). All implement ``feed`` for the shared decoding loop in ``models/generation.py``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from zipper_pl.models.kv_cache import StaticKVCache
from zipper_pl.models.sequences import (
    PAD_POS,
    Segment,
    collate_segments,
    collate_streams,
    cross_mask,
    wrap,
)
from zipper_pl.models.static_decoding import (
    GraphedStep,
    graphs_on,
    step_mask,
    sync_every,
)


def _to(batch: dict, device: torch.device) -> dict:
    return {t: {k: v.to(device) for k, v in d.items()} for t, d in batch.items()}


class CachedRunner:
    """Incremental state: per-tower KV caches and per-direction, per-zipped-layer projected
    cross-attention keys/values, all indexed by the source tower's cache slot. Slots of
    finished samples hold padding (invalid keys); RoPE and original positions skip them."""

    sync_every = 1

    def __init__(
        self,
        model: nn.Module,  # a ZipperModel: models/zipper.py imports this module, not back
        inputs: list[list[Segment]],
        outputs: list[str],
        budgets: dict[str, int],
        device: torch.device,
    ) -> None:
        self.model, self.device, B = model, device, len(inputs)
        pre = _to(collate_segments(inputs, model.specs), device)
        cap = {
            t: pre[t]["ids"].size(1) + sum(budgets[m] + 2 for m in outputs if m == t)
            for t in model.names
        }
        self.cache = {t: self.new_cache(t, B, cap[t]) for t in model.names}
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

    def new_cache(self, t: str, batch_size: int, capacity: int):
        return self.model.towers[t].new_cache(batch_size, capacity)

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


class StaticRunner(CachedRunner):
    """CachedRunner's prompt pass, then one-token steps written at ``slot[t]``, a device tensor
    advanced in place. On CUDA every buffer is read whole (unwritten slots are invalid keys,
    hidden by the masks): fixed shapes, nothing depends on a host-side count, so the step is
    captured once. On a CPU (nothing captured) a step reads only up to ``filled``, host-counted."""

    def __init__(
        self,
        model: nn.Module,
        inputs: list[list[Segment]],
        outputs: list[str],
        budgets: dict[str, int],
        device: torch.device,
        compile_step: bool = False,  # the ``compiled`` engine: the step through torch.compile
    ) -> None:
        super().__init__(model, inputs, outputs, budgets, device)
        self.slot = {t: torch.tensor(self.used[t], device=device) for t in model.names}
        for t in model.names:
            self.cache[t].slot = self.slot[t]
        capture, self.sync_every = graphs_on(device), sync_every(device)
        self.steps = {
            m: GraphedStep(functools.partial(self.step, m), capture, compile_step=compile_step)
            for m in outputs
        }
        # host counts of each tower's written slots: on a CPU a step reads only those (the
        # whole capacity made the step 0.76-0.89x the dynamic engine's at batch 16); None on
        # CUDA, where a captured graph needs the same shapes every step
        self.filled = None if capture else dict(self.used)

    def new_cache(self, t: str, batch_size: int, capacity: int):
        return self.model.towers[t].new_cache(batch_size, capacity, cache_cls=StaticKVCache)

    def feed(self, m: str, tok: Tensor, valid: Tensor, new_segment: bool) -> Tensor:
        if new_segment:
            self.next_seg.zero_()
        return self.steps[m](tok, valid)

    def step(self, m: str, tok: Tensor, valid: Tensor) -> Tensor:
        """One token [B] of tower m -> logits [B,V]; reads and writes preallocated buffers only."""
        model, idx = self.model, self.slot[m].view(1)
        orig = torch.where(valid, self.next_orig, PAD_POS)  # [B]
        self.valid[m].index_copy_(1, idx, valid[:, None])
        self.opos[m].index_copy_(1, idx, orig[:, None])
        self.spos[m].index_copy_(1, idx, self.next_seg[:, None])
        full = self.filled is None  # CUDA: whole buffers; CPU: the written slots and this one
        bound = dict.fromkeys(model.names) if full else {**self.filled, m: self.filled[m] + 1}
        self.cache[m].bound = bound[m]
        keys = {
            t: {
                "orig_pos": self.opos[t][:, : bound[t]],
                "seg_pos": self.spos[t][:, : bound[t]],
                "valid": self.valid[t][:, : bound[t]],
            }
            for t in model.names
        }
        query = {"orig_pos": orig[:, None], "seg_pos": self.next_seg[:, None]}  # [B,1]
        masks = {(a, b): cross_mask(query, keys[b]) for a, b in model.dirs if a == m}
        run_kw = {
            m: {
                "positions": self.next_pos[m][:, None],
                "cache": self.cache[m],
                "attn_mask": step_mask(keys[m]["valid"], self.slot[m]),
            }
        }

        def kv_fn(d: tuple[str, str], n: int, kv: tuple[Tensor, Tensor] | None):
            K, V = self.xkv[d, n]  # [B,H,cap_src,hd]
            if kv is not None:  # the source is m: its new keys/values go to m's slot
                K.index_copy_(2, idx, kv[0].to(K.dtype))  # autocast: bf16 into the fp32 cache
                V.index_copy_(2, idx, kv[1].to(V.dtype))
            return K[:, :, : bound[d[1]]], V[:, :, : bound[d[1]]]

        h = {m: model.embed(m, tok[:, None])}
        distances = model.distances({m: query}, keys)
        logits = model.zip_pass(h, run_kw, masks, kv_fn, distances=distances)[m][:, 0]
        self.slot[m].add_(1)
        if self.filled is not None:
            self.filled[m] += 1
        for count in (self.next_pos[m], self.next_orig, self.next_seg):
            count.add_(valid.long())
        return logits


class UncachedRunner:
    """Reference: rebuild every sample's interleaved sequence and run the full model each step."""

    sync_every = 1

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
