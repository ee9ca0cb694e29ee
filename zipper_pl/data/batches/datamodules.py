"""The Lightning layer of data: the DataModules of pretraining (packed windows over a token
store) and of fine-tuning (aligned pairs, ``data/batches/aligned.py``).

Kept apart from data preparation so that naming a stage (``zipper_pl paths``, run at every make
level) never imports Lightning, which costs more than half of a bare CLI start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zipper_pl.config import Config
from zipper_pl.data.batches.aligned import PairTasks, nested_subset, task_items, tasks_of
from zipper_pl.data.batches.sampling import train_loader, valid_loader
from zipper_pl.data.tokens.store import LMData, TokenStore
from zipper_pl.errors import UserError
from zipper_pl.models.sequences import Segment


def collate_with_meta(collate: Callable) -> Callable[[list[dict]], dict]:
    def fn(items: list[dict]) -> dict:
        return {
            "model": collate([it["segments"] for it in items]),
            "tasks": [it["task"] for it in items],
            "ids": [it["id"] for it in items],
            "texts": [it["text"] for it in items],
            "segments": [it["segments"] for it in items],
        }

    return fn


class AlignedDataModule(L.LightningDataModule):
    """Train on the ``aligned_frac`` subset; validate/test on the fixed splits."""

    def __init__(
        self,
        cfg: Config,
        prepare: Callable[[Config], dict],
        collate: Callable[[list[list[Segment]]], dict],
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self._prepare = prepare
        self.collate = collate_with_meta(collate)
        self.valid_batches = cfg.data.valid_batches
        self.batch_size = cfg.data.batch_size
        self.prepared: dict | None = None

    def prepare_data(self) -> None:
        self.prepared = self._prepare(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is None:
            self.prepared = self._prepare(self.cfg)
        p, d = self.prepared, self.cfg.data
        all_train = p["pairs"]["aligned_train"]
        chosen = nested_subset(len(all_train), d.aligned_frac, self.cfg.seed)
        self.train_pairs = [all_train[i] for i in chosen]
        self.train_set = PairTasks(
            self.train_pairs, task_items(len(chosen), d.task, d.asr_tts_ratio)
        )
        tasks = tasks_of(d.task)
        self.valid_set = PairTasks(
            p["pairs"]["valid"], [(i, t) for i in range(len(p["pairs"]["valid"])) for t in tasks]
        )
        self.test_pairs = p["pairs"]["test"]
        self.info = {
            "aligned_pairs_total": len(all_train),
            "aligned_pairs_used": len(self.train_pairs),
            "train_items": len(self.train_set),
            **{f"skipped_{k}": v for k, v in p["skipped"].items()},
        }
        world = self.trainer.world_size if self.trainer else 1
        if not self.trainer or self.trainer.is_global_zero:
            print(
                f"[data] aligned_frac={d.aligned_frac}: {len(self.train_pairs)} of "
                f"{len(all_train)} aligned pairs, {len(self.train_set)} {d.task} items"
            )
        if d.max_tokens:  # micro-batches by a token budget: TokenBudgetBatchSampler checks it
            self.batch_size, self.info["max_tokens"] = None, d.max_tokens
            print(f"[data] micro-batches of at most data.max_tokens={d.max_tokens} padded tokens")
            return
        if len(self.train_set) < d.batch_size * world and d.shrink_batch_to_subset:
            per_device = max(1, len(self.train_set) // world)
            print(
                f"[data] batch_size {d.batch_size} -> {per_device}: the subset is smaller than "
                "one batch (data.shrink_batch_to_subset)"
            )
            self.cfg = dataclasses.replace(
                self.cfg, data=dataclasses.replace(d, batch_size=per_device)
            )
        elif len(self.train_set) < d.batch_size * world:
            raise UserError(
                f"data.aligned_frac={d.aligned_frac} keeps {len(self.train_pairs)} of "
                f"{len(all_train)} aligned pairs, fewer than one batch of data.batch_size="
                f"{d.batch_size} x {world} devices: raise aligned_frac or lower data.batch_size"
            )
        self.info["batch_size"] = self.cfg.data.batch_size

    def train_dataloader(self) -> DataLoader:
        return train_loader(
            self.train_set,
            self.cfg,
            self.trainer,
            collate_fn=self.collate,
            lengths=self.train_set.lengths(),
        )

    def val_dataloader(self) -> DataLoader:
        return valid_loader(self.valid_set, self.cfg, self.trainer, collate_fn=self.collate)


class PackedWindows(Dataset):
    """Item i = window i of the stream ``bos x_0 eos bos x_1 eos ...`` cut every ``seq_len`` tokens.

    Packing keeps padding at zero; attention crosses utterance boundaries like GPT pretraining,
    with ``bos`` telling the model where a new utterance starts.
    """

    def __init__(self, store: TokenStore, bos: int, eos: int, seq_len: int) -> None:
        self.store, self.bos, self.eos, self.seq_len = store, bos, eos, seq_len
        lengths = store.lengths.astype(np.int64) + 2
        self.starts = np.concatenate([[0], np.cumsum(lengths)])  # flat offset of each item
        total = int(self.starts[-1])
        self.n_windows = max(0, (total - 1) // seq_len)

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = i * self.seq_len, i * self.seq_len + self.seq_len + 1
        first = int(np.searchsorted(self.starts, lo, side="right")) - 1
        last = int(np.searchsorted(self.starts, hi - 1, side="right")) - 1
        pieces = []
        for j in range(first, last + 1):  # a handful of utterances per window
            item = np.concatenate([[self.bos], self.store[j], [self.eos]])
            a = max(lo - int(self.starts[j]), 0)
            b = min(hi - int(self.starts[j]), len(item))
            pieces.append(item[a:b])
        window = torch.from_numpy(np.concatenate(pieces).astype(np.int64))  # [seq_len+1]
        return window[:-1], window[1:]


class LMDataModule(L.LightningDataModule):
    """Unimodal token stream; ``prepare`` builds/loads the corpus, tokenizer and token stores."""

    def __init__(self, cfg: Config, prepare: Callable[[Config], LMData]) -> None:
        super().__init__()
        self.cfg = cfg
        self._prepare = prepare
        self.lm_data: LMData | None = None
        self.valid_batches = cfg.data.valid_batches
        self.batch_size = cfg.data.batch_size

    def prepare_data(self) -> None:
        self.lm_data = self._prepare(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.lm_data is None:
            self.lm_data = self._prepare(self.cfg)
        d, seq = self.lm_data, self.cfg.data.seq_len
        self.train_set = PackedWindows(TokenStore(d.train_store), d.bos_id, d.eos_id, seq)
        self.valid_set = PackedWindows(TokenStore(d.valid_store), d.bos_id, d.eos_id, seq)
        if len(self.train_set) == 0 or len(self.valid_set) == 0:
            raise UserError(
                f"not enough tokens for one window of data.seq_len={seq} "
                f"(train {len(self.train_set)}, valid {len(self.valid_set)} windows): "
                "lower data.seq_len or use a bigger corpus"
            )

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer else 1
        bs = self.cfg.data.batch_size
        if len(self.train_set) < bs * world:
            raise UserError(
                f"{len(self.train_set)} training windows cannot fill one global batch of "
                f"data.batch_size={bs} x {world} devices: lower data.batch_size or data.seq_len"
            )
        return train_loader(self.train_set, self.cfg, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return valid_loader(self.valid_set, self.cfg, self.trainer)
