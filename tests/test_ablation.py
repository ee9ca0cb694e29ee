"""Ablation bookkeeping: cells, tables and plots (the stages are tested elsewhere)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import filelock
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import ROOT, run_make, tiny_config
from zipper_pl.config import load_config
from zipper_pl.errors import UserError
from zipper_pl.fitting import towers as tower_fits
from zipper_pl.fitting.ablation_cells import (
    cell_config,
    cells_of,
    reference_of,
    seed_towers,
    shard_order,
    system_label,
)
from zipper_pl.fitting.judging import Utterance
from zipper_pl.io import save_weights
from zipper_pl.lit.common import NonFiniteTraining
from zipper_pl.results import scoring
from zipper_pl.results.ablation_tables import adjust_p, grid_lines, paired_tests, write_tables
from zipper_pl.runs.layout import (
    LOCK_FILE,
    input_fingerprints,
    is_finished,
    stage_dir,
    stage_identity,
)
from zipper_pl.stages import ablation


def test_cells_cover_systems_without_duplicate_single_rows(data_root, tmp_path):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "zip_asr.yaml",
        "ablation.fracs=0.1,1.0",
        "ablation.seeds=0,1",
        "ablation.freeze=text,both",
    )
    cells = cells_of(cfg)
    # ASR (asr_freeze: text): zipper + single; TTS: zipper trained and frozen speech + single;
    # each x 2 fracs x 2 seeds (freezing does not apply to the single decoder)
    assert len(cells) == 2 * 2 * 2 + 3 * 2 * 2
    assert {c["freeze"] for c in cells if c["model"] == "single"} == {"none"}
    assert {c["freeze"] for c in cells if c["task"] == "asr"} == {"text", "none"}
    assert {c["freeze"] for c in cells if c["task"] == "tts"} == {"text", "both", "none"}
    bad = tiny_config(data_root, tmp_path, "zip_asr.yaml", "ablation.fracs=0,1")
    with pytest.raises(UserError, match="ablation.fracs"):
        cells_of(bad)
    with pytest.raises(UserError, match="ablation.seeds"):
        cells_of(tiny_config(data_root, tmp_path, "zip_asr.yaml", "ablation.seeds=[]"))


def test_the_freeze_comparison_runs_at_freeze_fracs_only(data_root, tmp_path):
    """The paper compares frozen and trained speech towers at full data: with freeze_fracs the
    second freeze setting runs there only, the first (and every other system) everywhere."""
    args = ("ablation.fracs=0.1,1.0", "ablation.freeze=text,both")
    cfg = tiny_config(data_root, tmp_path, "zip_asr.yaml", *args, "ablation.freeze_fracs=[1.0]")
    tts = [c for c in cells_of(cfg) if c["task"] == "tts"]
    assert sorted((c["frac"], c["freeze"]) for c in tts if c["model"] == "zipper") == [
        (0.1, "text"), (1.0, "both"), (1.0, "text")
    ]  # fmt: skip
    assert {c["frac"] for c in tts if c["model"] == "single"} == {0.1, 1.0}
    nowhere = tiny_config(data_root, tmp_path, "zip_asr.yaml", *args, "ablation.freeze_fracs=[0.3]")
    with pytest.raises(UserError, match="would run nowhere"):
        cells_of(nowhere)


def test_each_seed_zips_towers_pretrained_with_that_seed(data_root, tiny_towers, monkeypatch):
    """ABLATION_SEEDS varies the towers too: seed 1's cells zip towers pretrained with seed 1
    (the given towers' own configs, seed replaced), and a second run trains nothing."""
    cfg = tiny_config(
        data_root, tiny_towers["runs"], "zip_asr.yaml",
        f"inputs.text={tiny_towers['text']}", f"inputs.speech={tiny_towers['speech']}",
        "ablation.fracs=1.0", "ablation.seeds=0,1", "ablation.tts=false",
        "ablation.models=zipper", "train.max_steps=2", "train.val_every=2", "eval.max_utterances=4",
    )  # fmt: skip
    out = ablation.ablation_stage(cfg)
    towers = seed_towers(cfg)
    assert towers[0] == {"text": tiny_towers["text"], "speech": tiny_towers["speech"]}
    short = ("train.max_steps=3", "train.val_every=3", "train.ckpt_every=3")  # tiny_towers'
    for m in ("text", "speech"):
        assert towers[1][m] != towers[0][m]
        assert load_config(towers[1][m] / "config.yaml").seed == 1
        # the very stage `make pretrain-<m> SEED=1` names (its saved config names its own)
        again = tiny_config(data_root, tiny_towers["runs"], f"pretrain_{m}.yaml", *short, "seed=1")
        assert stage_dir(again, "pretrain") == towers[1][m]
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["seed"] for r in rows] == ["0", "1"] and all(r["asr_wer"] for r in rows)
    for seed in (0, 1):
        cell = cell_config(cfg, {**cells_of(cfg)[seed]}, towers[seed])
        folder = stage_dir(cell, "zip", input_fingerprints(**towers[seed]))
        inputs = json.loads((folder / "identity.json").read_text())["inputs"]
        assert inputs == input_fingerprints(**towers[seed])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished tower or cell was trained again")

    monkeypatch.setattr(tower_fits, "_pretrain", no_training)
    monkeypatch.setattr(tower_fits, "_train_finetune", no_training)
    assert ablation.ablation_stage(cfg) == out


def synthetic_rows(zipper_better_by: int = 2) -> list[dict]:
    """Two systems x two fractions x two seeds; the Zipper makes ``zipper_better_by`` fewer
    errors than the single decoder on most of 30 utterances."""
    rows = []
    for system, wers in (("Zipper", (0.9, 0.3)), ("Single Decoder", (1.0, 0.5))):
        for frac, wer in zip((0.1, 1.0), wers, strict=True):
            for seed in (0, 1):
                extra = 0 if system == "Zipper" else zipper_better_by
                errors = {f"u{i}": 3 + (i % 4) + (extra if i % 5 else 0) for i in range(30)}
                rows.append({"system": system, "frac": frac, "model": "m", "freeze": "text",
                             "seed": seed, "aligned_pairs": 10, "asr_wer": wer + 0.02 * seed,
                             "asr_lr": 1e-3, "asr_best_step": 40, "asr_errors": errors,
                             "tts_wer": None, "tts_lr": None, "tts_best_step": None,
                             "tts_errors": None})  # fmt: skip
    return rows


def test_tables_and_plots(tmp_path):
    rows = synthetic_rows()
    tests = write_tables(tmp_path, rows, "Single Decoder", ["## extra section"])
    table = list(csv.DictReader((tmp_path / "ablation.csv").open()))
    assert len(table) == 8 and "asr_errors" not in table[0] and table[0]["asr_best_step"] == "40"
    md = (tmp_path / "ablation.md").read_text()
    # mean ± sample sd over the two seeds, in %; TTS has no values: no TTS table, no TTS plot
    assert "| Zipper | 91.0 ± 1.4 | 31.0 ± 1.4 |" in md and "TTS WER" not in md
    assert "p (Zipper vs Single Decoder) |" in md and "Benjamini-Hochberg" in md
    assert md.rstrip().endswith("## extra section")
    assert [t["frac"] for t in tests] == [0.1, 1.0] and all(t["p_adjusted"] < 0.01 for t in tests)
    png = (tmp_path / "asr_wer.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "tts_wer.png").exists()


def test_the_frozen_speech_tower_is_tested_against_the_trained_one(data_root, tmp_path):
    """Question (d): on TTS the Zipper with its speech tower frozen gets its own paired test
    against the Zipper with it trained, at the fractions where it ran (freeze_fracs)."""
    cfg = tiny_config(data_root, tmp_path, "zip_asr.yaml", "ablation.fracs=0.1,1.0",
                      "ablation.freeze=text,both", "ablation.freeze_fracs=[1.0]")  # fmt: skip
    pairs = ablation.freeze_pairs(cells_of(cfg))
    assert pairs == [("Zipper (speech frozen)", "Zipper")]
    rows = []
    for row in synthetic_rows():
        errors = row["asr_errors"]
        rows.append({**row, "asr_wer": None, "asr_errors": None, "tts_wer": row["asr_wer"],
                     "tts_errors": errors})  # fmt: skip
        if row["system"] == "Zipper" and row["frac"] == 1.0:  # frozen: one error more, often
            worse = {u: e + (1 if i % 3 else 0) for i, (u, e) in enumerate(errors.items())}
            rows.append({**rows[-1], "system": "Zipper (speech frozen)", "tts_errors": worse})
    tests = write_tables(tmp_path, rows, "Single Decoder", pairs=pairs)
    (d,) = [t for t in tests if t["vs"] == "Zipper"]
    assert (d["system"], d["frac"], d["task"]) == ("Zipper (speech frozen)", 1.0, "tts")
    assert d["p_adjusted"] < 0.01 and d["n"] == 60
    md = (tmp_path / "ablation.md").read_text()
    assert "| p (Zipper (speech frozen) vs Zipper) | - | " in md


def test_paired_tests_pair_utterances_of_the_same_seed_only():
    rows = synthetic_rows(zipper_better_by=0)  # identical errors: nothing to tell apart
    (t, _) = paired_tests(rows, "Single Decoder")
    assert t["p_value"] == 1.0 and t["n"] == 60  # 30 utterances x 2 seeds
    seedless = [r for r in rows if not (r["system"] == "Zipper" and r["seed"] == 1)]
    assert paired_tests(seedless, "Single Decoder")[0]["n"] == 30


def test_benjamini_hochberg_on_hand_made_p_values():
    # sorted 0.01, 0.03, 0.04, 0.5 -> p * 4 / rank = 0.04, 0.06, 0.0533, 0.5 -> running minimum
    # from the largest: 0.04, 0.0533, 0.0533, 0.5 (given back in the input order)
    got = adjust_p([0.01, 0.04, 0.03, 0.5])
    assert got == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert adjust_p([]) == [] and adjust_p([0.2]) == [0.2]


FAKE_FPS = {"text": "fp", "speech": "fp"}  # tower fingerprints for grids whose zip stage is faked


def test_lr_selection_reads_validation_only(monkeypatch, data_root, tmp_path):
    """The grid's cells plant a test-set-only signal (the lr with the worst validation WER has
    by far the best test WER): the selection must ignore it."""
    val = {5e-4: 0.40, 1e-3: 0.20, 2e-3: 0.60}
    test = {5e-4: 0.90, 1e-3: 0.95, 2e-3: 0.01}

    def fake_zip(cfg, *, fingerprints):
        assert fingerprints is FAKE_FPS  # the study's, not hashed again per cell
        folder = tmp_path / f"lr{cfg.train.lr:g}-{cfg.data.task}"
        folder.mkdir(exist_ok=True)
        lr = cfg.train.lr
        metrics = {"val_wer": val[lr], "val_loss": 2.0 - lr, "test_wer": test[lr],
                   "test_asr_token_acc": 1.0 - test[lr]}  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(metrics))
        return folder

    monkeypatch.setattr(ablation, "run_zip", fake_zip)
    cfg = tiny_config(data_root, tmp_path, "zip_asr.yaml", "ablation.lrs=5e-4 1e-3 2e-3")
    cells = [{"task": t, "model": "zipper", "freeze": "text", "frac": 1.0, "seed": 0}
             for t in ("asr", "tts")]  # fmt: skip
    towers = {0: {"text": tmp_path / "text", "speech": tmp_path / "speech"}}
    chosen, grid = ablation._select_lrs(cfg, cells, towers, {0: FAKE_FPS})
    assert chosen[("zipper", "text", "", "asr")] == 1e-3  # lowest validation WER
    assert chosen[("zipper", "text", "", "tts")] == 2e-3  # lowest validation loss
    assert all("test" not in k for g in grid for k in g)
    # the selection function itself never sees a test figure
    assert ablation.validation_view({"val_wer": 0.1, "test_wer": 0.2}) == {"val_wer": 0.1}
    assert ablation.select_lr({1e-3: {"val_wer": 0.3}, 5e-4: {"val_wer": 0.3}}, "asr") == 5e-4


def test_a_diverging_grid_rate_loses_the_selection_instead_of_ending_the_study(
    monkeypatch, data_root, tmp_path
):
    """A rate too large for a system is an outcome of the search: its cell scores as diverged,
    the grid goes on, and a resumed study reads the recorded divergence instead of training the
    cell again; only a grid where every rate diverged is an error (naming the fix)."""
    diverging, trained = {1e-3}, []

    def fake_zip(cfg, *, fingerprints):
        trained.append(cfg.train.lr)
        stage = stage_dir(cfg, "zip", fingerprints)
        if is_finished(stage):  # as run_zip: a finished stage is returned, not trained
            return stage
        if cfg.train.lr in diverging:
            raise NonFiniteTraining("non-finite loss at step 40 (lower train.lr)\nmore")
        folder = tmp_path / f"lr{cfg.train.lr:g}"
        folder.mkdir(exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"val_wer": 0.5, "val_loss": 1.0}))
        return folder

    monkeypatch.setattr(ablation, "run_zip", fake_zip)
    cfg = tiny_config(data_root, tmp_path, "zip_asr.yaml", "ablation.lrs=1e-3 2e-3")
    cells = [{"task": "asr", "model": "zipper", "freeze": "text", "frac": 1.0, "seed": 0}]
    towers, fps = {0: {"text": tmp_path / "text", "speech": tmp_path / "speech"}}, {0: FAKE_FPS}
    chosen, grid = ablation._select_lrs(cfg, cells, towers, fps)
    assert chosen[("zipper", "text", "", "asr")] == 2e-3 and trained == [1e-3, 2e-3]
    assert [g["diverged"] for g in grid] == [True, False]
    assert "diverged" in "\n".join(grid_lines(grid, 1.0, 0))
    (record,) = tmp_path.rglob(ablation.DIVERGED)
    assert json.loads(record.read_text())["error"] == "non-finite loss at step 40 (lower train.lr)"
    trained.clear()
    assert ablation._select_lrs(cfg, cells, towers, fps)[0] == chosen and trained == [2e-3]
    # the cell finished after all (another machine type trained it): its result (0.1, better
    # than 2e-3's 0.5) outranks the record, read from the finished stage without training
    (record.parent / "model.safetensors").write_bytes(b"weights")
    (record.parent / "metrics.json").write_text(json.dumps({"val_wer": 0.1, "val_loss": 1.0}))
    assert ablation._select_lrs(cfg, cells, towers, fps)[0][("zipper", "text", "", "asr")] == 1e-3
    diverging.update({1e-3, 2e-3})
    for f in ("model.safetensors", "metrics.json", ablation.DIVERGED):
        (record.parent / f).unlink()
    with pytest.raises(UserError, match="every learning rate .* diverged.*smaller rates"):
        ablation._select_lrs(cfg, cells, towers, fps)


def test_a_zip_that_really_diverges_is_recorded_by_the_grid(data_root, tiny_towers):
    """The real path: a grid rate of 1e30 blows the tiny Zipper up; the cell is recorded as
    diverged in its own stage folder, which stays unfinished (no weights exported)."""
    towers = {0: {"text": tiny_towers["text"], "speech": tiny_towers["speech"]}}
    cfg = tiny_config(data_root, tiny_towers["runs"], "zip_asr.yaml", "train.warmup_steps=0",
                      "train.max_steps=6", "eval.max_utterances=4")  # fmt: skip
    cell = {"task": "asr", "model": "zipper", "freeze": "text", "frac": 1.0, "seed": 0, "lr": 1e30}
    fps = input_fingerprints(**towers[0])
    assert ablation._grid_cell(cfg, cell, towers[0], fps) is None
    folder = stage_dir(cell_config(cfg, cell, towers[0]), "zip", fps)
    assert "step" in json.loads((folder / ablation.DIVERGED).read_text())["error"]
    assert not (folder / "model.safetensors").exists()
    # fingerprints a caller passes must be of this config's towers (a caller's bug otherwise)
    with pytest.raises(ValueError, match="fingerprints of"):
        tower_fits.run_zip(cell_config(cfg, cell, towers[0]), fingerprints={"text": fps["text"]})


def test_cached_scores_belong_to_their_judge_and_eval_settings(monkeypatch, tmp_path):
    """A retrained judge must not reuse TTS scores the previous judge gave (stale cache)."""
    calls = []

    def fake_scores(folder, judge, cfg):
        calls.append(judge.name)
        return {"tts_wer_gold": 0.5 if judge.name == "judge_a" else 0.1, "errors": {}}

    monkeypatch.setattr("zipper_pl.stages.ablation.tts_cell_metrics", fake_scores)
    cell = tmp_path / "cell"
    cell.mkdir()
    judges = {}
    for name, value in (("judge_a", 1.0), ("judge_b", 2.0)):  # two judges, two weights
        judges[name] = tmp_path / name
        judges[name].mkdir()
        save_weights({"w": torch.full((2,), value)}, judges[name] / "model.safetensors")
        (judges[name] / "metrics.json").write_text("{}")
    cfg = load_config(None)

    def score(judge, c=cfg):
        return ablation._score("tts", cell, judge, c, ablation._score_keys(judge, c)["tts"])

    assert score(judges["judge_a"])["tts_wer_gold"] == 0.5
    assert score(judges["judge_a"])["tts_wer_gold"] == 0.5
    assert score(judges["judge_b"])["tts_wer_gold"] == 0.1
    assert calls == ["judge_a", "judge_b"]  # the second call was a cache hit, the third not
    # another token budget is another measurement (a looping model's WER grows with it)
    score(judges["judge_b"], load_config(None, ["eval.max_new_speech_per_word=15"]))
    assert calls == ["judge_a", "judge_b", "judge_b"]


def test_a_tts_score_sampled_under_another_scheme_is_scored_again(monkeypatch, tmp_path, capsys):
    """Best of N samples: a score from the draws of another sampling scheme (before 2026-12-04
    the seeds drew other numbers) is recomputed, and the console says why."""
    calls = []
    monkeypatch.setattr(
        "zipper_pl.stages.ablation.tts_cell_metrics",
        lambda folder, judge, cfg: calls.append(1) or {"tts_wer_gold": 0.3, "errors": {}},
    )
    cell, judge = tmp_path / "cell", tmp_path / "judge"
    cell.mkdir()
    judge.mkdir()
    save_weights({"w": torch.ones(2)}, judge / "model.safetensors")
    (judge / "metrics.json").write_text("{}")
    cfg = load_config(None)
    key = ablation._score_keys(judge, cfg)["tts"]
    old = {k: v for k, v in key.items() if k != "sampling"}  # what earlier versions stored
    (cell / ablation.SCORES["tts"]).write_text(json.dumps({"tts_wer_gold": 0.9, **old}))
    assert ablation._score("tts", cell, judge, cfg, key)["tts_wer_gold"] == 0.3
    assert calls == [1] and "other sampling: scoring again" in capsys.readouterr().out
    assert ablation._score("tts", cell, judge, cfg, key)["tts_wer_gold"] == 0.3  # now cached
    assert calls == [1]


def test_tts_cell_counts_and_shows_utterances_too_long(monkeypatch, tmp_path, capsys):
    """A TTS cell scores only the test utterances its stage can hold; the rest are counted and
    shown on the console, not dropped silently."""
    folder = tmp_path / "single-tts-x"
    folder.mkdir()
    (folder / "towers.json").write_text('{"text": {"max_seq_len": 12}}')
    utts = [Utterance(str(i), "a b", np.zeros(n, dtype=np.int64)) for i, n in enumerate((3, 9))]
    tok = SimpleNamespace(encode=lambda texts: [[1, 2] for _ in texts])
    monkeypatch.setattr(scoring, "load_judge", lambda d: (None, None))
    monkeypatch.setattr(scoring, "load_finetuned", lambda f: SimpleNamespace(text_tok=tok))
    monkeypatch.setattr(scoring, "gold_utterances", lambda cfg, t, pool: utts)
    monkeypatch.setattr(scoring, "oracle_scores", lambda j, u, bs: {"hyps": [x.text for x in u]})
    seen = []

    def fake_eval(ft, judge, kept, targets, cfg):
        seen.extend(kept)
        wer = {"wer_gold": 0.0, "wer_target": 0.0}
        rows = [{"id": u.id, "best_errors_gold": 2} for u in kept]
        return {"best_of_n": wer, "greedy": wer, "n": len(kept)}, rows, None

    monkeypatch.setattr(scoring, "eval_tts", fake_eval)
    cfg = load_config(None, ["eval.max_utterances=0"])
    res = scoring.tts_cell_metrics(folder, tmp_path / "judge", cfg)
    assert [u.id for u in seen] == ["0"]  # 3 + 2 + 4 specials fit in 12; 9 + 2 + 4 do not
    assert res["skipped_too_long"] == 1 and res["n"] == 1 and res["errors"] == {"0": 2}
    assert "1 of 2 test utterances too long" in capsys.readouterr().out
    # an ASR cell scores the same utterances, with per-utterance errors for the paired tests
    monkeypatch.setattr(
        scoring, "load_finetuned", lambda f: SimpleNamespace(text_tok=tok, audio_tok=None)
    )
    monkeypatch.setattr(scoring, "generate_asr", lambda ft, kept, cfg: (["a x"] * len(kept), 0))
    res = scoring.asr_cell_metrics(folder, cfg)
    assert res["errors"] == {"0": 1} and res["asr_wer"] == 0.5 and res["skipped_too_long"] == 1


def test_bad_ablation_freeze_is_a_config_error(data_root, tmp_path):
    with pytest.raises(UserError, match="ablation.freeze: 'speech_tower'"):
        tiny_config(data_root, tmp_path, "zip_asr.yaml", "ablation.freeze=text,speech_tower")
    with pytest.raises(UserError, match="ablation.asr_freeze: 'nothing'"):
        tiny_config(data_root, tmp_path, "zip_asr.yaml", "ablation.asr_freeze=nothing")


def test_ablation_quick_through_make(tmp_path, data_root, tiny_towers):
    """`make ablation-quick` (the Makefile's quoted lists, ASR only: no judge, no lr grid): every
    system x fraction x seed has its row, and seed 1 zipped towers pretrained with seed 1 (the
    tiny study file names other fractions, seeds 0-2 and a grid, so each override shows). Two
    shards side by side (STUDY_JOBS=2) share the towers and cells and finish one table."""
    runs = tmp_path / "runs"
    args = f"ARGS=data.cache_dir={data_root / 'cache'} train.accelerator=cpu eval.max_utterances=4"
    proc = run_make(
        "ablation-quick", "STUDY_JOBS=2", "SCALE=tiny", "FT_STEPS=2", "ABLATION_QUICK_FRACS=1.0",
        "ABLATION_QUICK_LRS=[]", f"RUNS={runs}", f"DATA_ROOT={data_root}", f"PY={sys.executable}",
        args, f"TEXT_TOWER={tiny_towers['text']}", f"SPEECH_TOWER={tiny_towers['speech']}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (table,) = runs.glob("*/ablation-*/ablation.csv")
    rows = list(csv.DictReader(table.open()))
    assert sorted((r["system"], r["frac"], r["seed"]) for r in rows) == sorted(
        (s, f, seed) for s in ("Zipper", "Single Decoder") for f in ("1.0",) for seed in ("0", "1")
    )
    # the file's fractions, seeds and lr grid are not the quick study's
    assert all(r["asr_wer"] and not r["tts_wer"] for r in rows)
    assert "lr grid" not in proc.stdout  # ABLATION_LRS="[]": the file's train.lr, single_lr
    assert {float(r["asr_lr"]) for r in rows if r["system"] == "Zipper"} == {1e-3}
    assert "seed 1: text tower pretrained with seed 1" in proc.stdout
    assert not list(runs.glob("*/judge-*"))
    assert "2 shards side by side" in proc.stdout
    assert len(list(runs.glob("*/zipper-asr-*"))) == 2  # each cell trained once, by one shard


def test_ablation_quick_runs_the_rate_the_grid_selected():
    """By default the quick study's cells are the full study's: both systems at the demo grid's
    ASR choice (a one-rate grid), not the file's hand-set single_lr."""

    def quick_call(*args: str) -> str:  # MAKE=echo: the call `make _check-paths _ablation` gets
        r = run_make("-n", "ablation-quick", "MAKE=echo", *args, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "ABLATION_LRS=2e-3" in quick_call() and "ABLATION_SEEDS=0 1" in quick_call()
    assert " _check-paths _ablation " in quick_call()  # one make level: stage paths computed once
    assert "ABLATION_LRS=[]" in quick_call("SCALE=tiny")  # the grid's rate is the demo's
    assert 2e-3 in load_config(ROOT / "experiments/demo/ablation.yaml").ablation.lrs


# ---- studies of designs: variants in a YAML file ------------------------------------------------
DESIGNS = {
    "paper": [],
    "prior": ["zip.align_prior=true"],
    "speech proj only": ["zip.input_proj.text=none"],
}


def study_file(tmp_path, name: str = "my_study", **ablation_keys) -> Path:
    """The tiny study file with ``ablation_keys`` replaced, written where a user would keep it."""
    tree = yaml.safe_load((ROOT / "experiments/tiny/ablation.yaml").read_text())
    tree["ablation"].update(ablation_keys)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_design_is_a_yaml_entry_with_its_own_cells_lr_and_label(data_root, tmp_path, monkeypatch):
    """A new design needs no code: its cells are the file's with its overrides, named by it,
    their own stages, with their own learning rate chosen on validation."""
    study = study_file(tmp_path, variants=DESIGNS, fracs=[1.0], seeds=[0], tts=False)
    common = [f"data.root={data_root}", f"runs={tmp_path}", "train.accelerator=cpu"]
    cfg = load_config(study, common)
    cells = cells_of(cfg)
    assert [(c["model"], c["variant"]) for c in cells] == [
        ("zipper", "paper"), ("zipper", "prior"), ("zipper", "speech proj only"), ("single", "")
    ]  # fmt: skip
    configs = {c["variant"]: cell_config(cfg, c, {"text": "t", "speech": "s"}) for c in cells}
    assert configs["prior"].zip.align_prior and not configs["paper"].zip.align_prior
    assert configs["speech proj only"].zip.input_proj == {"text": "none", "speech": "gated"}
    ids = {stage_identity(c, "zip", FAKE_FPS)["fingerprint"] for c in configs.values()}
    assert len(ids) == 4  # every design is a stage of its own
    assert [system_label(c) for c in cells][:2] == ["Zipper: paper", "Zipper: prior"]
    assert reference_of(cells) == "Single Decoder"
    assert ablation.freeze_pairs(cells)[0] == ("Zipper: prior", "Zipper: paper")
    only = load_config(study_file(tmp_path, "only", variants=DESIGNS, models=["zipper"]), common)
    assert reference_of(cells_of(only)) == "Zipper: paper"  # the first design

    def fake_zip(cfg, *, fingerprints):  # "prior" prefers the small rate, the others the large
        folder = tmp_path / f"{cfg.zip.align_prior}-{cfg.train.lr:g}"
        folder.mkdir(exist_ok=True)
        good = (cfg.train.lr < 2e-3) == cfg.zip.align_prior
        (folder / "metrics.json").write_text(json.dumps({"val_wer": 0.1 if good else 0.5}))
        return folder

    monkeypatch.setattr(ablation, "run_zip", fake_zip)
    grid = load_config(study, [*common, "ablation.models=[zipper]"])
    chosen, _ = ablation._select_lrs(grid, cells_of(grid), {0: {}}, {0: FAKE_FPS})
    assert chosen == {("zipper", "text", "paper", "asr"): 2e-3,
                      ("zipper", "text", "prior", "asr"): 1e-3,
                      ("zipper", "text", "speech proj only", "asr"): 2e-3}  # fmt: skip


def test_a_design_that_sets_what_the_study_sets_or_a_wrong_key_is_refused(data_root, tmp_path):
    common = [f"data.root={data_root}", f"runs={tmp_path}"]
    taken = study_file(tmp_path, variants={"half": ["data.aligned_frac=0.5"]})
    with pytest.raises(UserError, match=r"variants.half sets data.aligned_frac.*ablation\.\*"):
        cells_of(load_config(taken, common))
    typo = study_file(tmp_path, variants={"typo": ["zip.align_prio=true"]})
    with pytest.raises(UserError, match="variants.typo.*did you mean 'zip.align_prior'"):
        cells_of(load_config(typo, common))


def test_a_design_study_runs_from_its_yaml_file(data_root, tiny_towers, tmp_path):
    """The stage end to end on a user's file: one row per design, tested against the first."""
    study = study_file(tmp_path, variants={"paper": [], "prior": ["zip.align_prior=true"]},
                       models=["zipper"], fracs=[1.0], seeds=[0], tts=False, lrs=[],
                       tower_seeds=False)  # fmt: skip
    cfg = load_config(study, [
        f"data.root={data_root}", f"data.cache_dir={data_root / 'cache'}", f"runs={tmp_path}",
        "train.accelerator=cpu", "train.max_steps=2", "eval.max_utterances=4",
        f"inputs.text={tiny_towers['text']}", f"inputs.speech={tiny_towers['speech']}",
    ])  # fmt: skip
    out = ablation.ablation_stage(cfg)
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [(r["system"], r["variant"]) for r in rows] == [
        ("Zipper: paper", "paper"), ("Zipper: prior", "prior")
    ]  # fmt: skip
    md = (out / "ablation.md").read_text()
    assert md.startswith("# Design ablation") and "| system | aligned 1 |" in md
    assert "| p (Zipper: prior vs Zipper: paper) |" in md


def test_make_ablation_runs_the_study_file_named():
    def study_call(*args: str) -> str:
        r = run_make("-n", "_ablation", "SCALE=tiny", "TEXT_DIR=t", "SPEECH_DIR=s", "JUDGE_DIR=j",
                     "W=x", *args, timeout=60)  # fmt: skip
        return r.stdout

    assert " ablation experiments/tiny/ablation.yaml " in study_call()
    assert " ablation experiments/tiny/design.yaml " in study_call("STUDY=design")
    assert " ablation /tmp/mine.yaml " in study_call("STUDY=/tmp/mine.yaml")


def test_two_shards_pretrain_a_seeds_two_towers_side_by_side(monkeypatch):
    """Sharded by seed, both shards of `make ablation-quick STUDY_JOBS=2` (seeds 0 and 1, seed 0's
    towers given) went for seed 1's text tower first: one trained it while the other waited on
    its lock, then the same for the speech tower, one lane idle for both towers."""
    cfg = load_config(
        ROOT / "experiments/tiny/zip_asr.yaml",
        ["ablation.seeds=0,1", "ablation.tower_seeds=true"],
    )
    monkeypatch.setattr(
        "zipper_pl.fitting.ablation_cells.tower_input", lambda cfg, m: Path(f"/{m[0]}")
    )
    firsts = []
    for shard in ((0, 2), (1, 2)):
        trained: list[tuple[int, str]] = []

        def reseeded(cfg, folder, modality, seed, trained=trained):
            if seed != 0:  # seed 0's are the given towers: nothing to train
                trained.append((seed, modality))
            return Path(f"{folder}-s{seed}")

        monkeypatch.setattr("zipper_pl.fitting.ablation_cells._reseeded", reseeded)
        towers = seed_towers(cfg, shard=shard)
        assert towers[1] == {"text": Path("/t-s1"), "speech": Path("/s-s1")}
        firsts.append(trained[0])
    assert firsts[0] != firsts[1]


def test_shards_take_different_shared_stages_until_their_shares_run_out(tmp_path):
    """Shards once started at their i-th shared stage and went on in order: shard 1 then met
    shard 0 at the next stage and waited for it, so two shards trained the lr grid one at a time."""
    items = list(range(10))
    orders = [shard_order(items, (i, 2)) for i in range(2)]
    assert all(sorted(o) == items for o in orders)
    assert not set(orders[0][:5]) & set(orders[1][:5])
    # past its share, a shard skips the cells another shard works on: training them or, after
    # the stage's own lock is released, scoring them (two shards once scored the same cell)
    folders = [tmp_path / str(k) for k in range(3)]
    with ablation.cell_work(folders[0]):
        assert not filelock.FileLock(str(folders[0] / LOCK_FILE)).is_locked  # training is over
        assert ablation.next_free(folders) == 1
        with ablation.cell_work(folders[1]), ablation.cell_work(folders[2]):
            assert ablation.next_free(folders) == 0  # all busy: wait for the first
    assert ablation.next_free(folders) == 0


def test_interrupting_a_sharded_study_stops_every_shard(tmp_path):
    """Ctrl-C on `make ablation STUDY_JOBS=2` (SIGINT to the foreground process group) once left
    both shards training: background commands of a non-interactive shell ignore SIGINT."""
    child = (
        "import os, pathlib, sys, time; "
        f"pathlib.Path({str(tmp_path)!r}, str(os.getpid())).write_text(' '.join(sys.argv[1:])); "
        "time.sleep(120)"
    )
    script = ROOT / "scripts" / "study_shards.sh"
    # SIGINT at its default, as in a terminal: pytest-xdist's workers ignore it, and a signal
    # ignored when bash starts cannot be trapped
    proc = subprocess.Popen(
        [str(script), "2", sys.executable, "-c", child],
        start_new_session=True, stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    for _ in range(400):
        if len([p for p in tmp_path.iterdir() if p.stat().st_size]) == 2:
            break
        time.sleep(0.05)
    shards = {int(p.name): p.read_text() for p in tmp_path.iterdir()}
    assert sorted(a.split()[0] for a in shards.values()) == [
        "ablation.shard=0/2",
        "ablation.shard=1/2",
    ]
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) != 0
    for pid in shards:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_scores_cached_before_a_new_eval_key_stay_valid_at_its_default(tmp_path, capsys):
    """eval.test_words came after the design study's first cells were scored: at its default a
    cached score is still this score (it once had every finished cell scored again)."""
    from zipper_pl.config import to_dict

    cfg = load_config(None)
    key = ablation._score_keys(None, cfg)["asr"]
    settings = to_dict(cfg.eval)
    for stored in (
        {k: v for k, v in settings.items() if k != "test_words"},  # written before the key
        settings,  # written after it, at its default
    ):
        (tmp_path / "asr_eval.json").write_text(json.dumps({"asr_wer": 0.5, "eval": stored}))
        assert ablation._cached(tmp_path, "asr", key)["asr_wer"] == 0.5
    other = ablation._score_keys(None, load_config(None, ["eval.test_words=[4,16]"]))["asr"]
    assert ablation._cached(tmp_path, "asr", other) is None
    assert "scoring again" in capsys.readouterr().out
