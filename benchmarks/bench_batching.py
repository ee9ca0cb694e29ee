"""Fixed batches against a token budget (``data.max_tokens``) on a length-stratified set: the
padding share and the training throughput in real (non-padding) tokens per second.

``python -m benchmarks.bench_batching [--size demo] [--items 1024] [--steps 40] [--batch 16]``
prints a markdown table and writes ``bench_batching.json``. The set is Zipper ASR pairs whose
speech lengths spread over a decade (30-300 units, as 1-12 s utterances at 25 Hz) and whose
transcripts follow them; the model is the scale's Zipper with the text tower frozen, stepped as
Lightning steps it (``bench_train.make_step``). Each sampler draws its batches from the same set
and seed; the budget is the fixed batch's mean padded size, so both move the same tokens on
average and the difference is what padding and batch shape cost. Run alone: it is timed.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from benchmarks import synthetic as syn
from benchmarks.bench_train import make_step
from benchmarks.common import detect
from zipper_pl.data.batches.sampling import (
    StepBatchSampler,
    TokenBudgetBatchSampler,
    padding_share,
)
from zipper_pl.models.sequences import token_loss


def stratified_pairs(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(speech, text) token pairs, speech lengths uniform in 30-300, text ~ speech / 5.4."""
    rng = np.random.default_rng(seed)
    s_len = rng.integers(30, 301, n)
    t_len = np.clip((s_len / syn.SPEECH_PER_TEXT_TOKEN + rng.normal(0, 2, n)).astype(int), 3, 80)
    speech = [rng.integers(0, syn.SPEECH_K, s).astype(np.int64) for s in s_len]
    text = [rng.integers(4, syn.TEXT_VOCAB, t).astype(np.int64) for t in t_len]
    return list(zip(speech, text, strict=True))


def samplers(lengths: np.ndarray, batch: int, seed: int) -> dict[str, object]:
    """The two fixed samplers and two budgets: the one whose micro-batches hold ``batch``
    items on average (the same work per step), and the bucketed batches' largest padded size
    (the same peak memory)."""
    fixed = StepBatchSampler(len(lengths), batch, seed=seed, lengths=lengths)
    peak = int(max(len(b) * lengths[b].max() for b in islice(iter(fixed), 256)))
    same_mean = int(lengths.max())
    while np.mean([len(b) for b in islice(iter(_budget(lengths, same_mean, seed)), 256)]) < batch:
        same_mean = round(same_mean * 1.02)
    return {
        "fixed, random order": StepBatchSampler(len(lengths), batch, seed=seed),
        "fixed, bucketed (default)": fixed,
        f"token budget {same_mean} (same mean batch)": _budget(lengths, same_mean, seed),
        f"token budget {peak} (same peak)": _budget(lengths, peak, seed),
    }


def _budget(lengths: np.ndarray, max_tokens: int, seed: int) -> TokenBudgetBatchSampler:
    return TokenBudgetBatchSampler(lengths, max_tokens, seed=seed)


def timed_steps(model, collated: list[dict], env, warmup: int = 3) -> float:
    """Seconds of the optimizer steps after ``warmup`` (allocator, kernels: every run's first)."""
    current: dict = {}

    def loss():
        return token_loss(model(current["b"], outputs=["text"]), current["b"])[0]

    step = make_step(model, loss, env)
    for k, b in enumerate(collated):
        if k == warmup:
            t0 = time.perf_counter()
        current["b"] = b
        step()
    return time.perf_counter() - t0


def run(size: str, items: int, steps: int, batch: int, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    pairs = stratified_pairs(items, seed)
    samples = syn.task_samples(pairs, "asr")
    lengths = np.array([len(s) + len(t) for s, t in pairs])
    env = detect(force_cpu=True)
    rows = []
    for name, sampler in samplers(lengths, batch, seed).items():
        model = syn.zipper(size, "text")
        batches = list(islice(iter(sampler), steps + 3))
        collated = [model.collate([samples[i] for i in b], loss_on="last") for b in batches]
        wall = timed_steps(model, collated, env)
        timed = batches[3:]
        rows.append({
            "batches": name,
            "padding": padding_share(timed, lengths),
            "mean_items": float(np.mean([len(b) for b in timed])),
            "largest_padded": int(max(len(b) * lengths[b].max() for b in batches)),
            "real_tokens_per_s": sum(int(lengths[b].sum()) for b in timed) / wall,
            "wall_s": wall,
            "env": env.name,
        })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_batching")
    ap.add_argument("--size", default="demo")
    ap.add_argument("--items", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("bench_batching.json"))
    args = ap.parse_args()
    rows = run(args.size, args.items, args.steps, args.batch)
    args.out.write_text(json.dumps(rows, indent=1))
    base = rows[1]["real_tokens_per_s"]
    print(f"{rows[0]['env']}, {args.size} Zipper ASR (text frozen), {args.steps} steps each\n")
    print(
        "| batches | padding | mean items | largest (padded tokens) | real tokens/s | vs default |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batches']} | {r['padding']:.1%} | {r['mean_items']:.1f} | "
              f"{r['largest_padded']:,} | {r['real_tokens_per_s']:,.0f} | "
              f"{r['real_tokens_per_s'] / base:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
