"""Aligned-data ablation (the paper's Fig. 3): WER against the share of aligned pairs.

Cells = fractions x models (zipper, single) x speech-tower freezing x seeds. Every cell is an
ordinary zip stage (``training.run_zip``: finished cells are skipped and interrupted ones resume)
sharing the same pretrained towers; the sweep only collects their test metrics into a CSV, a
markdown table and plots. ``ablation.shard=i/n`` runs every n-th cell, so n processes (one per
GPU, e.g. with ``CUDA_VISIBLE_DEVICES=i``) split a sweep; any of them (or a last plain run) writes
the tables.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from pathlib import Path

from zipper_pl.config import Config, save_config, to_dict
from zipper_pl.errors import UserError
from zipper_pl.identity import IDENTITY_FILE, PROVENANCE_FILE, provenance
from zipper_pl.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from zipper_pl.judging import judge_fingerprint, run_judge
from zipper_pl.layout import (
    CONFIG,
    METRICS,
    input_fingerprints,
    is_finished,
    require_stage,
    stage_dir,
    stage_identity,
    tower_input,
)
from zipper_pl.machine import check_machine
from zipper_pl.registry import ARCHS
from zipper_pl.scoring import tts_cell_metrics
from zipper_pl.training import run_zip

TTS_EVAL = "tts_eval.json"


def _cells(cfg: Config) -> list[dict]:
    a = cfg.ablation
    cells = []
    for frac in a.fracs:
        if not 0 < frac <= 1:
            raise UserError(f"ablation.fracs: {frac} is outside (0, 1] (as data.aligned_frac)")
        for model in a.models:
            if model not in ARCHS:
                raise UserError(f"ablation.models: {model!r} is not one of {', '.join(ARCHS)}")
            for freeze in a.freeze if ARCHS[model].zipped else ["none"]:
                for seed in a.seeds:
                    cells.append({"frac": frac, "model": model, "freeze": freeze, "seed": seed})
    return cells


def _system(cell: dict) -> str:
    label = ARCHS[cell["model"]].label
    return f"{label} (speech frozen)" if cell["freeze"] in ("both", "all") else label


def _cell_config(cfg: Config, cell: dict, task: str) -> Config:
    # the smallest fractions can hold fewer pairs than a batch: train on all of them per step
    data = dataclasses.replace(
        cfg.data, aligned_frac=cell["frac"], task=task, shrink_batch_to_subset=True
    )
    zcfg = dataclasses.replace(
        cfg.zip, freeze=cell["freeze"] if ARCHS[cell["model"]].zipped else "text"
    )
    return dataclasses.replace(
        cfg, arch=cell["model"], seed=cell["seed"], data=data, zip=zcfg, out=""
    )


def _shard(spec: str) -> tuple[int, int]:
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"ablation.shard={spec!r}: write it as i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UserError(f"ablation.shard={spec!r}: need 0 <= i < n")
    return i, n


def ablation_stage(cfg: Config) -> Path:
    """Run (or resume) every cell, then write ablation.csv / .md and the WER plots."""
    check_machine(cfg)
    cells = _cells(cfg)
    towers = input_fingerprints(text=tower_input(cfg, "text"), speech=tower_input(cfg, "speech"))
    tasks = ("asr", "tts") if cfg.ablation.tts else ("asr",)
    # the sweep is what its cells are: their identities (not their settings' names) are its inputs
    cell_ids = {
        f"cell{k}.{task}": stage_identity(_cell_config(cfg, cell, task), "zip", towers)[
            "fingerprint"
        ]
        for k, cell in enumerate(cells)
        for task in tasks
    }
    i, n = _shard(cfg.ablation.shard)
    judge, score_key = None, None
    if cfg.ablation.tts:
        judge = require_stage(
            cfg.inputs.judge or run_judge(dataclasses.replace(cfg, out="")),
            "judge",
            "inputs.judge",
        )
        score_key = _score_key(judge, cfg)
        cell_ids["judge"] = score_key["judge"]
    identity = stage_identity(cfg, "ablation", cell_ids)
    out = stage_dir(cfg, "ablation", cell_ids)
    for k, cell in enumerate(cells):
        if k % n != i:
            continue
        for task in tasks:
            print(f"[ablation] cell {k + 1}/{len(cells)} {task}: {cell}")
            folder = run_zip(_cell_config(cfg, cell, task))
            if task == "tts":
                _tts_score(folder, judge, cfg, score_key)
    rows = _collect(cfg, cells, score_key, towers)
    if rows is None:
        print("[ablation] some cells are not finished yet (other shards?): tables not written")
        return out
    atomic_write_json(out / IDENTITY_FILE, identity)
    atomic_write_json(out / PROVENANCE_FILE, provenance())
    save_config(cfg, out / CONFIG)
    write_tables(out, rows)  # ablation.csv first: it marks the sweep's tables as written
    print((out / "ablation.md").read_text())
    return out


def _score_key(judge: Path, cfg: Config) -> dict:
    """What a cached TTS score depends on besides the cell: the judge's weights and ``eval``."""
    return {"judge": judge_fingerprint(judge), "eval": to_dict(cfg.eval)}


def _tts_score(folder: Path, judge: Path, cfg: Config, key: dict | None = None) -> dict:
    """TTS WER of one TTS cell through the judge, cached next to the stage's metrics.

    The cache carries ``_score_key``: scores from another judge (retrained, or pointed
    elsewhere with inputs.judge) or another token budget are recomputed, not mixed into the
    table. ``key`` is that key when the caller computed it already (once per sweep).
    """
    judge = require_stage(judge, "judge", "inputs.judge")
    key = key or _score_key(judge, cfg)
    cached = _cached_tts(folder, key)
    if cached is not None:
        return cached
    res = {**tts_cell_metrics(folder, judge, cfg), **key}
    atomic_write_json(folder / TTS_EVAL, res)
    return res


def _cached_tts(folder: Path, key: dict | None) -> dict | None:
    cache = folder / TTS_EVAL
    if key is None or not cache.is_file():
        return None
    res = read_json(cache)
    return res if all(res.get(k) == v for k, v in key.items()) else None


def _collect(
    cfg: Config, cells: list[dict], score_key: dict | None, towers: dict[str, str]
) -> list[dict] | None:
    rows = []
    for cell in cells:
        asr = stage_dir(_cell_config(cfg, cell, "asr"), "zip", towers)
        if not is_finished(asr):
            return None
        m = read_json(asr / METRICS)
        row = {
            "system": _system(cell),
            **cell,
            "aligned_pairs": m.get("aligned_pairs_used"),
            "asr_wer": m.get("test_wer"),
            "asr_cer": m.get("test_cer"),
            "tts_wer": None,
        }
        if cfg.ablation.tts:
            scored = _cached_tts(
                stage_dir(_cell_config(cfg, cell, "tts"), "zip", towers), score_key
            )
            if scored is None:
                return None
            row["tts_wer"] = scored.get("tts_wer_gold")
        rows.append(row)
    return rows


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def write_tables(out: Path, rows: list[dict]) -> None:
    """ablation.csv (one row per cell), ablation.md (mean over seeds) and two PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "ablation.csv", buf.getvalue())

    systems = list(dict.fromkeys(r["system"] for r in rows))
    fracs = sorted({r["frac"] for r in rows})
    lines = ["# Aligned-data ablation (test WER %, mean over seeds)", ""]
    for metric, title in (("asr_wer", "ASR WER"), ("tts_wer", "TTS WER (judge, vs gold)")):
        if all(r[metric] is None for r in rows):
            continue
        lines += [
            f"## {title}",
            "",
            "| system | " + " | ".join(f"{f:g}" for f in fracs) + " |",
            "|---|" + "---|" * len(fracs),
        ]
        for s in systems:
            cells = []
            for f in fracs:
                m = _mean([r[metric] for r in rows if r["system"] == s and r["frac"] == f])
                cells.append("-" if m is None else f"{100 * m:.1f}")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
        _plot(out / f"{metric}.png", rows, systems, metric, title)
    atomic_write_text(out / "ablation.md", "\n".join(lines) + "\n")


def _plot(path: Path, rows: list[dict], systems: list[str], metric: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for s in systems:
        pts = sorted({r["frac"] for r in rows if r["system"] == s})
        means, spread = [], []
        for f in pts:
            vals = [
                100 * r[metric]
                for r in rows
                if r["system"] == s and r["frac"] == f and r[metric] is not None
            ]
            means.append(statistics.fmean(vals) if vals else float("nan"))
            spread.append(statistics.pstdev(vals) if len(vals) > 1 else 0.0)
        ax.errorbar([100 * f for f in pts], means, yerr=spread, marker="o", capsize=3, label=s)
    ax.set_xscale("log")
    fracs = sorted({100 * r["frac"] for r in rows})
    ax.set_xticks(fracs, [f"{f:g}%" for f in fracs])
    ax.minorticks_off()
    ax.set_xlabel("aligned training data (%)")
    ax.set_ylabel(f"{title} (%)")
    ax.set_title(f"{title} vs aligned data")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
