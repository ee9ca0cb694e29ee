import math

import pytest

from zipper_pl.errors import UserError
from zipper_pl.metrics import (
    best_of,
    corpus_cer,
    corpus_wer,
    error_rows,
    normalize_for_scoring,
    summarize_rows,
    wilcoxon_paired,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  many   spaces\there\n", "many spaces here"),
        ("Don't stop", "don't stop"),
        ("don\u2019t", "don't"),  # curly apostrophe folds to ASCII
        ("'quoted' words'", "quoted words"),  # quote-like apostrophes go
        ("well-known end.", "well known end"),
        ("\uff21\uff22\uff23 \ufb01ne", "abc fine"),  # NFKC: full-width letters, fi ligature
        ("cost $5 + tax", "cost 5 tax"),
        ("", ""),
        ("?!", ""),
    ],
)
def test_normalize_for_scoring(raw, expected):
    assert normalize_for_scoring(raw) == expected


def test_wer_hand_computed():
    # "the cat sat on mat" vs "the bat sat mat": 1 sub (cat->bat) + 1 del (on) over 5 words.
    rows = error_rows(["The cat sat on mat."], ["the bat sat mat"])
    r = rows[0]
    assert (r["sub"], r["del"], r["ins"], r["ref_units"], r["errors"]) == (1, 1, 0, 5, 2)
    assert r["rate"] == pytest.approx(0.4)
    # Corpus = micro average: (2 + 1 insertion) / (5 + 2) words.
    refs = ["the cat sat on mat", "good day"]
    hyps = ["the bat sat mat", "good day sir"]
    assert corpus_wer(refs, hyps) == pytest.approx(3 / 7)


def test_cer_hand_computed():
    # "abcd" vs "abxd": 1 substitution over 4 characters; "ab c" vs "abc": 1 deletion (space).
    assert corpus_cer(["abcd"], ["abxd"]) == pytest.approx(0.25)
    assert corpus_cer(["ab c"], ["abc"]) == pytest.approx(0.25)
    assert corpus_cer(["abcd", "ab c"], ["abxd", "abc"]) == pytest.approx(2 / 8)


def test_empty_reference_rules():
    rows = error_rows(["", "", "a b"], ["", "x y", ""])
    assert [r["errors"] for r in rows] == [0, 2, 2]
    assert [r["ins"] for r in rows] == [0, 2, 0]
    assert [r["rate"] for r in rows] == [0.0, 2.0, 1.0]
    summary = summarize_rows(rows)
    assert summary["rate"] == pytest.approx(4 / 2)
    assert summary["n_empty_refs"] == 2
    with pytest.raises(UserError, match="empty"):
        corpus_wer(["", "!!"], ["a", ""])


def test_length_mismatch_is_user_error():
    with pytest.raises(UserError):
        error_rows(["a"], ["a", "b"])


def test_wilcoxon_sanity():
    same = wilcoxon_paired([1, 2, 3], [1, 2, 3])
    assert same == {"statistic": 0.0, "p_value": 1.0, "n": 3, "n_nonzero": 0}
    a = [5, 6, 7, 8, 9, 10, 11, 12]
    b = [0, 1, 1, 2, 0, 3, 1, 2]
    res = wilcoxon_paired(a, b)
    assert res["n_nonzero"] == 8 and res["statistic"] == 0.0
    assert res["p_value"] == pytest.approx(2 / 2**8)  # exact: only the all-positive arrangement
    mixed = wilcoxon_paired([1, 0, 2, 0], [0, 1, 0, 2])
    assert mixed["p_value"] > 0.5 and not math.isnan(mixed["p_value"])


def test_best_of():
    seed0 = error_rows(["a b c", "d e"], ["a b c", "x"], ids=["u1", "u2"])
    seed1 = error_rows(["d e", "a b c"], ["d e", "a"], ids=["u2", "u1"])
    best = best_of([seed0, seed1])
    assert [r["id"] for r in best] == ["u1", "u2"]
    assert [r["seed"] for r in best] == [0, 1]
    assert [r["errors"] for r in best] == [0, 0]
    with pytest.raises(UserError, match="same utterance ids"):
        best_of([seed0, seed1[:1]])
