"""Generating with a fine-tuned stage and scoring it (below the stage modules: ``evaluate`` and
``ablation`` both score with it).

Generation is batched and KV-cached, with budgets clipped to the model's ``max_seq_len``. Scores:
ASR WER/CER, TTS WER through the judge (greedy and best of N seeds), Wilcoxon signed-rank tests
between systems on per-utterance errors, and one ablation cell's TTS or ASR WER with its
per-utterance errors (``tts_cell_metrics``, ``asr_cell_metrics``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from zipper_pl.config import Config
from zipper_pl.data.batches.aligned import fits
from zipper_pl.fitting.judging import Utterance, gold_utterances, load_judge, oracle_scores
from zipper_pl.io import read_json
from zipper_pl.metrics import best_of, error_rows, wilcoxon_paired
from zipper_pl.runs.finetuned import TOWERS_JSON, Finetuned, load_finetuned


def fitting(utts: list[Utterance], folder: Path, encode_text) -> list[bool]:
    """Which test utterances the stage in ``folder`` can take: the training rule
    (``aligned.fits``) within its shortest tower."""
    max_total = min(c["max_seq_len"] for c in read_json(folder / TOWERS_JSON).values())
    text_ids = encode_text([u.text for u in utts])
    pairs = zip(utts, text_ids, strict=True)
    return [fits([len(u.tokens), len(t)], max_total) for u, t in pairs]


# ---- generation ------------------------------------------------------------------------------


def _chunks(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length, in batches: similar lengths pad less and share one budget."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]


def generate_asr(ft: Finetuned, utts: list[Utterance], cfg: Config) -> tuple[list[str], int]:
    """Greedy transcripts (batched, KV-cached) and how many batches had their budget clipped."""
    hyps, clipped = [""] * len(utts), 0
    for idx in _chunks([len(u.tokens) for u in utts], cfg.eval.batch_size):
        cap = ft.model.budget_cap("text", max(len(utts[i].tokens) for i in idx))
        clipped += cap < cfg.eval.max_new_text
        budget = min(cfg.eval.max_new_text, cap)
        tokens = [utts[i].tokens for i in idx]
        out = ft.transcribe(tokens, len(idx), budget, engine=cfg.eval.engine)
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
        cap = ft.model.budget_cap("speech", max(text_len[i] for i in idx))
        budget = min(max(want[i] for i in idx), cap)
        clipped += budget < max(want[i] for i in idx)
        gen = ft.speak(
            [utts[i].text for i in idx],
            [budget] * len(idx),
            batch_size=len(idx),
            temperature=temperature,
            top_k=cfg.eval.top_k or None,
            seed=None if seed is None else seed * 100_003 + k,
            engine=cfg.eval.engine,
        )
        for i, g in zip(idx, gen, strict=True):
            out[i] = g
    return out, clipped


# ---- scoring ---------------------------------------------------------------------------------


def corpus_rate(rows: list[dict]) -> float | None:
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
        "wer": corpus_rate(words),
        "cer": corpus_rate(chars),
        "n": len(rows),
        "budget_clipped_batches": clipped,
        "wall_s": time.perf_counter() - t0,
    }
    return summary, rows


def eval_tts(
    ft: Finetuned, judge, utts: list[Utterance], targets: list[str], cfg: Config
) -> tuple[dict, list[dict], list[np.ndarray]]:
    """Greedy + best-of-N TTS scored by the judge on the tokens; returns (summary, rows, the
    tokens of every run: "greedy", "seed0", ...), so the audio scoring hears the same samples."""
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
        "greedy": {
            "wer_gold": corpus_rate(greedy["gold"]),
            "wer_target": corpus_rate(greedy["target"]),
        },
        "best_of_n": {"wer_gold": corpus_rate(best), "wer_target": corpus_rate(best_target)},
        "seeds": cfg.eval.tts_seeds,
        "temperature": cfg.eval.temperature,
        "top_k": cfg.eval.top_k,
        "n": len(rows),
        "budget_clipped_batches": clipped,
        "judge_truncated": truncated.get("truncated", 0),
        "wall_s": time.perf_counter() - t0,
    }
    return summary, rows, {name: run["tokens"] for name, run in scored.items()}


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


def tts_cell_metrics(folder: Path, judge_dir: Path, cfg: Config) -> dict:
    """TTS WER of one TTS stage through the judge (best of N and greedy): an ablation cell."""
    judge, judge_tok = load_judge(judge_dir)
    ft = load_finetuned(folder)
    utts = gold_utterances(cfg, judge_tok, "test")
    if cfg.eval.max_utterances:
        utts = utts[: cfg.eval.max_utterances]
    keep = fitting(utts, folder, ft.text_tok.encode)
    skipped = keep.count(False)
    if skipped:
        print(f"[tts] {folder.name}: {skipped} of {len(utts)} test utterances too long, skipped")
    utts = [u for u, ok in zip(utts, keep, strict=True) if ok]
    targets = oracle_scores(judge, utts, cfg.eval.batch_size)["hyps"]
    summary, rows, _ = eval_tts(ft, judge, utts, targets, cfg)
    return {
        "errors": {r["id"]: r["best_errors_gold"] for r in rows},  # for paired tests
        "tts_wer_gold": summary["best_of_n"]["wer_gold"],
        "tts_wer_target": summary["best_of_n"]["wer_target"],
        "tts_wer_gold_greedy": summary["greedy"]["wer_gold"],
        "n": summary["n"],
        "skipped_too_long": skipped,
    }


def asr_cell_metrics(folder: Path, cfg: Config) -> dict:
    """Test ASR WER of one ASR stage on the test utterances every system fits (as ``make
    evaluate`` scores them), with per-utterance errors for paired tests: an ablation cell."""
    ft = load_finetuned(folder)
    utts = gold_utterances(cfg, ft.audio_tok, "test")
    if cfg.eval.max_utterances:
        utts = utts[: cfg.eval.max_utterances]
    keep = fitting(utts, folder, ft.text_tok.encode)
    if keep.count(False):
        print(f"[asr] {folder.name}: {keep.count(False)} of {len(utts)} test utterances too "
              "long, skipped")  # fmt: skip
    utts = [u for u, ok in zip(utts, keep, strict=True) if ok]
    summary, rows = eval_asr(ft, utts, cfg)
    return {
        "errors": {r["id"]: r["errors"] for r in rows},
        "asr_wer": summary["wer"],
        "asr_cer": summary["cer"],
        "n": summary["n"],
        "skipped_too_long": keep.count(False),
    }
