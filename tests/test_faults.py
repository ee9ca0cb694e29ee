"""Faults a user can cause end in one short message naming the fix: no traceback, and never a
broken model exported as finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, tiny_config
from zipper_pl.errors import UserError
from zipper_pl.io import TMP_MARK, atomic_write_json, save_weights
from zipper_pl.layout import is_finished
from zipper_pl.lit.common import NonFiniteTraining
from zipper_pl.stages import pretrain


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zipper_pl", *args], capture_output=True, text=True, cwd=cwd
    )


def assert_one_message(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    msg = r.stderr.strip()
    assert msg.startswith("error:") and len(msg.splitlines()) <= 3, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_lr_is_refused_before_any_work(tmp_path, value):
    r = cli("pretrain", "experiments/tiny/pretrain_text.yaml", f"train.lr={value}",
            f"runs={tmp_path}")  # fmt: skip
    assert_one_message(r, "train.lr", "finite")
    assert not any(tmp_path.iterdir())


def test_diverging_training_stops_and_exports_nothing(data_root, tmp_path):
    """lr=1e30 passes validation but blows the weights up at once: one message with the step,
    no weights, no metrics, the stage not finished."""
    cfg = tiny_config(data_root, tmp_path, "pretrain_text.yaml", "train.lr=1e30",
                      "train.warmup_steps=0", "train.max_steps=6")  # fmt: skip
    with pytest.raises(NonFiniteTraining, match=r"step \d+.*train.lr=1e\+30.*train.precision"):
        pretrain(cfg)
    folders = [p.parent for p in tmp_path.rglob("identity.json")]
    assert folders and not any(is_finished(f) for f in folders)
    assert not any((f / "model.safetensors").exists() or (f / "metrics.json").exists()
                   for f in folders)  # fmt: skip


def test_metrics_json_is_valid_json_with_non_finite_values(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"val_loss": float("nan"), "x": [float("inf"), 1.0]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"val_loss": None, "x": [None, 1.0]} and "NaN" not in text


def test_non_finite_weights_are_never_exported(tmp_path):
    with pytest.raises(UserError, match="NaN / inf.*lower train.lr"):
        save_weights({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "model.safetensors")
    assert not list(tmp_path.iterdir())  # no weights, no temp file left behind


def test_weights_are_written_like_every_other_artefact(tmp_path):
    save_weights({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    atomic_write_json(tmp_path / "m.json", {})
    modes = {p.name: os.stat(p).st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["model.safetensors"] == modes["m.json"] and not any(
        TMP_MARK in p.name for p in tmp_path.iterdir()
    )


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.devices=0", ["train.devices", "count >= 1"]),
        ("train.devices=-1", ["train.devices"]),
        ("seed=-1", ["seed", ">= 0"]),
        ("zip.freeze=foo", ["zip.freeze", "none, both, all, text, speech"]),
        pytest.param(
            "train.accelerator=gpu",
            ["train.accelerator", "no CUDA GPU"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_trainer_settings_are_checked_before_any_work(tmp_path, override, words):
    r = cli("zip", "experiments/tiny/zip_asr.yaml", override, f"runs={tmp_path}")
    assert_one_message(r, *words)
    assert not any(tmp_path.iterdir()) and not (tmp_path.parent / f"{tmp_path.name}-s-1").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [("train: 5\n", ["train is a section", "got 5"]), ("", ["is empty"]), ("# only\n", ["empty"])],
)
def test_yaml_shape_errors_name_the_file_or_key(tmp_path, text, words):
    (tmp_path / "c.yaml").write_text(text)
    assert_one_message(cli("pretrain", str(tmp_path / "c.yaml")), *words)
