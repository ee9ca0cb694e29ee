"""The embedded corpus sentence generator and the shared text normaliser."""

import re

import pytest

from zipper_pl.data.corpora.lexicon import lexicon
from zipper_pl.data.corpora.sentences import generate_sentences
from zipper_pl.data.corpora.textnorm import normalize_text
from zipper_pl.errors import UserError

_CHARSET = re.compile(r"^[a-z']+( [a-z']+)*$")


@pytest.fixture(scope="module")
def many() -> list[str]:
    return generate_sentences(20_000, seed=0)


def test_deterministic_by_seed():
    assert generate_sentences(300, seed=7) == generate_sentences(300, seed=7)
    assert generate_sentences(300, seed=7) != generate_sentences(300, seed=8)
    # A longer request extends a shorter one: pool sizes can grow without reshuffling.
    assert generate_sentences(500, seed=7)[:300] == generate_sentences(300, seed=7)


def test_length_range_and_charset(many):
    lengths = [len(s.split(" ")) for s in many]
    assert min(lengths) >= 4 and max(lengths) <= 25
    assert min(lengths) <= 5 and max(lengths) >= 20  # the whole range is used, not a narrow band
    for s in many:
        assert _CHARSET.match(s), s
        assert normalize_text(s) == s  # generator output is already normalised


def test_custom_length_bounds():
    out = generate_sentences(200, seed=1, min_words=6, max_words=9)
    assert all(6 <= len(s.split()) <= 9 for s in out)
    with pytest.raises(UserError, match="max_words"):
        generate_sentences(10, seed=1, max_words=3)


def test_vocabulary_size(many):
    vocab = {w for s in many for w in s.split()}
    assert len(vocab) >= 1_000
    assert len(lexicon()) >= 1_000
    assert {"children", "mice", "wrapped", "forgotten", "cried", "swimming", "hurries"} <= vocab


def test_syntactic_variety(many):
    first_two = {tuple(s.split()[:2]) for s in many}
    assert len(first_two) >= 2_000
    first_words = {s.split()[0] for s in many}
    # questions, subordinate clauses, conditionals, existentials, imperatives all occur up front
    assert {"did", "why", "who", "what", "when", "if", "there", "please", "because"} <= first_words
    joined = " ".join(many)
    for marker in (" that ", " who ", " and ", " but ", " to ", " been ", " by ", "n't "):
        assert marker in joined, marker
    assert len(set(many)) >= 0.99 * len(many)


def test_normalize_text():
    assert normalize_text("  Hello, World!  ") == "hello world"
    assert normalize_text("It\u2019s the BOYS' caf\u00e9.") == "it's the boys cafe"
    # numbers are spelled out, not dropped (tests/test_accounting.py has the full rule)
    assert normalize_text('"Quoted" -- well-known; 42 times') == "quoted well known forty two times"
    assert normalize_text("'tis rock 'n' roll") == "tis rock n roll"
    assert normalize_text("") == ""


def test_lexicon_frac_shrinks_the_vocabulary_and_keeps_the_full_world_unchanged(many):
    assert generate_sentences(300, seed=0, lexicon_frac=1.0) == many[:300]
    small = generate_sentences(20_000, seed=0, lexicon_frac=0.25)
    full_types = {w for s in many for w in s.split()}
    small_types = {w for s in small for w in s.split()}
    assert len(small_types) < 0.5 * len(full_types)
    # closed-class words survive: the grammar still builds every construction
    assert {"the", "didn't", "because", "monday", "who"} <= small_types
    with pytest.raises(UserError, match="lexicon_frac"):
        generate_sentences(10, seed=0, lexicon_frac=0.0)
