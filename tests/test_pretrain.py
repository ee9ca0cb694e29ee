"""The text pretraining stage end to end at tiny scale: artefacts, export/load, resume."""

from __future__ import annotations

import json
import shutil
import threading

import filelock
import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config
from zipper_pl.config import TrainConfig, load_config
from zipper_pl.fitting import towers
from zipper_pl.lit.common import use_fused_adamw
from zipper_pl.runs.finetuned import load_tower
from zipper_pl.runs.layout import LOCK_FILE
from zipper_pl.stages.chain import pretrain


class _Crash(RuntimeError):
    pass


class _CrashAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise _Crash(f"simulated kill at step {self.step}")


def _cfg(data_root, tmp_path, name, *extra):
    return tiny_config(
        data_root,
        tmp_path,
        "pretrain_text.yaml",
        f"out={tmp_path / name}",
        "train.max_steps=4",
        "train.ckpt_every=1",
        "train.val_every=2",
        *extra,
    )


def test_stage_folder_and_export_reload(data_root, tmp_path):
    out = pretrain(_cfg(data_root, tmp_path, "a"))
    for name in ("model.safetensors", "config.yaml", "metrics.json", "text_tokenizer.model"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    tower = load_tower(out)
    idx = torch.randint(0, tower.cfg.vocab_size, (2, 10))
    state = load_file(str(out / "model.safetensors"))
    again = load_tower(out)
    assert torch.equal(tower(idx), again(idx))
    assert "tok_emb.weight" in state
    # the saved config alone reproduces the stage's settings
    cfg = load_config(out / "config.yaml")
    assert cfg.model.n_layers == tower.cfg.n_layers and cfg.out == str(out)


def test_finished_stage_is_not_redone(data_root, tmp_path):
    cfg = _cfg(data_root, tmp_path, "b")
    out = pretrain(cfg)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    pretrain(cfg)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_resume_equals_uninterrupted(data_root, tmp_path, monkeypatch):
    straight = pretrain(_cfg(data_root, tmp_path, "straight"))

    real_make = towers.make_trainer

    def crashing(cfg, out, **kw):
        trainer = real_make(cfg, out, **kw)
        trainer.callbacks.insert(0, _CrashAtStep(2))
        return trainer

    monkeypatch.setattr(towers, "make_trainer", crashing)
    cfg = _cfg(data_root, tmp_path, "resumed")
    with pytest.raises(_Crash):
        pretrain(cfg)
    assert (tmp_path / "resumed" / "last.ckpt").is_file()
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(towers, "make_trainer", real_make)
    resumed = pretrain(cfg)

    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_same_seed_same_weights_whatever_ran_before(data_root, tmp_path):
    """A stage's weights depend on its seed alone, not on the process's RNG state (towers built
    in two clones, or after another stage in one process, used to differ)."""
    torch.manual_seed(1)
    a = pretrain(_cfg(data_root, tmp_path, "seed_a", "train.max_steps=2"))
    torch.manual_seed(2)
    b = pretrain(_cfg(data_root, tmp_path, "seed_b", "train.max_steps=2"))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_second_run_waits_for_the_stage_instead_of_training_it_again(data_root, tmp_path):
    """Two makes needing one missing stage: the second waits, then finds it finished."""
    finished_elsewhere = pretrain(_cfg(data_root, tmp_path, "elsewhere", "train.max_steps=2"))
    shared = tmp_path / "shared"
    shared.mkdir()
    other_process = filelock.FileLock(str(shared / LOCK_FILE))
    other_process.acquire()
    result = {}
    waiting = threading.Thread(
        target=lambda: result.update(out=pretrain(_cfg(data_root, tmp_path, "shared")))
    )
    waiting.start()
    waiting.join(timeout=5)
    assert waiting.is_alive() and not (shared / "metrics.json").exists()
    # the other process finishes the stage (metrics carry a mark a retrain would overwrite)
    metrics = json.loads((finished_elsewhere / "metrics.json").read_text())
    (shared / "metrics.json").write_text(json.dumps({**metrics, "trained_by": "other"}))
    shutil.copy(finished_elsewhere / "model.safetensors", shared / "model.safetensors")
    other_process.release()
    waiting.join(timeout=60)
    assert result["out"] == shared
    assert json.loads((shared / "metrics.json").read_text())["trained_by"] == "other"


def test_compiled_pretraining_keeps_keys_and_matches_eager(data_root, tmp_path, traced_compile):
    """``train.compile=true`` on the LM stage trains through each compiled tower block."""
    eager = load_file(str(pretrain(_cfg(data_root, tmp_path, "e")) / "model.safetensors"))
    out = pretrain(_cfg(data_root, tmp_path, "c", "train.compile=true"))
    assert [type(f.__self__).__name__ for f in traced_compile] == ["Block", "Block"]  # 2 layers
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == eager.keys()
    for k in eager:
        torch.testing.assert_close(got[k], eager[k], rtol=1e-4, atol=1e-5, msg=k)


def test_clipped_runs_never_get_a_fused_adamw():
    """Lightning's bf16-mixed / 16-mixed plugins refuse gradient clipping with a fused optimizer
    (found on an H100: the GPU default stopped at step 1); fused only where nothing is clipped."""
    assert not use_fused_adamw(True, TrainConfig(grad_clip=1.0))
    assert use_fused_adamw(True, TrainConfig(grad_clip=0.0))
    assert not use_fused_adamw(False, TrainConfig(grad_clip=0.0))
