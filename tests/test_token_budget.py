"""Fine-tuning batches by a token budget (``data.max_tokens``): within budget, each item once per
epoch across ranks, resumable from the global step alone, less padding than fixed batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import zip_config
from tests.test_faults import _StopAt, _stopping
from zipper_pl.data.batches.sampling import (
    StepBatchSampler,
    TokenBudgetBatchSampler,
    padding_share,
)
from zipper_pl.errors import Terminated, UserError
from zipper_pl.stages.chain import zip_stage


def stratified(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Lengths spread over a decade (30-300 tokens), as utterances of 2-20 s are."""
    return np.random.default_rng(seed).integers(30, 300, n)


def take(it, n: int) -> list[list[int]]:
    return [next(it) for _ in range(n)]


def test_every_micro_batch_keeps_the_budget_and_an_epoch_sees_each_item_once_across_ranks():
    lengths, world = stratified(), 2
    samplers = [TokenBudgetBatchSampler(lengths, 2000, seed=3, rank=r, world_size=world)
                for r in range(world)]  # fmt: skip
    steps = samplers[0].epoch_steps(0)
    epoch = [b for r, s in enumerate(samplers) for b in take(iter(s), len(steps))]
    assert all(len(b) * lengths[b].max() <= 2000 for b in epoch)
    seen = [i for b in epoch for i in b]
    assert len(seen) == len(set(seen)) and len(seen) > 0.95 * len(lengths)


@pytest.mark.parametrize("start", [0, 5, 37])  # 37: past the end of the first epoch
def test_a_sampler_started_at_a_step_continues_the_uninterrupted_order(start):
    lengths = stratified(300)
    for rank in (0, 1):
        straight = iter(TokenBudgetBatchSampler(lengths, 1500, seed=1, rank=rank, world_size=2))
        resumed = TokenBudgetBatchSampler(
            lengths, 1500, seed=1, start_batch=start, rank=rank, world_size=2
        )
        assert take(straight, start + 20)[start:] == take(iter(resumed), 20)


def test_token_budget_batches_pad_far_less_than_fixed_batches_of_the_same_mean_size():
    lengths = stratified()
    budget = TokenBudgetBatchSampler(lengths, 4096, seed=0)
    batches = take(iter(budget), len(budget.epoch_steps(0)))
    per_batch = round(np.mean([len(b) for b in batches]))
    fixed = take(iter(StepBatchSampler(len(lengths), per_batch, seed=0)), len(batches))
    bucketed = StepBatchSampler(len(lengths), per_batch, seed=0, lengths=lengths)
    shares = [padding_share(b, lengths) for b in (batches, fixed, take(iter(bucketed), 50))]
    assert shares[0] < 0.05 < 0.3 < shares[1], shares  # budget << random fixed batches
    assert shares[0] <= shares[2] + 0.01, shares  # and no worse than fixed bucketed ones


def test_a_budget_below_the_longest_item_or_too_small_for_the_devices_is_one_line():
    with pytest.raises(UserError, match=r"data.max_tokens=100 is below the longest .*299"):
        TokenBudgetBatchSampler(np.array([10, 299]), 100, seed=0)
    with pytest.raises(UserError, match="fewer micro-batches than the 4 devices"):
        TokenBudgetBatchSampler(np.array([10, 20, 30]), 1000, seed=0, world_size=4)


def test_a_zip_stage_on_token_budget_batches_resumes_as_if_uninterrupted(
    data_root, tiny_towers, tmp_path, monkeypatch
):
    """Stopped by SIGTERM between checkpoints and resumed, a ``data.max_tokens`` run ends with
    the weights of the run that was never stopped."""
    args = ("data.max_tokens=400", "train.max_steps=6", "train.val_every=3",
            "train.ckpt_every=100")  # fmt: skip
    straight = zip_stage(zip_config(data_root, tiny_towers, tmp_path / "straight", *args))
    cfg = zip_config(data_root, tiny_towers, tmp_path / "stopped", *args)
    with monkeypatch.context() as m:
        _stopping(m, _StopAt(step=2))
        with pytest.raises(Terminated, match="at step 2"):
            zip_stage(cfg)
    resumed = zip_stage(cfg)
    want, got = (load_file(f / "model.safetensors") for f in (straight, resumed))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
