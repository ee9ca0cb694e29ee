"""Zip / finetune stages at tiny scale: subsets, frozen towers, export + reload, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import ROOT, zip_config
from tests.test_pretrain import _Crash, _CrashAtStep
from zipper_pl.config import load_config
from zipper_pl.data.batches.aligned import nested_subset, task_items
from zipper_pl.errors import UserError
from zipper_pl.fitting import towers
from zipper_pl.models.sequences import collate_segments
from zipper_pl.runs.finetuned import load_finetuned
from zipper_pl.stages.chain import finetune, zip_stage


def test_nested_subsets_are_deterministic_and_nested():
    small = nested_subset(1000, 0.01, seed=3)
    big = nested_subset(1000, 0.1, seed=3)
    assert len(small) == 10 and len(big) == 100
    assert set(small) <= set(big)
    assert np.array_equal(small, nested_subset(1000, 0.01, seed=3))
    assert not np.array_equal(small, nested_subset(1000, 0.01, seed=4))


def test_mix_ratio():
    items = task_items(100, "mix", asr_tts_ratio=0.8)
    assert sum(t == "asr" for _, t in items) == 80 and sum(t == "tts" for _, t in items) == 100


def test_zip_asr_trains_exports_and_reloads(data_root, tiny_towers, tmp_path):
    out = zip_stage(zip_config(data_root, tiny_towers, tmp_path / "z", "train.max_steps=4"))
    for name in (
        "model.safetensors",
        "config.yaml",
        "metrics.json",
        "towers.json",
        "text_tokenizer.model",
        "audio_tokenizer",
    ):
        assert (out / name).exists(), name
    zipped = load_file(str(out / "model.safetensors"))
    text = load_file(str(tiny_towers["text"] / "model.safetensors"))
    # the frozen text tower is bit-identical after fine-tuning, under its own keys
    for k, v in text.items():
        assert torch.equal(zipped[f"towers.text.{k}"], v), k
    speech = load_file(str(tiny_towers["speech"] / "model.safetensors"))
    assert any(not torch.equal(zipped[f"towers.speech.{k}"], v) for k, v in speech.items())

    ft = load_finetuned(out)
    again = load_finetuned(out)
    tokens = [np.arange(5) % 30, np.arange(9) % 30]
    from zipper_pl.models.sequences import Segment

    samples = [
        [Segment("speech", torch.as_tensor(t)), Segment("text", torch.tensor([5, 6]))]
        for t in tokens
    ]
    batch = collate_segments(samples, ft.specs)
    a, b = ft.model(batch), again.model(batch)
    for t in a:
        assert torch.equal(a[t], b[t])
    assert len(ft.transcribe(tokens)) == 2


def test_zipped_weights_depend_on_the_seed_alone(data_root, tiny_towers, tmp_path):
    """The fusion layers' random init is seeded by the stage, not by what the process ran before."""
    outs = []
    for name, rng in (("a", 1), ("b", 2)):
        torch.manual_seed(rng)
        cfg = zip_config(data_root, tiny_towers, tmp_path / name, "train.max_steps=1")
        outs.append(zip_stage(cfg))
    wa, wb = (load_file(str(o / "model.safetensors")) for o in outs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_single_decoder_and_finetune_from_zipped(data_root, tiny_towers, tmp_path):
    single = zip_stage(
        zip_config(
            data_root,
            tiny_towers,
            tmp_path / "s",
            "arch=single",
            "train.max_steps=2",
            "train.single_lr=2.5e-4",
        )
    )
    assert load_finetuned(single).cfg.arch == "single"
    # the baseline's own learning rate is the one it trained with, and its config says so
    assert yaml.safe_load((single / "config.yaml").read_text())["train"]["lr"] == 2.5e-4
    zipped = zip_stage(zip_config(data_root, tiny_towers, tmp_path / "z2", "train.max_steps=2"))
    cont = finetune(
        zip_config(
            data_root,
            tiny_towers,
            tmp_path / "ft",
            f"inputs.init={zipped}",
            "data.task=mix",
            "zip.freeze=none",
            "train.max_steps=2",
        )
    )
    assert (cont / "metrics.json").is_file()


def test_align_prior_measures_tokens_per_word_and_finetune_keeps_it(
    data_root, tiny_towers, tmp_path
):
    out = zip_stage(
        zip_config(
            data_root, tiny_towers, tmp_path / "p", "zip.align_prior=true", "train.max_steps=2"
        )
    )
    tpw = load_config(out / "config.yaml").zip.tokens_per_word
    assert set(tpw) == {"text", "speech"} and all(v > 0 for v in tpw.values())
    cont = finetune(
        zip_config(
            data_root,
            tiny_towers,
            tmp_path / "pf",
            f"inputs.init={out}",
            "zip.align_prior=true",
            "train.max_steps=1",
        )
    )
    assert load_config(cont / "config.yaml").zip.tokens_per_word == tpw
    ft = load_finetuned(cont)
    assert ft.model.cfg.tokens_per_word == tpw
    assert len(ft.transcribe([np.arange(7) % 30])) == 1


def test_aligned_frac_smaller_than_a_batch_is_a_clear_error(data_root, tiny_towers, tmp_path):
    cfg = zip_config(
        data_root, tiny_towers, tmp_path / "e", "data.aligned_frac=0.01", "data.batch_size=8"
    )
    with pytest.raises(UserError, match="aligned_frac"):
        zip_stage(cfg)


def test_subset_smaller_than_a_batch_can_shrink_the_batch(data_root, tiny_towers, tmp_path):
    # regression: the ablation's 1% cell stopped with the error above
    cfg = zip_config(
        data_root,
        tiny_towers,
        tmp_path / "sh",
        "data.aligned_frac=0.01",
        "data.batch_size=8",
        "data.shrink_batch_to_subset=true",
        "train.max_steps=1",
    )
    out = zip_stage(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["aligned_pairs_used"] < 8 and metrics["batch_size"] == metrics["train_items"]


def test_missing_pretrained_stage_names_the_key(data_root, tiny_towers, tmp_path):
    cfg = zip_config(data_root, tiny_towers, tmp_path / "m", f"inputs.text={tmp_path / 'nope'}")
    with pytest.raises(UserError, match=r"inputs\.text"):
        zip_stage(cfg)


def test_cli_aligned_frac_out_of_range_no_traceback():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipper_pl",
            "zip",
            "experiments/tiny/zip_asr.yaml",
            "data.aligned_frac=1.5",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode != 0 and "aligned_frac" in r.stderr and "Traceback" not in r.stderr


def test_exported_weights_are_the_best_validation_checkpoint(data_root, tiny_towers, tmp_path):
    out = zip_stage(
        zip_config(
            data_root,
            tiny_towers,
            tmp_path / "b",
            "train.max_steps=6",
            "train.val_every=2",
            "train.lr=3e-2",
        )
    )
    best = torch.load(out / "best.ckpt", map_location="cpu", weights_only=True)
    exported = load_file(str(out / "model.safetensors"))
    for k, v in exported.items():
        assert torch.equal(best["state_dict"][f"model.{k}"], v), k


def test_compile_switch_trains_through_the_compiled_forward(
    data_root, tiny_towers, tmp_path, monkeypatch
):
    """``train.compile=true`` routes the fine-tuning stage's steps through ``torch.compile``'s
    result for each of the Zipper's blocks and cross-attention layers (that Dynamo traces them
    is tests/test_zipper.py's business: the whole stage traced takes minutes on a small CPU)."""
    compiled, calls = [], []

    def record(fn, **kw):
        compiled.append(fn)
        return lambda *a, **k: calls.append(1) or fn(*a, **k)

    monkeypatch.setattr(torch, "compile", record)
    cfg = zip_config(
        data_root, tiny_towers, tmp_path / "c", "train.max_steps=2", "train.compile=true"
    )
    out = zip_stage(cfg)
    assert {type(f.__self__).__name__ for f in compiled} == {"Block", "GatedCrossAttention"}
    # both steps ran the regions compiled, but the frozen text blocks before the first zipped
    # layer (no gradient: eager) and the direction no loss reads
    assert len(calls) >= len(compiled)
    eager = zip_stage(zip_config(data_root, tiny_towers, tmp_path / "e", "train.max_steps=2"))
    got, want = (load_file(str(o / "model.safetensors")) for o in (out, eager))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_patience_stops_when_validation_stops_improving(data_root, tiny_towers, tmp_path, capsys):
    """train.patience=1: the first validation without a new best ends the stage; the exported
    weights are still the best validation's, and metrics.json says how far it trained."""
    out = zip_stage(
        zip_config(
            data_root,
            tiny_towers,
            tmp_path / "p",
            "train.max_steps=40",
            "train.val_every=2",
            "train.lr=5.0",
            "train.warmup_steps=0",
            "train.patience=1",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    # stopped at the first validation (every 2 steps) after the best one, long before step 40
    assert metrics["steps"] == metrics["selected_step"] + 2 < 40
    assert f"stopped at step {metrics['steps']} of 40: 1 validations" in capsys.readouterr().out
    with pytest.raises(UserError, match="train.patience=2 .* train.select_best=true"):
        zip_config(data_root, tiny_towers, tmp_path / "q", "train.patience=2",
                   "train.select_best=false")  # fmt: skip


def test_a_stage_killed_after_a_validation_resumes_knowing_it(
    data_root, tiny_towers, tmp_path, monkeypatch
):
    """Killed after a validation and before the next checkpoint, a stage resumes with that
    validation's score: the best weights and the patience stop are those of an uninterrupted
    run (the step checkpoint is written before the step's validation, which resuming skips)."""
    args = ("train.max_steps=40", "train.val_every=2", "train.ckpt_every=2", "train.lr=5.0",
            "train.warmup_steps=0", "train.patience=2")  # fmt: skip
    straight = zip_stage(zip_config(data_root, tiny_towers, tmp_path / "s", *args))
    want = json.loads((straight / "metrics.json").read_text())
    kill = want["selected_step"] + 1  # right after the best validation
    real_make = towers.make_trainer

    def killed(cfg, out, **kw):
        trainer = real_make(cfg, out, **kw)
        trainer.callbacks.insert(0, _CrashAtStep(kill))
        return trainer

    cfg = zip_config(data_root, tiny_towers, tmp_path / "r", *args)
    monkeypatch.setattr(towers, "make_trainer", killed)
    with pytest.raises(_Crash):
        zip_stage(cfg)
    last = torch.load(tmp_path / "r" / "last.ckpt", map_location="cpu", weights_only=False)
    (best,) = [v for k, v in last["callbacks"].items() if "'monitor': 'val/loss'" in k and
               k.startswith("ModelCheckpoint")]  # fmt: skip
    assert float(best["best_model_score"]) == pytest.approx(want["selected_score"])
    monkeypatch.setattr(towers, "make_trainer", real_make)
    got = json.loads((zip_stage(cfg) / "metrics.json").read_text())
    for key in ("steps", "selected_step", "selected_score", "val_loss"):
        assert got[key] == pytest.approx(want[key]), key
