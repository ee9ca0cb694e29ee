"""Judging the systems: the judge stage (the paper's "eval ASR system"), ASR / TTS scoring.

The judge transcribes speech tokens so that TTS output can be scored with WER. It trains on the
gold speech tokens of the FULL aligned training pool (independent of ``aligned_frac``: it is not
a system under test), validates on the valid pool and reports its Oracle WER, the judge on the
gold tokens of the test pool. A judge folder holds ``model.safetensors``, ``judge.json`` (its
``JudgeConfig``), ``judge_vocab.json`` (its CTC labels), ``config.yaml``, ``audio_tokenizer/``
(so evaluation can check that the systems speak the same tokens) and ``metrics.json`` (written
last: marks the stage finished).

The second half generates with a fine-tuned stage (batched, KV-cached, budgets clipped to the
model's ``max_seq_len``) and scores it: ASR WER/CER, TTS WER through the judge (greedy and best
of N seeds), and Wilcoxon signed-rank tests between systems on per-utterance errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np
import torch

from zipper_pl.config import Config, save_config
from zipper_pl.data.audio_tokenizers import AudioTokenizer
from zipper_pl.errors import UserError
from zipper_pl.finetuned import Finetuned
from zipper_pl.io import atomic_write_json, load_weights, read_json, save_weights
from zipper_pl.machine import check_machine
from zipper_pl.metrics import best_of, error_rows, summarize_rows, wilcoxon_paired
from zipper_pl.models.judge import (
    JudgeASR,
    JudgeConfig,
    build_vocab,
    train_judge,
    vocab_from_json,
    vocab_to_json,
)

JUDGE_JSON = "judge.json"
JUDGE_VOCAB_JSON = "judge_vocab.json"
AUDIO_TOKENIZER_DIR = "audio_tokenizer"


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
    from zipper_pl.data.manifest import read_manifest
    from zipper_pl.data.prepare import audio_store, corpus_manifests
    from zipper_pl.data.store import TokenStore

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


def judge_stage(cfg: Config) -> Path:
    """Train the judge ASR on the gold speech tokens of the full aligned training pool."""
    from zipper_pl.layout import (
        claim_stage,
        input_fingerprints,
        stage_dir,
        stage_identity,
        tower_input,
    )

    check_machine(cfg)
    identity = stage_identity(cfg, "judge", input_fingerprints(speech=tower_input(cfg, "speech")))
    out = stage_dir(cfg, "judge", identity["inputs"])
    with claim_stage(out, "judge", identity) as todo:
        if todo:
            _train_judge_stage(cfg, out)
    return out


def _train_judge_stage(cfg: Config, out: Path) -> None:
    from zipper_pl.layout import CONFIG, METRICS, WEIGHTS, copy_artefact, tower_input

    speech = tower_input(cfg, "speech")
    audio_tok = AudioTokenizer.load(speech / AUDIO_TOKENIZER_DIR)
    # the vocabulary always follows the tokenizer; the saved config says what was used
    cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, vocab=audio_tok.vocab_size))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG)
    pools = {p: gold_utterances(cfg, audio_tok, p) for p in ("aligned_train", "valid", "test")}
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    vocab = build_vocab(cfg.judge, [u.text for u in pools["aligned_train"]])
    model = JudgeASR(cfg.judge, vocab).to(device)

    from torch.utils.tensorboard import SummaryWriter

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
    import hashlib

    from zipper_pl.layout import WEIGHTS

    return hashlib.sha256((Path(folder) / WEIGHTS).read_bytes()).hexdigest()[:16]


def load_judge(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[JudgeASR, AudioTokenizer]:
    """Rebuild a trained judge (eval mode) and the audio tokenizer it was trained for."""
    from zipper_pl.layout import WEIGHTS, require_stage

    folder = require_stage(folder, "judge", "inputs.judge")
    # judges from before word labels have no vocabulary file: they are character judges
    vocab_file = folder / JUDGE_VOCAB_JSON
    vocab = vocab_from_json(read_json(vocab_file) if vocab_file.is_file() else {})
    judge = JudgeASR(JudgeConfig(**read_json(folder / JUDGE_JSON)), vocab)
    load_weights(judge, folder / WEIGHTS)
    return judge.to(device).eval(), AudioTokenizer.load(folder / AUDIO_TOKENIZER_DIR)


# ---- generation ------------------------------------------------------------------------------


def _chunks(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length, in batches: similar lengths pad less and share one budget."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]


def _budget_cap(ft: Finetuned, out_mod: str, longest_input: int) -> int:
    """Largest generation budget the model's max_seq_len allows after the longest prompt."""
    if ft.arch == "zipper":  # the output tower holds only bos + generated + eos
        return ft.model.towers[out_mod].cfg.max_seq_len - 2
    return ft.model.tower.cfg.max_seq_len - (longest_input + 3) - 2  # one shared sequence


def generate_asr(ft: Finetuned, utts: list[Utterance], cfg: Config) -> tuple[list[str], int]:
    """Greedy transcripts (batched, KV-cached) and how many batches had their budget clipped."""
    hyps, clipped = [""] * len(utts), 0
    for idx in _chunks([len(u.tokens) for u in utts], cfg.eval.batch_size):
        cap = _budget_cap(ft, "text", max(len(utts[i].tokens) for i in idx))
        clipped += cap < cfg.eval.max_new_text
        out = ft.transcribe(
            [utts[i].tokens for i in idx], len(idx), min(cfg.eval.max_new_text, cap)
        )
        for i, h in zip(idx, out, strict=True):
            hyps[i] = h
    return hyps, clipped


def generate_tts(
    ft: Finetuned, utts: list[Utterance], cfg: Config, temperature: float, seed: int | None
) -> tuple[list[np.ndarray], int]:
    """Speech tokens per transcript; budget = eval.max_new_speech_per_word x words (per batch)."""
    text_len = [len(t) for t in ft.text_tok.encode([u.text for u in utts])]
    want = [math.ceil(cfg.eval.max_new_speech_per_word * max(1, len(u.text.split()))) for u in utts]
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(utts)
    clipped = 0
    for k, idx in enumerate(_chunks(want, cfg.eval.batch_size)):
        cap = _budget_cap(ft, "speech", max(text_len[i] for i in idx))
        budget = min(max(want[i] for i in idx), cap)
        clipped += budget < max(want[i] for i in idx)
        gen = ft.speak(
            [utts[i].text for i in idx],
            [budget] * len(idx),
            batch_size=len(idx),
            temperature=temperature,
            top_k=cfg.eval.top_k or None,
            seed=None if seed is None else seed * 100_003 + k,
        )
        for i, g in zip(idx, gen, strict=True):
            out[i] = g
    return out, clipped


# ---- scoring ---------------------------------------------------------------------------------


def _rate(rows: list[dict]) -> float | None:
    """Corpus rate, or None when no reference has a unit (e.g. a judge that outputs nothing)."""
    units = sum(r["ref_units"] for r in rows)
    return sum(r["errors"] for r in rows) / units if units else None


def eval_asr(ft: Finetuned, utts: list[Utterance], cfg: Config) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    hyps, clipped = generate_asr(ft, utts, cfg)
    refs, ids = [u.text for u in utts], [u.id for u in utts]
    words = error_rows(refs, hyps, ids, unit="word")
    chars = error_rows(refs, hyps, ids, unit="char")
    rows = [
        {
            **w,
            "wer": w["rate"],
            "char_errors": c["errors"],
            "ref_chars": c["ref_units"],
            "cer": c["rate"],
        }
        for w, c in zip(words, chars, strict=True)
    ]
    for r in rows:
        del r["rate"]
    summary = {
        "wer": _rate(words),
        "cer": _rate(chars),
        "n": len(rows),
        "budget_clipped_batches": clipped,
        "wall_s": time.perf_counter() - t0,
    }
    return summary, rows


def eval_tts(
    ft: Finetuned, judge, utts: list[Utterance], targets: list[str], cfg: Config
) -> tuple[dict, list[dict], list[np.ndarray]]:
    """Greedy + best-of-N TTS scored by the judge; returns (summary, rows, greedy tokens)."""
    t0 = time.perf_counter()
    ids, golds = [u.id for u in utts], [u.text for u in utts]
    runs = [("greedy", 0.0, None)] + [
        (f"seed{s}", cfg.eval.temperature, cfg.seed + s) for s in range(cfg.eval.tts_seeds)
    ]
    scored, clipped, truncated = {}, 0, {}
    for name, temperature, seed in runs:
        tokens, c = generate_tts(ft, utts, cfg, temperature, seed)
        clipped += c
        hyps = judge.transcribe(tokens, cfg.eval.batch_size, stats=truncated)
        scored[name] = {
            "tokens": tokens,
            "gold": error_rows(golds, hyps, ids, unit="word"),
            "target": error_rows(targets, hyps, ids, unit="word"),
        }
    seeds = [f"seed{s}" for s in range(cfg.eval.tts_seeds)]
    best = best_of([scored[s]["gold"] for s in seeds])  # per utterance, by errors vs gold
    best_target = [scored[seeds[b["seed"]]]["target"][i] for i, b in enumerate(best)]
    greedy = scored["greedy"]
    rows = []
    for i, u in enumerate(utts):
        rows.append(
            {
                "id": u.id,
                "ref": greedy["gold"][i]["ref"],
                "target": greedy["target"][i]["ref"],
                "gold_tokens": len(u.tokens),
                "greedy_tokens": len(greedy["tokens"][i]),
                "greedy_hyp": greedy["gold"][i]["hyp"],
                "greedy_errors_gold": greedy["gold"][i]["errors"],
                "greedy_errors_target": greedy["target"][i]["errors"],
                "best_seed": best[i]["seed"],
                "best_hyp": best[i]["hyp"],
                "best_errors_gold": best[i]["errors"],
                "best_errors_target": best_target[i]["errors"],
                "ref_words": best[i]["ref_units"],
                "target_words": best_target[i]["ref_units"],
                "seed_hyps": [scored[s]["gold"][i]["hyp"] for s in seeds],
            }
        )
    summary = {
        "greedy": {"wer_gold": _rate(greedy["gold"]), "wer_target": _rate(greedy["target"])},
        "best_of_n": {"wer_gold": _rate(best), "wer_target": _rate(best_target)},
        "seeds": cfg.eval.tts_seeds,
        "temperature": cfg.eval.temperature,
        "top_k": cfg.eval.top_k,
        "n": len(rows),
        "budget_clipped_batches": clipped,
        "judge_truncated": truncated.get("truncated", 0),
        "wall_s": time.perf_counter() - t0,
    }
    return summary, rows, greedy["tokens"]


def significance(per_system: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Wilcoxon signed-rank for every pair of systems on every error list both have."""
    out, names = [], list(per_system)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for task in per_system[a]:
                if task not in per_system[b]:
                    continue
                ea, eb = per_system[a][task], per_system[b][task]
                res = wilcoxon_paired(ea, eb)
                out.append(
                    {
                        "task": task,
                        "a": a,
                        "b": b,
                        "mean_errors_a": float(np.mean(ea)),
                        "mean_errors_b": float(np.mean(eb)),
                        **res,
                    }
                )
    return out
