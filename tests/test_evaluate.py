"""Judge stage and evaluation stage at tiny scale: artefacts, tables, retention, eval.stages."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import zipper_pl.__main__ as zipper_cli
from tests.conftest import tiny_config
from tests.test_faults import _small_disk
from tests.test_listen import PROBE, chromium, run_chromium
from zipper_pl.config import load_config
from zipper_pl.errors import UserError
from zipper_pl.fitting.judging import Utterance, load_judge
from zipper_pl.results.report import render_markdown
from zipper_pl.results.scoring import generate_asr, generate_tts, significance
from zipper_pl.runs.finetuned import load_finetuned
from zipper_pl.runs.layout import is_finished
from zipper_pl.stages.chain import judge_stage
from zipper_pl.stages.evaluate import evaluate_stage, resolve_systems


def _inputs(towers) -> list[str]:
    return [f"inputs.text={towers['text']}", f"inputs.speech={towers['speech']}"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine the
    intra-op thread pool makes step-by-step generation many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def evaluated(data_root, tiny_towers, tmp_path_factory):
    """One default-mode evaluation: trains zipper/single x asr/tts and the judge, 2 steps each."""
    runs = tmp_path_factory.mktemp("eval_runs")
    cfg = tiny_config(
        data_root,
        runs,
        "evaluate.yaml",
        *_inputs(tiny_towers),
        "train.max_steps=2",
        "eval.max_utterances=4",
    )
    return cfg, evaluate_stage(cfg)


def test_judge_stage_trains_reports_oracle_and_is_reused(data_root, tiny_towers, tmp_path):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "judge.yaml",
        *_inputs(tiny_towers),
        f"out={tmp_path / 'judge'}",
        "train.max_steps=4",
    )
    out = judge_stage(cfg)
    assert is_finished(out) and (out / "judge.json").is_file() and (out / "tb").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["oracle_wer"] >= 0.0 and metrics["oracle_cer"] >= 0.0
    assert metrics["test_utterances"] == 12 and metrics["steps"] == 4
    judge, tok = load_judge(out)
    assert judge.cfg.vocab == tok.vocab_size == 32  # taken from the audio tokenizer
    assert judge.vocab.kind == "chars" and metrics["targets"] == "chars"
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert judge_stage(cfg) == out and (out / "metrics.json").stat().st_mtime_ns == stamp


def test_word_judge_stage_saves_and_reloads_its_labels(data_root, tiny_towers, tmp_path):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "judge.yaml",
        *_inputs(tiny_towers),
        f"out={tmp_path / 'judge'}",
        "train.max_steps=2",
        "judge.targets=words",
    )
    out = judge_stage(cfg)
    judge, _ = load_judge(out)
    assert judge.vocab.kind == "words" and json.loads((out / "metrics.json").read_text())[
        "labels"
    ] == len(judge.vocab)
    assert judge.head.out_features == len(judge.vocab) > 3  # words of the tiny corpus
    u = judge.transcribe([np.arange(6)])
    assert isinstance(u[0], str)


def test_evaluate_end_to_end_tables_rows_and_retention(evaluated):
    _, out = evaluated
    res = json.loads((out / "results.json").read_text())
    systems = {s["name"]: s for s in res["systems"]}
    assert list(systems) == ["single", "zipper"] and res["test_utterances"] == 4
    for name, s in systems.items():
        assert s["asr"]["n"] == 4 and s["asr"]["wer"] >= 0.0 and s["asr"]["cer"] >= 0.0
        assert s["tts"]["seeds"] == 2 and s["tts"]["best_of_n"]["wer_gold"] >= 0.0
        # best of N can only improve on every single seed
        rows = [json.loads(x) for x in (out / "utterances" / f"{name}.tts.jsonl").open()]
        assert len(rows) == 4 and all(len(r["seed_hyps"]) == 2 for r in rows)
        asr_rows = [json.loads(x) for x in (out / "utterances" / f"{name}.asr.jsonl").open()]
        assert {"id", "ref", "hyp", "errors", "wer", "cer"} <= set(asr_rows[0])
    assert res["judge"]["oracle_wer"] >= 0.0
    ret = {r["system"]: r for r in res["retention"]}
    zipper_rows = [r for r in res["retention"] if r["system"] == "zipper"]
    assert len(zipper_rows) == 2  # one per stage folder (asr, tts)
    for r in zipper_rows:  # frozen text tower: bit-identical before / after
        assert r["frozen_text"] and r["identical"] and r["weights_identical"]
        assert r["ppl_before"] == r["ppl_after"] and r["ppl_zipped_text_only"] > 1.0
    assert ret["single"]["frozen_text"] is False and ret["single"]["ppl_before"] > 1.0
    assert {(s["task"], s["a"], s["b"]) for s in res["significance"]} == {
        ("asr", "single", "zipper"),
        ("tts_best", "single", "zipper"),
        ("tts_greedy", "single", "zipper"),
        ("tts_audio_best", "single", "zipper"),
    }
    md = (out / "results.md").read_text()
    assert md == render_markdown(res)
    for needle in (
        "Table 1",
        "Table 2",
        "Oracle",
        "| Zipper |",
        "| Single Decoder |",
        "bit-identical",
        "Wilcoxon",
    ):
        assert needle in md, needle
    assert (out / "tb").is_dir()


def test_evaluate_scores_tts_from_audio_and_writes_wavs_and_a_listening_page(evaluated):
    """The paper's protocol: tokens -> vocoder -> waveform -> recogniser; every scored sample
    a 16-bit wav at the codec's rate; the reference rows; the page links every clip."""
    _, out = evaluated
    res = json.loads((out / "results.json").read_text())
    audio = res["audio"]
    assert audio["recognizer"] == "judge" and Path(audio["vocoder"]).name.startswith("vocoder-")
    assert set(audio) >= {"oracle", "resynthesis", "griffin_lim"}
    for name in ("oracle", "resynthesis", "griffin_lim"):
        assert audio[name]["wer_gold"] >= 0.0
    assert audio["oracle"]["wer_target"] is None  # the oracle is its own target
    for s in res["systems"]:
        if "tts" in s:
            a = s["tts_audio"]
            assert a["best_of_n"]["wer_gold"] <= a["greedy"]["wer_gold"] + 1.0
            assert a["recognizer"] == "judge" and a["skipped_waves"] == 0
    wavs = sorted((out / "audio").rglob("*.wav"))
    # 4 utterances: gold, resynthesis, floor; per TTS system greedy + 2 seeds
    assert len(wavs) == 4 * 3 + 2 * 4 * 3
    info = sf.info(str(wavs[0]))
    assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.frames > 0
    page = (out / "listen.html").read_text()
    assert 4 * 3 < page.count("<audio") <= 4 * (3 + 2)  # an empty sample has no player
    assert "Table 2: TTS, WER % of `judge` on the audio" in (out / "results.md").read_text()
    for rel in re.findall(r'src="([^"]+)"', page):
        assert (out / rel).is_file(), rel


def test_evaluate_listed_stages(evaluated, tmp_path):
    cfg, out = evaluated
    res = json.loads((out / "results.json").read_text())
    asr = res["systems"][1]["folders"]["asr"]  # zipper
    tts = res["systems"][0]["folders"]["tts"]  # single
    listed = tiny_config(
        Path(cfg.data.root),
        tmp_path,
        "evaluate.yaml",
        f"eval.stages={asr},{tts}",
        f"inputs.judge={res['judge']['folder']}",
        f"out={tmp_path / 'ev'}",
        "eval.max_utterances=3",
        "eval.tts_seeds=1",
    )
    got = json.loads((evaluate_stage(listed) / "results.json").read_text())
    first, second = got["systems"]  # in eval.stages order
    assert first["arch"] == "zipper" and "asr" in first and "tts" not in first
    assert first["label"] == f"Zipper: {Path(asr).name}"  # tables say which system a folder is
    assert second["arch"] == "single" and "tts" in second and "asr" not in second
    assert got["significance"] == []  # no task in common
    assert second["tts"]["n"] == 3


def test_missing_listed_stage_names_the_key(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "evaluate.yaml", f"eval.stages={tmp_path / 'nope'}")
    with pytest.raises(UserError, match="eval.stages"):
        evaluate_stage(cfg)


def test_tts_budget_is_clipped_to_the_single_decoders_length(evaluated):
    cfg, out = evaluated
    res = json.loads((out / "results.json").read_text())
    ft = load_finetuned(res["systems"][0]["folders"]["tts"])
    assert ft.cfg.arch == "single"
    text = " ".join(["word"] * 20)  # wants 20 words x 12 tokens
    n_text = len(ft.text_tok.encode([text])[0])
    # bos text eos, then bos + 10 generated + eos: room for 10 generated tokens exactly
    ft.model.tower.cfg.max_seq_len = (n_text + 2) + 10 + 2
    utts = [Utterance("a", text, np.zeros(3, dtype=np.int64))]
    tokens, clipped = generate_tts(ft, utts, cfg, 1.0, seed=0)
    assert clipped == 1 and len(tokens[0]) <= 10
    assert ft.model.budget_cap("speech", n_text) == 10


def test_eval_engine_reaches_every_generation_of_the_scoring(evaluated, monkeypatch):
    """``eval.engine`` picks the generation engine of ASR and TTS scoring (it was always the
    default before the key existed); the tokens stay the default engine's."""
    cfg, out = evaluated
    res = json.loads((out / "results.json").read_text())
    ft = load_finetuned(res["systems"][0]["folders"]["tts"])
    utts = [Utterance("a", "word word", np.array([3, 4, 5], dtype=np.int64))]
    seen, generate = [], ft.model.generate

    def spy(*args, engine="static", **kwargs):
        seen.append(engine)
        return generate(*args, engine=engine, **kwargs)

    monkeypatch.setattr(ft.model, "generate", spy)
    ref = generate_tts(ft, utts, cfg, 0.0, seed=0)[0]
    dyn = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, engine="dynamic"))
    got = generate_tts(ft, utts, dyn, 0.0, seed=0)[0]
    generate_asr(ft, utts, dyn)
    assert seen == ["static", "dynamic", "dynamic"]
    assert [t.tolist() for t in got] == [t.tolist() for t in ref]


def test_significance_pairs_systems_on_shared_tasks():
    res = significance({"a": {"asr": [0, 1, 2, 3]}, "b": {"asr": [1, 2, 3, 4], "tts": [1]}})
    assert len(res) == 1 and res[0]["task"] == "asr" and 0.0 < res[0]["p_value"] <= 1.0
    assert res[0]["mean_errors_a"] == 1.5 and res[0]["n_nonzero"] == 4


def test_the_evaluation_listening_page_plays_every_clip_in_headless_chromium(evaluated, tmp_path):
    """The real page ``make evaluate`` writes: every <audio> loads and reports a duration."""
    exe = chromium()  # skips, saying how to install it, where Chromium is absent
    _, out = evaluated
    probe = out / "listen-probe.html"  # beside the page: the same relative clip paths
    page = (out / "listen.html").read_text()
    probe.write_text(page.replace("</body>", PROBE + "\n</body>"))
    dom = run_chromium(exe, tmp_path, "--dump-dom", probe.as_uri()).stdout
    probe.unlink()
    results = json.loads(html.unescape(re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)[1]))
    # 4 sentences x (gold, resynthesis, floor, 2 systems), less samples that are empty (a tiny
    # model may say nothing: its cell says "no audio")
    assert 4 * 3 < len(results) <= 4 * 5 and len(results) == page.count("<audio")
    assert all(r["error"] is None and r["duration"] > 0 for r in results), results


def test_a_stage_folder_with_a_comma_in_eval_stages_says_how_to_quote_it(tmp_path):
    """Found while testing asr_phonemes stages (frozen towers "text,phonemes" name the folder):
    an unquoted list splits the name, and the error said two folders were missing."""
    folder = tmp_path / "zipper-asr_phonemes-freeze_text,phonemes-s0"
    folder.mkdir()
    with pytest.raises(UserError, match=r"holds a comma.*quote it, eval.stages=\['"):
        resolve_systems(load_config(None, [f"eval.stages=[{folder}]"]))
    quoted = load_config(None, [f"eval.stages=['{folder}']"])
    assert quoted.eval.stages == [str(folder)]


def test_a_real_full_disk_at_the_evaluation_outputs_is_one_line_and_a_rerun_completes(
    evaluated, data_root, tiny_towers, tmp_path, capsys
):
    """The evaluation writes wavs, utterance rows, TensorBoard audio and the listening page: on a
    real full disk each ends in one line naming a path under the stage folder (TensorBoard's
    writer thread no longer prints a traceback of its own), nothing claims to be finished, and a
    re-run with space completes."""
    disk = _small_disk(tmp_path, "256k")
    if disk is None:
        pytest.skip("needs root to mount a small tmpfs (the injected faults run elsewhere)")
    cfg, _ = evaluated
    out = disk / "eval"
    args = ["evaluate", "experiments/tiny/evaluate.yaml", f"data.root={data_root}",
            f"data.cache_dir={data_root / 'cache'}", f"runs={cfg.runs}", "train.accelerator=cpu",
            *_inputs(tiny_towers), "train.max_steps=2", "eval.max_utterances=4",
            f"out={out}"]  # fmt: skip
    try:
        assert zipper_cli.main(args) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err and len(lines) == 1, err[-2000:]
        assert lines[0].startswith(f"error: {out}") and "No space left on device" in lines[0]
        assert not (out / "results.json").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert zipper_cli.main(args) == 0 and (out / "results.json").is_file()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_an_evaluation_never_overwrites_the_folder_of_another(evaluated):
    """`make evaluate VOCODER=<another>` once wrote its results into the folder named after the
    chain's own vocoder (out= passed by make, the stage never checked it): the folder's name then
    said one vocoder and its tables another's."""
    cfg, out = evaluated
    stamp = (out / "results.json").stat().st_mtime_ns
    other = dataclasses.replace(
        cfg, out=str(out), eval=dataclasses.replace(cfg.eval, temperature=0.5)
    )
    with pytest.raises(UserError, match=r"holds another experiment.*leave out= unset"):
        evaluate_stage(other)
    assert (out / "results.json").stat().st_mtime_ns == stamp
