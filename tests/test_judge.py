import random

import pytest
import torch

from zipper_pl.data.batches.sampling import TokenBudgetBatchSampler
from zipper_pl.errors import UserError
from zipper_pl.metrics import corpus_cer
from zipper_pl.models.judge import (
    JudgeASR,
    JudgeConfig,
    prepare_items,
    train_judge,
)
from zipper_pl.models.judge_vocab import (
    CHARS,
    WordVocab,
    build_vocab,
    ctc_greedy_decode,
    ctc_min_frames,
    vocab_from_json,
    vocab_to_json,
)


def _one_hot_log_probs(paths: list[list[int]], n_classes: int) -> torch.Tensor:
    T = max(len(p) for p in paths)
    lp = torch.full((len(paths), T, n_classes), -10.0)
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            lp[b, t, c] = 0.0
    return lp


def test_char_vocab_roundtrip():
    ids = CHARS.encode("Don't  Panic!")
    assert CHARS.decode(ids) == "don't panic"
    assert 0 not in ids and len(CHARS) == 29
    assert CHARS.unknown("room 101") == {"1", "0"}


def test_word_vocab_roundtrip_unknown_words_and_json():
    words = WordVocab.from_texts(["The cat sat.", "the DOG sat"])
    assert words.units == ["<unk>", "the", "cat", "sat", "dog"] and len(words) == 6
    ids = words.encode("the bird sat")
    assert ids == [2, 1, 4]  # blank is 0, <unk> is 1
    assert words.decode(ids) == "the <unk> sat"
    assert words.unknown("The bird sat") == {"bird"}
    again = vocab_from_json(vocab_to_json(words))
    assert again.units == words.units and again.encode("dog cat") == words.encode("dog cat")
    assert vocab_from_json({}) is CHARS  # judges saved before word labels existed
    assert build_vocab(JudgeConfig(targets="chars"), ["x"]) is CHARS


def test_ctc_greedy_decode_words_keeps_blank_separated_repeats():
    words = WordVocab(["the", "cat"])
    the, cat = words.index["the"], words.index["cat"]
    lp = _one_hot_log_probs([[the, the, 0, the, cat, cat]], len(words))
    assert ctc_greedy_decode(lp, torch.tensor([6]), words) == ["the the cat"]
    # a repeated word needs a blank between its two labels, as a doubled letter does
    assert ctc_min_frames(words.encode("the the cat")) == 4


def test_judge_rejects_vocabulary_of_the_wrong_kind():
    with pytest.raises(UserError, match=r"judge\.targets"):
        JudgeASR(JudgeConfig(vocab=8, d_model=16, n_heads=2, targets="words"))


def test_ctc_greedy_decode_collapses_then_removes_blanks():
    a, b, blank = CHARS.index["a"], CHARS.index["b"], 0
    # "aa-ab--b" -> collapse -> "a-ab-b" -> drop blanks -> "aabb"
    p1 = [a, a, blank, a, b, blank, blank, b]
    # "abb" with trailing frames beyond the length that must be ignored
    p2 = [a, b, b, a, a, a, a, a]
    lp = _one_hot_log_probs([p1, p2], len(CHARS))
    assert ctc_greedy_decode(lp, torch.tensor([8, 3])) == ["aabb", "ab"]


def test_ctc_min_frames():
    assert ctc_min_frames(CHARS.encode("abc")) == 3
    assert ctc_min_frames(CHARS.encode("book")) == 5  # blank between the two o's


def test_prepare_items_counts_skips():
    cfg = JudgeConfig(vocab=16, d_model=16, n_layers=1, n_heads=2, max_len=10, upsample=1)
    items = [
        ([1, 2, 3, 4], "ab"),  # fine
        ([], "ab"),  # empty tokens
        ([1, 2], "?!"),  # text empty after normalisation
        (list(range(11)), "ab"),  # too long
        ([1, 2, 3], "aab"),  # needs 4 frames, has 3
        ([1, 2, 3], "a1"),  # kept, loses the digit
    ]
    kept, counts = prepare_items(items, cfg)
    assert len(kept) == 2
    assert counts["skip_empty_tokens"] == 1 and counts["skip_empty_text"] == 1
    assert counts["skip_too_long"] == 1 and counts["skip_ctc_infeasible"] == 1
    assert counts["oov"] == 1
    # Upsampling makes the short item feasible.
    kept2, counts2 = prepare_items(items, JudgeConfig(vocab=16, max_len=10, upsample=2))
    assert len(kept2) == 3 and counts2["skip_ctc_infeasible"] == 0
    with pytest.raises(UserError, match=r"judge\.vocab"):
        prepare_items([([1, 99], "a")], cfg)


def test_upsampled_output_length_and_padding_invariance():
    torch.manual_seed(0)
    cfg = JudgeConfig(vocab=16, d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0)
    cfg.upsample = 2
    model = JudgeASR(cfg).eval()
    x = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    lp = model(x, torch.tensor([3, 5]))
    assert lp.shape == (2, 10, len(CHARS))
    # Padding must not leak into the valid frames of the short sequence.
    alone = model(x[:1, :3], torch.tensor([3]))
    torch.testing.assert_close(lp[0, :6], alone[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match=r"judge\.max_len"):
        model(torch.zeros(1, 9, dtype=torch.long), torch.tensor([9]))


def test_downsampled_output_length_padding_invariance_and_feasibility():
    torch.manual_seed(0)
    cfg = JudgeConfig(vocab=16, d_model=16, n_layers=1, n_heads=2, max_len=12, downsample=4)
    model = JudgeASR(cfg).eval()
    x = torch.tensor([[1, 2, 3, 4, 5, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9, 1, 2, 3, 4]])
    lp = model(x, torch.tensor([5, 10]))
    assert lp.shape == (2, 3, len(CHARS))  # ceil(10 / 4) frames
    assert model.output_lengths(torch.tensor([5, 10])).tolist() == [2, 3]
    # the short sequence's second window holds one valid token and three pads: pads must not
    # change its mean, so it equals the sequence alone
    alone = model(x[:1, :5], torch.tensor([5]))
    torch.testing.assert_close(lp[0, :2], alone[0], atol=1e-5, rtol=1e-5)
    # 8 tokens -> 2 frames: enough for two words, not for three letters
    kept, counts = prepare_items([(list(range(8)), "abc")], cfg)
    assert not kept and counts["skip_ctc_infeasible"] == 1
    with pytest.raises(UserError, match="pick one"):
        JudgeASR(JudgeConfig(vocab=16, d_model=16, n_heads=2, upsample=2, downsample=2))


def _synthetic(n: int, rng: random.Random, code: dict[str, list[int]], vocab: int):
    """Each character is a fixed run of 2-3 tokens; 10% of tokens replaced by noise."""
    words = ["ab", "cab", "dee", "bad", "face", "fed", "ace", "bead"]
    items = []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        toks = [t for ch in text for t in code[ch]]
        toks = [rng.randrange(vocab) if rng.random() < 0.1 else t for t in toks]
        items.append((toks, text))
    return items


def _synthetic_task(seed: int, n_train: int, n_valid: int, vocab: int = 40):
    """Train and valid items of one synthetic 'language' (a fixed token code per character)."""
    rng = random.Random(seed)
    code = {ch: [rng.randrange(vocab) for _ in range(rng.choice([2, 3]))] for ch in " abcdef"}
    return _synthetic(n_train, rng, code, vocab), _synthetic(n_valid, rng, code, vocab)


def _small_judge_on_a_synthetic_task():
    """(an untrained 2-layer character judge, train items, valid items) of task seed 0."""
    torch.set_num_threads(1)
    vocab = 40
    train, valid = _synthetic_task(0, 30, 10, vocab)
    cfg = JudgeConfig(vocab=vocab, d_model=64, n_layers=2, n_heads=4, max_len=64, dropout=0.0)
    torch.manual_seed(0)
    return JudgeASR(cfg), train, valid


def test_judge_learns_synthetic_task():
    model, train, valid = _small_judge_on_a_synthetic_task()
    untrained = corpus_cer([t for _, t in valid], model.transcribe([x for x, _ in valid]))
    logs = []
    metrics = train_judge(
        model,
        train,
        valid,
        steps=200,
        lr=3e-3,
        batch_size=10,
        seed=0,
        log_fn=lambda step, m: logs.append((step, m)),
        log_every=50,
    )
    assert untrained > 0.8
    assert metrics["valid_cer"] < 0.2, metrics
    assert metrics["n_train"] == 30
    assert [s for s, _ in logs[:4]] == [50, 100, 150, 200]
    assert logs[-1][1]["train_loss"] < logs[0][1]["loss"]


def test_word_judge_learns_synthetic_task():
    torch.set_num_threads(1)
    vocab = 40
    train, valid = _synthetic_task(1, 40, 20, vocab)
    # whole-word labels memorise 40 utterances without dropout (valid WER ~0.3)
    cfg = JudgeConfig(
        vocab=vocab, d_model=64, n_layers=2, n_heads=4, max_len=64, dropout=0.1, targets="words"
    )
    torch.manual_seed(0)
    model = JudgeASR(cfg, build_vocab(cfg, [t for _, t in train]))
    metrics = train_judge(model, train, valid, steps=200, lr=3e-3, batch_size=10, seed=0)
    assert len(model.vocab) == 2 + 8  # blank, <unk> and the synthetic words
    assert metrics["valid_wer"] < 0.2, metrics


def test_the_judge_trains_on_token_budget_batches_when_given_them():
    """``data.max_tokens`` reaches the judge as a batcher over its kept items' lengths: every
    micro-batch it trains on is one the sampler drew (items x longest within the budget)."""
    model, train, valid = _small_judge_on_a_synthetic_task()
    drawn, seen = [], []

    def batcher(lengths):
        seen.append(lengths)
        for b in TokenBudgetBatchSampler(lengths, 60, seed=0):
            drawn.append(b)
            yield b

    metrics = train_judge(model, train, valid, steps=150, lr=3e-3, batch_size=10, seed=0,
                          batcher=batcher)  # fmt: skip
    (lengths,) = seen
    assert list(lengths) == [len(x) for x, _ in train]
    assert len(drawn) == 150 and len({len(b) for b in drawn}) > 1  # sizes follow the lengths
    assert all(len(b) * lengths[b].max() <= 60 for b in drawn)
    assert metrics["valid_cer"] < 0.3, metrics
