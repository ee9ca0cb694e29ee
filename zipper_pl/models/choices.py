"""The output modality chosen by the model (left to future work by the paper, PAPER.md 3.2).

With ``zip.choose_output`` each tower gets a head that reads the tower's final state at the end
token of each of its segments and names what comes next: another segment of some modality, or
"done". Training puts a target at every segment's end, the inputs' too: the state at the input's
end decides what the answer is written in (ASR: speech in, text out; TTS: text in, speech out),
and the state at an output's end decides whether another segment follows. Generation with
``output_modalities="auto"`` (``generation.generate_auto``) asks the heads after the prompt and
after every generated segment, and follows them.

The choice is a separate head, not extra vocabulary tokens: a frozen pretrained tower cannot learn
new token embeddings, but a head on its states trains like the fusion layers; the end token the
towers read stays the eos they were pretrained with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from zipper_pl.models.sequences import IGNORE, ModalitySpec, Segment

AUTO = "auto"  # output_modalities that lets the model choose
CHOICE = ".next"  # stream name suffix of a tower's choice logits / targets
DONE = "done"  # the choice after the last segment


def choice_classes(towers: Sequence[str]) -> list[str]:
    """What a choice head predicts, by index: each tower's modality, then ``DONE``."""
    return [*towers, DONE]


class ChoiceHeads(nn.Module):
    """One linear head per tower: final-norm hidden state [B,T,D] -> choice logits [B,T,K]."""

    def __init__(self, widths: Mapping[str, int]) -> None:
        super().__init__()
        self.classes = choice_classes(list(widths))
        self.heads = nn.ModuleDict({t: nn.Linear(d, len(self.classes)) for t, d in widths.items()})

    def forward(self, tower: str, hidden: Tensor) -> Tensor:
        return self.heads[tower](hidden)


def choice_targets(
    samples: Sequence[Sequence[Segment]],
    specs: Mapping[str, ModalitySpec],
    lengths: Mapping[str, int],
) -> dict[str, dict[str, Tensor]]:
    """{tower + CHOICE: {"targets": [B,T]}}: at the end token of each segment (wrapped as bos ..
    eos in its tower's stream, as ``collate_segments`` lays it out), the index of the next
    segment's modality in ``choice_classes(specs)``; ``DONE`` after the last; IGNORE elsewhere.
    ``lengths[t]`` = T of tower t's stream."""
    classes = choice_classes(list(specs))
    out = {t: torch.full((len(samples), lengths[t]), IGNORE, dtype=torch.long) for t in specs}
    for b, sample in enumerate(samples):
        filled = dict.fromkeys(specs, 0)
        for j, seg in enumerate(sample):
            t = seg.modality
            filled[t] += len(seg.tokens) + 2  # bos + tokens + eos
            following = sample[j + 1].modality if j + 1 < len(sample) else DONE
            out[t][b, filled[t] - 1] = classes.index(following)
    return {t + CHOICE: {"targets": tgt} for t, tgt in out.items()}


def last_choices(
    logits: Mapping[str, Tensor], batch: Mapping[str, Mapping[str, Tensor]], last: list[str]
) -> list[int]:
    """The chosen class per sample: argmax of the choice logits at the end token of the
    sample's last segment (of modality ``last[b]``: its tower's last valid position)."""
    picks = []
    for b, t in enumerate(last):
        pos = int(batch[t]["valid"][b].sum()) - 1
        picks.append(int(logits[t + CHOICE][b, pos].argmax()))
    return picks
