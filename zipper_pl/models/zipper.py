"""Zipper (PAPER.md section 3): pretrained towers run in lockstep, joined by gated cross-attention.

The towers stay unchanged ``Tower`` modules under ``towers.<name>`` (a tower's exported
state_dict loads into ``model.towers[name]`` as is). After the n-th zipped block of every tower,
each direction "a<-b" lets tower a read ReLU(g(m_b)) of tower b through a ``FusionLayer``; all
directions read the PRE-update states of that zipped layer, then all updates are applied.
N > 2 towers work the same way (a tower reading several sources applies them in config order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from zipper_pl.config.components import ZipperConfig
from zipper_pl.errors import UserError
from zipper_pl.models.choices import CHOICE, ChoiceHeads, choice_targets, last_choices
from zipper_pl.models.fusion import FusionLayer, InputProjection
from zipper_pl.models.generation import FinetunedModel
from zipper_pl.models.sequences import (
    ModalitySpec,
    Segment,
    collate_segments,
    cross_mask,
    word_distance,
)
from zipper_pl.models.tower import Tower
from zipper_pl.models.zipper_runners import CachedRunner, StaticRunner, UncachedRunner

RUNNERS = {
    "static": StaticRunner,
    "compiled": functools.partial(StaticRunner, compile_step=True),
    "dynamic": CachedRunner,
    "uncached": UncachedRunner,
}


class ZipperModel(FinetunedModel):
    def __init__(
        self, cfg: ZipperConfig, towers: Mapping[str, Tower], specs: Mapping[str, ModalitySpec]
    ) -> None:
        super().__init__()
        self.cfg, self.names = cfg, list(cfg.towers)
        for t in self.names:
            if t not in towers or t not in specs:
                raise UserError(
                    f"zipper tower {t!r} needs a Tower and a ModalitySpec: fix zipper.towers"
                )
            if specs[t].vocab_size != towers[t].cfg.vocab_size:
                raise UserError(
                    f"{t}: tokenizer vocab {specs[t].vocab_size} != tower vocab "
                    f"{towers[t].cfg.vocab_size}: use the tokenizer the tower was pretrained with"
                )
        self.towers = nn.ModuleDict({t: towers[t] for t in self.names})
        self.specs = {t: specs[t] for t in self.names}
        self.stops = self._placement()  # tower -> block index after which zipped layer n sits
        self.n_zipped = len(self.stops[self.names[0]])
        self.dirs = self._directions()  # [(dst, src)]
        self.input_proj = nn.ModuleDict()
        for t in self.names:
            mode = cfg.input_proj.get(t, "gated")
            self.input_proj[t] = InputProjection(towers[t].d_model, mode, cfg.proj_layers)
        self.fusion = nn.ModuleDict()
        for dst, src in self.dirs:
            td, ts = towers[dst], towers[src]
            heads = cfg.xattn_heads or td.cfg.n_heads
            self.fusion[f"{dst}_from_{src}"] = nn.ModuleList(
                FusionLayer(
                    td.d_model,
                    ts.d_model,
                    cfg.proj_layers,
                    cfg.proj_hidden,
                    heads,
                    cfg.xattn_d_ff,
                    cfg.gate_init,
                    td.cfg.norm_eps,
                    cfg.dropout,
                    cfg.align_prior,
                )
                for _ in range(self.n_zipped)
            )
        self._arrange_feed_forwards(cfg.xattn_ffw)
        if cfg.choose_output:  # models/choices.py
            self.choice = ChoiceHeads({t: towers[t].d_model for t in self.names})
        if cfg.align_prior:
            missing = [t for t in self.names if float(cfg.tokens_per_word.get(t, 0)) <= 0]
            if missing:
                raise UserError(
                    f"zip.align_prior needs zip.tokens_per_word for {missing} (> 0): the zip "
                    "stage measures it on the aligned data; set it when building a model by hand"
                )
        self.frozen = self._frozen_names()
        self.freeze_towers()

    @classmethod
    def from_towers(
        cls, towers: Mapping[str, Tower], cfg: ZipperConfig, specials: Mapping[str, ModalitySpec]
    ) -> ZipperModel:
        return cls(cfg, towers, specials)

    # ---- construction helpers -------------------------------------------------------------
    def _placement(self) -> dict[str, list[int]]:
        depth = {t: self.towers[t].n_layers for t in self.names}
        if self.cfg.layers:
            stops = {t: sorted(int(i) for i in self.cfg.layers.get(t, [])) for t in self.names}
            counts = {len(s) for s in stops.values()}
            for t, s in stops.items():
                if len(set(s)) != len(s) or (s and not 1 <= s[0] <= s[-1] <= depth[t]):
                    raise UserError(
                        f"zipper layers.{t}={s}: need distinct indices in 1..{depth[t]}"
                    )
            if len(counts) != 1:
                raise UserError(f"zipper layers must list as many blocks per tower: {stops}")
            return stops
        iv = {t: int(self.cfg.intervals.get(t, 1)) for t in self.names}
        if min(iv.values()) < 1:
            raise UserError(f"zipper intervals must be >= 1, got {iv}")
        n = min(depth[t] // iv[t] for t in self.names)
        if n == 0:
            raise UserError(f"no zipped layer fits towers of depth {depth}: lower zipper intervals")
        return {t: [k * iv[t] for k in range(1, n + 1)] for t in self.names}

    def _arrange_feed_forwards(self, mode: str) -> None:
        """zip.xattn_ffw: keep each direction's MLP, share zipped layer n's first one with every
        direction of that layer (one parameter set; norms and gates stay per direction), or drop
        them."""
        if mode == "per_modality":
            return
        layers = list(self.fusion.values())
        if mode == "shared" and len({self.towers[dst].d_model for dst, _ in self.dirs}) > 1:
            widths = {t: self.towers[t].d_model for t in self.names}
            raise UserError(
                f"zip.xattn_ffw=shared needs reading towers of one width, got {widths}: "
                "use zip.xattn_ffw=per_modality"
            )
        for n in range(self.n_zipped):
            for direction in layers:
                xattn = direction[n].xattn
                xattn.ffw = layers[0][n].xattn.ffw if mode == "shared" else None
                if xattn.ffw is None:  # no MLP: its norm and gate are unused
                    xattn.norm_ffw = None
                    xattn.beta.requires_grad_(False)

    def _directions(self) -> list[tuple[str, str]]:
        dirs = []
        for d in self.cfg.directions:
            dst, sep, src = str(d).partition("<-")
            dst, src = dst.strip(), src.strip()
            if not sep or dst not in self.names or src not in self.names or dst == src:
                raise UserError(
                    f"zipper direction {d!r} must be 'dst<-src' with towers {self.names}"
                )
            dirs.append((dst, src))
        return dirs

    def _frozen_names(self) -> set[str]:
        f = str(self.cfg.freeze).strip()
        if f == "none":
            return set()
        if f in ("both", "all"):
            return set(self.names)
        names = {s.strip() for s in f.split(",") if s.strip()}
        if not names <= set(self.names):
            raise UserError(f"zipper freeze={f!r}: use none, both, all or names from {self.names}")
        return names

    # ---- freezing -----------------------------------------------------------------------------
    def freeze_towers(self) -> None:
        """Frozen towers: no gradients, and always in eval mode (no dropout)."""
        for t in self.names:
            for p in self.towers[t].parameters():
                p.requires_grad_(t not in self.frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> ZipperModel:
        super().train(mode)
        for t in getattr(self, "frozen", ()):
            self.towers[t].eval()  # Lightning calls train() every epoch: keep frozen towers in eval
        return self

    def distances(
        self, query: Mapping[str, Mapping[str, Tensor]], key: Mapping[str, Mapping[str, Tensor]]
    ) -> dict[tuple[str, str], Tensor]:
        """(dst, src) -> word distance [B,1,Tq,Tk] for ``align_prior`` (empty when it is off).

        query[dst] / key[src]: {"seg_pos": [B,T]} of the query and key tokens."""
        if not self.cfg.align_prior:
            return {}
        tpw = {t: float(self.cfg.tokens_per_word[t]) for t in self.names}
        return {
            (a, b): word_distance(query[a], key[b], tpw[a], tpw[b])
            for a, b in self.dirs
            if a in query
        }

    # ---- the lockstep pass ----------------------------------------------------------------------
    def zip_pass(
        self,
        h: dict[str, Tensor],
        run_kw: Mapping[str, dict],
        masks: Mapping[tuple[str, str], Tensor],
        kv_fn: Callable[
            [tuple[str, str], int, tuple[Tensor, Tensor] | None], tuple[Tensor, Tensor]
        ],
        outputs: Collection[str] | None = None,
        distances: Mapping[tuple[str, str], Tensor] | None = None,
        states: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Run the towers that have new inputs h[t] [B,T,D] through all blocks and zipped layers.

        run_kw[t]: run_blocks kwargs (positions / key_valid / cache); masks[(dst, src)] [B,1,Tq,Tk].
        kv_fn(direction, n, new_kv or None) -> all keys/values the direction may read (a cache
        appends new_kv and returns everything; training just returns new_kv). distances: see
        ``distances`` (align_prior only). Returns logits; ``states`` (a dict) receives each
        tower's final-norm hidden states [B,T,D].
        """
        distances = distances or {}
        start = dict.fromkeys(h, 0)
        for n in range(self.n_zipped):
            for t in h:
                stop = self.stops[t][n]
                # a frozen tower without a trainable input projection needs no gradient before
                # its first zipped layer: skip storing those activations
                constant = n == 0 and t in self.frozen and self.input_proj[t].mode == "none"
                with torch.set_grad_enabled(torch.is_grad_enabled() and not constant):
                    h[t] = self.towers[t].run_blocks(h[t], start[t], stop, **run_kw[t])
                start[t] = stop
            last = n == self.n_zipped - 1
            # after the last zipped layer a tower's update only feeds its own logits (and choice
            # head): skip the directions into towers nobody asked for (ASR: text -> speech)
            skip = last and outputs is not None and states is None  # choices read every tower
            live = [d for d in self.dirs if not (skip and d[0] not in outputs)]
            kv = {}
            for d in live:  # every direction reads the pre-update states
                layer = self.fusion[f"{d[0]}_from_{d[1]}"][n]
                kv[d] = kv_fn(d, n, layer.project_kv(h[d[1]]) if d[1] in h else None)
            for d in live:
                if d[0] in h:
                    layer = self.fusion[f"{d[0]}_from_{d[1]}"][n]
                    h[d[0]] = layer(h[d[0]], *kv[d], masks[d], distances.get(d))
        out = {}
        for t in h:
            wanted = outputs is None or t in outputs
            if not wanted and states is None:
                continue  # no loss on this tower: its last blocks and softmax would be wasted
            tower = self.towers[t]
            x = tower.run_blocks(h[t], start[t], tower.n_layers, **run_kw[t])
            if states is not None:
                states[t] = tower.norm_f(x)
            if wanted:
                out[t] = tower.head(x)
        return out

    def embed(self, t: str, ids: Tensor) -> Tensor:
        return self.input_proj[t](self.towers[t].embed(ids))

    def forward(
        self, batch: Mapping[str, Mapping[str, Tensor]], outputs: Collection[str] | None = None
    ) -> dict[str, Tensor]:
        """Batch from ``collate_segments`` -> {tower: logits [B,T,V]} (right-padded streams).

        outputs: towers whose logits are needed (default all); the others skip their blocks after
        the last zipped layer and their softmax. With ``zip.choose_output`` every tower runs to
        its end and {tower + CHOICE: choice logits [B,T,K]} come too (models/choices.py).
        """
        h = {t: self.embed(t, batch[t]["ids"]) for t in self.names}
        masks = {(a, b): cross_mask(batch[a], batch[b]) for a, b in self.dirs}
        states = {} if self.cfg.choose_output else None
        logits = self.zip_pass(
            h,
            {t: {} for t in self.names},
            masks,
            lambda d, n, kv: kv,
            outputs=outputs,
            distances=self.distances(batch, batch),
            states=states,
        )
        return logits | {t + CHOICE: self.choice(t, x) for t, x in (states or {}).items()}

    # ---- the fine-tuned-model interface (models/generation.py) ------------------------------
    def collator(self, loss_on: str = "last") -> Callable[[Sequence[Sequence[Segment]]], dict]:
        """One stream per tower (``collate_segments``), and their choice targets."""
        collate = _with_choices if self.cfg.choose_output else collate_segments
        return functools.partial(collate, specs=self.specs, loss_on=loss_on)

    @torch.no_grad()
    def choose_next(self, samples: Sequence[Sequence[Segment]]) -> list[str]:
        """What each sample's heads choose after its last segment: a modality or "done" (the
        most likely one, also when generation samples tokens)."""
        if not self.cfg.choose_output:
            super().choose_next(samples)
        device, was_training = next(self.parameters()).device, self.training
        batch = self.collate(samples)
        batch = {t: {k: v.to(device) for k, v in d.items()} for t, d in batch.items()}
        try:
            self.eval()  # no dropout in a choice
            logits = self(batch, outputs=())
        finally:
            self.train(was_training)
        picks = last_choices(logits, batch, [s[-1].modality for s in samples])
        return [self.choice.classes[k] for k in picks]

    def runner(self, engine, inputs, outputs, budgets, device) -> CachedRunner | UncachedRunner:
        return RUNNERS[engine](self, inputs, outputs, budgets, device)

    def check_lengths(
        self, inputs: list[list[Segment]], outputs: list[str], budgets: dict[str, int]
    ) -> None:
        for t in self.names:
            extra = sum(budgets[m] + 2 for m in outputs if m == t)
            longest = max(sum(len(s.tokens) + 2 for s in x if s.modality == t) for x in inputs)
            if longest + extra > self.towers[t].cfg.max_seq_len:
                raise UserError(
                    f"{t}: {longest} input + {extra} generated tokens exceed max_seq_len="
                    f"{self.towers[t].cfg.max_seq_len}: lower max_new_tokens or shorten the input"
                )

    def budget_cap(self, output: str, longest_input: int) -> int:
        """The output tower holds only bos + generated + eos (inputs live in other towers)."""
        return self.towers[output].cfg.max_seq_len - 2

    def tower_for(self, modality: str) -> Tower:
        return self.towers[modality]

    def gates(self) -> dict[str, Tensor]:
        """tanh(alpha) (cross-attention) and tanh(beta) (feed-forward) of every zipped layer."""
        out = {}
        for direction, layers in self.fusion.items():
            for n, layer in enumerate(layers):
                out[f"{direction}/{n}_attn"] = torch.tanh(layer.xattn.alpha.detach())
                if layer.xattn.ffw is not None:
                    out[f"{direction}/{n}_ffw"] = torch.tanh(layer.xattn.beta.detach())
        return out


def _with_choices(
    samples: Sequence[Sequence[Segment]], specs: Mapping[str, ModalitySpec], loss_on: str
) -> dict:
    """``collate_segments`` plus each tower's choice targets (``zip.choose_output``)."""
    batch = collate_segments(samples, specs, loss_on)
    return batch | choice_targets(samples, specs, {t: batch[t]["ids"].size(1) for t in specs})
