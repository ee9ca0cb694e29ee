"""Data preparation across corpora: text files, a LibriSpeech tree through `data`, cache reuse."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, tiny_config
from tests.test_readers import _librispeech
from zipper_pl.data.corpora.text import read_text_file
from zipper_pl.data.prepare import corpus_manifests, text_lines
from zipper_pl.data.tokens.store import TokenStore
from zipper_pl.errors import UserError
from zipper_pl.stages.chain import prepare_data


def test_text_file_reader_normalises_and_skips_blank_lines(tmp_path):
    f = tmp_path / "lm.txt"
    f.write_text("HELLO, World!\n\n  it's   fine  \n")
    assert read_text_file(f) == ["hello world", "it's fine"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="data.text_file"):
        read_text_file(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="data.text_file"):
        read_text_file(tmp_path / "missing.txt")


def test_text_file_is_the_text_pool(data_root, tmp_path):
    f = tmp_path / "lm.txt"
    f.write_text("one two three\nfour five six\n")
    cfg = tiny_config(data_root, tmp_path, "pretrain_text.yaml", f"data.text_file={f}")
    assert text_lines(cfg, "text") == ["one two three", "four five six"]


def test_data_stage_on_a_librispeech_tree(tmp_path):
    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    cfg = tiny_config(
        root,
        tmp_path,
        "pretrain_speech.yaml",
        "data.corpus=librispeech",
        "data.train_splits=train-clean-100",
        "data.valid_splits=dev-clean",
        "data.test_splits=test-clean",
        f"data.cache_dir={tmp_path / 'cache'}",
        "audio.units_k=4",
        "data.max_bad_share=0.5",
    )
    prepare_data(cfg)
    manifests = corpus_manifests(cfg)
    assert set(manifests) == {"speech", "aligned_train", "valid", "test"}
    stores = list((tmp_path / "cache" / "audio_tokens").glob("units-*"))
    assert stores and all(TokenStore.exists(s) for s in stores)
    # a second run finds every artefact
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    prepare_data(cfg)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.parametrize("modality", ["text", "speech"])
def test_gpu_scale_config_runs_shrunk_on_a_librispeech_tree(tmp_path, modality):
    """experiments/s is written for GPUs and LibriSpeech: the same file, shrunk, runs here."""
    from zipper_pl.config import load_config
    from zipper_pl.stages.chain import pretrain

    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    cfg = load_config(
        ROOT / "experiments" / "s" / f"pretrain_{modality}.yaml",
        [
            f"data.root={root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"runs={tmp_path / 'runs'}",
            "data.train_splits=train-clean-100",
            "data.valid_splits=dev-clean",
            "data.test_splits=test-clean",
            "data.max_bad_share=0.5",
            "data.num_workers=0",
            "data.seq_len=8",
            "data.batch_size=2",
            "data.valid_batches=1",
            "model.size=tiny",
            "model.max_seq_len=64",
            "text_tokenizer.vocab_size=40",
            "audio.units_k=4",
            "train.max_steps=2",
            "train.val_every=1",
            "train.warmup_steps=1",
        ],
    )
    out = pretrain(cfg)
    assert (out / "model.safetensors").is_file() and "s-librispeech" in str(out)
