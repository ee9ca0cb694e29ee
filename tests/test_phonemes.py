"""The phoneme modality: espeak-ng phonemes, their tokenizer, pairs with three token arrays, and
the 3-tower chain through the documented make commands (pretrain-phonemes, zip TASK=...)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_make, tiny_config
from zipper_pl.config import load_config
from zipper_pl.config.sections import MODALITY_NAMES
from zipper_pl.data.batches.aligned import TASKS, load_pairs
from zipper_pl.data.corpora.manifest import Record, write_manifest
from zipper_pl.data.corpora.phonemes import WORD_BOUNDARY, PhonemeTokenizer, phonemize
from zipper_pl.data.modalities import MODALITIES
from zipper_pl.errors import UserError
from zipper_pl.fitting.judging import Utterance
from zipper_pl.models.sequences import ModalitySpec, Segment
from zipper_pl.models.tower import Tower, tower_config
from zipper_pl.registry import build_model
from zipper_pl.results.scoring import generate_asr
from zipper_pl.runs.finetuned import load_finetuned
from zipper_pl.stages.evaluate import evaluate_stage


def test_phonemize_gives_ipa_symbols_with_word_boundaries():
    (hello, blank) = phonemize(["hello world", "  "])
    assert hello == ["h", "ə", "l", "ˈoʊ", WORD_BOUNDARY, "w", "ˈɜː", "l", "d"]
    assert blank == []
    # numbers are read out, as in the speech; the same text always gives the same phonemes
    assert phonemize(["12"])[0] == ["t", "w", "ˈɛ", "l", "v"]
    assert phonemize(["the cat sat"]) == phonemize(["the cat sat"])


def test_phoneme_tokenizer_round_trip_unknown_count_and_bad_files(tmp_path, capsys):
    tok = PhonemeTokenizer.train(["hello world", "the cat"], tmp_path / "t.json", "en-us")
    assert tok.vocab_size == 4 + len(set(phonemize(["hello world the cat"])[0]))
    (ids,) = tok.encode(["hello cat"])
    assert tok.decode(ids) == "həlˈoʊ kˈæt" and tok.unknown == 0
    (ids,) = tok.encode(["zebra"])  # z, ˈiː, b, ɹ: never seen
    assert (ids == tok.unk_id).sum() == tok.unknown > 0
    (tmp_path / "copy").mkdir()
    again = PhonemeTokenizer(tok.copy_to(tmp_path / "copy"))
    assert [x.tolist() for x in again.encode(["hello"])] == [
        x.tolist() for x in tok.encode(["hello"])
    ]
    # caches of its tokens are keyed by the language and the espeak-ng build, not the voice alone
    assert tok.rules.startswith("en-us@espeakng-loader-") and tok.rules == again.rules
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        PhonemeTokenizer(tmp_path / "bad.json")
    with pytest.raises(UserError, match="pretrain-phonemes"):
        PhonemeTokenizer(tmp_path / "missing.json")
    with pytest.raises(UserError, match="phonemes.voice"):
        phonemize(["hello"], voice="no-such-language")


def test_the_config_layer_knows_every_registered_modality():
    assert list(MODALITY_NAMES) == list(MODALITIES)
    for task in TASKS.values():
        assert set(task.modalities) <= set(MODALITIES)


def test_pairs_carry_every_modality_and_count_each_drop(tmp_path):
    recs = [
        Record(f"u{i}", f"a{i}.wav", text, 1.0, "s0")
        for i, text in enumerate(["one two", "", "three", "four"])
    ]
    write_manifest(tmp_path / "m.jsonl", recs)
    words = {"one two": 2, "three": 1, "four": 9}
    encoders = {
        "text": lambda rs: [np.arange(words[r.text]) for r in rs],
        "speech": lambda rs: [None if r.id == "u2" else np.arange(3) for r in rs],
        "phonemes": lambda rs: [np.arange(2 * words[r.text]) for r in rs],
    }
    pairs, skipped = load_pairs(tmp_path / "m.jsonl", encoders, max_total=30)
    assert [p.id for p in pairs] == ["u0"] and set(pairs[0].tokens) == set(encoders)
    # u1: no transcript; u2: no speech tokens; u3: 9 + 3 + 18 tokens + 6 specials > 30
    assert skipped == {"no_transcript": 1, "no_text_tokens": 0, "no_speech_tokens": 1,
                       "no_phonemes_tokens": 0, "too_long_or_empty": 1}  # fmt: skip


def test_a_task_needs_its_towers_zipped():
    with pytest.raises(UserError, match="zip.towers"):
        load_config(None, ["data.task=asr_phonemes"])  # the default zip.towers: text, speech
    cfg = load_config(None, ["data.task=asr_phonemes", "zip.towers=[text,speech,phonemes]"])
    assert cfg.zip.towers == ["text", "speech", "phonemes"]
    with pytest.raises(UserError, match="zip.towers"):
        load_config(None, ["zip.towers=[text,pictures]"])


def test_the_single_decoder_extends_its_text_tower_by_every_other_modality():
    """arch=single with three towers (make zip TASK=asr_phonemes MODEL=single): one vocabulary
    text + speech + phonemes; generation of speech -> [phonemes, text], cached = uncached."""
    torch.manual_seed(0)
    specs = {
        "text": ModalitySpec("text", 40, 1, 2, 3),
        "speech": ModalitySpec("speech", 32, 30, 31, 31),
        "phonemes": ModalitySpec("phonemes", 20, 1, 2, 0),
    }
    towers = {m: Tower(tower_config("tiny", s.vocab_size)) for m, s in specs.items()}
    cfg = load_config(None, ["arch=single", "zip.towers=[text,speech,phonemes]"])
    model = build_model(cfg, towers, specs).eval()
    assert model.tower.cfg.vocab_size == 40 + 32 + 20
    xs = [[Segment("speech", torch.arange(n) % 30)] for n in (5, 9)]
    kw = {"max_new_tokens": 4, "temperature": 1.0, "seed": 0}
    cached = model.generate(xs, ["phonemes", "text"], **kw)
    assert [[s.modality for s in r] for r in cached] == [["phonemes", "text"]] * 2
    uncached = model.generate_uncached(xs, ["phonemes", "text"], **kw)
    assert [[s.tokens.tolist() for s in r] for r in cached] == [
        [s.tokens.tolist() for s in r] for r in uncached
    ]


def test_three_tower_chain_through_make(tmp_path, data_root, tiny_towers):
    """`make pretrain-phonemes`, then `make zip TASK=asr_phonemes` (zips the text, speech and
    phoneme towers, fine-tunes speech -> [phonemes, text]); the frozen towers are bit-identical,
    the stage reloads and transcribes. The session's text and speech towers stand in for
    `make pretrain-text pretrain-speech` (tested elsewhere) to keep this test short."""
    runs = tmp_path / "runs"
    args = f"ARGS=data.cache_dir={data_root / 'cache'} train.accelerator=cpu"
    common = ["SCALE=tiny", "MAX_STEPS=3", f"RUNS={runs}", f"DATA_ROOT={data_root}",
              f"PY={sys.executable}", args, f"TEXT_TOWER={tiny_towers['text']}",
              f"SPEECH_TOWER={tiny_towers['speech']}"]  # fmt: skip
    for target in (["pretrain-phonemes"], ["zip", "TASK=asr_phonemes"]):
        r = run_make(*target, *common)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (stage,) = [p.parent for p in runs.glob("*/zipper-asr_phonemes-*/model.safetensors")]
    towers = {**tiny_towers, "phonemes": next(runs.glob("*/pretrain-phonemes*"))}
    towers.pop("runs")
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["stage"] == "zip-asr_phonemes" and metrics["test_wer"] >= 0
    assert json.loads((stage / "towers.json").read_text()).keys() == towers.keys()
    zipped = load_file(str(stage / "model.safetensors"))
    for m in ("text", "phonemes"):  # zip_asr_phonemes.yaml: freeze text,phonemes
        for k, v in load_file(str(towers[m] / "model.safetensors")).items():
            assert torch.equal(zipped[f"towers.{m}.{k}"], v), (m, k)
    ft = load_finetuned(stage)
    assert set(ft.tokenizers) == {"text", "speech", "phonemes"}
    (hyp,) = ft.transcribe([np.arange(12) % 30], max_new=6, task="asr_phonemes")
    assert isinstance(hyp, str)
    # the stage transcribes through its own task (phonemes, then text): the API and scoring too
    asked, generate = [], ft.model.generate
    ft.model.generate = lambda xs, outs, **kw: asked.append(list(outs)) or generate(xs, outs, **kw)
    ft.transcribe([np.arange(12) % 30], max_new=6)
    generate_asr(
        ft, [Utterance("u", "a b", np.arange(12) % 30)], load_config(stage / "config.yaml")
    )
    assert asked == [["phonemes", "text"]] * 2
    speech = [[Segment("speech", torch.arange(12) % 30)]]
    out = ft.model.generate(speech, ["phonemes", "text"], max_new_tokens=5)
    assert [s.modality for s in out[0]] == ["phonemes", "text"]
    # `make evaluate` on this stage (eval.stages) scores it as ASR: it went down the TTS path
    # its folder name holds a comma (freeze_text,phonemes): quoted, as the error tells users
    over = [f"inputs.text={tiny_towers['text']}", f"inputs.speech={tiny_towers['speech']}",
            f"eval.stages=['{stage}']", "eval.tts_asr=none", "eval.max_utterances=3",
            "train.max_steps=2"]  # fmt: skip
    cfg = tiny_config(data_root, runs, "evaluate.yaml", *over)
    results = json.loads((evaluate_stage(cfg) / "results.json").read_text())
    (system,) = results["systems"]
    assert system["asr"]["n"] == 3 and "tts" not in system
