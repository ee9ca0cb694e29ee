"""Provenance: where a stage ran (the machine, the libraries, the commit), recorded next to its
identity as metadata, never as identity (``identity.py``): the same experiment on another
machine is the same experiment. The CPU is recorded by family, model and the ISA flags that pick
kernels, the GPU by name and compute capability; a distributed stage's processes by count and
launch."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from zipper_pl.runs.launch import launch_id

PROVENANCE_FILE = "provenance.json"
_PACKAGES = ("torch", "lightning", "numpy", "scikit-learn", "sentencepiece", "espeakng-loader")


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
# ISA flags with bf16 matrix kernels, where train.precision=auto trains in bf16-mixed: oneDNN
# multiplies bf16 at ~2x (AVX-512 BF16) to ~7x (AMX: 512^3 on one core of a 2-core Intel Xeon
# family 6 model 167, 1,298 vs 190 GFLOP/s) the fp32 rate
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_isa_flags() -> set[str]:
    """The CPU's ISA flags, as /proc/cpuinfo lists them (none where it is absent)."""
    return set(cpu_info().get("flags", "").split())


def cpu_bf16_flags() -> list[str]:
    """Which of ``BF16_FLAGS`` this CPU has (empty: no bf16 matrix kernels)."""
    flags = cpu_isa_flags()
    return [f for f in BF16_FLAGS if f in flags]


def _cpu() -> dict[str, Any]:
    """The CPU as /proc/cpuinfo names it: "AMD EPYC" covers several generations with other
    kernels (bf16 matmul at ~2x fp32 only where AVX-512 BF16 exists), so family, model and the
    ISA flags that pick kernels are recorded with every figure."""
    info = cpu_info()
    flags = set(info.get("flags", "").split())  # from the same read as the fields above
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family": info.get("cpu family"),
        "cpu_model": info.get("model"),
        "cpu_isa": [f for f in ISA_FLAGS if f in flags],
    }


LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"


def _lock_digest() -> str | None:
    """sha256 of the lock file ``make setup`` installed from (a checkout's; None elsewhere)."""
    try:
        return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """The machine and libraries a stage ran on, and the zipper_pl commit (dirty or not)."""
    import torch  # already imported by every stage; kept out of the config-level imports

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpus = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        gpus.append(f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})")
    status = _git("status", "--porcelain", "--untracked-files=no")
    # the process group Lightning set up for the fit is still up when rank 0 records this
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return {
        **_cpu(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "world_size": world,  # processes that trained the stage (devices x nodes)
        "launch": launch_id(),  # the torchrun run or SLURM job step (its log), or null
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "lock_sha256": _lock_digest(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
