"""Aligned (speech, transcript) pairs for fine-tuning: nested ``aligned_frac`` subsets, tasks.

A pair holds one token array per modality. A task is data (``TASKS``): its ordered input
modalities and its output modality sequence, e.g. ASR = speech -> [text]; a sample is that
pair's segments in the task's order, the outputs marked for loss. The model decides how segments
become tensors (``collate``); this module only decides which pairs, which tasks and in which
order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zipper_pl.config.components import MIX, TASKS, Task  # noqa: F401 (Task: re-exported)
from zipper_pl.data.corpora.manifest import Record, read_manifest
from zipper_pl.data.tokens.store import TokenStore
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
