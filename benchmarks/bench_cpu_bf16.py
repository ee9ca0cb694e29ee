"""bf16 on the CPU: every training case of ``bench_train`` timed in fp32 and under CPU bf16
autocast (what ``train.precision=bf16-mixed`` runs), in the same process, as ratios; plus the
square-matmul rates and an ``s`` text-tower step at a CPU-sized batch, where the matrices are
large enough for the bf16 kernels to show.

Which CPUs have the kernels: ``zipper_pl.runs.provenance.BF16_FLAGS`` (AVX-512 BF16, AMX); on
others bf16 autocast only adds casts, and ``train.precision=auto`` stays in fp32.

``python -m benchmarks.bench_cpu_bf16 [--sizes demo] [--reps 3] [--out bf16.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from benchmarks import bench_train
from benchmarks import synthetic as syn
from benchmarks.common import Env, detect, matmul_reference, time_fn, write_atomic
from zipper_pl.runs.provenance import cpu_bf16_flags

S_BATCH = (2, 256)  # rows x tokens of the `s` tower step: seconds, not minutes, on 2 cores


class CpuBf16Env(Env):
    """The CPU environment with bf16 autocast around each step's forward and loss."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16)


def environments() -> tuple[Env, CpuBf16Env]:
    fp32 = detect(force_cpu=True)
    bf16 = CpuBf16Env(fp32.device, torch.bfloat16, f"{fp32.name} -> bf16 autocast")
    return fp32, bf16


def _s_tower_rows(fp32: Env, bf16: Env, reps: int) -> list[dict]:
    tower = syn.towers("s")["text"].train()
    rows_, cols = S_BATCH
    x, y = syn.lm_batch(syn.specs()["text"].vocab_size, rows_, cols, seed=1)
    times = {}
    for name, env in (("fp32", fp32), ("bf16", bf16)):
        step = bench_train.make_step(tower, lambda: bench_train._lm_loss(tower, x, y), env)
        times[name] = time_fn(step, env, warmup=1, reps=reps)["median_s"]
    return [_row("s", f"text tower LM ({rows_}x{cols})", times["fp32"], times["bf16"])]


def _row(size: str, case: str, fp32_s: float, bf16_s: float) -> dict:
    return {"size": size, "case": case, "fp32_step_s": fp32_s, "bf16_step_s": bf16_s,
            "speedup": fp32_s / bf16_s}  # fmt: skip


def run(sizes: list[str], reps: int = 3, with_s: bool = True) -> dict:
    fp32, bf16 = environments()
    flags = cpu_bf16_flags()
    mm = {
        n: {d: matmul_reference(e, n)["flops_per_s"] for d, e in (("fp32", fp32), ("bf16", bf16))}
        for n in (512, 2048)
    }
    rows = []
    for size in sizes:
        eager32 = bench_train.run_size(size, fp32, reps)
        eager16 = bench_train.run_size(size, bf16, reps)
        for a, b in zip(eager32, eager16, strict=True):
            rows.append(_row(size, a["case"], a["step_s"], b["step_s"]))
    if with_s:
        rows += _s_tower_rows(fp32, bf16, reps)
    return {"machine": fp32.name, "bf16_flags": flags, "matmul": mm, "rows": rows}


def markdown(res: dict) -> str:
    flags = ", ".join(res["bf16_flags"]) or "none (bf16 autocast only adds casts here)"
    lines = [f"CPU bf16 on {res['machine']}; bf16 kernels: {flags}", ""]
    lines += ["| matmul n^3 | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |", "|---:|---:|---:|---:|"]
    for n, r in res["matmul"].items():
        lines.append(f"| {n} | {r['fp32'] / 1e9:,.0f} | {r['bf16'] / 1e9:,.0f} | "
                     f"{r['bf16'] / r['fp32']:.2f}x |")  # fmt: skip
    lines += ["", "| size | training case | fp32 step | bf16 step | speed-up |"]
    lines.append("|---|---|---:|---:|---:|")
    for r in res["rows"]:
        lines.append(f"| {r['size']} | {r['case']} | {r['fp32_step_s'] * 1e3:.0f} ms | "
                     f"{r['bf16_step_s'] * 1e3:.0f} ms | {r['speedup']:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_cpu_bf16")
    ap.add_argument("--sizes", default="demo", help="bench_train scales, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per case (median)")
    ap.add_argument("--no-s", action="store_true", help="skip the `s` text-tower step")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in syn.WORKLOADS:
            ap.error(f"--sizes: unknown scale {s!r}; choose from {sorted(syn.WORKLOADS)}")
    res = run(sizes, max(1, args.reps), not args.no_s)
    if args.out:
        write_atomic(args.out, json.dumps(res, indent=1) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
