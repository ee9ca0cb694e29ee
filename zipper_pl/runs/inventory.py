"""``python -m zipper_pl runs [RUNS]``: what every stage folder is.

One line per stage folder: its kind, its status (finished, interrupted at step N, running,
started without a checkpoint) and the keys where its config differs from its experiment file
(``experiments/<scale>/<stage>.yaml``), so a user can tell folders apart without reading hashes.
The same distinguishing keys label the TensorBoard HParams tab of every stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import filelock
import torch

from zipper_pl.config import Config, load_config
from zipper_pl.errors import UserError
from zipper_pl.runs.identity import IDENTITY_FILE, differing_keys, read_identity
from zipper_pl.runs.layout import CONFIG, LOCK_FILE, is_finished
from zipper_pl.runs.trainer import LAST_CKPT

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def experiment_file(cfg: Config, kind: str) -> Path:
    """The experiment file a ``kind`` stage of ``cfg.scale`` starts from."""
    name = {
        "pretrain": f"pretrain_{cfg.modality}.yaml",
        "zip": f"zip_{'asr' if cfg.data.task == 'mix' else cfg.data.task}.yaml",
        "finetune": "zip_asr.yaml",
        "judge": "judge.yaml",
        "eval": "evaluate.yaml",
        "ablation": "ablation.yaml",
    }[kind]
    return EXPERIMENTS / cfg.scale / name


def distinguishing_keys(cfg: Config, kind: str) -> dict[str, Any]:
    """Result keys of a ``kind`` stage where ``cfg`` differs from its experiment file (from the
    schema defaults when the file is not there, e.g. an installed package)."""
    path = experiment_file(cfg, kind)
    try:
        base = load_config(path if path.is_file() else None)
    except UserError:
        base = load_config()
    return differing_keys(cfg, base, kind)


# what a finished stage of each kind has written last
DONE_MARKERS = {"eval": "results.json", "ablation": "ablation.csv"}


def is_busy(folder: Path, lock_name: str = LOCK_FILE) -> bool:
    """Whether a process holds the lock ``lock_name`` in ``folder`` now (by default the stage's:
    it is computing the stage)."""
    if not (folder / lock_name).is_file():
        return False
    lock = filelock.FileLock(str(folder / lock_name))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False


def _status(folder: Path, kind: str) -> str:
    marker = DONE_MARKERS.get(kind)
    if (folder / marker).is_file() if marker else is_finished(folder):
        return "finished"
    if is_busy(folder):
        return "running"
    ckpt = folder / LAST_CKPT
    if ckpt.is_file():
        try:
            step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        except Exception:
            return "interrupted (last.ckpt unreadable)"
        return f"interrupted at step {step}"
    return "started, no checkpoint yet (failed early?)"


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every stage folder under ``root`` (those with an identity record or a config)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no runs folder {root}: pass the RUNS folder to list")
    rows = []
    for folder in sorted(p.parent for p in root.rglob(IDENTITY_FILE)):
        rec = read_identity(folder) or {}
        kind = rec.get("kind", "?")
        row: dict[str, Any] = {"folder": folder, "kind": kind, "status": _status(folder, kind)}
        if (folder / CONFIG).is_file() and kind != "?":
            row["differs"] = distinguishing_keys(load_config(folder / CONFIG), kind)
        rows.append(row)
    return rows


def format_runs(rows: list[dict[str, Any]], root: Path) -> str:
    if not rows:
        return f"no stage folders under {root}"
    lines = []
    for r in rows:
        diff = r.get("differs")
        shown = ", ".join(f"{k}={v}" for k, v in diff.items()) if diff else "experiment defaults"
        rel = r["folder"].relative_to(root)
        lines.append(f"{r['kind']:9s} {r['status']:30s} {rel}  [{shown}]")
    return "\n".join(lines)
