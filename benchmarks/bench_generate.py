"""Generation throughput of the Zipper: new tokens/s for ASR (text out) and TTS (speech out),
batch 1 and 16, cached (KV caches + cached cross-attention keys/values) and uncached (the whole
prefix recomputed every step), 256 and 512 new tokens, greedy.

The length is forced: random weights with every eos embedding row zeroed (``never_eos``: the
eos logit is exactly 0 while the largest other logit is positive), so each sample runs to its
budget; rows report the tokens actually generated. Cached and uncached outputs are compared
token for token.
"""

from __future__ import annotations

import time
from functools import partial

import torch

from benchmarks import synthetic as syn
from benchmarks.common import Env, sync

TASKS = {"asr": "text", "tts": "speech"}


def _timed(fn, env: Env, reps: int) -> tuple[float, list]:
    """Median wall seconds over reps (the last run's output is returned)."""
    times, out = [], None
    for _ in range(max(1, reps)):
        sync(env)
        t0 = time.perf_counter()
        out = fn()
        sync(env)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def run(
    env: Env,
    size: str,
    lengths: list[int],
    batches: list[int],
    uncached_batches: list[int],
    reps: int,
) -> list[dict]:
    """One row per (task, batch, new tokens); uncached is timed only for ``uncached_batches``."""
    model = syn.zipper(size, "text").to(env.device).eval()
    syn.never_eos(model)
    rows = []
    for task, out in TASKS.items():
        for b in batches:
            prompts = [s[:1] for s in syn.task_samples(syn.pairs(size, b, seed=3), task)]
            with env.autocast():
                model.generate(prompts, [out], 4)  # warm-up: allocator, kernel choice
            for n in lengths:
                with env.autocast():
                    t_c, cached = _timed(partial(model.generate, prompts, [out], n), env, reps)
                new = sum(len(r[0].tokens) for r in cached)
                row = {
                    "task": task,
                    "out": out,
                    "batch": b,
                    "new_tokens": n,
                    "generated": new,
                    "cached_s": t_c,
                    "cached_tok_s": new / t_c,
                }
                if b in uncached_batches:
                    with env.autocast():
                        t_u, ref = _timed(
                            partial(model.generate_uncached, prompts, [out], n), env, 1
                        )
                    row["uncached_s"] = t_u
                    row["uncached_tok_s"] = new / t_u
                    row["speedup"] = t_u / t_c
                    row["identical"] = all(
                        torch.equal(x[0].tokens, y[0].tokens)
                        for x, y in zip(cached, ref, strict=True)
                    )
                rows.append(row)
    return rows
