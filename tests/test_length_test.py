"""eval.test_words: a generated test pool by sentence length (Fig. 2 beyond 4-8 words)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import tiny_config
from zipper_pl.data.corpora.embedded import split_pools
from zipper_pl.data.corpora.manifest import read_manifest
from zipper_pl.data.prepare import corpus_manifests
from zipper_pl.errors import UserError
from zipper_pl.fitting import judging
from zipper_pl.runs.layout import stage_dir


def test_a_length_test_pool_leaves_the_corpus_and_its_stages_alone(data_root, tmp_path):
    base = tiny_config(data_root, tmp_path, "zip_tts.yaml")
    before = corpus_manifests(base)
    kept = {p: m.read_bytes() for p, m in before.items()}
    cfg = tiny_config(data_root, tmp_path, "zip_tts.yaml", "eval.test_words=[4,12]")
    after = corpus_manifests(cfg)
    assert {p: m for p, m in after.items() if p != "test"} == {
        p: m for p, m in before.items() if p != "test"
    }
    assert {p: m.read_bytes() for p, m in before.items()} == kept  # the corpus untouched
    records = read_manifest(after["test"])
    lengths = Counter(len(r.text.split()) for r in records)
    assert len(records) == base.data.embedded.n_test and set(lengths) <= set(range(4, 13))
    assert max(lengths.values()) <= 2  # spread over the lengths, not the grammar's favourites
    assert all(r.duration > 0 for r in records)
    pools = {s for pool in split_pools(base.data.embedded).values() for s in pool}
    assert not {r.text for r in records} & pools  # nothing tested was trained on
    assert corpus_manifests(cfg)["test"] == after["test"]  # built once
    towers = {"text": "a", "speech": "b"}
    assert stage_dir(cfg, "zip", towers) != stage_dir(base, "zip", towers)
    towers_alone = [
        tiny_config(data_root, tmp_path, "pretrain_text.yaml", *extra)
        for extra in ([], ["eval.test_words=[4,12]"])
    ]
    assert len({stage_dir(c, "pretrain", {}) for c in towers_alone}) == 1


@pytest.mark.parametrize("words", ["[8,4]", "[0,5]", "[5]"])
def test_bad_lengths_are_one_line_errors(data_root, tmp_path, words):
    cfg = tiny_config(data_root, tmp_path, "zip_tts.yaml", f"eval.test_words={words}")
    with pytest.raises(UserError, match=r"give \[min, max\] words"):
        corpus_manifests(cfg)


def test_lengths_the_grammar_never_makes_are_an_error_not_a_hang(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "zip_tts.yaml", "eval.test_words=[40,45]")
    with pytest.raises(UserError, match=r"made no sentence of \[40, 41"):
        corpus_manifests(cfg)


def test_the_judge_keeps_the_corpus_test_split(data_root, tmp_path, monkeypatch):
    """The judge's oracle WER is on the test split its identity names, whatever eval.test_words
    the command that trains it carries."""
    seen = []

    def stop(cfg, modality):
        seen.append(cfg.eval.test_words)
        raise RuntimeError("stop here")

    monkeypatch.setattr(judging, "tower_input", stop)
    cfg = tiny_config(data_root, tmp_path, "judge.yaml", "eval.test_words=[4,12]")
    with pytest.raises(RuntimeError, match="stop here"):
        judging._train_judge_stage(cfg, tmp_path / "judge")
    assert seen == [[]]


def test_a_real_corpus_is_told_to_use_its_own_test_split(data_root, tmp_path):
    cfg = tiny_config(
        data_root, tmp_path, "zip_tts.yaml", "data.corpus=jsonl", "eval.test_words=[4,12]"
    )
    with pytest.raises(UserError, match="data.corpus=embedded"):
        corpus_manifests(cfg)
