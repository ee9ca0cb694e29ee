"""The runs layout: stage identity, folder names, artefact names, locks and copy helpers.

Every stage module finds and claims its folder here: ``stage_dir`` names it from a readable
summary and the stage's identity (``identity.py``), ``claim_stage`` decides between reuse, resume
and training, ``chain_paths`` gives the Makefile every folder of an experiment. Imports no models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import filelock

from zipper_pl.config import Config
from zipper_pl.data.corpora.sources import data_fingerprint
from zipper_pl.data.modalities import MODALITIES
from zipper_pl.errors import UserError
from zipper_pl.hub import CONFIG_JSON, HF_PREFIX, folder_fingerprint, hub_folder, is_hf_folder
from zipper_pl.io import atomic_write_json, damaged, record_checksums, weights_readable
from zipper_pl.registry import ARCHS, frozen_towers, needs_vocoder
from zipper_pl.runs.identity import (
    IDENTITY_FILE,
    consumed_fingerprint,
    read_identity,
    stage_fingerprint,
)
from zipper_pl.runs.launch import await_claim, is_launching_process, record_claim
from zipper_pl.runs.provenance import PROVENANCE_FILE, provenance

WEIGHTS, CONFIG, METRICS, TOWER_JSON, PROVENANCE = (
    "model.safetensors",
    "config.yaml",
    "metrics.json",
    "tower.json",
    PROVENANCE_FILE,
)


def _frac_tag(frac: float) -> str:
    return f"{frac:g}".replace(".", "p")


_DATA_FP: dict[str, str] = {}


def data_fingerprint_of(cfg: Config) -> str:
    """``data_fingerprint`` once per process and set of sources (the keys it reads, #33)."""
    d = cfg.data
    sources = (d.corpus, d.root, d.train_splits, d.valid_splits, d.test_splits, d.text_file)
    key = repr((*sources, d.embedded))
    if key not in _DATA_FP:
        _DATA_FP[key] = data_fingerprint(cfg.data)
    return _DATA_FP[key]


def stage_identity(cfg: Config, kind: str, inputs: Mapping[str, str] | None = None) -> dict:
    """The identity record of a ``kind`` stage run with ``cfg`` on stages whose fingerprints are
    ``inputs`` (see ``identity.py``)."""
    return stage_fingerprint(cfg, kind, inputs or {}, data_fingerprint_of(cfg))


def _readable_name(cfg: Config, kind: str) -> str:
    codec = cfg.audio.codec
    if kind == "pretrain":
        tag = MODALITIES[cfg.modality].tag(cfg)
        return f"pretrain-{tag}-steps{cfg.train.max_steps}-s{cfg.seed}"
    if kind == "judge":
        return f"judge-{codec}-s{cfg.seed}"
    if kind == "vocoder":  # de-duplicated units: the vocoder predicts durations too
        return f"vocoder-{codec}{'-dedup' * cfg.audio.units_dedup}-steps{cfg.vocoder.max_steps}"
    frac = _frac_tag(cfg.data.aligned_frac)
    if kind == "eval":
        steps = cfg.train.max_steps
        return f"eval-{codec}-frac{frac}-freeze_{cfg.zip.freeze}-steps{steps}-s{cfg.seed}"
    if kind == "ablation":
        return f"ablation-{codec}-steps{cfg.train.max_steps}"
    if kind in ("zip", "finetune"):
        name = (
            f"{cfg.arch}-{cfg.data.task}-{codec}-frac{frac}-freeze_{frozen_towers(cfg)}"
            f"-steps{cfg.train.max_steps}-s{cfg.seed}"
        )
        return name if kind == "zip" else f"{name}-ft"
    raise ValueError(f"unknown stage kind {kind!r}")


def stage_dir(cfg: Config, kind: str, inputs: Mapping[str, str] | None = None) -> Path:
    """The folder of a stage: a readable name (scale, corpus, task, fraction, steps, seed) and
    the first 8 hex digits of its identity, so any change of what it is computed from (config,
    input stages, data) gives another folder. ``out=`` names the folder explicitly instead."""
    if cfg.out:
        return Path(cfg.out)
    ident = stage_identity(cfg, kind, inputs)["fingerprint"][:8]
    return (
        Path(cfg.runs) / f"{cfg.scale}-{cfg.data.corpus}" / f"{_readable_name(cfg, kind)}-{ident}"
    )


def is_finished(out: Path) -> bool:
    """A stage is done when its metrics and then its weights are exported (atomically, weights
    last: the Makefile's file targets are the weights)."""
    return (out / WEIGHTS).is_file() and (out / METRICS).is_file()


LOCK_FILE = ".stage.lock"


def check_identity(out: Path, identity: dict, name: str) -> None:
    """A folder that holds (or was interrupted while computing) another experiment is never
    reused or resumed: the identity recorded in it must be this run's."""
    rec = read_identity(out)
    if rec is None and not (out / CONFIG).is_file():
        return  # a new folder
    if rec is None or rec["fingerprint"] != identity["fingerprint"]:
        theirs = "none recorded" if rec is None else rec["fingerprint"][:8]
        raise UserError(
            f"[{name}] {out} holds another experiment (identity {theirs}, this run "
            f"{identity['fingerprint'][:8]}): leave out= unset to get this run's own folder, "
            "or delete that folder"
        )


@contextmanager
def claim_stage(out: Path, name: str, identity: dict) -> Iterator[bool]:
    """Yields whether this process must train ``out``: False when it is already finished with
    the same identity.

    One process trains a stage folder at a time: a second ``make`` that needs the same missing
    stage (two sweeps sharing towers) waits for the first, then finds the stage finished instead of
    training into the same folder. Only the launching process locks; DDP ranks > 0 run while
    their rank 0 holds the lock, as it decided (``launch.py``: srun and torchrun start them at
    once). The identity record is written before training starts, so an interrupted stage
    resumes only under the same identity.
    """
    check_identity(out, identity, name)
    if is_finished(out):
        print(f"[{name}] already finished: {out}")
        yield False
        return
    if not is_launching_process():
        yield await_claim(out, name, lambda: is_finished(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"[{name}] another process is training {out}: waiting for it")
        lock.acquire()
    try:
        finished = is_finished(out)
        if finished:
            print(f"[{name}] finished by the process this one waited for: {out}")
        else:
            atomic_write_json(out / IDENTITY_FILE, identity)
        record_claim(out, train=not finished)
        yield not finished
        if not finished and (out / WEIGHTS).is_file():
            atomic_write_json(out / PROVENANCE, provenance())
            record_checksums(out, read_artefacts(out))
    finally:
        lock.release()


def read_artefacts(out: Path) -> list[str]:
    """What later stages read: the weights and every file whose path names a tokenizer."""
    files = (str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return [WEIGHTS, *sorted(f for f in files if "tokenizer" in f)]


def require_stage(folder: str | Path, what: str, key: str) -> Path:
    """Check an earlier stage's artefacts before using them (audiocraft-style)."""
    p = Path(folder)
    if not is_finished(p):
        raise UserError(
            f"{what} stage folder {str(p)!r} is missing or unfinished (no {WEIGHTS}/{METRICS}): "
            f"run that stage first or set {key}"
        )
    redo = "delete that folder and re-run the stage that made it"
    if problem := damaged(p):  # sizes always; sha256 when the file's mtime changed
        raise UserError(f"{what} stage folder {str(p)!r}: {problem} (damaged or edited): {redo}")
    if not weights_readable(p / WEIGHTS):
        raise UserError(f"{what} stage folder {str(p)!r} has unreadable weights ({WEIGHTS} "
                        f"truncated or not safetensors): {redo}")  # fmt: skip
    return p


def tower_key(modality: str) -> str:
    """How a user names a modality's tower folder (the config key, and make's variable)."""
    var = MODALITIES[modality].make_var if modality in MODALITIES else ""
    default = f'ARGS="inputs.{modality}=<folder>"'
    return f"inputs.{modality} (make: {var or default})"


def tower_input(cfg: Config, modality: str) -> Path:
    """The tower folder ``inputs.<modality>`` names: a finished pretraining stage, or (text)
    a Hugging Face causal LM, ``hf:<hub id or folder>``."""
    folder = getattr(cfg.inputs, modality)
    if not folder:
        raise UserError(
            f"no {modality} tower given: set {tower_key(modality)} to a finished "
            f"pretraining stage folder (make pretrain-{modality} prints it)"
        )
    return _tower_folder(folder, modality, f"inputs.{modality}")


def _tower_folder(spec: str, modality: str, key: str) -> Path:
    if not (spec.startswith(HF_PREFIX) or is_hf_folder(Path(spec))):
        return require_stage(spec, f"{modality} tower", key)
    if not MODALITIES[modality].from_hub:
        hub_ok = ", ".join(m for m, mod in MODALITIES.items() if mod.from_hub)
        raise UserError(f"{key}: a Hugging Face model can be the {hub_ok} tower only, got {spec!r}")
    folder = hub_folder(spec, key)
    if not is_hf_folder(folder):
        raise UserError(f"{key}: {str(folder)!r} lacks config.json or tokenizer files")
    return folder


def tower_fingerprint(folder: Path) -> str:
    """A tower's fingerprint: its stage identity, or the contents of a Hugging Face model."""
    return (
        folder_fingerprint(folder)
        if is_hf_folder(folder)
        else consumed_fingerprint(folder, WEIGHTS)
    )


def input_fingerprints(**folders: Path) -> dict[str, str]:
    """Fingerprints of the stage folders (or HF models) a stage reads, by role."""
    return {role: tower_fingerprint(Path(f)) for role, f in folders.items()}


def eval_identity(
    cfg: Config, systems: Mapping[str, Path], judge: Path, vocoder: Path | None = None
) -> dict:
    """An evaluation is what it evaluates: every system's stage (``name.task``), the judge, the
    vocoder its audio comes from and the text tower its retention figures compare against, plus
    its own ``eval.*`` settings."""
    inputs = input_fingerprints(**{k: Path(v) for k, v in systems.items()}, judge=judge)
    if vocoder is not None:
        inputs |= input_fingerprints(vocoder=vocoder)
    if cfg.inputs.text:
        inputs |= input_fingerprints(text=tower_input(cfg, "text"))
    return stage_identity(cfg, "eval", inputs)


def path_of(cfg: Config, kind: str) -> Path:
    """The folder a ``kind`` stage run with ``cfg`` uses (its input stages must be finished)."""
    inputs: dict[str, Path] = {}
    if kind == "zip":
        inputs = {m: tower_input(cfg, m) for m in cfg.zip.towers}
    elif kind == "finetune":
        inputs = {"init": require_stage(cfg.inputs.init, "zipped", "inputs.init")}
    elif kind == "judge":
        inputs = {"speech": tower_input(cfg, "speech")}
    elif kind not in ("pretrain", "vocoder"):
        raise UserError(f"path KIND: pretrain, zip, finetune, judge or vocoder; got {kind!r}")
    return stage_dir(cfg, kind, input_fingerprints(**inputs))


CHAIN_FILES = {
    **{f"pretrain_{m}": f"pretrain_{m}.yaml" for m in MODALITIES},
    "zip_asr": "zip_asr.yaml",
    "zip_tts": "zip_tts.yaml",
    "judge": "judge.yaml",
    "vocoder": "vocoder.yaml",
    "evaluate": "evaluate.yaml",
}


def _with_task(cfg: Config, arch: str, task: str) -> Config:
    return dataclasses.replace(
        cfg, arch=arch, out="", data=dataclasses.replace(cfg.data, task=task)
    )


def _tower(cfg: Config, explicit: str, modality: str) -> tuple[Path, str]:
    """(folder, fingerprint) of a tower: the named folder, else the one ``cfg`` would train."""
    if explicit:
        folder = _tower_folder(explicit, modality, f"{modality.upper()}_TOWER")
        return folder, tower_fingerprint(folder)
    ident = stage_identity(cfg, "pretrain")
    return stage_dir(cfg, "pretrain"), ident["fingerprint"]


def done_file(tower: Path) -> Path:
    """The file whose presence says a tower is ready (make's prerequisite)."""
    return tower / (CONFIG_JSON if is_hf_folder(tower) else WEIGHTS)


def chain_paths(
    cfgs: Mapping[str, Config],
    towers: Mapping[str, str] | None = None,
    zip_cfg: Config | None = None,
) -> dict:
    """Every stage folder of an experiment's chain, from the config of each stage file
    (``CHAIN_FILES``), for the Makefile's file targets: ``DIR_<modality>`` / ``DONE_<modality>``
    per tower, the evaluation chain's zips, judge and evaluation, and with ``zip_cfg`` the
    ``make zip`` stage (``ZIP_DIR``, its towers' done files and ``inputs.*``, comma-joined).
    ``towers`` may name finished tower folders (TEXT_TOWER, ...) instead of the ones the
    pretraining files describe."""
    towers = towers or {}
    tower = {
        m: _tower(cfgs[f"pretrain_{m}"], towers.get(m, ""), m)
        for m in MODALITIES
        if f"pretrain_{m}" in cfgs
    }
    fps = {m: fp for m, (_, fp) in tower.items()}

    def zip_fps(zcfg: Config) -> dict[str, str]:
        return {m: fps[m] for m in zcfg.zip.towers}

    out: dict[str, object] = {"MODALITIES": ",".join(tower)}
    for m, (folder, _) in tower.items():
        out |= {f"DIR_{m}": folder, f"DONE_{m}": done_file(folder)}
    for arch in ARCHS:
        for task in ("asr", "tts"):
            zcfg = _with_task(cfgs[f"zip_{task}"], arch, task)
            out[f"{arch.upper()}_{task.upper()}_DIR"] = stage_dir(zcfg, "zip", zip_fps(zcfg))
    judge_cfg = dataclasses.replace(cfgs["judge"], out="")
    judge_inputs = {"speech": fps["speech"]}
    out["JUDGE_DIR"] = stage_dir(judge_cfg, "judge", judge_inputs)
    vocoder_cfg = dataclasses.replace(cfgs["vocoder"], out="")
    eval_inputs = {
        "judge": stage_identity(judge_cfg, "judge", judge_inputs)["fingerprint"],
        "text": fps["text"],
    }
    chosen = cfgs["evaluate"].inputs.vocoder  # VOCODER=<finished folder>: as the stage reads it
    if needs_vocoder(cfgs["evaluate"]) and chosen:
        out["VOCODER_DIR"] = Path(chosen)
        eval_inputs |= input_fingerprints(vocoder=Path(chosen))
    elif needs_vocoder(cfgs["evaluate"]):
        out["VOCODER_DIR"] = stage_dir(vocoder_cfg, "vocoder")
        eval_inputs["vocoder"] = stage_identity(vocoder_cfg, "vocoder")["fingerprint"]
    for arch in ARCHS:
        for task in ("asr", "tts"):
            zcfg = _with_task(cfgs[f"zip_{task}"], arch, task)
            eval_inputs[f"{arch}.{task}"] = stage_identity(zcfg, "zip", zip_fps(zcfg))[
                "fingerprint"
            ]
    out["EVAL_DIR"] = stage_dir(dataclasses.replace(cfgs["evaluate"], out=""), "eval", eval_inputs)
    if zip_cfg is not None:
        zcfg = dataclasses.replace(zip_cfg, out="")
        out["ZIP_DIR"] = stage_dir(zcfg, "zip", zip_fps(zcfg))
        out["ZIP_DONE"] = ",".join(str(done_file(tower[m][0])) for m in zcfg.zip.towers)
        out["ZIP_INPUTS"] = ",".join(f"inputs.{m}={tower[m][0]}" for m in zcfg.zip.towers)
    return out
