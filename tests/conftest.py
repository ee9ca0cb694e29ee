"""Shared fixtures: tiny corpora and configs built once per session under a temp folder."""

from __future__ import annotations

import inspect
import os
import subprocess
from pathlib import Path

import pytest
import torch

from zipper_pl.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYTHONHASHSEED", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each worker, and the stages and makes its tests
    # start, on one torch thread, so two workers never fight over a core's OpenMP threads
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


# what a running make passes its children: under `make test` a make a test starts would be a
# sub-make (computing every stage path, ~10 s, before even a `make -n`) with the test run's flags
MAKE_STATE = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")


def run_make(
    *args: str, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``make --no-print-directory ARGS`` in the repository, as a user types it: a top-level
    make, whether the suite runs under ``make test`` or not."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k not in MAKE_STATE}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One tiny generated corpus + caches shared by every test that needs data."""
    return tmp_path_factory.mktemp("data")


def tiny_config(data_root: Path, runs: Path, experiment: str, *overrides: str) -> Config:
    return load_config(
        ROOT / "experiments" / "tiny" / experiment,
        [
            f"data.root={data_root}",
            f"data.cache_dir={data_root / 'cache'}",
            f"runs={runs}",
            "train.accelerator=cpu",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def tiny_towers(data_root, tmp_path_factory) -> dict[str, Path]:
    """Tiny pretrained text and speech stage folders (a few steps each), shared by the session."""
    from zipper_pl.stages.chain import pretrain

    runs = tmp_path_factory.mktemp("runs")
    common = ("train.max_steps=3", "train.val_every=3", "train.ckpt_every=3")
    text = pretrain(tiny_config(data_root, runs, "pretrain_text.yaml", *common))
    speech = pretrain(tiny_config(data_root, runs, "pretrain_speech.yaml", *common))
    return {"text": text, "speech": speech, "runs": runs}


def zip_config(data_root: Path, towers: dict[str, Path], out: Path, *overrides: str) -> Config:
    return tiny_config(
        data_root,
        towers["runs"],
        "zip_asr.yaml",
        f"inputs.text={towers['text']}",
        f"inputs.speech={towers['speech']}",
        f"out={out}",
        *overrides,
    )


@pytest.fixture
def traced_compile(monkeypatch) -> list:
    """``torch.compile`` with the ``aot_eager`` backend: Dynamo and AOTAutograd trace forward
    and backward as they do for inductor, without inductor's C++ build (minutes on a small
    CPU). Yields the functions compiled."""
    real, compiled = torch.compile, []

    def compile_(fn, **kw):
        compiled.append(fn)
        return real(fn, **{"backend": "aot_eager", **kw})

    monkeypatch.setattr(torch, "compile", compile_)
    torch._dynamo.reset()
    yield compiled
    torch._dynamo.reset()


# ---- tiers: `make test-fast` (the edit loop) runs what is not marked slow --------------------
# Integration tests: they build corpora, train stages, start processes or make. They are marked
# here from what they use, so a new test that trains a tower or starts make is slow by itself.
SLOW_FIXTURES = {"data_root", "tiny_towers", "tmp_path_factory"}
SLOW_CALLS = ("run_make(", "subprocess.run(", "main([", "_stage(", "pretrain(", "run_zip(")


def _is_slow(item: pytest.Item) -> bool:
    if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    fn = getattr(item, "function", None)
    try:
        source = inspect.getsource(fn) if fn is not None else ""
    except (OSError, TypeError):
        return False
    return any(call in source for call in SLOW_CALLS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
