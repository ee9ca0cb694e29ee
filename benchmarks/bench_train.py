"""Training-step throughput: forward + backward + clip + AdamW step (the project's optimizer).

Cases per scale: text tower and speech tower alone (packed pretraining windows), Zipper ASR with
the text tower frozen, Zipper all unfrozen, the single-decoder baseline, and the two towers alone
on exactly the Zipper batch's streams (the denominator of the Zipper overhead ratio).
Plain PyTorch, no Lightning loop: this is the model's cost, not the trainer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F_

from benchmarks import flops as fl
from benchmarks import synthetic as syn
from benchmarks.common import Env, peak_memory, sync, time_fn
from zipper_pl.config import TrainConfig
from zipper_pl.lit.common import adamw
from zipper_pl.models.sequences import IGNORE, collate_segments, token_loss
from zipper_pl.models.single import STREAM
from zipper_pl.models.tower import Tower
from zipper_pl.runs.trainer import compile_forward


def _to(x, device: torch.device):
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    return x.to(device)


def make_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], env: Env):
    """One optimizer step as Lightning would run it (zero_grad, loss, backward, clip, step)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = adamw(named, TrainConfig(lr=1e-5, warmup_steps=0))  # tiny lr: weights stay sane
    params = [p for _, p in named]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with env.autocast():
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()

    return step


def logits_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of logits [B,T,V] against targets [B,T], in float32."""
    return F_.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)


def _lm_loss(tower: Tower, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits_loss(tower(x), y)


def _measure(name, model, loss_fn, tokens, flops, env, reps, extra=None) -> list[dict]:
    """The case's row, eager; with ``env.compile`` a second row for the same model with its
    forward compiled (as ``train.compile`` does), timed after the compilation."""
    model.to(env.device).train()
    rows = [_time_steps(name, make_step(model, loss_fn, env), tokens, flops, env, reps, extra)]
    if env.compile:
        regions = compile_forward(model)
        step = make_step(model, loss_fn, env)
        t0 = time.perf_counter()
        step()  # compiles forward and backward graphs; not part of the timing or peak memory
        sync(env)
        compile_s = time.perf_counter() - t0
        row = _time_steps(name, step, tokens, flops, env, reps, extra)
        row.update(compiled=True, compile_s=compile_s, compiled_regions=regions,
                   vs_eager=row["step_s"] / rows[0]["step_s"])  # fmt: skip
        rows.append(row)
    return rows


def _time_steps(name, step, tokens, flops, env, reps, extra) -> dict:
    with peak_memory(env) as mem:
        t = time_fn(step, env, warmup=1, reps=reps)
    sec = t["median_s"]
    return {
        "case": name,
        "compiled": False,
        "step_s": sec,
        "tokens": tokens,
        "tokens_per_s": tokens / sec,
        "model_flops": flops,
        "flops_per_s": flops / sec,
        "peak_mb": mem["peak_mb"],
        "peak_scope": mem["peak_scope"],
        "reps": t["reps"],
        **(extra or {}),
    }


def _stream_lengths(batch: dict) -> dict[str, list[int]]:
    return {t: batch[t]["valid"].sum(1).tolist() for t in batch}


def _padding(batch: dict) -> float:
    real = sum(int(b["valid"].sum()) for b in batch.values())
    total = sum(b["valid"].numel() for b in batch.values())
    return 1.0 - real / total


def run_size(size: str, env: Env, reps: int) -> list[dict]:
    """All training cases at one scale; each row has tokens/s, FLOPs, peak memory."""
    dev, w, sp = env.device, syn.WORKLOADS[size], syn.specs()
    rows = []
    # -- the towers alone on their pretraining windows (packed: no padding) --
    for t, seq in (("text", w.text_seq), ("speech", w.speech_seq)):
        tower = syn.towers(size)[t]
        x, y = _to(syn.lm_batch(sp[t].vocab_size, w.lm_batch, seq, seed=1), dev)
        lengths = [seq] * w.lm_batch
        f = fl.tower_flops(tower.cfg, lengths)
        rows += _measure(
            f"{t} tower LM",
            tower,
            lambda tw=tower, x=x, y=y: _lm_loss(tw, x, y),
            x.numel(),
            f,
            env,
            reps,
            {"batch": f"{w.lm_batch}x{seq}", "padding": 0.0},
        )
        del tower
    # -- the fine-tuning batch: ASR pairs --
    samples = syn.task_samples(syn.pairs(size), "asr")
    batch = collate_segments(samples, sp, loss_on="last")
    lengths = _stream_lengths(batch)
    has_targets = {t: bool((batch[t]["targets"] != IGNORE).any()) for t in batch}
    loss_towers = [t for t, has in has_targets.items() if has]  # as FinetuneModule asks
    zb = _to(batch, dev)
    pad = _padding(batch)
    shape = "x".join(str(batch[t]["ids"].size(1)) for t in ("speech", "text"))
    info = {"batch": f"{len(samples)} pairs (speech x text cols {shape})", "padding": pad}
    n_tok = sum(sum(v) for v in lengths.values())
    for freeze, label in (("text", "zipper ASR, text frozen"), ("none", "zipper ASR, unfrozen")):
        model = syn.zipper(size, freeze)
        f = fl.zipper_flops(model, lengths, has_targets)
        rows += _measure(
            label,
            model,
            lambda m=model: token_loss(m(zb, outputs=loss_towers), zb)[0],
            n_tok,
            f,
            env,
            reps,
            info,
        )
        del model
    # -- the towers alone on exactly the Zipper's streams (the overhead ratio's denominator) --
    for t in ("text", "speech"):
        tower = syn.towers(size)[t]
        x = zb[t]["ids"]
        y = torch.where(zb[t]["valid"], torch.roll(zb[t]["ids"], -1, 1), IGNORE)
        f = fl.tower_flops(tower.cfg, lengths[t])
        rows += _measure(
            f"{t} tower on zipper stream",
            tower,
            lambda tw=tower, x=x, y=y: _lm_loss(tw, x, y),
            sum(lengths[t]),
            f,
            env,
            reps,
            info,
        )
        del tower
    for compiled in {r["compiled"] for r in rows}:  # eager rows against eager towers, etc.
        same = [
            r for r in rows if r["case"].endswith("on zipper stream") and r["compiled"] == compiled
        ]
        base = sum(r["step_s"] for r in same)
        base_flops = sum(r["model_flops"] for r in same)
        for r in rows:
            if r["case"].startswith("zipper") and r["compiled"] == compiled:
                r["vs_towers"] = r["step_s"] / base
                r["flops_vs_towers"] = r["model_flops"] / base_flops  # noise-free: fusion's cost
    # -- single decoder on the same pairs, one stream --
    model = syn.single(size)
    sb = _to(model.collate(samples, loss_on="last"), dev)
    s_len = sb[STREAM]["valid"].sum(1).tolist()
    f = fl.tower_flops(model.tower.cfg, s_len)
    s_info = {
        "batch": f"{len(samples)} pairs ({sb[STREAM]['ids'].size(1)} cols)",
        "padding": 1.0 - sum(s_len) / sb[STREAM]["valid"].numel(),
    }
    rows += _measure(
        "single decoder ASR",
        model,
        lambda m=model: token_loss(m(sb), sb)[0],
        sum(s_len),
        f,
        env,
        reps,
        s_info,
    )
    for r in rows:
        r["size"] = size
    return rows


def run(env: Env, sizes: list[str], reps: int, matmul_flops: float) -> list[dict]:
    rows = []
    for size in sizes:
        rows += run_size(size, env, reps)
    for r in rows:
        r["utilisation"] = r["flops_per_s"] / matmul_flops
    return rows
