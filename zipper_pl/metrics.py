"""Scoring primitives: text normalisation, WER/CER with per-utterance rows, paired tests, best-of-N.

Every score in the project goes through ``normalize_for_scoring`` on both sides, so a system is
never rewarded or punished for casing or punctuation the judge or tokenizer cannot express.

Per-utterance rows are plain dicts (JSONL-ready)::

    {"id", "ref", "hyp", "errors", "ref_units", "sub", "del", "ins", "hits", "rate"}

where ``ref_units`` counts reference words (WER) or characters (CER) after normalisation.
Corpus rates are ``sum(errors) / sum(ref_units)`` (micro average), as in the paper's tables.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence
from typing import Any

import jiwer
from scipy.stats import wilcoxon

from zipper_pl.errors import UserError

# Apostrophe look-alikes that NFKC leaves alone but that mean the same in English text.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
_SPACES = re.compile(r"\s+")


def _is_punct(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] in ("P", "S")  # punctuation and symbols ($, +, emoji, ...)


def normalize_for_scoring(s: str) -> str:
    """Normalise a transcript for scoring; applied identically to references and hypotheses.

    Rules, in order:
    1. Unicode NFKC (full-width letters, ligatures such as "ﬁ" and compatibility forms fold to
       their plain equivalents).
    2. Lowercase (``str.lower``).
    3. Apostrophe look-alikes (’ ‘ ʼ ` ´) become ``'``.
    4. An apostrophe is kept only inside a word, i.e. with a letter or digit on both sides
       ("don't", "o'clock"); leading/trailing/quoting apostrophes are dropped.
    5. Every other punctuation or symbol character (Unicode categories P* and S*) becomes a space,
       so "well-known" scores as two words "well known" and "end." as "end".
    6. Whitespace runs collapse to one space; leading/trailing whitespace is stripped.
    """
    s = unicodedata.normalize("NFKC", s).lower().translate(_APOSTROPHES)
    out: list[str] = []
    for i, ch in enumerate(s):
        if ch == "'":
            prev_ok = i > 0 and s[i - 1].isalnum()
            next_ok = i + 1 < len(s) and s[i + 1].isalnum()
            out.append("'" if prev_ok and next_ok else " ")
        elif _is_punct(ch):
            out.append(" ")
        else:
            out.append(ch)
    return _SPACES.sub(" ", "".join(out)).strip()


def _split(text: str, unit: str) -> list[str]:
    return text.split() if unit == "word" else list(text)


def _score_pair(ref: str, hyp: str, unit: str) -> dict[str, int]:
    """Edit counts for one normalised pair.

    An empty reference is handled here rather than by jiwer: it has 0 reference units and every
    hypothesis unit is an insertion (an empty hypothesis against it scores 0 errors).
    """
    ref_units, hyp_units = _split(ref, unit), _split(hyp, unit)
    if not ref_units:
        return {"sub": 0, "del": 0, "ins": len(hyp_units), "hits": 0, "ref_units": 0}
    if unit == "word":
        out = jiwer.process_words(ref, hyp if hyp_units else "")
    else:
        out = jiwer.process_characters(ref, hyp if hyp_units else "")
    return {
        "sub": out.substitutions,
        "del": out.deletions,
        "ins": out.insertions,
        "hits": out.hits,
        "ref_units": len(ref_units),
    }


def error_rows(
    refs: Sequence[str],
    hyps: Sequence[str],
    ids: Sequence[str] | None = None,
    unit: str = "word",
    normalize: bool = True,
) -> list[dict[str, Any]]:
    """Per-utterance rows for ``unit`` in {"word", "char"} (characters include spaces).

    ``rate`` is ``errors / ref_units``; for an empty reference it is 0.0 when the hypothesis is
    also empty and ``float(errors)`` otherwise (each inserted unit counts as one full error).
    """
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    if len(refs) != len(hyps):
        raise UserError(f"{len(refs)} references but {len(hyps)} hypotheses: they must pair up")
    if ids is None:
        ids = [str(i) for i in range(len(refs))]
    elif len(ids) != len(refs):
        raise UserError(f"{len(ids)} ids for {len(refs)} references: they must pair up")
    rows = []
    for uid, ref, hyp in zip(ids, refs, hyps, strict=True):
        if normalize:
            ref, hyp = normalize_for_scoring(ref), normalize_for_scoring(hyp)
        c = _score_pair(ref, hyp, unit)
        errors = c["sub"] + c["del"] + c["ins"]
        rate = errors / c["ref_units"] if c["ref_units"] else float(errors)
        rows.append({"id": uid, "ref": ref, "hyp": hyp, "errors": errors, **c, "rate": rate})
    return rows


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, float | int]:
    """Corpus (micro-averaged) rate and totals over per-utterance rows.

    Raises ``UserError`` when the references hold no units at all: a corpus rate is undefined.
    """
    total = {k: sum(int(r[k]) for r in rows) for k in ("errors", "ref_units", "sub", "del", "ins")}
    if total["ref_units"] == 0:
        raise UserError(
            "every reference is empty after normalisation, so WER/CER is undefined: "
            "check the evaluation transcripts (the manifest 'text' field)"
        )
    n_empty = sum(1 for r in rows if int(r["ref_units"]) == 0)
    rate = total["errors"] / total["ref_units"]
    return {"rate": rate, "n": len(rows), "n_empty_refs": n_empty, **total}


def corpus_wer(refs: Sequence[str], hyps: Sequence[str], normalize: bool = True) -> float:
    """Corpus word error rate: total word edits / total reference words."""
    return float(summarize_rows(error_rows(refs, hyps, unit="word", normalize=normalize))["rate"])


def corpus_cer(refs: Sequence[str], hyps: Sequence[str], normalize: bool = True) -> float:
    """Corpus character error rate (spaces count as characters)."""
    return float(summarize_rows(error_rows(refs, hyps, unit="char", normalize=normalize))["rate"])


def wilcoxon_paired(errors_a: Sequence[float], errors_b: Sequence[float]) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test on paired per-utterance error counts.

    Zero differences are dropped (``zero_method="wilcox"``); ``n_nonzero`` says how many pairs
    remained. When every difference is zero the systems are indistinguishable on this set and the
    result is defined as ``statistic=0, p_value=1`` (scipy would divide by zero).
    """
    if len(errors_a) != len(errors_b):
        raise UserError(f"paired test needs equal lengths, got {len(errors_a)} vs {len(errors_b)}")
    diffs = [float(a) - float(b) for a, b in zip(errors_a, errors_b, strict=True)]
    n_nonzero = sum(1 for d in diffs if d != 0.0)
    if n_nonzero == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n": len(diffs), "n_nonzero": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # normal-approx warnings on tiny sets
        res = wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "n": len(diffs),
        "n_nonzero": n_nonzero,
    }


def best_of(per_seed_rows: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Best of N sampling seeds per utterance: the row with the fewest errors wins.

    ``per_seed_rows[s]`` holds one seed's rows; rows are matched by ``id`` and every seed must
    cover the same ids. Ties go to the lowest seed index. Each returned row gains ``seed`` (the
    index of the winning seed) and keeps the first seed's utterance order.
    """
    if not per_seed_rows:
        raise UserError("best_of needs rows from at least one seed")
    by_seed = [{r["id"]: r for r in rows} for rows in per_seed_rows]
    ids = [r["id"] for r in per_seed_rows[0]]
    for s, table in enumerate(by_seed):
        if set(table) != set(ids) or len(table) != len(per_seed_rows[s]):
            raise UserError(
                f"seed {s} does not cover the same utterance ids as seed 0 (or repeats one): "
                "score every seed on the same evaluation set"
            )
    best = []
    for uid in ids:
        seed = min(range(len(by_seed)), key=lambda s: (by_seed[s][uid]["errors"], s))
        best.append({**by_seed[seed][uid], "seed": seed})
    return best
