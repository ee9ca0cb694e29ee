"""The judge (the paper's "eval ASR system"): its stage folder's work, loading it, the gold
utterances it and every scored system read, and its Oracle scores. Below the stage modules: the
judge stage's entry point is ``stages.judge_stage``; ``evaluate`` and ``ablation`` train a
missing judge through ``run_judge``.

The judge transcribes speech tokens so that TTS output can be scored with WER. It trains on the
gold speech tokens of the FULL aligned training pool (independent of ``aligned_frac``: it is not
a system under test), validates on the valid pool and reports its Oracle WER, the judge on the
gold tokens of the test pool. A judge folder holds ``model.safetensors``, ``judge.json`` (its
``JudgeConfig``), ``judge_vocab.json`` (its CTC labels), ``config.yaml``, ``audio_tokenizer/``
(so evaluation can check that the systems speak the same tokens) and ``metrics.json`` (written
last: marks the stage finished).

Generating with fine-tuned stages and scoring them through the judge: ``scoring.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from zipper_pl.config import Config, save_config
from zipper_pl.data.batches.sampling import TokenBudgetBatchSampler
from zipper_pl.data.corpora.manifest import read_manifest
from zipper_pl.data.modalities import load_units_tokenizer
from zipper_pl.data.prepare import audio_store, corpus_manifests
from zipper_pl.data.tokenizers.audio_tokenizers import AUDIO_TOKENIZER_DIR, AudioTokenizer
from zipper_pl.data.tokens.store import TokenStore
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_json, copy_artefact, load_weights, read_json, save_weights
from zipper_pl.metrics import error_rows, summarize_rows
from zipper_pl.models.judge import (
    JudgeASR,
    JudgeConfig,
    train_judge,
)
from zipper_pl.models.judge_vocab import (
    build_vocab,
    vocab_from_json,
    vocab_to_json,
)
from zipper_pl.runs.layout import (
    CONFIG,
    METRICS,
    WEIGHTS,
    claim_stage,
    input_fingerprints,
    require_stage,
    stage_dir,
    stage_identity,
    tower_input,
)
from zipper_pl.runs.machine import use_threads

JUDGE_JSON = "judge.json"
JUDGE_VOCAB_JSON = "judge_vocab.json"


@dataclass
class Utterance:
    """One test/valid/train utterance: transcript and gold speech tokens (T,)."""

    id: str
    text: str
    tokens: np.ndarray


def gold_utterances(cfg: Config, audio_tok: AudioTokenizer, pool: str) -> list[Utterance]:
    """Utterances of a pool with a transcript and cached gold speech tokens, in manifest order.

    Tokens come from the shared token cache (keyed by the tokenizer's fingerprint), so the judge
    and every evaluated system read exactly the same gold tokens.
    """
    with filelock.FileLock(str(Path(cfg.data.cache_dir).with_suffix(".lock"))):
        manifest = corpus_manifests(cfg)[pool]
        store = TokenStore(audio_store(cfg, audio_tok, pool, need_transcript=True))
    row = {uid: j for j, uid in enumerate(store.ids)}
    out = [
        Utterance(r.id, r.text, np.array(store[row[r.id]], dtype=np.int64))
        for r in read_manifest(manifest)
        if r.text and r.id in row
    ]
    if not out:
        raise UserError(
            f"no utterances with transcript and speech tokens in the {pool!r} pool: "
            "check data.corpus / data.*_splits"
        )
    return out


def _device(cfg: Config) -> torch.device:
    gpu_ok = cfg.train.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if gpu_ok and torch.cuda.is_available() else "cpu")


def oracle_scores(judge: JudgeASR, utts: list[Utterance], batch_size: int) -> dict:
    """The judge on gold tokens: transcripts ("targets"), per-utterance rows, corpus WER/CER."""
    hyps = judge.transcribe([u.tokens for u in utts], batch_size=batch_size)
    refs, ids = [u.text for u in utts], [u.id for u in utts]
    words = error_rows(refs, hyps, ids, unit="word")
    chars = error_rows(refs, hyps, ids, unit="char")
    return {
        "hyps": hyps,
        "rows": words,
        "wer": summarize_rows(words)["rate"],
        "cer": summarize_rows(chars)["rate"],
        "n": len(utts),
    }


def _token_budget(cfg: Config):
    """``data.max_tokens``: the judge's micro-batches by a token budget, as fine-tuning's (the
    same sampler: bucketed by length, a pure function of the seed); 0: fixed batches."""
    if not cfg.data.max_tokens:
        return None
    print(f"[judge] micro-batches of at most data.max_tokens={cfg.data.max_tokens} tokens")
    return lambda lengths: iter(
        TokenBudgetBatchSampler(lengths, cfg.data.max_tokens, seed=cfg.seed)
    )


def run_judge(cfg: Config) -> Path:
    """Train the judge ASR on the gold speech tokens of the full aligned training pool: the
    judge's stage folder, trained now unless finished (the machine is the caller's to check)."""
    identity = stage_identity(cfg, "judge", input_fingerprints(speech=tower_input(cfg, "speech")))
    out = stage_dir(cfg, "judge", identity["inputs"])
    with claim_stage(out, "judge", identity) as todo:
        if todo:
            _train_judge_stage(cfg, out)
    return out


def _train_judge_stage(cfg: Config, out: Path) -> None:
    # its oracle WER is on the corpus' test split, as its identity says (not eval.test_words)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, test_words=[]))
    speech = tower_input(cfg, "speech")
    audio_tok = load_units_tokenizer(speech)
    # the vocabulary always follows the tokenizer; the saved config says what was used
    cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, vocab=audio_tok.vocab_size))
    use_threads(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG)
    pools = {p: gold_utterances(cfg, audio_tok, p) for p in ("aligned_train", "valid", "test")}
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    vocab = build_vocab(cfg.judge, [u.text for u in pools["aligned_train"]])
    model = JudgeASR(cfg.judge, vocab).to(device)

    writer = SummaryWriter(str(out / "tb"))

    def log(step: int, values: dict) -> None:
        scalars = {k: v for k, v in values.items() if isinstance(v, int | float) and np.isfinite(v)}
        for k, v in scalars.items():
            writer.add_scalar(f"judge/{k}", v, step)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in scalars.items() if k in ("loss", "lr"))
        print(f"[judge] step {step}/{cfg.train.max_steps}: {shown or scalars}", flush=True)

    t0 = time.perf_counter()
    metrics = train_judge(
        model,
        [(u.tokens, u.text) for u in pools["aligned_train"]],
        [(u.tokens, u.text) for u in pools["valid"]],
        steps=cfg.train.max_steps,
        lr=cfg.train.lr,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        log_fn=log,
        warmup_steps=cfg.train.warmup_steps,
        weight_decay=cfg.train.weight_decay,
        clip=cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf"),
        log_every=cfg.train.log_every,
        batcher=_token_budget(cfg),
    )
    fit_s = time.perf_counter() - t0
    oracle = oracle_scores(model, pools["test"], cfg.eval.batch_size)
    for i, (u, hyp) in enumerate(zip(pools["test"], oracle["hyps"], strict=True)):
        if i < 5:
            writer.add_text("judge/test", f"ref: {u.text}  \nhyp: {hyp}", cfg.train.max_steps)
    writer.add_scalar("judge/oracle_wer", oracle["wer"], cfg.train.max_steps)
    writer.close()
    metrics = {
        "stage": "judge",
        **metrics,
        "oracle_wer": oracle["wer"],
        "oracle_cer": oracle["cer"],
        "test_utterances": oracle["n"],
        "params": sum(p.numel() for p in model.parameters()),
        "targets": cfg.judge.targets,
        "labels": len(vocab),
        "fit_wall_s": fit_s,
        "precision": "32-true",  # its own loop, no autocast: the yardstick stays fp32
        "audio_fingerprint": audio_tok.fingerprint(),
    }
    copy_artefact(speech / AUDIO_TOKENIZER_DIR, out)
    atomic_write_json(out / JUDGE_JSON, dataclasses.asdict(cfg.judge))
    atomic_write_json(out / JUDGE_VOCAB_JSON, vocab_to_json(vocab))
    save_weights(model.state_dict(), out / WEIGHTS)
    atomic_write_json(out / METRICS, metrics)  # last: marks the stage finished
    print(f"[judge] {out}\n{json.dumps(metrics, indent=2, default=float)}")


def judge_fingerprint(folder: str | Path) -> str:
    """Identifies a trained judge by its weights, so cached TTS scores know which judge spoke."""
    return hashlib.sha256((Path(folder) / WEIGHTS).read_bytes()).hexdigest()[:16]


def load_judge(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[JudgeASR, AudioTokenizer]:
    """Rebuild a trained judge (eval mode) and the audio tokenizer it was trained for."""
    folder = require_stage(folder, "judge", "inputs.judge")
    # judges from before word labels have no vocabulary file: they are character judges
    vocab_file = folder / JUDGE_VOCAB_JSON
    vocab = vocab_from_json(read_json(vocab_file) if vocab_file.is_file() else {})
    judge = JudgeASR(JudgeConfig(**read_json(folder / JUDGE_JSON)), vocab)
    load_weights(judge, folder / WEIGHTS)
    return judge.to(device).eval(), load_units_tokenizer(folder)
