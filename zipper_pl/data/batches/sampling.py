"""Resumable, rank-sharded batch order: a pure function of (seed, step, rank).

Lightning restores loop state but not a sampler's position, so a resumed run would replay the
first batches of an epoch. Here the index stream is an endless chain of seeded permutations and
micro-batch ``s`` of the run is always the same slice of it, so a resume at step ``s`` continues
exactly where the run stopped. Each global micro-batch is split across ranks, so every sample is
seen once per epoch across all ranks (exact sharding, no padding with repeats).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler, Subset

from zipper_pl.errors import UserError


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches from ``start_batch`` on, forever.

    With ``lengths`` given, each window of ``bucket_batches`` global batches is sorted by length
    before being cut into batches (then the batches are shuffled), so padding stays small while
    the data order stays random at the window scale.
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        *,
        seed: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lengths: np.ndarray | None = None,
        bucket_batches: int = 32,
    ) -> None:
        if n_items < batch_size * world_size:
            raise ValueError(
                f"{n_items} items cannot fill one global batch of {batch_size} x {world_size}"
            )
        self.n_items = n_items
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        self.seed = seed
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucket_batches = bucket_batches
        # whole global batches per epoch; the remainder is dropped (a different one each epoch)
        self.batches_per_epoch = n_items // self.global_batch

    def _epoch_batches(self, epoch: int) -> np.ndarray:
        """[batches_per_epoch, global_batch] item indices of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n_items)[: self.batches_per_epoch * self.global_batch]
        if self.lengths is not None:
            window = self.bucket_batches * self.global_batch
            for lo in range(0, len(order), window):
                chunk = order[lo : lo + window]
                order[lo : lo + window] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches = order.reshape(self.batches_per_epoch, self.global_batch)
            return batches[rng.permutation(self.batches_per_epoch)]
        return order.reshape(self.batches_per_epoch, self.global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while True:
            batches = self._epoch_batches(epoch)
            for b in range(offset, self.batches_per_epoch):
                yield batches[b, lo:hi].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        # Lightning treats the loader as endless (max_steps ends training)
        return 10**12


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches by a token budget, from ``start_batch`` on, forever.

    Each epoch is a seeded permutation, sorted by length within windows of ``window`` items and
    packed greedily: a micro-batch takes items while ``items x longest`` (its padded tokens)
    stays within ``max_tokens``. ``world_size`` consecutive micro-batches (similar lengths: ranks
    wait little for each other) make a global step, and the steps are shuffled. As in
    ``StepBatchSampler``, the order is a pure function of (seed, step, rank): a resume at
    ``start_batch`` continues exactly, and every item is seen once per epoch across ranks (the
    micro-batches short of a whole global step are dropped, others each epoch). Written here,
    not taken from lhotse's ``DynamicBucketingSampler``: that one resumes from its own saved
    state and shards by skipping, where ours resumes from the global step alone.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        max_tokens: int,
        *,
        seed: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        window: int = 4096,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        longest = int(self.lengths.max()) if len(self.lengths) else 0
        if longest > max_tokens:
            raise UserError(
                f"data.max_tokens={max_tokens} is below the longest training item ({longest} "
                "tokens): raise it (it must hold at least one item)"
            )
        self.max_tokens, self.seed, self.window = max_tokens, seed, window
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size
        if not self.epoch_steps(0):
            raise UserError(
                f"data.max_tokens={max_tokens} packs {len(self.lengths)} items into fewer "
                f"micro-batches than the {world_size} devices of one step: lower it"
            )

    def epoch_steps(self, epoch: int) -> list[list[list[int]]]:
        """[step][rank] -> item indices of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        for lo in range(0, len(order), self.window):
            chunk = order[lo : lo + self.window]
            order[lo : lo + self.window] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        batches, batch, longest = [], [], 0
        for i in order.tolist():
            longest_with = max(longest, int(self.lengths[i]))
            if batch and (len(batch) + 1) * longest_with > self.max_tokens:
                batches.append(batch)
                batch, longest_with = [], int(self.lengths[i])
            batch.append(i)
            longest = longest_with
        batches.append(batch)
        w = self.world_size
        steps = [batches[k : k + w] for k in range(0, len(batches) - w + 1, w)]
        return [steps[k] for k in rng.permutation(len(steps))]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = 0, self.start_batch
        while offset >= len(steps := self.epoch_steps(epoch)):
            epoch, offset = epoch + 1, offset - len(steps)
        while True:
            for step in steps[offset:]:
                yield step[self.rank]
            epoch, offset = epoch + 1, 0
            steps = self.epoch_steps(epoch)

    def __len__(self) -> int:
        return 10**12  # endless, as StepBatchSampler


def padding_share(batches: list[list[int]], lengths: np.ndarray) -> float:
    """Padded positions / all positions of these micro-batches (each padded to its longest)."""
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - sum(int(lengths[b].sum()) for b in batches) / padded


class StepDataLoader(DataLoader):
    """A DataLoader over a ``StepBatchSampler``: its position is a function of the global step,
    which Lightning restores, so it is resumable by construction (Lightning's ``_Stateful``
    protocol tells the trainer so; loading needs no state of its own)."""

    def state_dict(self) -> dict:
        sampler = self.batch_sampler
        return {"start_batch": getattr(sampler, "start_batch", 0)}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the sampler was built from the restored global step."""


def _rank_world(trainer) -> tuple[int, int]:
    return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)


def train_loader(
    dataset, cfg, trainer, *, collate_fn=None, lengths: np.ndarray | None = None
) -> StepDataLoader:
    """The training loader every DataModule uses: resumes at the trainer's global step and
    shards each global batch exactly across ranks (``cfg`` is the root Config)."""
    rank, world = _rank_world(trainer)
    start = trainer.global_step * cfg.train.accumulate if trainer else 0
    if cfg.data.max_tokens and lengths is not None:
        sampler = TokenBudgetBatchSampler(
            lengths, cfg.data.max_tokens, seed=cfg.seed, start_batch=start, rank=rank,
            world_size=world,
        )  # fmt: skip
    else:
        sampler = StepBatchSampler(
            len(dataset), cfg.data.batch_size, seed=cfg.seed, start_batch=start, rank=rank,
            world_size=world, lengths=lengths,
        )  # fmt: skip
    return StepDataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
    )


def valid_loader(dataset, cfg, trainer, *, collate_fn=None) -> DataLoader:
    """A fixed validation subset (the first items), split across ranks without overlap."""
    rank, world = _rank_world(trainer)
    bs = cfg.data.batch_size
    n = min(len(dataset), bs * cfg.data.valid_batches * world)
    subset = Subset(dataset, list(range(rank, n, world)))
    return DataLoader(subset, batch_size=bs, shuffle=False, collate_fn=collate_fn)
