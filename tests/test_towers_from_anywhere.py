"""The paper's setup: a speech tower pretrained on LibriLight (no dev split, no transcripts), a
text tower from another run, zipped on LibriSpeech aligned pairs; the towers' identities are
the zip stage's inputs."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tests.test_readers import _audio, _librispeech
from zipper_pl.__main__ import _chain_paths
from zipper_pl.config import load_config
from zipper_pl.errors import UserError
from zipper_pl.runs.identity import read_identity
from zipper_pl.stages.chain import pretrain, zip_stage

SHRINK = [
    "data.max_bad_share=0.5",
    "data.seq_len=8",
    "data.batch_size=2",
    "data.valid_batches=1",
    "model.max_seq_len=256",
    "text_tokenizer.vocab_size=40",
    "audio.units_k=4",
    "train.max_steps=2",
    "train.val_every=1",
    "train.warmup_steps=1",
    "train.accelerator=cpu",
]


def _librilight(root):
    for spk in ("100", "200", "300"):
        for k in range(3):
            _audio(root / "small" / spk / f"book{k}" / f"{k:02d}_chapter.flac", 0.5, seed=k)


def test_librilight_speech_tower_zipped_on_librispeech(tmp_path):
    ll, ls = tmp_path / "librilight-vad", tmp_path / "LibriSpeech"
    _librilight(ll)
    _librispeech(ls)
    common = [f"runs={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *SHRINK]
    # the README's LibriLight command: only a train split; validation is held out of it
    speech = pretrain(
        load_config(
            ROOT / "experiments" / "tiny" / "pretrain_speech.yaml",
            [*common, "data.corpus=librilight", f"data.root={ll}", "data.train_splits=small",
             "data.valid_splits=", "data.test_splits="],
        )
    )  # fmt: skip
    assert "tiny-librilight" in str(speech) and (speech / "model.safetensors").is_file()
    ls_data = ["data.corpus=librispeech", f"data.root={ls}"]
    text = pretrain(load_config(ROOT / "experiments/tiny/pretrain_text.yaml", [*common, *ls_data]))
    zip_over = [*common, *ls_data, f"inputs.text={text}", f"inputs.speech={speech}",
                "data.aligned_frac=1.0", "data.shrink_batch_to_subset=true"]  # fmt: skip
    out = zip_stage(load_config(ROOT / "experiments/tiny/zip_asr.yaml", zip_over))
    rec = read_identity(out)
    assert rec["inputs"] == {
        "text": read_identity(text)["fingerprint"],
        "speech": read_identity(speech)["fingerprint"],
    }
    # the Makefile's view (SPEECH_TOWER=<folder>) names the same zip folder
    paths = _chain_paths(
        [str(ROOT / "experiments" / "tiny"), *common, *ls_data, f"inputs.speech={speech}",
         f"inputs.text={text}", "--", "data.aligned_frac=1.0",
         "data.shrink_batch_to_subset=true"]
    )  # fmt: skip
    assert paths["DIR_speech"] == speech and paths["ZIPPER_ASR_DIR"] == out


def test_a_zip_stage_needs_its_towers_named(tmp_path):
    cfg = load_config(ROOT / "experiments/tiny/zip_asr.yaml", [f"runs={tmp_path}"])
    with pytest.raises(UserError, match=r"inputs.text \(make: TEXT_TOWER"):
        zip_stage(cfg)
    named = [f"inputs.text={tmp_path}", f"inputs.speech={tmp_path}"]
    with pytest.raises(UserError, match="missing or unfinished"):
        zip_stage(load_config(ROOT / "experiments/tiny/zip_asr.yaml", named))
