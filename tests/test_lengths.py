"""TTS WER by utterance length (the paper's Fig. 2): buckets, bootstrap intervals, the command."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from zipper_pl.__main__ import main
from zipper_pl.errors import UserError
from zipper_pl.results.lengths import by_length, length_buckets, write_length_report


@pytest.mark.parametrize(
    "lengths",
    [[4, 4, 5, 6, 6, 7, 8, 8], [4] * 5 + [12] * 40, list(range(3, 30)), [7], [5, 5, 5, 9]],
)
def test_buckets_are_whole_ranges_covering_every_length_once(lengths):
    buckets = length_buckets(lengths)
    assert 1 <= len(buckets) <= 4
    assert buckets[0][0] == min(lengths) and buckets[-1][1] == max(lengths)
    for (lo, hi), (next_lo, _) in itertools.pairwise(buckets):
        assert lo <= hi and next_lo == hi + 1
    assert sum(1 for x in lengths for lo, hi in buckets if lo <= x <= hi) == len(lengths)


def _rows(rng, system_gap_per_word: float) -> list[dict]:
    """Utterances of 4-20 words; a system's errors grow with length at its own rate."""
    rows = []
    for k in range(200):
        words = 4 + k % 17
        errors = rng.binomial(words, min(0.9, 0.2 + system_gap_per_word * words))
        rows.append({"id": f"u{k}", "ref_words": words, "best_errors_gold": int(errors)})
    return rows


def _planted(rng) -> dict[str, list[dict]]:
    # the single decoder degrades with length, the Zipper does not: the gap grows
    return {"single": _rows(rng, 0.03), "zipper": _rows(rng, 0.0)}


def test_the_gap_and_its_paired_interval_follow_a_planted_length_effect():
    table = by_length(_planted(np.random.default_rng(0)))
    gaps = [r for r in table if r["system"] == "zipper"]
    assert len(gaps) == 4 and all(r["gap_vs"] == "single" for r in gaps)
    assert [r["gap"] for r in gaps] == sorted(r["gap"] for r in gaps)  # grows with length
    low, high = gaps[-1]["gap_interval"]
    assert 0 < low < gaps[-1]["gap"] < high  # the longest bucket: clearly better, interval tight
    for r in table:
        assert r["low"] <= r["wer"] <= r["high"]
    # no effect planted: the shortest bucket's interval covers zero or sits near it
    same = by_length({"single": _rows(np.random.default_rng(1), 0.0),
                      "zipper": _rows(np.random.default_rng(2), 0.0)})  # fmt: skip
    for r in (r for r in same if "gap" in r):
        assert r["gap_interval"][0] < 0.08 and r["gap_interval"][1] > -0.08


def test_the_command_writes_table_and_plot_of_an_evaluation_folder(tmp_path, capsys):
    utterances = tmp_path / "utterances"
    utterances.mkdir()
    for name, rows in _planted(np.random.default_rng(0)).items():
        (utterances / f"{name}.tts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    systems = [{"name": "single", "label": "Single Decoder"}, {"name": "zipper", "label": "Zipper"}]
    (tmp_path / "results.json").write_text(json.dumps({"systems": systems}))
    assert main(["by-length", str(tmp_path)]) == 0
    md = (tmp_path / "by_length.md").read_text()
    assert "token judge" in md and "| 4-" in md and "| Zipper |" in md
    assert (tmp_path / "by_length.png").read_bytes()[:4] == b"\x89PNG"
    assert "the paper's Fig. 2" in capsys.readouterr().out
    # audio rows, where the evaluation has them, are preferred over the token judge's
    for name in ("single", "zipper"):
        token_rows = (utterances / f"{name}.tts.jsonl").read_text()
        (utterances / f"{name}.tts_audio.jsonl").write_text(token_rows)
    assert "judged from audio" in write_length_report(tmp_path).read_text()


def test_folders_of_eval_stages_put_the_baseline_first_whatever_their_names(tmp_path):
    """Systems named by their folders (eval.stages) once kept file order, so a Zipper folder
    that sorted first became the row every gap was measured from."""
    utterances = tmp_path / "utterances"
    utterances.mkdir()
    planted = _planted(np.random.default_rng(0))
    names = {"single": "b-single-tts-stage", "zipper": "a-zipper-tts-stage"}
    for arch, rows in planted.items():
        (utterances / f"{names[arch]}.tts.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    systems = [{"name": n, "arch": a, "label": f"{a}: {n}"} for a, n in names.items()]
    (tmp_path / "results.json").write_text(json.dumps({"systems": systems}))
    rows = [r for r in write_length_report(tmp_path).read_text().splitlines() if "stage |" in r]
    assert "single: b-single" in rows[0] and rows[0].rstrip().endswith("|  |  |")  # no gap
    assert "zipper: a-zipper" in rows[1] and "+" in rows[1]


def test_a_folder_without_two_speaking_systems_is_one_line_error(tmp_path, capsys):
    (tmp_path / "utterances").mkdir()
    assert main(["by-length", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "finished `make evaluate` folder" in err
    with pytest.raises(UserError):
        write_length_report(tmp_path / "missing")
