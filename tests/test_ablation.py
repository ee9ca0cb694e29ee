"""Ablation bookkeeping: cells, tables and plots (the stages are tested elsewhere)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from zipper_pl import ablation, scoring
from zipper_pl.ablation import _cells, write_tables
from zipper_pl.config import load_config
from zipper_pl.errors import UserError
from zipper_pl.io import save_weights
from zipper_pl.judging import Utterance


def test_cells_cover_systems_without_duplicate_single_rows(data_root, tmp_path):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "zip_asr.yaml",
        "ablation.fracs=0.1,1.0",
        "ablation.seeds=0,1",
        "ablation.freeze=text,both",
    )
    cells = _cells(cfg)
    # zipper: 2 fracs x 2 freeze x 2 seeds; single: 2 fracs x 2 seeds (freezing does not apply)
    assert len(cells) == 8 + 4
    assert {c["freeze"] for c in cells if c["model"] == "single"} == {"none"}
    bad = tiny_config(data_root, tmp_path, "zip_asr.yaml", "ablation.fracs=0,1")
    with pytest.raises(UserError, match="ablation.fracs"):
        _cells(bad)


def test_tables_and_plots(tmp_path):
    rows = []
    for system, wers in (("Zipper", (0.9, 0.3)), ("Single Decoder", (1.0, 0.5))):
        for frac, wer in zip((0.1, 1.0), wers, strict=True):
            for seed in (0, 1):
                rows.append(
                    {
                        "system": system,
                        "frac": frac,
                        "model": "m",
                        "freeze": "text",
                        "seed": seed,
                        "aligned_pairs": 10,
                        "asr_wer": wer + 0.01 * seed,
                        "asr_cer": wer / 2,
                        "tts_wer": None,
                    }
                )
    write_tables(tmp_path, rows)
    assert len(list(csv.DictReader((tmp_path / "ablation.csv").open()))) == 8
    md = (tmp_path / "ablation.md").read_text()
    assert "| Zipper | 90.5 | 30.5 |" in md and "TTS" not in md  # mean over seeds, in %
    png = (tmp_path / "asr_wer.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "tts_wer.png").exists()


def test_cached_tts_scores_belong_to_their_judge(monkeypatch, tmp_path):
    """A retrained judge must not reuse TTS scores the previous judge gave (stale cache)."""
    calls = []

    def fake_scores(folder, judge, cfg):
        calls.append(judge.name)
        return {"tts_wer_gold": 0.5 if judge.name == "judge_a" else 0.1}

    monkeypatch.setattr("zipper_pl.ablation.tts_cell_metrics", fake_scores)
    cell = tmp_path / "cell"
    cell.mkdir()
    judges = {}
    for name, value in (("judge_a", 1.0), ("judge_b", 2.0)):  # two judges, two weights
        judges[name] = tmp_path / name
        judges[name].mkdir()
        save_weights({"w": torch.full((2,), value)}, judges[name] / "model.safetensors")
        (judges[name] / "metrics.json").write_text("{}")
    cfg = load_config(None)
    assert ablation._tts_score(cell, judges["judge_a"], cfg)["tts_wer_gold"] == 0.5
    assert ablation._tts_score(cell, judges["judge_a"], cfg)["tts_wer_gold"] == 0.5
    assert ablation._tts_score(cell, judges["judge_b"], cfg)["tts_wer_gold"] == 0.1
    assert calls == ["judge_a", "judge_b"]  # the second call was a cache hit, the third not
    # another token budget is another measurement (a looping model's WER grows with it)
    budget = load_config(None, ["eval.max_new_speech_per_word=15"])
    ablation._tts_score(cell, judges["judge_b"], budget)
    assert calls == ["judge_a", "judge_b", "judge_b"]


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
        return {"best_of_n": wer, "greedy": wer, "n": len(kept)}, None, None

    monkeypatch.setattr(scoring, "eval_tts", fake_eval)
    cfg = load_config(None, ["eval.max_utterances=0"])
    res = scoring.tts_cell_metrics(folder, tmp_path / "judge", cfg)
    assert [u.id for u in seen] == ["0"]  # 3 + 2 + 4 specials fit in 12; 9 + 2 + 4 do not
    assert res["skipped_too_long"] == 1 and res["n"] == 1
    assert "1 of 2 test utterances too long" in capsys.readouterr().out
