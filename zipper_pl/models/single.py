"""The "Single Decoder" baseline (AudioPaLM-like): one text tower, vocabulary extended by speech.

The pre-trained text tower gets the other modalities' vocabularies appended to its own, so a
speech token ``s`` becomes id ``text_vocab + s``; with the speech tower's vocabulary laid out as
``K`` codes followed by begin/end-of-audio, those two are the last two ids. One sequence holds
every segment in the original order, each wrapped in its modality's own bos/eos (text keeps its
ids), e.g. ASR = ``[boa s.. eoa bos t.. eos]``. Every parameter is fine-tuned.

It implements the fine-tuned-model interface of ``models/generation.py`` as the Zipper does, with
one stream named ``single``; generation is the shared loop and sampler, and its runner reads each
output modality's logits from that modality's slice of the joint vocabulary (so a modality only
ever generates its own ids).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection, Mapping, Sequence

import torch
from torch import Tensor

from zipper_pl.errors import UserError
from zipper_pl.models.generation import FinetunedModel
from zipper_pl.models.kv_cache import KVCache, StaticKVCache
from zipper_pl.models.sequences import IGNORE, ModalitySpec, Segment, loss_flags, wrap
from zipper_pl.models.static_decoding import (
    GraphedStep,
    graphs_on,
    step_mask,
    sync_every,
)
from zipper_pl.models.tower import Tower

STREAM = "single"  # the one stream of the batch and of the logits


def extend_vocabulary(tower: Tower, n_new: int, seed: int, noise: float = 0.02) -> Tower:
    """A copy of ``tower`` with ``n_new`` extra token ids appended to its vocabulary.

    Original embedding rows (and so, tied, the original softmax rows) are copied exactly; every
    other weight is copied too. New rows start at the mean of the existing rows plus Gaussian
    noise of ``noise`` times the per-dimension standard deviation of the existing rows: close to
    an "average token" so the first fine-tuning steps are not dominated by random new logits,
    yet distinct so the new tokens can separate.
    """
    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new}")
    cfg = dataclasses.replace(tower.cfg, vocab_size=tower.cfg.vocab_size + n_new)
    with torch.device(tower.tok_emb.weight.device):
        new = Tower(cfg).to(tower.tok_emb.weight.dtype)
    gen = torch.Generator().manual_seed(seed)
    state = dict(tower.state_dict())
    # an untied output head (imported LMs) grows the same way, rows drawn after the embedding's
    for key in [k for k in ("tok_emb.weight", "lm_head.weight") if k in state]:
        w = state[key].detach()  # (V, D)
        w32 = w.float().cpu()
        rows = w32.mean(0) + noise * w32.std(0) * torch.randn(n_new, w.shape[1], generator=gen)
        state[key] = torch.cat([w, rows.to(device=w.device, dtype=w.dtype)])  # (V+n, D)
    new.load_state_dict(state)
    new.activation_checkpointing = tower.activation_checkpointing
    return new.train(tower.training)


class SingleDecoder(FinetunedModel):
    """One decoder over the concatenated vocabularies of ``specs`` (the first is the tower's own).

    ``specs[i]``'s local id ``j`` is global id ``offsets[name] + j``; offsets follow ``specs``
    order, the first modality at 0, so its ids are unchanged.
    """

    def __init__(self, tower: Tower, specs: Sequence[ModalitySpec]) -> None:
        super().__init__()
        self.specs = {s.name: s for s in specs}
        self.offsets, total = {}, 0
        for s in specs:
            self.offsets[s.name], total = total, total + s.vocab_size
        if tower.cfg.vocab_size != total:
            raise UserError(
                f"single decoder tower has vocab_size={tower.cfg.vocab_size} but the modalities "
                f"{list(self.specs)} need {total}: build it with SingleDecoder.from_text_tower"
            )
        self.tower = tower

    @classmethod
    def from_text_tower(
        cls, tower: Tower, specs: Sequence[ModalitySpec], seed: int
    ) -> SingleDecoder:
        """Extend a pre-trained tower (vocabulary = ``specs[0]``) by the other modalities."""
        if tower.cfg.vocab_size != specs[0].vocab_size:
            raise UserError(
                f"the pre-trained tower has vocab_size={tower.cfg.vocab_size} but modality "
                f"{specs[0].name!r} declares {specs[0].vocab_size}: load the matching tokenizer"
            )
        n_new = sum(s.vocab_size for s in specs[1:])
        return cls(extend_vocabulary(tower, n_new, seed), specs)

    # ---- the fine-tuned-model interface (models/generation.py) ------------------------------
    def collator(self, loss_on: str = "last") -> Callable[[Sequence[Sequence[Segment]]], dict]:
        return functools.partial(
            collate_joint, specs=self.specs, offsets=self.offsets, loss_on=loss_on
        )

    def forward(
        self, batch: Mapping[str, Mapping[str, Tensor]], outputs: Collection[str] | None = None
    ) -> dict[str, Tensor]:
        """Right-padded ids [B,T] -> {"single": logits [B,T,V_total]} (causal: pads come last;
        ``outputs`` changes nothing: one softmax serves every modality)."""
        return {STREAM: self.tower(batch[STREAM]["ids"])}

    def runner(self, engine, inputs, outputs, budgets, device) -> SingleRunner:
        if engine in ("static", "compiled"):
            compile_step = engine == "compiled"
            return StaticSingleRunner(self, inputs, outputs, budgets, device, compile_step)
        return SingleRunner(self, engine == "dynamic", inputs, outputs, budgets, device)

    def check_lengths(
        self, inputs: list[list[Segment]], outputs: list[str], budgets: dict[str, int]
    ) -> None:
        prompt = max(sum(len(s.tokens) + 2 for s in x) for x in inputs)
        steps = sum(budgets[m] + 2 for m in outputs)  # bos + content + eos per segment
        if prompt + steps > self.tower.cfg.max_seq_len:
            raise UserError(
                f"prompt ({prompt}) + generation budget ({steps}) exceed the tower's max_seq_len="
                f"{self.tower.cfg.max_seq_len}: lower max_new_tokens or shorten the inputs"
            )

    def budget_cap(self, output: str, longest_input: int) -> int:
        """One shared sequence: the wrapped input, then bos + generated + eos."""
        return self.tower.cfg.max_seq_len - (longest_input + 2) - 2

    def tower_for(self, modality: str) -> Tower:
        return self.tower  # its full vocabulary: every modality lives in the one tower


def wrap_global(seg: Segment, specs: Mapping[str, ModalitySpec], offsets: Mapping[str, int]):
    """bos + tokens + eos of the segment's modality, as ids of the joint vocabulary [L+2]."""
    if seg.modality not in specs:
        raise UserError(
            f"segment modality {seg.modality!r} is not in the single decoder's "
            f"vocabulary {list(specs)} (model modalities / data modalities)"
        )
    return wrap(seg, specs[seg.modality]) + offsets[seg.modality]


def collate_joint(
    samples: Sequence[Sequence[Segment]],
    specs: Mapping[str, ModalitySpec],
    offsets: Mapping[str, int],
    loss_on: str = "last",
) -> dict:
    """Samples of segments -> {"single": {"ids", "targets", "valid"} [B,T]}, right-padded.

    Targets follow the Zipper's convention inside each loss segment: bos predicts the first
    token, ..., the last token predicts eos; nothing predicts a segment's bos (the caller
    chooses modality switches). ``loss_on``: "last" (the output segment) or "all";
    ``Segment.loss`` overrides it per segment.
    """
    rows = []
    for sample in samples:
        ids, tgt = [], []
        for seg, loss in zip(sample, loss_flags(sample, loss_on), strict=True):
            g = wrap_global(seg, specs, offsets)  # (L+2,)
            t = torch.full_like(g, IGNORE)
            if loss:
                t[:-1] = g[1:]
            ids.append(g)
            tgt.append(t)
        rows.append((torch.cat(ids), torch.cat(tgt)))
    B, T = len(rows), max(len(r[0]) for r in rows)
    first = next(iter(specs.values()))
    out = {
        "ids": torch.full((B, T), offsets[first.name] + first.pad_id, dtype=torch.long),
        "targets": torch.full((B, T), IGNORE, dtype=torch.long),
        "valid": torch.zeros(B, T, dtype=torch.bool),
    }
    for b, (ids, tgt) in enumerate(rows):
        out["ids"][b, : len(ids)], out["targets"][b, : len(ids)] = ids, tgt
        out["valid"][b, : len(ids)] = True
    return {STREAM: out}


class SingleRunner:
    """One decoding step of the single decoder: the inputs are one left-padded prompt per sample
    (per-sample RoPE positions and ``key_valid``), fed with the first output bos; each later step
    feeds one column, with a KV cache or recomputing the whole prefix (the reference)."""

    sync_every = 1

    def __init__(self, model: SingleDecoder, cached: bool, inputs, outputs, budgets, device):
        self.model, self.device, self.cached = model, device, cached
        prompts = [
            torch.cat([wrap_global(s, model.specs, model.offsets) for s in sample])
            if sample
            else torch.zeros(0).long()
            for sample in inputs
        ]
        B, P = len(prompts), max(len(p) for p in prompts)
        lens = torch.tensor([len(p) for p in prompts], device=device)
        ids = torch.zeros(B, P, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            ids[b, P - len(p) :] = p.to(device)
        cols = torch.arange(P, device=device)[None]  # (1, P)
        valid = cols >= (P - lens)[:, None]  # (B, P)
        pos = (cols - (P - lens)[:, None]).clamp(min=0)  # (B, P)
        self.pending: tuple | None = (ids, valid, pos)  # run together with the first token
        self.next_pos = lens  # (B,) RoPE position of the next real token
        steps = sum(budgets[m] + 2 for m in outputs)
        self.cache = self.new_cache(B, P + steps) if cached else None
        self.ids = self.valid = self.pos = None

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        return self.model.tower.new_cache(batch_size, capacity)

    def feed(self, m: str, tok: Tensor, valid: Tensor, new_segment: bool) -> Tensor:
        off, size = self.model.offsets[m], self.model.specs[m].vocab_size
        ids, live, pos = (tok + off)[:, None], valid[:, None], self.next_pos[:, None]  # (B, 1)
        self.next_pos = self.next_pos + valid.long()
        if self.pending is not None:  # the prompt columns, then this token
            p_ids, p_valid, p_pos = self.pending
            pairs = ((p_ids, ids), (p_valid, live), (p_pos, pos))
            ids, live, pos = (torch.cat(pair, 1) for pair in pairs)
            self.pending = None
        return self._step(ids, live, pos)[:, off : off + size]  # (B, V_m)

    def _step(self, ids: Tensor, valid: Tensor, pos: Tensor) -> Tensor:
        """New columns ids/valid/pos [B,T] -> logits of the last column [B,V_total]."""
        tower, first = self.model.tower, self.valid is None
        self.valid = valid if first else torch.cat([self.valid, valid], 1)  # (B, all columns)
        if self.cached:
            return tower(ids, positions=pos, key_valid=self.valid, cache=self.cache)[:, -1]
        self.ids = ids if first else torch.cat([self.ids, ids], 1)
        self.pos = pos if first else torch.cat([self.pos, pos], 1)
        return tower(self.ids, positions=self.pos, key_valid=self.valid)[:, -1]


class StaticSingleRunner(SingleRunner):
    """The ``static`` engine (``compiled``: its step through torch.compile): the prompt and first
    token as SingleRunner feeds them, then one-token steps over the preallocated cache, written
    at ``slot`` (a device tensor advanced in place): on CUDA over the whole capacity (fixed
    shapes, replayed as a CUDA graph: models/static_decoding.py), on a CPU up to ``filled``."""

    def __init__(
        self,
        model: SingleDecoder,
        inputs: list[list[Segment]],
        outputs: list[str],
        budgets: dict[str, int],
        device: torch.device,
        compile_step: bool = False,  # the ``compiled`` engine: the step through torch.compile
    ) -> None:
        super().__init__(model, True, inputs, outputs, budgets, device)
        B, capacity = self.cache.k[0].size(0), self.cache.max_len
        self.valid_all = torch.zeros(B, capacity, dtype=torch.bool, device=device)
        self.slot = torch.zeros((), dtype=torch.long, device=device)
        capture, self.sync_every = graphs_on(device), sync_every(device)
        self.steps = {
            m: GraphedStep(functools.partial(self.step, m), capture, compile_step=compile_step)
            for m in outputs
        }
        self.filled: int | None = None if capture else 0  # host count of written slots (CPU)

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        return self.model.tower.new_cache(batch_size, capacity, cache_cls=StaticKVCache)

    def feed(self, m: str, tok: Tensor, valid: Tensor, new_segment: bool) -> Tensor:
        if self.pending is None:
            return self.steps[m](tok, valid)
        logits = super().feed(m, tok, valid, new_segment)  # python fill levels, any length
        n = self.valid.size(1)
        self.valid_all[:, :n] = self.valid
        self.slot.fill_(n)
        self.cache.slot = self.slot
        self.filled = None if self.filled is None else n
        return logits

    def step(self, m: str, tok: Tensor, valid: Tensor) -> Tensor:
        """One token [B] of modality m -> its logits [B,V_m]; preallocated buffers only."""
        off, size = self.model.offsets[m], self.model.specs[m].vocab_size
        self.valid_all.index_copy_(1, self.slot.view(1), valid[:, None])
        bound = self.cache.bound = None if self.filled is None else self.filled + 1
        logits = self.model.tower(
            (tok + off)[:, None],
            positions=self.next_pos[:, None],
            cache=self.cache,
            attn_mask=step_mask(self.valid_all[:, :bound], self.slot),
        )[:, -1, off : off + size]
        self.filled = bound
        self.next_pos.add_(valid.long())
        self.slot.add_(1)
        return logits
