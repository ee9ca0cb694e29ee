"""The duration predictor reading the previous runs' durations (``vocoder.dur_context``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.test_vocoder import TINY
from zipper_pl.errors import UserError
from zipper_pl.models.vocoder import DurationPredictor, UnitVocoder


def _alternating(n: int = 64, runs: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random units whose runs last 1, 2, 1, 2 ... or 2, 1, 2, 1 ... frames, as the first unit
    says: what a later run lasts is not in its units, only in its neighbour's duration (as where
    the frame grid falls)."""
    g = torch.Generator().manual_seed(seed)
    units = torch.randint(0, 8, (n, runs), generator=g)
    phase = units[:, :1] % 2
    return units, 1 + (torch.arange(runs) + phase) % 2


def _trained(context: int) -> DurationPredictor:
    torch.manual_seed(0)
    net = DurationPredictor(8, 32, kernel=3, dropout=0.0, layers=2, classes=3, context=context)
    units, frames = _alternating()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(250):
        loss = net.loss(units, frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_previous_durations_teach_what_the_units_cannot_say():
    units, frames = _alternating(16, seed=1)  # unseen
    nets = {c: _trained(c) for c in (0, 1)}
    with torch.no_grad():
        exact = {c: (net.frames(units) == frames)[:, 1:].float().mean() for c, net in nets.items()}
    assert exact[1] > 0.9 and exact[0] < 0.7, exact


def test_teacher_forcing_reads_only_earlier_runs_and_decoding_agrees_with_it():
    torch.manual_seed(1)
    net = DurationPredictor(8, 16, kernel=5, layers=2, classes=4, context=2).eval()
    units = torch.randint(0, 8, (3, 10))
    frames = torch.randint(1, 6, (3, 10))
    later = frames.clone()
    later[:, 6:] = torch.randint(1, 6, (3, 4))
    with torch.no_grad():
        # run i reads runs i-1 and i-2: logits up to run 6 cannot see a change from run 6 on
        assert torch.equal(net(units, frames)[:, :7], net(units, later)[:, :7])
        with pytest.raises(ValueError, match="frames"):
            net(units)  # teacher forcing without the frames to force
        decoded = net.frames(units)  # run by run, each reading the ones decoded before it
        assert torch.equal(net(units, decoded).argmax(-1) + 1, decoded)
        assert decoded.min() >= 1 and decoded.max() <= 4


def test_context_needs_classes_and_off_keeps_the_old_layout():
    with pytest.raises(UserError, match="vocoder.dur_classes"):
        UnitVocoder(dataclasses.replace(TINY, dur_context=2), vocab_size=8, hop=320)
    plain = UnitVocoder(dataclasses.replace(TINY, dur_classes=3), vocab_size=8, hop=320)
    read = UnitVocoder(dataclasses.replace(TINY, dur_classes=3, dur_context=2), vocab_size=8,
                       hop=320)  # fmt: skip
    extra = set(read.duration.state_dict()) - set(plain.duration.state_dict())
    assert extra == {"previous.0.weight", "previous.1.weight"}
    assert len(read.durations(torch.tensor([1, 2, 3]))) == 3
