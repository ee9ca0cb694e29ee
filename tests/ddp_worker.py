"""Run by tests/test_ddp.py as a script: Lightning's DDP launcher starts it again as rank 1.

Each rank records the content of every training window it consumes and its final weights, so
the test can check exact sharding (disjoint data) and that the exported weights are rank 0's.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

from tests.conftest import tiny_config
from zipper_pl.fitting import towers
from zipper_pl.stages import chain


class Recorder(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x, _ = batch
        self.seen += [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x]

    def on_train_end(self, trainer, pl_module) -> None:
        rank = trainer.global_rank
        (self.out / f"seen{rank}.json").write_text(json.dumps(self.seen))
        torch.save(pl_module.tower.state_dict(), self.out / f"weights{rank}.pt")


def main(data_root: str, out: str) -> None:
    out_dir = Path(out)
    real = towers.make_trainer

    def with_recorder(cfg, folder, **kw):
        trainer = real(cfg, folder, progress=False)
        trainer.callbacks.insert(0, Recorder(out_dir))
        return trainer

    towers.make_trainer = with_recorder
    cfg = tiny_config(
        Path(data_root),
        out_dir,
        "pretrain_text.yaml",
        f"out={out_dir / 'stage'}",
        "train.strategy=ddp",
        "train.devices=2",
        "train.max_steps=3",
        "train.val_every=3",
    )
    chain.pretrain(cfg)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
