"""DataModule for unimodal pretraining: packed windows over a token store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zipper_pl.config import Config
from zipper_pl.data.sampling import train_loader, valid_loader
from zipper_pl.data.store import TokenStore
from zipper_pl.errors import UserError


@dataclass
class LMData:
    """What pretraining needs from data preparation (see ``data/prepare.py``)."""

    vocab_size: int  # tower vocabulary: tokenizer entries + begin/end ids
    bos_id: int
    eos_id: int
    train_store: Path
    valid_store: Path
    artefacts: list[Path] = field(default_factory=list)  # tokenizer files to copy into the stage
    info: dict = field(default_factory=dict)  # counts for metrics.json


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
