"""Generation throughput: new tokens/s of the Zipper for ASR (text out) and TTS (speech out) and
of the single decoder (TTS), batch 1 and 16, greedy, for each engine of models/generation.py:
``static`` (the default: fixed-shape steps, CUDA graphs on CUDA), ``compiled`` (the same step
through torch.compile, timed after its compilation; not in ``--quick``, and on CUDA only with
``--compile``: minutes of compiling that the device check's ~8 minutes do not hold by default),
``dynamic`` (the KV-cached engine it replaced: the peer every speed-up is measured against, in the
same run) and, where ``uncached_batches`` asks, ``uncached`` (the whole prefix recomputed every
step).

The length is forced: random weights with every eos embedding row zeroed (``never_eos``: the
eos logit is exactly 0 while the largest other logit is positive), so each sample runs to its
budget; rows report the tokens actually generated. Every engine's output is compared token for
token with the dynamic engine's (and the uncached one's where it ran).
"""

from __future__ import annotations

import time
from functools import partial

import torch

from benchmarks import synthetic as syn
from benchmarks.common import Env, sync

CASES = {  # name -> (architecture, task, output modality)
    "asr": ("zipper", "asr", "text"),
    "tts": ("zipper", "tts", "speech"),
    "single tts": ("single", "tts", "speech"),
}


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


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x[0].tokens, y[0].tokens) for x, y in zip(a, b, strict=True))


def _models(env: Env, size: str) -> dict:
    models = {"zipper": syn.zipper(size, "text"), "single": syn.single(size)}
    for m in models.values():
        syn.never_eos(m.to(env.device).eval())
    return models


def run(
    env: Env,
    size: str,
    lengths: list[int],
    batches: list[int],
    uncached_batches: list[int],
    reps: int,
) -> list[dict]:
    """One row per (case, batch, new tokens); the dynamic engine is timed once per row on CUDA
    (there it is the slow peer), as often as the others on a CPU; uncached only for
    ``uncached_batches``."""
    models, rows = _models(env, size), []
    d_reps = 1 if env.cuda else reps
    timed_compiled = not env.quick and (env.compile or not env.cuda)
    for case, (arch, task, out) in CASES.items():
        model = models[arch]
        for b in batches:
            prompts = [s[:1] for s in syn.task_samples(syn.pairs(size, b, seed=3), task)]

            def gen(engine: str, n: int, prompts=prompts, model=model, out=out):
                with env.autocast():
                    return model.generate(prompts, [out], n, engine=engine)

            for engine in ("static", "dynamic"):  # warm-up: allocator, kernel choice
                gen(engine, 4)
            for n in lengths:
                t_s, static = _timed(partial(gen, "static", n), env, reps)
                t_d, dynamic = _timed(partial(gen, "dynamic", n), env, d_reps)
                if timed_compiled:  # compiled for this shape first, then timed
                    t0 = time.perf_counter()
                    gen("compiled", n)
                    first_call_s = time.perf_counter() - t0
                    t_c, comp = _timed(partial(gen, "compiled", n), env, reps)
                new = sum(len(r[0].tokens) for r in static)
                row = {
                    "task": case,
                    "out": out,
                    "batch": b,
                    "new_tokens": n,
                    "generated": new,
                    "cached_s": t_s,
                    "cached_tok_s": new / t_s,
                    "dynamic_tok_s": new / t_d,
                    "vs_dynamic": t_d / t_s,
                    "identical_dynamic": _same(static, dynamic),
                }
                if timed_compiled:
                    row["compiled_tok_s"] = new / t_c
                    row["compiled_vs_dynamic"] = t_d / t_c
                    row["identical_compiled"] = _same(comp, dynamic)
                    row["first_call_s"] = first_call_s  # compiling this shape, then generating
                if b in uncached_batches:
                    t_u, ref = _timed(partial(gen, "uncached", n), env, 1)
                    row["uncached_tok_s"] = new / t_u
                    row["speedup"] = t_u / t_s
                    row["identical"] = _same(static, ref)
                rows.append(row)
                print(f"generation {case} batch {b}: {_line(row)}", flush=True)
    return rows


def _line(row: dict) -> str:
    """One row as it lands (a run cut short by a time limit still leaves its figures)."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
