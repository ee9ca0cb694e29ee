"""The batch contract between data and the Zipper: interleaved segments -> per-tower tensors.

A sample is an ordered list of ``Segment``s, e.g. ASR = [speech, text]. Each tower receives only
its own segments, each wrapped in ``bos .. eos`` and right-padded, plus for every token its
position in the ORIGINAL interleaved order (``orig_pos``). Cross-attention uses ``orig_pos`` for
the paper's auto-regressive masking (section 3.1): a query at original position p sees the other
modality's valid keys at original positions < p.

Batch layout (all tensors [B,T] per tower; every tower in ``specs`` is present, with at least one
column, so a fused model always has something to run):
    batch[tower] = {"ids": Long, "orig_pos": Long, "seg_pos": Long, "valid": Bool,
                    "targets": Long (-100 = no loss)}
``seg_pos`` is the token's index inside its own segment (bos = 0): the optional alignment prior
of the cross-attention compares query and key progress through their segments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F_
from torch import Tensor

from zipper_pl.errors import UserError

IGNORE = -100  # target id without loss (cross_entropy's ignore_index)
PAD_POS = 1 << 30  # orig_pos of padding: larger than any real position, so pads never leak as keys


@dataclass(frozen=True)
class ModalitySpec:
    """One modality's vocabulary and special ids (bos/eos/pad are ids inside vocab_size)."""

    name: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def __post_init__(self) -> None:
        ids = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        for key, i in ids.items():
            if not 0 <= i < self.vocab_size:
                raise UserError(
                    f"{self.name} {key}={i} is outside its vocabulary [0, {self.vocab_size}): "
                    "fix the tokenizer's special ids or the tower's vocab_size"
                )
        if self.bos_id == self.eos_id:
            raise UserError(f"{self.name}: bos_id and eos_id must differ (both {self.bos_id})")


@dataclass
class Segment:
    """A run of one modality's tokens [L], WITHOUT bos/eos.

    ``loss``: whether this segment gets next-token targets; None = decided by ``loss_on``.
    """

    modality: str
    tokens: Tensor
    loss: bool | None = None


# A raw stream piece: (modality, token ids INCLUDING bos/eos or an open end, gets loss)
Piece = tuple[str, Sequence[int] | Tensor, bool]


def wrap(seg: Segment, spec: ModalitySpec) -> Tensor:
    """bos + tokens + eos, after checking the ids."""
    tok = torch.as_tensor(seg.tokens, dtype=torch.long).reshape(-1).cpu()
    if tok.numel() and (int(tok.min()) < 0 or int(tok.max()) >= spec.vocab_size):
        raise UserError(
            f"{seg.modality} token ids must be in [0, {spec.vocab_size}), got "
            f"[{int(tok.min())}, {int(tok.max())}]: rebuild the token cache with the current "
            "tokenizer, or fix the tower's vocab_size"
        )
    return torch.cat([tok.new_tensor([spec.bos_id]), tok, tok.new_tensor([spec.eos_id])])


def collate_streams(samples: Sequence[Sequence[Piece]], specs: Mapping[str, ModalitySpec]) -> dict:
    """Raw pieces (specials already in place) -> per-tower batch tensors (see module doc).

    Targets are next-token within each piece; the last token of a piece has no target (an eos
    does not predict the next segment's bos: segment switches are chosen by the caller).
    """
    B = len(samples)
    per: dict[str, list[list[tuple[Tensor, int, bool]]]] = {
        t: [[] for _ in range(B)] for t in specs
    }
    for b, pieces in enumerate(samples):
        pos = 0
        for modality, ids, loss in pieces:
            if modality not in specs:
                raise UserError(
                    f"segment modality {modality!r} has no tower: known {list(specs)} "
                    "(model towers / data modalities)"
                )
            ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()
            per[modality][b].append((ids, pos, loss))
            pos += ids.numel()
    batch = {}
    for t, spec in specs.items():
        T = max(1, max(sum(p[0].numel() for p in row) for row in per[t]))
        ids = torch.full((B, T), spec.pad_id, dtype=torch.long)
        orig = torch.full((B, T), PAD_POS, dtype=torch.long)
        seg_pos = torch.zeros(B, T, dtype=torch.long)
        valid = torch.zeros(B, T, dtype=torch.bool)
        targets = torch.full((B, T), IGNORE, dtype=torch.long)
        for b, row in enumerate(per[t]):
            i = 0
            for piece, pos, loss in row:
                n = piece.numel()
                ids[b, i : i + n] = piece
                orig[b, i : i + n] = torch.arange(pos, pos + n)
                seg_pos[b, i : i + n] = torch.arange(n)
                valid[b, i : i + n] = True
                if loss and n > 1:
                    targets[b, i : i + n - 1] = piece[1:]
                i += n
        batch[t] = {
            "ids": ids,
            "orig_pos": orig,
            "seg_pos": seg_pos,
            "valid": valid,
            "targets": targets,
        }
    return batch


def collate_segments(
    samples: Sequence[Sequence[Segment]],
    specs: Mapping[str, ModalitySpec],
    loss_on: str = "last",
) -> dict:
    """Samples of segments -> per-tower batch. loss_on: "last" (the output segment) or "all"."""
    streams = []
    for sample in samples:
        pieces = []
        for seg, loss in zip(sample, loss_flags(sample, loss_on), strict=True):
            if seg.modality not in specs:
                raise UserError(
                    f"segment modality {seg.modality!r} has no tower: known {list(specs)} "
                    "(model towers / data modalities)"
                )
            pieces.append((seg.modality, wrap(seg, specs[seg.modality]), loss))
        streams.append(pieces)
    return collate_streams(streams, specs)


def loss_flags(sample: Sequence[Segment], loss_on: str) -> list[bool]:
    """Which segments get next-token targets: ``Segment.loss`` where set, else every segment
    (``loss_on="all"``) or only the last, the output (``"last"``)."""
    if loss_on not in ("last", "all"):
        raise UserError(f"loss_on must be 'last' or 'all', got {loss_on!r}")
    last = len(sample) - 1
    return [
        s.loss if s.loss is not None else loss_on == "all" or j == last
        for j, s in enumerate(sample)
    ]


def cross_mask(query: Mapping[str, Tensor], key: Mapping[str, Tensor]) -> Tensor:
    """Boolean mask [B,1,Tq,Tk]: key valid and earlier than the query in the original order."""
    earlier = key["orig_pos"][:, None, :] < query["orig_pos"][:, :, None]  # [B,Tq,Tk]
    return (earlier & key["valid"][:, None, :])[:, None]


def word_distance(
    query: Mapping[str, Tensor],
    key: Mapping[str, Tensor],
    q_tokens_per_word: float,
    k_tokens_per_word: float,
) -> Tensor:
    """[B,1,Tq,Tk] distance in words between a query's and a key's progress through their
    segments: |k_seg_pos / k_tokens_per_word - q_seg_pos / q_tokens_per_word|."""
    q = query["seg_pos"].float()[:, :, None] / q_tokens_per_word
    k = key["seg_pos"].float()[:, None, :] / k_tokens_per_word
    return (k - q).abs()[:, None]


def stream_losses(
    logits: Mapping[str, Tensor], batch: Mapping[str, Mapping[str, Tensor]]
) -> dict[str, tuple[Tensor, Tensor]]:
    """{stream: (summed cross-entropy per sample [B], target count per sample [B])}.

    The one loss of every fine-tuned model: a stream is a Zipper tower or the single decoder's
    one sequence; ``batch[stream]["targets"]`` holds next-token ids, IGNORE = no loss.
    """
    out = {}
    for name, lg in logits.items():
        tgt = batch[name]["targets"]  # [B,T]
        ce = F_.cross_entropy(
            lg.float().flatten(0, 1), tgt.flatten(), ignore_index=IGNORE, reduction="none"
        ).view_as(tgt)  # [B,T], 0 where ignored
        mask = tgt != IGNORE
        out[name] = ((ce * mask).sum(1), mask.sum(1))
    return out


def token_loss(
    logits: Mapping[str, Tensor], batch: Mapping[str, Mapping[str, Tensor]]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-weighted mean cross-entropy over every stream's targets, and the per-stream means.

    A stream without targets in this batch reports 0 and adds nothing to the total.
    """
    parts = stream_losses(logits, batch)
    total = sum(s.sum() for s, _ in parts.values())
    count = sum(n.sum() for _, n in parts.values())
    per_stream = {t: s.sum() / n.sum().clamp(min=1) for t, (s, n) in parts.items()}
    return total / count.clamp(min=1), per_stream
