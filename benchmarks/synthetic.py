"""Random-weight models and synthetic token data shaped like the embedded corpus: no corpus,
tokenizer or pretrained weights needed, so the suite runs anywhere in seconds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zipper_pl.config import load_config
from zipper_pl.models.sequences import ModalitySpec, Segment
from zipper_pl.models.single import SingleDecoder
from zipper_pl.models.tower import Tower, tower_config
from zipper_pl.models.zipper import ZipperConfig, ZipperModel

TEXT_VOCAB = 1024  # the demo SentencePiece vocabulary (experiments/demo/pretrain_text.yaml)
SPEECH_K = 256  # the demo units tokenizer (k-means entries)
TEXT_TOKENS_PER_WORD = 1.37  # the demo tokenizer, as the zip stage measured it
SPEECH_PER_TEXT_TOKEN = 5  # pairs(): text tokens ~ speech tokens / 5


def specs() -> dict[str, ModalitySpec]:
    """Text: SentencePiece layout (unk 0, bos 1, eos 2, pad 3); speech: K codes + boa/eoa."""
    return {
        "text": ModalitySpec("text", TEXT_VOCAB, bos_id=1, eos_id=2, pad_id=3),
        "speech": ModalitySpec("speech", SPEECH_K + 2, SPEECH_K, SPEECH_K + 1, SPEECH_K + 1),
    }


@dataclass(frozen=True)
class Workload:
    """Batch shapes of one scale. LM windows follow experiments/<scale>/pretrain_*.yaml; pairs
    follow the fine-tuning batch (units at 50/s de-duplicated: ~3 speech tokens per text token
    of a short sentence)."""

    lm_batch: int
    text_seq: int
    speech_seq: int
    pairs: int
    speech_len: tuple[int, int]  # uniform range of speech tokens per utterance
    text_len: tuple[int, int]
    max_seq_len: int  # tower context (room for 512 generated tokens after a prompt)


WORKLOADS: dict[str, Workload] = {
    "tiny": Workload(2, 16, 32, 2, (8, 16), (3, 6), 128),
    "demo": Workload(32, 128, 256, 16, (100, 220), (12, 40), 1024),
    "s": Workload(16, 1024, 1024, 32, (300, 700), (30, 100), 2048),
}


def towers(size: str, seed: int = 0) -> dict[str, Tower]:
    """Freshly initialised text and speech towers of one size (seeded)."""
    sp, w = specs(), WORKLOADS[size]
    torch.manual_seed(seed)
    return {
        t: Tower(tower_config(size, sp[t].vocab_size, max_seq_len=w.max_seq_len))
        for t in ("text", "speech")
    }


def zip_config(size: str, freeze: str) -> ZipperConfig:
    """The fusion layout the scale's experiment file trains (the schema default if it has none)."""
    path = Path(__file__).resolve().parents[1] / "experiments" / size / "zip_asr.yaml"
    base = load_config(path).zip if path.is_file() else ZipperConfig()
    # the zip stage measures these on the aligned data; here they follow pairs()' lengths
    tokens_per_word = {
        "text": TEXT_TOKENS_PER_WORD,
        "speech": TEXT_TOKENS_PER_WORD * SPEECH_PER_TEXT_TOKEN,
    }
    return dataclasses.replace(base, freeze=freeze, tokens_per_word=tokens_per_word)


def zipper(size: str, freeze: str, seed: int = 0) -> ZipperModel:
    return ZipperModel(zip_config(size, freeze), towers(size, seed), specs())


def single(size: str, seed: int = 0) -> SingleDecoder:
    sp = specs()
    return SingleDecoder.from_text_tower(
        towers(size, seed)["text"], [sp["text"], sp["speech"]], seed
    )


def lm_batch(vocab: int, batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed window batch: inputs and next-token targets [B,T] (no padding)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(4, vocab, (batch, seq + 1), generator=g)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def pairs(size: str, n: int | None = None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(speech tokens, text tokens) pairs, bucketed like StepBatchSampler: a pool 32x the batch
    is drawn, sorted by length, and one contiguous run is kept (the padding stays small)."""
    w = WORKLOADS[size]
    n = n or w.pairs
    rng = np.random.default_rng(seed)
    pool = 32 * n
    s_len = rng.integers(w.speech_len[0], w.speech_len[1] + 1, pool)
    t_len = np.clip(
        (s_len / SPEECH_PER_TEXT_TOKEN + rng.normal(0, 3, pool)).astype(int), *w.text_len
    )
    order = np.argsort(s_len + t_len, kind="stable")
    keep = order[pool // 2 : pool // 2 + n]
    return [
        (
            rng.integers(0, SPEECH_K, s_len[i]).astype(np.int64),
            rng.integers(4, TEXT_VOCAB, t_len[i]).astype(np.int64),
        )
        for i in keep
    ]


def task_samples(prs: list[tuple[np.ndarray, np.ndarray]], task: str) -> list[list[Segment]]:
    """ASR = [speech, text], TTS = [text, speech] (data/batches/aligned.py's make_sample)."""
    out = []
    for s, t in prs:
        speech = Segment("speech", torch.from_numpy(s))
        text = Segment("text", torch.from_numpy(t))
        out.append([speech, text] if task == "asr" else [text, speech])
    return out


def never_eos(model: torch.nn.Module) -> None:
    """Zero the (tied) embedding rows of every eos id: that logit is then exactly 0 while the
    largest of the other random logits is positive, so greedy decoding never stops early and
    generation runs to its budget (forces the benchmarked length)."""
    with torch.no_grad():
        if isinstance(model, ZipperModel):
            for t, spec in model.specs.items():
                model.towers[t].tok_emb.weight[spec.eos_id] = 0.0
        else:
            for name, spec in model.specs.items():
                model.tower.tok_emb.weight[model.offsets[name] + spec.eos_id] = 0.0
