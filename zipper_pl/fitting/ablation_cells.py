"""The aligned-data study's cells: which zip stages it runs (task x fraction x system x seed),
the towers each seed zips, and how cells map onto the shards of a parallel run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from zipper_pl.config import Config, load_config, parse_overrides, with_overrides
from zipper_pl.config.components import TASKS
from zipper_pl.errors import UserError
from zipper_pl.fitting.towers import run_pretrain
from zipper_pl.hub import is_hf_folder
from zipper_pl.registry import ARCHS
from zipper_pl.runs.layout import CONFIG, tower_input
from zipper_pl.runs.machine import check_machine


def cells_of(cfg: Config) -> list[dict]:
    """One cell per seed x task x fraction x system, in that order (a study cut short has whole
    tables of its first seeds); a system is a model with a freeze setting (``ablation.asr_freeze``
    for ASR cells, ``ablation.freeze`` for TTS cells: its first setting at every fraction, the
    others at ``ablation.freeze_fracs``, or every fraction where that is empty)."""
    a = cfg.ablation
    if any(not lr > 0 for lr in a.lrs):
        raise UserError(f"ablation.lrs: {a.lrs} must all be > 0 (e.g. 5e-4 1e-3 2e-3)")
    for key in ("seeds", "fracs", "models"):
        if not getattr(a, key):
            raise UserError(
                f"ablation.{key} is empty: name at least one (see experiments/*/ablation.yaml)"
            )
    if any(seed < 0 for seed in a.seeds):
        raise UserError(f"ablation.seeds: {a.seeds}; seeds are >= 0")
    for frac in a.fracs:
        if not 0 < frac <= 1:
            raise UserError(f"ablation.fracs: {frac} is outside (0, 1] (as data.aligned_frac)")
    for model in a.models:
        if model not in ARCHS:
            raise UserError(f"ablation.models: {model!r} is not one of {', '.join(ARCHS)}")
    if a.tts and len(a.freeze) > 1 and a.freeze_fracs and not set(a.freeze_fracs) & set(a.fracs):
        raise UserError(
            f"ablation.freeze_fracs {a.freeze_fracs} holds none of ablation.fracs {a.fracs}: the "
            f"TTS freeze comparison ({' vs '.join(a.freeze)}) would run nowhere; add one of them "
            "to ABLATION_FRACS, or set ABLATION_FREEZE=text (no comparison) or "
            'ARGS="ablation.freeze_fracs=[]" (at every fraction)'
        )
    check_variants(cfg)
    cells = [
        {"task": task, "frac": frac, "model": model, "freeze": freeze, "variant": variant,
         "seed": seed}
        for seed in a.seeds
        for task in study_tasks(cfg)
        for frac in a.fracs
        for model in a.models
        for variant in _variants(cfg, model)
        for freeze in _freezes(cfg, task, frac, model)
    ]  # fmt: skip
    if not cells:
        raise UserError(
            "the ablation has no cells: ablation.asr_freeze (and with ablation.tts, "
            "ablation.freeze) name no Zipper setting and ablation.models no other"
        )
    return cells


def _variants(cfg: Config, model: str) -> list[str]:
    """The design variants one model runs: every one for a zipped model (they vary the
    fusion), none for the single decoder."""
    return list(cfg.ablation.variants) or [""] if ARCHS[model].zipped else [""]


def _freezes(cfg: Config, task: str, frac: float, model: str) -> list[str]:
    """The freeze settings one model runs at one fraction of one task."""
    a = cfg.ablation
    if not ARCHS[model].zipped:
        return ["none"]
    if TASKS[task].writes_text:  # ASR: ablation.asr_freeze
        return list(a.asr_freeze)
    return list(a.freeze) if not a.freeze_fracs or frac in a.freeze_fracs else a.freeze[:1]


# what the study sets per cell: a variant that set it would be overwritten, or change the study
STUDY_KEYS = ("seed", "arch", "data.task", "data.aligned_frac", "zip.freeze", "train.lr",
              "train.single_lr", "out", "runs")  # fmt: skip


def check_variants(cfg: Config) -> None:
    """Each of ``ablation.variants`` overrides only keys of its cells, into a valid config."""
    for name, overrides in cfg.ablation.variants.items():
        if not name.strip():
            raise UserError("ablation.variants: a variant has an empty name; name each design")
        keys = parse_overrides(list(overrides))
        taken = [k for k in keys if k in STUDY_KEYS or k.startswith(("inputs.", "ablation."))]
        if taken:
            raise UserError(
                f"ablation.variants.{name} sets {', '.join(taken)}, which the study sets per "
                "cell (seeds, fractions, freeze settings, the lr grid, towers): vary them "
                "through ablation.* instead"
            )
        try:
            with_overrides(cfg, list(overrides))
        except UserError as e:
            problems = str(e).removeprefix("invalid configuration:").split("\n")
            raise UserError(
                f"ablation.variants.{name}: " + "; ".join(p.strip() for p in problems if p.strip())
            ) from None


def study_tasks(cfg: Config) -> tuple[str, ...]:
    return ("asr", "tts") if cfg.ablation.tts else ("asr",)


def system_label(cell: dict) -> str:
    """A system's table label: one per (model, freeze, design variant) setting."""
    label, freeze = ARCHS[cell["model"]].label, cell["freeze"]
    if ARCHS[cell["model"]].zipped and freeze != "text":  # the paper's Zipper: text frozen
        label += " (speech frozen)" if freeze in ("both", "all") else f" (frozen: {freeze})"
    return f"{label}: {cell['variant']}" if cell.get("variant") else label


def cell_config(cfg: Config, cell: dict, towers: dict[str, Path]) -> Config:
    """The zip stage of one cell, zipping ``towers`` (its seed's), in its design variant."""
    if cell.get("variant"):  # first: the cell's own keys below always win
        cfg = with_overrides(cfg, list(cfg.ablation.variants[cell["variant"]]))
    # the smallest fractions can hold fewer pairs than a batch: train on all of them per step
    data = dataclasses.replace(
        cfg.data, aligned_frac=cell["frac"], task=cell["task"], shrink_batch_to_subset=True
    )
    zcfg = dataclasses.replace(
        cfg.zip, freeze=cell["freeze"] if ARCHS[cell["model"]].zipped else "text"
    )
    train = cfg.train  # the system's own lr key (train.lr or train.single_lr) takes the grid's
    if cell.get("lr") is not None:
        train = dataclasses.replace(train, **{ARCHS[cell["model"]].lr_key: cell["lr"]})
    inputs = dataclasses.replace(cfg.inputs, **{m: str(f) for m, f in towers.items()})
    return dataclasses.replace(
        cfg, arch=cell["model"], seed=cell["seed"], data=data, zip=zcfg, train=train,
        inputs=inputs, out="",
    )  # fmt: skip


# ---- towers per seed --------------------------------------------------------------------------
def seed_towers(cfg: Config, shard: tuple[int, int] = (0, 1)) -> dict[int, dict[str, Path]]:
    """{seed: {modality: tower folder}}: with ``ablation.tower_seeds`` each seed's towers are the
    given towers pretrained again with that seed (their own saved configs, seed replaced: the
    same stage `make pretrain-<modality> SEED=<seed>` names, reused once finished). Shards
    pretrain their own share of the (seed, modality) towers first (``shard_order``): by tower,
    not by seed, so that two shards train a seed's two towers side by side, also where the first
    seed's towers are the given ones (sharded by seed, both shards queued on seed 1's text tower
    and trained its towers one after the other, the other lane idle)."""
    given = {m: tower_input(cfg, m) for m in cfg.zip.towers}
    if not cfg.ablation.tower_seeds:
        return dict.fromkeys(cfg.ablation.seeds, given)
    pairs = [(s, m) for s in cfg.ablation.seeds for m in given]
    trained = {(s, m): _reseeded(cfg, given[m], m, s) for s, m in shard_order(pairs, shard)}
    return {s: {m: trained[(s, m)] for m in given} for s in cfg.ablation.seeds}


def _reseeded(cfg: Config, folder: Path, modality: str, seed: int) -> Path:
    if is_hf_folder(folder):  # published weights: there is no pretraining to repeat
        print(f"[ablation] seed {seed}: the {modality} tower is a Hugging Face model, the same "
              "for every seed (seeds vary the subset, data order and fusion init)")  # fmt: skip
        return folder
    tcfg = load_config(folder / CONFIG)
    if tcfg.seed == seed:
        return folder
    # where and how this run works (none of it changes a result) is this run's, not the tower's
    data = dataclasses.replace(
        tcfg.data, cache_dir=cfg.data.cache_dir, num_workers=cfg.data.num_workers
    )
    train = dataclasses.replace(tcfg.train, threads=cfg.train.threads)
    tcfg = dataclasses.replace(tcfg, seed=seed, out="", runs=cfg.runs, data=data, train=train)
    try:
        check_machine(tcfg)
    except UserError as e:
        raise UserError(
            f"the {modality} tower for seed {seed} repeats {folder}'s settings, which this "
            f"machine cannot run: {e}\npretrain it where they run "
            f"(make pretrain-{modality} SEED={seed}), or set ablation.tower_seeds=false"
        ) from None
    out = run_pretrain(tcfg)  # trained now unless finished
    print(f"[ablation] seed {seed}: {modality} tower pretrained with seed {seed}: {out}")
    return out


def shard_order(items: list, shard: tuple[int, int]) -> list:
    """``items`` as shard (i, n) works through shared stages (towers, grid cells): its own share
    ``items[i::n]`` first, then the others' (finished by then, or waited for under their lock),
    so n parallel shards train different stages until their shares run out."""
    i, n = shard
    own = items[i::n]
    return own + [x for x in items if x not in own]


def parse_shard(spec: str) -> tuple[int, int]:
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"ablation.shard={spec!r}: write it as i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UserError(f"ablation.shard={spec!r}: need 0 <= i < n")
    return i, n


def systems_of(cells: list[dict]) -> list[dict]:
    """The distinct (task, model, freeze, variant) systems of the cells, in order."""
    keys = dict.fromkeys((c["task"], c["model"], c["freeze"], c.get("variant", "")) for c in cells)
    return [{"task": t, "model": m, "freeze": f, "variant": v} for t, m, f, v in keys]


def system_key(cell: dict) -> tuple:
    """What a chosen learning rate is keyed by: one system of one task."""
    return cell["model"], cell["freeze"], cell.get("variant", ""), cell["task"]


def freeze_pairs(cells: list[dict]) -> list[tuple[str, str]]:
    """(system, vs) for each Zipper setting (freeze, design variant) after its task's first,
    against the first: e.g. the speech tower frozen vs trained (question (d) of the study)."""
    pairs = []
    for task in dict.fromkeys(c["task"] for c in cells):
        zipped = [c for c in cells if c["task"] == task and ARCHS[c["model"]].zipped]
        labels = list(dict.fromkeys(system_label(c) for c in zipped))
        pairs += [(label, labels[0]) for label in labels[1:]]
    return list(dict.fromkeys(pairs))


def reference_of(cells: list[dict]) -> str:
    """The system the paired tests compare against: the first unzipped one (the paper's
    baseline), else the first system (a design study's first variant)."""
    base = [c for c in cells if not ARCHS[c["model"]].zipped] or cells
    return system_label(base[0])
