"""Aligned-data study (the paper's Fig. 3): test WER against the share of aligned pairs.

Cells (``ablation_cells``) = task x fraction x system (model and freeze setting) x seed. Every
cell is an ordinary zip stage (``training.run_zip``: finished cells are skipped, interrupted ones
resume), zipping towers pretrained with the cell's seed. With ``ablation.lrs`` each system first
runs that learning-rate grid at ``ablation.lr_frac`` and keeps the rate with the best
*validation* score (ASR: validation WER; TTS: validation loss), never a test figure; the study
then scores every cell on the test split (per-utterance errors, cached in the cell's folder) and
writes a CSV, a markdown table with mean +- sd over seeds and paired tests (``ablation_tables``),
and plots. ``ablation.shard=i/n`` lets n processes (one per GPU, e.g. with
``CUDA_VISIBLE_DEVICES=i``) split a study: shard i takes every n-th stage first (towers, grid
cells, cells), then any cell no other shard works on (its cell lock says so), so shards
that finish early take over the others' remaining cells; every stage is trained once, and the
last shard to finish writes the tables (or a last plain run).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path

import filelock

from zipper_pl.config import Config, save_config, to_dict
from zipper_pl.config.components import TASKS
from zipper_pl.errors import UserError
from zipper_pl.fitting.ablation_cells import (
    cell_config,
    cells_of,
    freeze_pairs,
    parse_shard,
    reference_of,
    seed_towers,
    shard_order,
    system_key,
    system_label,
    systems_of,
)
from zipper_pl.fitting.judging import judge_fingerprint, run_judge
from zipper_pl.fitting.towers import run_zip
from zipper_pl.io import atomic_write_json, read_json
from zipper_pl.lit.common import NonFiniteTraining
from zipper_pl.models.generation import SAMPLING_SCHEME
from zipper_pl.registry import peak_lr
from zipper_pl.results.ablation_tables import grid_lines, write_tables
from zipper_pl.results.scoring import asr_cell_metrics, tts_cell_metrics
from zipper_pl.runs.identity import IDENTITY_FILE, LATE_KEYS
from zipper_pl.runs.inventory import is_busy
from zipper_pl.runs.layout import (
    CONFIG,
    METRICS,
    input_fingerprints,
    is_finished,
    require_stage,
    stage_dir,
    stage_identity,
)
from zipper_pl.runs.machine import check_machine
from zipper_pl.runs.provenance import PROVENANCE_FILE, provenance

# ---- learning-rate selection, on validation data only ----------------------------------------
SELECT_ON = {"asr": "val_wer", "tts": "val_loss"}  # ASR falls back to val_loss without a WER


def validation_view(metrics: dict) -> dict:
    """The validation figures of a cell's metrics.json: all lr selection ever reads."""
    return {k: v for k, v in metrics.items() if k.startswith("val_")}


def select_lr(results: dict[float, dict], task: str) -> float:
    """The grid's learning rate whose cell scored best on validation (lowest; ties: smaller lr).
    ``results`` maps each lr to ``validation_view`` of its cell's metrics."""

    def score(lr: float) -> tuple[float, float]:
        v = results[lr].get(SELECT_ON[task])
        v = results[lr].get("val_loss") if v is None else v
        return (math.inf if v is None or not math.isfinite(v) else v, lr)

    return min(results, key=score)


def _select_lrs(
    cfg: Config, cells: list[dict], towers: dict, fps: dict, shard: tuple[int, int] = (0, 1)
) -> tuple[dict, list]:
    """{(model, freeze, task): selected lr} and the grid's rows (every lr's validation score),
    running each system's grid cells at ``ablation.lr_frac`` with the first seed (each shard its
    own share first, then any cell no other shard is training: ``next_free``)."""
    a, seed = cfg.ablation, cfg.ablation.seeds[0]
    scores: dict[tuple, dict | None] = {}
    grid_cells = [
        {**system, "frac": a.lr_frac, "seed": seed, "lr": lr}
        for system in systems_of(cells)
        for lr in a.lrs
    ]
    todo = shard_order(grid_cells, shard)
    folders = [stage_dir(cell_config(cfg, c, towers[seed]), "zip", fps[seed]) for c in todo]
    for cell in claimed(todo, folders):  # the divergence record is written under the lock too
        print(f"[ablation] lr grid {cell['task']}: {cell}")
        scores[(*system_key(cell), cell["lr"])] = _grid_cell(cfg, cell, towers[seed], fps[seed])
    chosen, grid = {}, []
    for system in systems_of(cells):
        task = system["task"]
        results = {lr: scores[(*system_key(system), lr)] for lr in a.lrs}
        if all(v is None for v in results.values()):
            raise UserError(
                f"every learning rate of ablation.lrs {a.lrs} diverged for {system_label(system)} "
                f"on {task}: add smaller rates to ablation.lrs (ABLATION_LRS)"
            )
        best = select_lr({lr: v for lr, v in results.items() if v is not None}, task)
        chosen[system_key(system)] = best
        for lr, val in results.items():
            diverged = val is None
            val = val or {}
            grid.append({"system": system_label(system), "task": task, "lr": lr,
                         SELECT_ON[task]: val.get(SELECT_ON[task]), "val_loss": val.get("val_loss"),
                         "selected": lr == best, "diverged": diverged})  # fmt: skip
    return chosen, grid


CELL_LOCK = ".cell.lock"  # held by the shard training and then scoring a cell (or grid cell)


def cell_work(folder: Path) -> filelock.FileLock:
    """The lock a shard holds from training a cell through scoring it (the stage's own lock
    ends with training): another shard never trains or scores the same cell at the same time."""
    folder.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(folder / CELL_LOCK))


def claimed(items: list, folders: list[Path]) -> Iterator:
    """Each item in turn, the first whose folder no other shard works on first, with its cell
    lock held while the caller works on it (training through scoring)."""
    items, folders = list(items), list(folders)
    while items:
        k = next_free(folders)
        item = items.pop(k)
        with cell_work(folders.pop(k)):
            yield item


def next_free(folders: list[Path]) -> int:
    """Index of the first cell folder no other shard is working on now; when all are busy the
    first (its lock is then waited for, and the cell found finished and scored)."""
    return next((k for k, f in enumerate(folders) if not is_busy(f, CELL_LOCK)), 0)


DIVERGED = "diverged.json"  # in a grid cell's folder: its rate diverged (the search's result)


def _grid_cell(cfg: Config, cell: dict, towers: dict, fingerprints: dict) -> dict | None:
    """A grid cell's validation figures, or None where its rate diverged: a rate too large for
    a system is a result of the search (it loses the selection), not a failed study. The
    divergence is recorded in the cell's (identity-named) folder, so a resumed study does not
    train it again to find out. ``towers`` and ``fingerprints`` are the cell's seed's."""
    ccfg, label = cell_config(cfg, cell, towers), system_label(cell)
    folder = stage_dir(ccfg, "zip", fingerprints)
    record = folder / DIVERGED
    # a finished folder outranks the record: the rate may have trained on another machine type
    # (floating point differs across types), and that result is the cell's
    if record.is_file() and not is_finished(folder):
        print(f"[ablation] lr grid: lr {cell['lr']:g} diverged for {label} on {cell['task']} "
              f"in an earlier run ({read_json(record)['error']}): it is not selected")  # fmt: skip
        return None
    try:
        folder = run_zip(ccfg, fingerprints=fingerprints)
    except NonFiniteTraining as e:
        error = str(e).partition("\n")[0]
        atomic_write_json(record, {"error": error, **provenance()})
        print(f"[ablation] lr grid: lr {cell['lr']:g} diverged for {label} on {cell['task']} "
              f"({error}): it is not selected; recorded in {record}")  # fmt: skip
        return None
    return validation_view(read_json(folder / METRICS))


def ablation_stage(cfg: Config) -> Path:
    """Run (or resume) the towers per seed, the lr grid and every cell, then write ablation.csv
    / .md and plots."""
    check_machine(cfg)
    started, cells = time.monotonic(), cells_of(cfg)
    i, n = parse_shard(cfg.ablation.shard)
    if cfg.ablation.tts and cfg.inputs.judge:  # before hours of training, not after
        require_stage(cfg.inputs.judge, "judge", "inputs.judge")
    towers = seed_towers(cfg, shard=(i, n))
    fps = {seed: input_fingerprints(**t) for seed, t in towers.items()}
    chosen, grid = _select_lrs(cfg, cells, towers, fps, (i, n)) if cfg.ablation.lrs else ({}, [])

    def config_of(cell: dict) -> Config:
        lr = chosen.get(system_key(cell))
        return cell_config(cfg, {**cell, "lr": lr}, towers[cell["seed"]])

    # the sweep is what its cells are: their identities (not their settings' names) are its inputs
    cell_ids = {
        f"cell{k}.{cell['task']}": stage_identity(config_of(cell), "zip", fps[cell["seed"]])[
            "fingerprint"
        ]
        for k, cell in enumerate(cells)
    }
    judge = None
    if cfg.ablation.tts:
        judge = require_stage(
            cfg.inputs.judge or run_judge(dataclasses.replace(cfg, out="")),
            "judge",
            "inputs.judge",
        )
        cell_ids["judge"] = judge_fingerprint(judge)
    keys = _score_keys(judge, cfg)
    identity = stage_identity(cfg, "ablation", cell_ids)
    out = stage_dir(cfg, "ablation", cell_ids)
    todo = shard_order(list(enumerate(cells)), (i, n))
    folders = [stage_dir(config_of(cell), "zip", fps[cell["seed"]]) for _, cell in todo]
    for k, cell in claimed(todo, folders):  # own cells first, then others' nobody works on
        print(f"[ablation] cell {k + 1}/{len(cells)}: {cell}")
        folder = run_zip(config_of(cell), fingerprints=fps[cell["seed"]])
        _score(cell["task"], folder, judge, cfg, keys[cell["task"]])
    rows = _collect(cells, config_of, keys, fps)
    if rows is None:
        print("[ablation] some cells are not finished yet (other shards?): tables not written")
        return out
    atomic_write_json(out / IDENTITY_FILE, identity)
    atomic_write_json(out / PROVENANCE_FILE, provenance())
    save_config(cfg, out / CONFIG)
    extra = grid_lines(grid, cfg.ablation.lr_frac, cfg.ablation.seeds[0])
    # ablation.csv first: marks it written
    reference = reference_of(cells)
    pairs = [(s, vs) for s, vs in freeze_pairs(cells) if vs != reference]  # not tested twice
    title = "Design ablation" if cfg.ablation.variants else "Aligned-data ablation"
    write_tables(out, rows, reference, extra, pairs, title)
    print((out / "ablation.md").read_text())
    print(
        f"[ablation] {len(cells)} cells; this run took {(time.monotonic() - started) / 60:.1f} min"
    )
    return out


SCORES = {"asr": "asr_eval.json", "tts": "tts_eval.json"}  # per cell, next to its metrics


def _score_keys(judge: Path | None, cfg: Config) -> dict[str, dict]:
    """What a cached cell score depends on besides the cell: ``eval.*``, and for TTS the judge's
    weights and the sampling scheme (``generation.SAMPLING_SCHEME``)."""
    keys = {"asr": {"eval": _eval_key(to_dict(cfg.eval))}}
    if judge is not None:
        keys["tts"] = {
            "judge": judge_fingerprint(judge),
            "eval": _eval_key(to_dict(cfg.eval)),
            "sampling": SAMPLING_SCHEME,  # best of N samples: the seeds' draws
        }
    return keys


def _eval_key(settings: dict) -> dict:
    """eval.* as a score depends on it: keys added later (``LATE_KEYS``) at the value that
    scores as before they existed are left out, so scores cached before them stay valid (a new
    eval key once had every finished cell scored again)."""
    return {k: v for k, v in settings.items() if LATE_KEYS.get(f"eval.{k}", _NONE) != v}


_NONE = object()


def _score(task: str, folder: Path, judge: Path | None, cfg: Config, key: dict) -> dict:
    """One cell's test score with per-utterance errors, cached next to its metrics. The cache
    carries ``key``: scores from another judge (retrained, or pointed elsewhere with
    inputs.judge) or other eval settings are recomputed, not mixed into the table."""
    cached = _cached(folder, task, key)
    if cached is not None:
        return cached
    if TASKS[task].speaks:
        res = tts_cell_metrics(folder, require_stage(judge, "judge", "inputs.judge"), cfg)
    else:
        res = asr_cell_metrics(folder, cfg)
    res = {**res, **key}
    atomic_write_json(folder / SCORES[task], res)
    return res


def _cached(folder: Path, task: str, key: dict | None) -> dict | None:
    cache = folder / SCORES[task]
    if key is None or not cache.is_file():
        return None
    res = read_json(cache)
    if isinstance(res.get("eval"), dict):  # written before or after a LATE key: compare alike
        res["eval"] = _eval_key(res["eval"])
    stale = [k for k, v in key.items() if res.get(k) != v]
    if stale:  # never silent: say why a score is computed again
        print(f"[ablation] {folder.name}: cached {task} score made with other {', '.join(stale)}: "
              "scoring again")  # fmt: skip
        return None
    return res


def _collect(cells, config_of, keys, fps) -> list[dict] | None:
    """One row per system, fraction and seed, with each task's columns ("-" where the system
    has no cell of that task); None while a cell of another shard is unfinished."""
    rows: dict[tuple, dict] = {}
    for cell in cells:
        key = (cell["model"], cell["freeze"], cell.get("variant", ""), cell["frac"], cell["seed"])
        row = rows.setdefault(key, _empty_row(cell))
        task, cfg = cell["task"], config_of(cell)
        folder = stage_dir(cfg, "zip", fps[cell["seed"]])
        scored = _cached(folder, task, keys[task]) if is_finished(folder) else None
        if scored is None:
            return None
        m = read_json(folder / METRICS)
        row["aligned_pairs"] = m.get("aligned_pairs_used")
        writes_text = TASKS[task].writes_text
        row[f"{task}_wer"] = scored.get("asr_wer" if writes_text else "tts_wer_gold")
        if writes_text:
            row["asr_cer"] = scored.get("asr_cer")  # the CSV keeps its CER column
        row[f"{task}_lr"] = peak_lr(cfg)
        row[f"{task}_best_step"] = m.get("selected_step", m.get("steps"))
        row[f"{task}_errors"] = scored["errors"]
    return list(rows.values())


def _empty_row(cell: dict) -> dict:
    row = {"system": system_label(cell), **{k: v for k, v in cell.items() if k != "task"}}
    row |= {"aligned_pairs": None, "asr_cer": None}
    for task in ("asr", "tts"):
        row |= dict.fromkeys(f"{task}_{c}" for c in ("wer", "lr", "best_step", "errors"))
    return row
