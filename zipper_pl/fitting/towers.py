"""The work of the training stages (pretrain, zip, finetune), below their entry points in
``stages/chain.py``: ``run_*`` claims the stage folder and trains it unless it is finished. Each
stage reads only earlier stage folders and writes its own: ``model.safetensors``, ``config.yaml``
(fully resolved), ``metrics.json``, tokenizer artefacts, ``last.ckpt`` (resume) and TensorBoard
events under ``tb/``. The evaluation and ablation stages run zip stages through ``run_zip``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import filelock
import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from zipper_pl.config import Config, load_config, save_config
from zipper_pl.data.batches.aligned import (
    nested_subset,
    tokens_per_word,
)
from zipper_pl.data.batches.datamodules import AlignedDataModule, LMDataModule
from zipper_pl.data.modalities import (
    copy_tokenizers,
    load_tokenizers,
    modality_specs,
    prepare_pairs,
    prepare_pretraining,
)
from zipper_pl.errors import UserError
from zipper_pl.fitting.held_out import held_out_metrics
from zipper_pl.fitting.vocoding import validation_voice
from zipper_pl.io import atomic_write_json, copy_artefact, load_weights, read_json, save_weights
from zipper_pl.lit.finetune import FinetuneModule
from zipper_pl.lit.lm import LMModule
from zipper_pl.models.tower import Tower, TowerConfig
from zipper_pl.registry import (
    build_model,
    frozen_towers,
    peak_lr,
    resolve_tower_config,
    uses_align_prior,
)
from zipper_pl.runs.finetuned import TOWERS_JSON, Finetuned, load_tower, save_towers_json
from zipper_pl.runs.inventory import distinguishing_keys
from zipper_pl.runs.layout import (
    CONFIG,
    METRICS,
    TOWER_JSON,
    WEIGHTS,
    claim_stage,
    input_fingerprints,
    require_stage,
    stage_dir,
    stage_identity,
    tower_input,
)
from zipper_pl.runs.trainer import (
    BEST_CKPT,
    LAST_CKPT,
    compile_forward,
    final_metrics,
    fit_unless_terminated,
    make_trainer,
    selection_metric,
    set_aside_if_unreadable,
)


def _seed(cfg: Config) -> None:
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def _fit(
    cfg: Config,
    out: Path,
    module: L.LightningModule,
    dm: L.LightningDataModule,
    select_best: bool = False,
) -> dict:
    """Train with resume from ``last.ckpt``; returns wall-clock figures. With ``select_best``
    the module ends with the weights of its lowest validation loss or WER (``best.ckpt``,
    ``train.select_on``), and ``selected`` says which step that was."""
    _seed(cfg)  # again: the data order does not depend on how much the model's init drew
    if cfg.train.compile:
        compile_forward(module)
    # a zipped model's parameters past its input tower's last fusion layer miss the loss
    unused = isinstance(module, FinetuneModule)
    trainer = make_trainer(cfg, out, select_best=select_best, unused_parameters=unused)
    monitor, fallback = selection_metric(cfg)
    if select_best and fallback:
        rank_zero_only(print)(f"[select] train.select_on={cfg.train.select_on}, but {fallback}")
    ckpt = out / LAST_CKPT
    set_aside_if_unreadable(ckpt)
    t0 = time.perf_counter()
    fit_unless_terminated(trainer, module, dm, ckpt)
    if select_best and cfg.train.patience and trainer.global_step < cfg.train.max_steps:
        rank_zero_only(print)(
            f"[select] stopped at step {trainer.global_step} of {cfg.train.max_steps}: "
            f"{cfg.train.patience} validations without a lower {monitor} (train.patience)"
        )
    best = out / BEST_CKPT
    selected: dict = {}
    if select_best and best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        scores = [c.best_model_score for c in trainer.checkpoint_callbacks if c.monitor == monitor]
        score = float(scores[0]) if scores and scores[0] is not None else None
        step = state.get("global_step")
        selected = {"selected_on": monitor, "selected_step": step, "selected_score": score}
        if trainer.is_global_zero:
            shown = "" if score is None else f" {score:.4g}"
            print(f"[select] weights of step {step}: lowest {monitor}{shown}")
    return {
        "trainer": trainer,
        "wall_s": time.perf_counter() - t0,
        "resumed": ckpt.is_file(),
        "selected": selected,
    }


def _log_hparams(trainer: L.Trainer, cfg: Config, kind: str, metrics: dict) -> None:
    """HParams tab: the keys that tell this stage from its experiment file (the same ones
    ``python -m zipper_pl runs`` shows), next to the final metrics, so sweep cells compare."""
    if trainer.logger is None or not trainer.is_global_zero:
        return
    keys = {"seed": cfg.seed, **distinguishing_keys(cfg, kind)}
    flat = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in keys.items()}
    hp_metrics = {f"hp/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
    trainer.logger.log_hyperparams(flat, hp_metrics)


def run_pretrain(cfg: Config) -> Path:
    """Unimodal next-token pretraining of a text or speech tower: its stage folder, trained now
    unless finished (``stages.pretrain`` checks the machine first)."""
    identity = stage_identity(cfg, "pretrain")
    out = stage_dir(cfg, "pretrain")
    with claim_stage(out, f"pretrain-{cfg.modality}", identity) as todo:
        if todo:
            _pretrain(cfg, out)
    return out


def _pretrain(cfg: Config, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dm = LMDataModule(cfg, prepare_pretraining)
    with filelock.FileLock(str(Path(cfg.data.cache_dir).with_suffix(".lock"))):
        dm.prepare_data()  # once here (other ranks wait on the lock, then find the cache)
    data = dm.lm_data
    tower_cfg = resolve_tower_config(cfg.model, data.vocab_size)
    # the saved config is self-contained: the preset's values are written out (into a copy:
    # the caller's config, whose identity names this folder, stays as given)
    resolved = {
        f.name: getattr(tower_cfg, f.name)
        for f in dataclasses.fields(cfg.model)
        if hasattr(tower_cfg, f.name)
    }
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **resolved))
    save_config(cfg, out / CONFIG)
    _seed(cfg)  # the tower's init depends on the seed alone, not on what ran before
    module = LMModule(tower_cfg, cfg.train)
    module.tower.activation_checkpointing = cfg.model.activation_checkpointing
    run = _fit(cfg, out, module, dm)
    trainer = run["trainer"]
    final = {**final_metrics(trainer), **module.run_validation_pass()}
    if trainer.is_global_zero:
        n_params = module.tower.num_params()
        metrics = {
            "stage": f"pretrain-{cfg.modality}",
            "steps": trainer.global_step,
            "params": n_params,
            "val_loss_step0": module.initial_val.get("val/loss"),
            "val_ppl_step0": module.initial_val.get("val/ppl"),
            "val_loss": final.get("val/loss"),
            "val_ppl": final.get("val/ppl"),
            "train_loss": final.get("train/loss"),
            "tokens_per_s": final.get("train/tokens_per_s"),
            "fit_wall_s": run["wall_s"],
            "precision": run["trainer"].precision,  # what train.precision=auto chose
            **data.info,
        }
        for a in data.artefacts:
            copy_artefact(a, out)
        atomic_write_json(out / TOWER_JSON, module.tower.config_dict())
        _log_hparams(trainer, cfg, "pretrain", metrics)
        atomic_write_json(out / METRICS, metrics)
        save_weights(module.tower.state_dict(), out / WEIGHTS)  # last: marks the stage finished
        print(f"[pretrain-{cfg.modality}] {out}\n{json.dumps(metrics, indent=2)}")


# ---- zipping and fine-tuning ---------------------------------------------------------------


def _with_tokens_per_word(cfg: Config, prepared: dict, init: Path | None) -> Config:
    """Fill zip.tokens_per_word for align_prior: from the zipped stage continued from, else
    measured on this run's aligned training subset (the resolved value is saved with the stage)."""
    if not uses_align_prior(cfg) or cfg.zip.tokens_per_word:
        return cfg
    if init is not None and load_config(init / CONFIG).zip.tokens_per_word:
        tpw = dict(load_config(init / CONFIG).zip.tokens_per_word)
    else:
        pool = prepared["pairs"]["aligned_train"]
        chosen = nested_subset(len(pool), cfg.data.aligned_frac, cfg.seed)
        tpw = tokens_per_word([pool[i] for i in chosen])
        print("[zip] tokens per word: " + ", ".join(f"{t} {v:.2f}" for t, v in tpw.items()))
    return dataclasses.replace(cfg, zip=dataclasses.replace(cfg.zip, tokens_per_word=tpw))


def _train_finetune(
    cfg: Config, out: Path, towers_from: dict[str, Path], init: Path | None
) -> Path:
    """Shared by zip (fresh from pretrained towers) and finetune (from a zipped stage)."""
    if peak_lr(cfg) != cfg.train.lr:  # resolved here so config.yaml shows it
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=peak_lr(cfg)))
    toks = load_tokenizers(towers_from)
    specs = modality_specs(toks)
    if init is None:
        towers = {m: load_tower(folder) for m, folder in towers_from.items()}
    else:
        tower_cfgs = read_json(init / TOWERS_JSON)
        towers = {t: Tower(TowerConfig(**c)) for t, c in tower_cfgs.items()}
    tower_cfg_dicts = {t: towers[t].config_dict() for t in towers}
    max_total = min(c["max_seq_len"] for c in tower_cfg_dicts.values())
    with filelock.FileLock(str(Path(cfg.data.cache_dir).with_suffix(".lock"))):
        prepared = prepare_pairs(cfg, toks, max_total)
    cfg = _with_tokens_per_word(cfg, prepared, init)
    _seed(cfg)  # the fusion layers' init depends on the seed alone
    model = build_model(cfg, towers, specs)
    if init is not None:
        # freezing follows this config (built above); loading weights leaves it untouched
        load_weights(model, init / WEIGHTS)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG)
    dm = AlignedDataModule(cfg, lambda c: prepared, model.collator(loss_on="last"))
    dm.prepare_data()
    voice = validation_voice(out, toks, cfg)
    module = FinetuneModule(model, cfg, toks["text"].decode, voice=voice,
                            sample_rate=voice.sample_rate if voice else 16000)  # fmt: skip
    run = _fit(cfg, out, module, dm, select_best=cfg.train.select_best)
    trainer = run["trainer"]
    final = {**final_metrics(trainer), **module.run_validation_pass()}
    if not trainer.is_global_zero:
        return out
    dm.setup("test")
    model.eval()
    ft = Finetuned(model, cfg, specs, toks, out)
    metrics: dict = {
        "stage": f"{'zip' if init is None else 'finetune'}-{cfg.data.task}",
        "arch": cfg.arch,
        "aligned_frac": cfg.data.aligned_frac,
        "freeze": frozen_towers(cfg),
        "steps": trainer.global_step,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "val_loss_step0": module.initial_val.get("val/loss"),
        "val_loss": final.get("val/loss"),
        "val_wer": final.get("val/wer"),
        "val_token_acc": final.get("val/token_acc"),
        **run["selected"],  # selected_on / _step / _score: the exported weights' validation score
        "fit_wall_s": run["wall_s"],
        "precision": run["trainer"].precision,
        **dm.info,
    }
    metrics.update(held_out_metrics(ft, module, dm))
    copy_tokenizers(toks, towers_from, out)
    save_towers_json(out, towers)
    _log_hparams(trainer, cfg, "zip" if init is None else "finetune", metrics)
    atomic_write_json(out / METRICS, metrics)
    save_weights(model.state_dict(), out / WEIGHTS)  # last: marks the stage finished
    print(f"[{metrics['stage']}] {out}\n{json.dumps(metrics, indent=2)}")
    return out


def run_zip(cfg: Config, *, fingerprints: dict[str, str] | None = None) -> Path:
    """Zip the pretrained towers (or extend the text tower: arch=single) and fine-tune them: the
    stage folder, trained now unless finished (what ``stages.zip_stage``, ``evaluate`` and
    ``ablation`` run; the machine is their entry point's to check).

    Args:
        fingerprints: ``input_fingerprints`` of this config's towers where the caller already
            holds them (the study: once per seed, not once per cell, which for a Hugging Face
            tower means hashing its weights again); computed here when None.
    """
    towers = {m: tower_input(cfg, m) for m in cfg.zip.towers}
    if fingerprints is None:
        fingerprints = input_fingerprints(**towers)
    elif fingerprints.keys() != towers.keys():  # a caller's bug, not a user's
        raise ValueError(f"fingerprints of {sorted(fingerprints)} for towers {sorted(towers)}")
    identity = stage_identity(cfg, "zip", fingerprints)
    out = stage_dir(cfg, "zip", identity["inputs"])
    with claim_stage(out, "zip", identity) as todo:
        if todo:
            _train_finetune(cfg, out, towers, init=None)
    return out


def run_finetune(cfg: Config) -> Path:
    """Continue training a zipped stage (e.g. task=mix, or zip.freeze=none to unfreeze speech):
    the stage folder, trained now unless finished."""
    if not cfg.inputs.init:
        raise UserError("finetune needs the zipped stage folder to continue from: set inputs.init")
    init = require_stage(cfg.inputs.init, "zipped", "inputs.init")
    identity = stage_identity(cfg, "finetune", input_fingerprints(init=init))
    out = stage_dir(cfg, "finetune", identity["inputs"])
    with claim_stage(out, "finetune", identity) as todo:
        if todo:
            _train_finetune(cfg, out, dict.fromkeys(read_json(init / TOWERS_JSON), init), init)
    return out
