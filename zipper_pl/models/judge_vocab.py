"""The judge's output labels: characters or whole words (``judge.targets``), their JSON form, and
the two CTC rules the judge relies on (best-path decoding, frames a target needs).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

from zipper_pl.config.components import JudgeConfig
from zipper_pl.metrics import normalize_for_scoring

BLANK = 0


class CharVocab:
    """CTC output alphabet: 0 = blank, then space, apostrophe and a-z.

    ``encode`` normalises with ``normalize_for_scoring`` and drops characters outside the
    alphabet (digits, non-Latin letters); ``unknown`` tells which ones a text would lose.
    """

    kind = "chars"

    def __init__(self) -> None:
        self.units = [" ", "'", *"abcdefghijklmnopqrstuvwxyz"]
        self.index = {c: i + 1 for i, c in enumerate(self.units)}

    def __len__(self) -> int:
        return len(self.units) + 1  # + blank

    def unknown(self, text: str) -> set[str]:
        return {c for c in normalize_for_scoring(text) if c not in self.index}

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in normalize_for_scoring(text) if c in self.index]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.units[i - 1] for i in ids if i != BLANK)


class WordVocab:
    """CTC word labels: 0 = blank, 1 = ``<unk>``, then the known words in first-seen order.

    Words outside the list encode as ``<unk>`` and ``<unk>`` decodes literally, so it never
    matches a reference word. Built from the training transcripts, the list holds every word
    the judge was trained on; ``<unk>`` labels only come from texts scored later.
    """

    kind = "words"
    UNK = "<unk>"

    def __init__(self, words: Sequence[str]) -> None:
        self.units = [self.UNK, *dict.fromkeys(w for w in words if w != self.UNK)]
        self.index = {w: i + 1 for i, w in enumerate(self.units)}

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> WordVocab:
        return cls([w for t in texts for w in normalize_for_scoring(t).split()])

    def __len__(self) -> int:
        return len(self.units) + 1  # + blank

    def unknown(self, text: str) -> set[str]:
        return {w for w in normalize_for_scoring(text).split() if w not in self.index}

    def encode(self, text: str) -> list[int]:
        unk = self.index[self.UNK]
        return [self.index.get(w, unk) for w in normalize_for_scoring(text).split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.units[i - 1] for i in ids if i != BLANK)


Vocab = CharVocab | WordVocab
CHARS = CharVocab()


def build_vocab(cfg: JudgeConfig, train_texts: Sequence[str]) -> Vocab:
    """The label set ``cfg.targets`` asks for; word labels come from ``train_texts``."""
    return CHARS if cfg.targets == "chars" else WordVocab.from_texts(train_texts)


def vocab_to_json(vocab: Vocab) -> dict[str, Any]:
    return {"targets": vocab.kind, "units": vocab.units if vocab.kind == "words" else []}


def vocab_from_json(data: dict[str, Any]) -> Vocab:
    if data.get("targets", "chars") == "chars":
        return CHARS
    return WordVocab(data["units"][1:])  # units[0] is <unk>


def ctc_greedy_decode(
    log_probs: torch.Tensor, lengths: torch.Tensor, vocab: Vocab = CHARS
) -> list[str]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, then remove blanks.

    Collapsing happens before blank removal, so "aa-ab--b" gives "aabb": a repeat separated by
    a blank stays doubled (with word labels, "the the" works the same way). ``log_probs`` is
    (B, T, C); only the first ``lengths[b]`` frames count.
    """
    best = log_probs.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for b in range(best.shape[0]):
        path = torch.unique_consecutive(best[b, : int(lengths[b])]).tolist()
        out.append(vocab.decode(path))
    return out


def ctc_min_frames(target: Sequence[int]) -> int:
    """Frames CTC needs for ``target``: one per label plus a blank between equal neighbours."""
    repeats = sum(1 for a, b in itertools.pairwise(target) if a == b)
    return len(target) + repeats
