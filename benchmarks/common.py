"""Shared benchmark plumbing: device choice, timing (warm-up + median), peak memory, the matmul
reference every utilisation figure is divided by, and atomic file output."""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Env:
    """Where and how the suite runs: CUDA -> bf16 autocast, else CPU fp32."""

    device: torch.device
    dtype: torch.dtype  # compute dtype of matmuls (autocast on CUDA)
    name: str  # human-readable machine description
    quick: bool = False  # tiny sizes, 1 repetition (smoke test)
    compile: bool = False  # also time every training case with its forward torch.compile'd

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (what Lightning's bf16-mixed does); a no-op on CPU."""
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def detect(quick: bool = False, force_cpu: bool = False, compile: bool = False) -> Env:
    if torch.cuda.is_available() and not force_cpu:
        dev = torch.device("cuda")
        name = f"{torch.cuda.get_device_name(dev)} (bf16 autocast)"
        return Env(dev, torch.bfloat16, name, quick, compile)
    cpu = _cpu_model()
    name = f"CPU {cpu}, {torch.get_num_threads()} torch threads (fp32)"
    return Env(torch.device("cpu"), torch.float32, name, quick, compile)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return os.uname().machine


def sync(env: Env) -> None:
    if env.cuda:
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], env: Env, warmup: int = 1, reps: int = 3) -> dict:
    """Median (and min) wall seconds of ``fn`` over ``reps`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(env)
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        sync(env)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": len(times)}


# ---- peak memory ------------------------------------------------------------------------------
def _vm_hwm_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


@contextlib.contextmanager
def peak_memory(env: Env) -> Iterator[dict]:
    """Yields a dict that gets ``peak_mb`` on exit: the high-water mark inside the block.

    GPU: torch.cuda.max_memory_allocated (tensors only). CPU: the process resident set's
    high-water mark (VmHWM, reset through /proc/self/clear_refs so each block is measured
    alone; it includes the interpreter and torch itself). Where the reset is refused the
    process-lifetime maximum (getrusage) is reported and ``peak_scope`` says so.
    """
    out: dict = {}
    scope = "block"
    if env.cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5 = reset the peak RSS (Linux >= 4.0)
        except OSError:
            scope = "process"
    try:
        yield out
    finally:
        if env.cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            hwm = _vm_hwm_bytes() if scope == "block" else None
            peak = (
                hwm
                if hwm is not None
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            )
            scope = scope if hwm is not None else "process"
        out["peak_mb"] = peak / 2**20
        out["peak_scope"] = "gpu-allocated" if env.cuda else f"rss-{scope}"


# ---- hardware reference -----------------------------------------------------------------------
def matmul_reference(env: Env, n: int | None = None, reps: int = 5) -> dict:
    """Dense square matmul throughput (FLOP/s) in the suite's compute dtype: the utilisation
    denominator. CPU fp32 n=2048 (large enough to reach BLAS peak on a few cores), GPU bf16
    n=8192."""
    n = n or (256 if env.quick else (8192 if env.cuda else 2048))
    g = torch.Generator(device=env.device).manual_seed(0)
    a = torch.randn(n, n, device=env.device, dtype=env.dtype, generator=g)
    b = torch.randn(n, n, device=env.device, dtype=env.dtype, generator=g)
    inner = 1 if not env.cuda else 10  # many back-to-back kernels hide launch latency on GPU

    def mm() -> None:
        for _ in range(inner):
            torch.mm(a, b)

    t = time_fn(mm, env, warmup=1, reps=1 if env.quick else reps)
    flops = 2 * n**3 * inner
    return {
        "n": n,
        "dtype": str(env.dtype).replace("torch.", ""),
        "median_s": t["median_s"],
        "flops_per_s": flops / t["median_s"],
        "best_flops_per_s": flops / t["min_s"],
    }


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same directory + os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
