"""The "Single Decoder" baseline (AudioPaLM-like): one text tower, vocabulary extended by speech.

The pre-trained text tower gets the other modalities' vocabularies appended to its own, so a
speech token ``s`` becomes id ``text_vocab + s``; with the speech tower's vocabulary laid out as
``K`` codes followed by begin/end-of-audio, those two are the last two ids. One sequence holds
every segment in the original order, each wrapped in its modality's own bos/eos (text keeps its
ids), e.g. ASR = ``[boa s.. eoa bos t.. eos]``. Every parameter is fine-tuned.

``generate`` mirrors ``ZipperModel.generate``: the caller names the output modalities; the model
continues in the current modality (sampling restricted to that modality's ids) until its end token
or its budget, then the next modality's bos is fed and generation continues there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from zipper_pl.errors import UserError
from zipper_pl.models.sequences import IGNORE, ModalitySpec, Segment, wrap
from zipper_pl.models.tower import Tower


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


class SingleDecoder(nn.Module):
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
        # Per modality: the global ids it may generate (its own range minus its bos and pad).
        allowed = torch.zeros(len(specs), total, dtype=torch.bool)
        for i, s in enumerate(specs):
            off = self.offsets[s.name]
            allowed[i, off : off + s.vocab_size] = True
            allowed[i, [off + s.bos_id, off + s.pad_id]] = False
        self.register_buffer("allowed", allowed, persistent=False)
        self.modality_index = {s.name: i for i, s in enumerate(specs)}

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

    # ---- training -----------------------------------------------------------------------------
    def to_global(self, modality: str, ids: Tensor) -> Tensor:
        return ids + self.offsets[modality]

    def collate(self, samples: Sequence[Sequence[Segment]], loss_on: str = "last") -> dict:
        """Samples of segments -> {"ids", "targets", "valid"} [B,T], one right-padded stream.

        Targets follow the Zipper's convention inside each loss segment: bos predicts the first
        token, ..., the last token predicts eos; nothing predicts a segment's bos (the caller
        chooses modality switches). ``loss_on``: "last" (the output segment) or "all";
        ``Segment.loss`` overrides it per segment.
        """
        if loss_on not in ("last", "all"):
            raise UserError(f"loss_on must be 'last' or 'all', got {loss_on!r}")
        rows = []
        for sample in samples:
            ids, tgt = [], []
            for j, seg in enumerate(sample):
                if seg.modality not in self.specs:
                    raise UserError(
                        f"segment modality {seg.modality!r} is not in the single decoder's "
                        f"vocabulary {list(self.specs)} (model modalities / data modalities)"
                    )
                g = self.to_global(seg.modality, wrap(seg, self.specs[seg.modality]))  # (L+2,)
                loss = (
                    seg.loss if seg.loss is not None else (loss_on == "all" or j == len(sample) - 1)
                )
                t = torch.full_like(g, IGNORE)
                if loss:
                    t[:-1] = g[1:]
                ids.append(g)
                tgt.append(t)
            rows.append((torch.cat(ids), torch.cat(tgt)))
        B, T = len(rows), max(len(r[0]) for r in rows)
        pad = self.offsets[next(iter(self.specs))] + next(iter(self.specs.values())).pad_id
        out = {
            "ids": torch.full((B, T), pad, dtype=torch.long),
            "targets": torch.full((B, T), IGNORE, dtype=torch.long),
            "valid": torch.zeros(B, T, dtype=torch.bool),
        }
        for b, (ids, tgt) in enumerate(rows):
            out["ids"][b, : len(ids)], out["targets"][b, : len(ids)] = ids, tgt
            out["valid"][b, : len(ids)] = True
        return out

    def forward(self, ids: Tensor) -> Tensor:
        """Right-padded ids [B,T] -> logits [B,T,V_total] (causal: pads come after real tokens)."""
        return self.tower(ids)

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Token-mean cross-entropy over all targets, and the mean per target modality."""
        logits = self(batch["ids"]).float()  # (B, T, V)
        tgt = batch["targets"]
        ce = F_.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            tgt.reshape(-1),
            ignore_index=IGNORE,
            reduction="none",
        ).view_as(tgt)  # (B, T), 0 where ignored
        total = ce.sum() / (tgt != IGNORE).sum().clamp(min=1)
        per = {}
        for name, s in self.specs.items():
            off = self.offsets[name]
            in_mod = (tgt >= off) & (tgt < off + s.vocab_size)
            per[name] = (ce * in_mod).sum() / in_mod.sum().clamp(min=1)
        return total, per

    # ---- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        inputs: list[list[Segment]],
        output_modalities: list[str],
        max_new_tokens: dict[str, int] | int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> list[list[Segment]]:
        """Continue each sample's input segments with one segment per output modality, in order.

        Greedy when temperature == 0. Batched with one KV cache; ragged prompts are left-padded
        with per-sample RoPE positions and ``key_valid``. ``max_new_tokens`` bounds each output
        segment's tokens (eos excluded); a segment that hits it is closed with a fed eos.
        """
        args = (inputs, output_modalities, max_new_tokens, temperature, top_k, seed)
        return self._generate(True, *args)

    @torch.no_grad()
    def generate_uncached(
        self,
        inputs: list[list[Segment]],
        output_modalities: list[str],
        max_new_tokens: dict[str, int] | int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> list[list[Segment]]:
        """Same tokens as ``generate``, recomputing the whole prefix each step (reference)."""
        args = (inputs, output_modalities, max_new_tokens, temperature, top_k, seed)
        return self._generate(False, *args)

    def _budgets(self, outs: list[str], max_new_tokens: dict[str, int] | int) -> list[int]:
        if not outs:
            raise UserError("output_modalities is empty: name at least one, e.g. ['text']")
        for m in outs:
            if m not in self.specs:
                raise UserError(f"output modality {m!r} unknown: choose from {list(self.specs)}")
        if isinstance(max_new_tokens, int):
            budgets = [max_new_tokens] * len(outs)
        else:
            missing = [m for m in outs if m not in max_new_tokens]
            if missing:
                raise UserError(f"max_new_tokens has no budget for output modalities {missing}")
            budgets = [int(max_new_tokens[m]) for m in outs]
        if min(budgets) < 1:
            raise UserError(f"max_new_tokens must be >= 1 per output modality, got {budgets}")
        return budgets

    def _prompts(self, inputs: list[list[Segment]], first_out: str) -> list[Tensor]:
        prompts = []
        for sample in inputs:
            parts = []
            for seg in sample:
                if seg.modality not in self.specs:
                    raise UserError(
                        f"input modality {seg.modality!r} unknown: choose from {list(self.specs)}"
                    )
                parts.append(self.to_global(seg.modality, wrap(seg, self.specs[seg.modality])))
            bos = self.specs[first_out].bos_id + self.offsets[first_out]
            parts.append(torch.tensor([bos]))
            prompts.append(torch.cat(parts))
        return prompts

    def _generate(self, cached, inputs, outs, max_new_tokens, temperature, top_k, seed):
        budgets = self._budgets(outs, max_new_tokens)
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}")
        if not inputs:
            return []
        device = self.tower.tok_emb.weight.device
        prompts = self._prompts(inputs, outs[0])
        B, P = len(prompts), max(len(p) for p in prompts)
        max_steps = sum(b + 2 for b in budgets)  # content + eos + next bos per segment
        if P + max_steps > self.tower.cfg.max_seq_len:
            raise UserError(
                f"prompt ({P}) + generation budget ({max_steps}) exceed the tower's max_seq_len="
                f"{self.tower.cfg.max_seq_len}: lower max_new_tokens or shorten the inputs"
            )
        # Left-pad so every sample's next token lands in the same column.
        lens = torch.tensor([len(p) for p in prompts], device=device)
        ids = torch.zeros(B, P, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            ids[b, P - len(p) :] = p.to(device)
        cols = torch.arange(P, device=device)[None]  # (1, P)
        valid = cols >= (P - lens)[:, None]  # (B, P)
        pos = (cols - (P - lens)[:, None]).clamp(min=0)  # (B, P) per-sample RoPE positions
        runner = _Runner(self.tower, cached, B, P + max_steps)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            logits = runner.step(ids, valid, pos)  # (B, V)
            sampling = (temperature, top_k, gen)
            out = _decode(self, logits, runner, lens, outs, budgets, max_steps, *sampling)
        finally:
            self.train(was_training)
        return [
            [
                Segment(m, torch.tensor(toks, dtype=torch.long))
                for m, toks in zip(outs, row, strict=True)
            ]
            for row in out
        ]


class _Runner:
    """One decoding step over new columns: with a KV cache, or recomputing the whole prefix."""

    def __init__(self, tower: Tower, cached: bool, batch: int, max_len: int) -> None:
        self.tower, self.cached = tower, cached
        self.cache = tower.new_cache(batch, max_len) if cached else None
        self.ids = self.valid = self.pos = None

    def step(self, ids: Tensor, valid: Tensor, pos: Tensor) -> Tensor:
        """New columns ids/valid/pos [B,T] -> logits of the last column [B,V]."""
        first = self.valid is None
        self.valid = valid if first else torch.cat([self.valid, valid], 1)  # (B, all columns)
        if self.cached:
            return self.tower(ids, positions=pos, key_valid=self.valid, cache=self.cache)[:, -1]
        self.ids = ids if first else torch.cat([self.ids, ids], 1)
        self.pos = pos if first else torch.cat([self.pos, pos], 1)
        return self.tower(self.ids, positions=self.pos, key_valid=self.valid)[:, -1]


def _pick(logits: Tensor, temperature: float, top_k: int | None, gen) -> Tensor:
    """Greedy or temperature/top-k sampling over masked logits [B,V] -> ids [B]."""
    if temperature <= 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]


def _decode(model, logits, runner, lens, outs, budgets, max_steps, temperature, top_k, gen):
    """The per-sample state machine shared by cached and uncached generation, as tensors.

    Each step feeds exactly one column: a sampled token, a forced special (eos when a budget
    runs out, the next modality's bos after an eos) or, once a sample is done, an invalid pad.
    """
    B, device, n_out = len(lens), logits.device, len(outs)
    rows = torch.tensor([model.modality_index[m] for m in outs], device=device)
    offs = torch.tensor([model.offsets[m] for m in outs], device=device)
    eos_of = torch.tensor([model.specs[m].eos_id for m in outs], device=device) + offs
    bos_of = torch.tensor([model.specs[m].bos_id for m in outs], device=device) + offs
    budget_of = torch.tensor(budgets, device=device)
    none = torch.full((B,), -1, device=device)
    seg = torch.zeros(B, dtype=torch.long, device=device)  # index into outs being generated
    count = torch.zeros_like(seg)
    forced, forced_next = none.clone(), none.clone()  # up to two queued specials per sample
    done = torch.zeros(B, dtype=torch.bool, device=device)
    toks, segs, keeps = [], [], []
    next_pos = lens.clone()
    for _ in range(max_steps):
        s = seg.clamp(max=n_out - 1)
        masked = logits.masked_fill(~model.allowed[rows[s]], float("-inf"))  # (B, V)
        sampled = _pick(masked, temperature, top_k, gen)  # (B,)
        has_forced = forced >= 0
        act = ~done & ~has_forced  # samples that consume their sampled token
        is_eos = act & (sampled == eos_of[s])
        keep = act & ~is_eos
        toks.append(sampled - offs[s])
        segs.append(s)
        keeps.append(keep)
        count = count + keep.long()
        switch = act & (is_eos | (count == budget_of[s]))
        seg = seg + switch.long()
        count = torch.where(switch, 0, count)
        finished = switch & (seg == n_out)
        starts = switch & ~finished  # queue [next bos] after an eos, [eos, next bos] otherwise
        nxt = bos_of[seg.clamp(max=n_out - 1)]
        feed = torch.where(has_forced, forced, sampled)
        forced = torch.where(has_forced, forced_next, forced)
        forced_next = torch.where(has_forced, none, forced_next)
        forced = torch.where(starts, torch.where(is_eos, nxt, eos_of[s]), forced)
        forced_next = torch.where(starts & ~is_eos, nxt, forced_next)
        done = done | finished
        if bool(done.all()):
            break
        feed = torch.where(done, 0, feed)
        live = ~done[:, None]  # (B, 1)
        logits = runner.step(feed[:, None], live, next_pos[:, None])
        next_pos += live[:, 0].long()
    T, S, K = (torch.stack(x, 1).cpu() for x in (toks, segs, keeps))  # (B, steps)
    return [[T[b][K[b] & (S[b] == k)].tolist() for k in range(n_out)] for b in range(B)]
