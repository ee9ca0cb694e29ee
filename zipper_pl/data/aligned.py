"""Aligned (speech, transcript) pairs for fine-tuning: nested ``aligned_frac`` subsets, tasks.

A pair holds one token array per modality. A task is data (``TASKS``): its ordered input
modalities and its output modality sequence, e.g. ASR = speech -> [text]; a sample is that
pair's segments in the task's order, the outputs marked for loss. The model decides how segments
become tensors (``collate``); this module only decides which pairs, which tasks and in which
order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zipper_pl.config import Config
from zipper_pl.config.components import MIX, TASKS, Task  # noqa: F401 (Task: re-exported)
from zipper_pl.data.manifest import Record, read_manifest
from zipper_pl.data.sampling import train_loader, valid_loader
from zipper_pl.data.store import TokenStore
from zipper_pl.errors import UserError
from zipper_pl.models.sequences import Segment

SPECIALS_PER_SEGMENT = 2  # bos + eos around every segment, in every architecture


def fits(segment_lengths: Sequence[int], max_total: int) -> bool:
    """Whether segments of these lengths, each wrapped in bos/eos, fit one sequence of
    ``max_total`` (the single decoder's): the one length rule of training and evaluation, so
    every system is trained and tested on the same pairs."""
    return sum(segment_lengths) + SPECIALS_PER_SEGMENT * len(segment_lengths) <= max_total


def tasks_of(task: str) -> list[str]:
    """The tasks ``data.task`` names: one, or every task for ``mix``."""
    return list(MIX) if task == "mix" else [task]


def transcribing_task(task: str) -> str:
    """The task a stage trained with ``data.task`` transcribes speech with (its task whose last
    output is text: ``asr``, or ``asr_phonemes``); ``asr`` for a stage that has none (TTS)."""
    return next((t for t in tasks_of(task) if TASKS[t].writes_text), "asr")


@dataclass
class Pair:
    """One utterance: its transcript and its token array per modality (in a fixed order)."""

    id: str
    text: str
    tokens: dict[str, np.ndarray]


def nested_subset(n: int, frac: float, seed: int) -> np.ndarray:
    """Indices of the ``frac`` subset: a prefix of one seeded permutation, so smaller fractions
    are always inside larger ones (the 1% pairs are among the 10% pairs)."""
    order = np.random.default_rng([seed, 1_000_003]).permutation(n)
    return np.sort(order[: max(1, math.ceil(frac * n))])


def task_items(n_pairs: int, task: str, asr_tts_ratio: float) -> list[tuple[int, str]]:
    """(pair, task) items; ``mix`` keeps ASR:TTS at ``asr_tts_ratio`` using every pair once for
    the larger task and the first pairs again for the smaller one."""
    if task in TASKS:
        return [(i, task) for i in range(n_pairs)]
    if asr_tts_ratio <= 1.0:
        n_asr, n_tts = round(asr_tts_ratio * n_pairs), n_pairs
    else:
        n_asr, n_tts = n_pairs, round(n_pairs / asr_tts_ratio)
    asr, tts = MIX
    return [(i, asr) for i in range(n_asr)] + [(i, tts) for i in range(n_tts)]


def tokens_per_word(pairs: Sequence[Pair]) -> dict[str, float]:
    """Mean tokens per transcript word of every modality over ``pairs`` (zip.align_prior)."""
    words = sum(len(p.text.split()) for p in pairs)
    if not pairs or words == 0:
        raise UserError("cannot measure tokens per word: no aligned pair has a transcript word")
    return {m: sum(len(p.tokens[m]) for p in pairs) / words for m in pairs[0].tokens}


def make_sample(pair: Pair, task: str) -> list[Segment]:
    """The pair's segments in the task's order; the output segments get next-token loss."""
    t = TASKS[task]
    roles = [(m, False) for m in t.inputs] + [(m, True) for m in t.outputs]  # by position:
    # a modality can be an input and an output of one task (continuation)
    return [
        Segment(m, torch.from_numpy(pair.tokens[m].astype(np.int64)), loss=out) for m, out in roles
    ]


class PairTasks(Dataset):
    """Item = {"segments", "task", "id", "text"}; collation is the model's business."""

    def __init__(self, pairs: Sequence[Pair], items: Sequence[tuple[int, str]]) -> None:
        self.pairs, self.items = pairs, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        return np.array([sum(map(len, self.pairs[i].tokens.values())) for i, _ in self.items])

    def __getitem__(self, k: int) -> dict:
        i, task = self.items[k]
        p = self.pairs[i]
        return {"segments": make_sample(p, task), "task": task, "id": p.id, "text": p.text}


# modality -> (records -> one token array per record, None where it has none)
Encoders = Mapping[str, Callable[[Sequence[Record]], list[np.ndarray | None]]]


def load_pairs(
    manifest_path: Path, encoders: Encoders, max_total: int
) -> tuple[list[Pair], dict[str, int]]:
    """One pair per manifest record with a transcript and a token array of every modality in
    ``encoders``; count what is dropped, by reason.

    ``max_total``: longest total of all segments + their specials kept (the single decoder's one
    sequence holds them all): one limit for every architecture, so all see the same pairs.
    """
    all_records = read_manifest(manifest_path)
    records = [r for r in all_records if r.text]
    arrays = {m: encode(records) for m, encode in encoders.items()}
    pairs, skipped = [], {"no_transcript": len(all_records) - len(records)}
    skipped |= {f"no_{m}_tokens": 0 for m in encoders} | {"too_long_or_empty": 0}
    for k, r in enumerate(records):
        tokens = {m: arrays[m][k] for m in encoders}
        missing = [m for m, t in tokens.items() if t is None]
        if missing:
            skipped[f"no_{missing[0]}_tokens"] += 1
        elif not all(map(len, tokens.values())) or not fits(
            list(map(len, tokens.values())), max_total
        ):
            skipped["too_long_or_empty"] += 1
        else:
            pairs.append(Pair(r.id, r.text, tokens))
    return pairs, skipped


def store_encoder(store_dir: Path) -> Callable[[Sequence[Record]], list[np.ndarray | None]]:
    """Records -> their cached token arrays (copies: memmap views are read-only)."""
    store = TokenStore(store_dir)
    by_id = {uid: j for j, uid in enumerate(store.ids)}
    return lambda records: [
        np.array(store[by_id[r.id]]) if r.id in by_id else None for r in records
    ]


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
