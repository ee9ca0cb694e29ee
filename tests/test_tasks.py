"""Modalities and tasks are declared: ``data/modalities.py`` (vocabulary rule, pretraining data,
stage tag per modality) and ``data/batches/aligned.py``'s ``TASKS`` (ordered inputs -> an output
modality sequence); a pair carries one token array per modality; one length rule (``fits``) for
training and tests."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.test_zipper import SPECS
from zipper_pl.config import Config, load_config
from zipper_pl.data.batches.aligned import (
    TASKS,
    Pair,
    PairTasks,
    Task,
    fits,
    make_sample,
    tasks_of,
    tokens_per_word,
)
from zipper_pl.data.modalities import MODALITIES, modality_specs
from zipper_pl.models.sequences import IGNORE, collate_segments
from zipper_pl.runs.layout import stage_dir

PAIR = Pair("u1", "two words", {"text": np.array([5, 6, 7]), "speech": np.array([1, 2, 3, 4])})


def test_asr_and_tts_are_declared_as_inputs_and_outputs():
    assert TASKS["asr"] == Task(inputs=("speech",), outputs=("text",))
    assert TASKS["tts"] == Task(inputs=("text",), outputs=("speech",))
    assert tasks_of("mix") == ["asr", "tts"] and tasks_of("tts") == ["tts"]
    asr = make_sample(PAIR, "asr")
    assert [(s.modality, s.tokens.tolist(), s.loss) for s in asr] == [
        ("speech", [1, 2, 3, 4], False),
        ("text", [5, 6, 7], True),
    ]


def test_a_two_modality_output_sequence_gets_loss_on_every_output(monkeypatch):
    monkeypatch.setitem(TASKS, "asr_echo", Task(inputs=("speech",), outputs=("text", "speech")))
    sample = make_sample(PAIR, "asr_echo")
    assert [s.modality for s in sample] == ["speech", "text", "speech"]
    batch = collate_segments([sample], SPECS, loss_on="last")  # the flags win over loss_on
    speech_targets = batch["speech"]["targets"][0]
    assert (speech_targets[:6] == IGNORE).all()  # the input segment: bos 1 2 3 4 eos
    assert speech_targets[6:11].tolist() == [1, 2, 3, 4, SPECS["speech"].eos_id]
    assert (batch["text"]["targets"][0] != IGNORE).sum() == 4  # 3 tokens + eos


def test_one_length_rule_and_lengths_of_every_modality():
    assert fits([4, 3], 4 + 3 + 4) and not fits([4, 3], 4 + 3 + 3)
    ds = PairTasks([PAIR], [(0, "asr"), (0, "tts")])
    assert ds.lengths().tolist() == [7, 7]
    assert ds[1]["segments"][0].modality == "text" and ds[1]["task"] == "tts"
    assert tokens_per_word([PAIR]) == {"text": 1.5, "speech": 2.0}
    assert list(tokens_per_word([PAIR])) == ["text", "speech"]  # saved in config.yaml: stable


def test_unknown_task_is_refused():
    with pytest.raises(KeyError):
        make_sample(PAIR, "translate")
    assert isinstance(make_sample(PAIR, "tts")[1].tokens, torch.Tensor)


def test_modalities_are_registry_entries_matching_the_config_choices():
    field = {f.name: f for f in Config.__dataclass_fields__.values()}["modality"]
    assert sorted(field.metadata["choices"]) == sorted(MODALITIES)
    text_tok = SimpleNamespace(vocab_size=40, bos_id=0, eos_id=1, pad_id=2)
    units = SimpleNamespace(vocab_size=28)
    specs = modality_specs({"text": text_tok, "speech": units})
    assert specs == SPECS  # K units + begin/end-of-audio, pad = end; text keeps its own ids
    cfg = load_config(None, ["modality=speech", "audio.codec=encodec"])
    assert MODALITIES[cfg.modality].tag(cfg) == "speech-encodec"
    assert stage_dir(cfg, "pretrain").name.startswith("pretrain-speech-encodec-steps")
    cfg = load_config(None, ["modality=text"])
    assert stage_dir(cfg, "pretrain").name.startswith("pretrain-text-steps")
