"""The transcript normaliser shared by the generated and the real corpora: spoken words only.

Output alphabet: lowercase a-z, apostrophes inside words, single spaces. Numbers, times, money,
percentages and common abbreviations are spelled out (num2words), so a real transcript keeps what
was said. What has no spoken form (emoji, stray symbols, letters of other scripts) is removed and,
when a ``report`` Counter is passed, counted by reason, one count per removed character.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

from num2words import num2words

VERSION = 2  # 1: digits and symbols deleted; 2: spelled out (num2words). Keys cached manifests.
REASONS = ("unspoken_symbol", "foreign_script")
"""What ``normalize_text`` counts in its ``report``: characters removed without a spoken form."""

# letters NFKD leaves whole (no accent to strip) that have a plain ASCII spelling
_FOLD = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o",
     "Ø": "O", "œ": "oe", "Œ": "OE", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "þ": "th",
     "Þ": "TH", "ð": "d", "Ð": "D"}
)  # fmt: skip
_CURRENCY = {  # symbol -> (unit, units, cent, cents)
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "ms": "miz", "dr": "doctor", "st": "saint",
                  "vs": "versus", "prof": "professor", "jr": "junior", "sr": "senior",
                  "etc": "et cetera"}  # fmt: skip
_DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# titles are unambiguous without their period ("Mr Smith"); "st", "jr", "sr", "etc" need it
_ABBREV = re.compile(r"\b(?:(mrs|mr|ms|dr|prof|vs)\b\.?|(st|jr|sr|etc)\.)")
_TITLES = frozenset(("mr", "mrs", "ms", "dr", "prof", "vs"))  # _ABBREV without a period
_DIGIT = re.compile(r"\d")
_SCALE = r"(?:\s?(thousand|million|billion|trillion)\b)?"
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_MONEY = re.compile(rf"([$£€])\s?({_NUM}){_SCALE}")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b(?:\s?([ap])\.?m\b\.?)?")
_PERCENT = re.compile(rf"({_NUM})\s?%")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_NUMBER = re.compile(_NUM)
_SYMBOLS = re.compile(r"[#*+<=>@\\^_|~$%£€]+")
_NOT_ALLOWED = re.compile(r"[^a-z' ]+")
_NOT_PLAIN = re.compile(r"[^a-z'\s]")  # plain text: _tidy alone normalises it
_LONE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def _digits(s: str) -> str:
    return " ".join(_DIGIT_WORDS[int(c)] for c in s)


@lru_cache(maxsize=1 << 14)  # num2words takes ~30 us a call; corpora repeat their numbers
def number_words(token: str) -> str:
    """Spoken form of a digit string as written: ``1,000``, ``3.50``, ``1995``, ``007``."""
    whole, _, frac = token.replace(",", "").partition(".")
    if frac:  # digits after the point are read one by one: "three point five zero"
        return f"{number_words(whole)} point {_digits(frac)}"
    if (len(whole) > 1 and whole.startswith("0")) or len(whole) > 15:
        return _digits(whole)  # codes, phone and serial numbers
    n = int(whole)
    # A bare four-digit number in books and news is mostly a year, and year mode is also how
    # people say such quantities ("fifteen hundred men"), so it matches speech more often than
    # the cardinal "one thousand five hundred". Numbers written with a comma stay cardinals.
    if 1100 <= n <= 2099 and "," not in token:
        return num2words(n, to="year")
    return _words(n)


@lru_cache(maxsize=1 << 12)
def _words(n: int, to: str = "cardinal") -> str:
    return num2words(n, to=to)


def _money(m: re.Match) -> str:
    unit, units, cent, cents = _CURRENCY[m.group(1)]
    amount, scale = m.group(2).replace(",", ""), m.group(3)
    whole, _, frac = amount.partition(".")
    if scale or (frac and len(frac) != 2):  # "$2.5 million", "$1.234": the number, then the unit
        head = f"{number_words(amount)} {scale}" if scale else number_words(amount)
        return f" {head} {units} "
    n, c = int(whole), int(frac or 0)
    parts = [f"{_words(n)} {unit if n == 1 else units}"] if n or not c else []
    if c:
        parts.append(f"{_words(c)} {cent if c == 1 else cents}")
    return f" {' '.join(parts)} "


def _time(m: re.Match) -> str:
    h, mins = int(m.group(1)), int(m.group(2))
    if h > 24 or mins > 59:  # not a clock time ("10:75" as a ratio): read the numbers
        return f" {_words(h)} {_words(mins)} "
    spoken = "o'clock" if mins == 0 else ("oh " + _words(mins) if mins < 10 else None)
    words = f"{_words(h)} {spoken or _words(mins)}"
    return f" {words} {m.group(3)} m " if m.group(3) else f" {words} "


def _symbol_counter(report: Counter[str] | None):
    def replace(m: re.Match) -> str:
        ch = m.group(0)
        cat = unicodedata.category(ch)
        if cat == "Mn" or ch in _CURRENCY:
            return "" if cat == "Mn" else ch  # accents fold away; money is spelled out later
        if report is not None and cat[0] not in "PZ":  # punctuation and spaces say nothing
            report["foreign_script" if cat[0] in "LN" else "unspoken_symbol"] += 1
        return " "

    return replace


def _tidy(s: str) -> str:
    if "'" in s:  # quotes and trailing possessives like "boys'" lose it
        s = _LONE_APOSTROPHE.sub(" ", s)
    return " ".join(s.split())


def normalize_text(s: str, report: Counter[str] | None = None) -> str:
    """Lowercase a-z, apostrophes only inside words, single spaces; numbers are spelled out.

    Accents are folded (cafe), curly apostrophes become straight ones, numbers, times, money and
    percentages become words, punctuation becomes a space. Characters with no spoken form are
    removed and counted in ``report`` (if given) under the reasons in ``REASONS``.
    """
    if not s.isascii():  # plain ASCII (every generated sentence) skips the Unicode work
        s = unicodedata.normalize("NFKD", s.translate(_FOLD))
        s = _NON_ASCII.sub(_symbol_counter(report), s)
    if "`" in s:
        s = s.replace("`", "'")
    s = s.lower()
    if _NOT_PLAIN.search(s) is None and _TITLES.isdisjoint(s.split()):
        return _tidy(s)  # only letters, apostrophes and spaces: every generated sentence
    if "&" in s:
        s = s.replace("&", " and ")
    s = _ABBREV.sub(lambda m: f" {_ABBREVIATIONS[m.group(1) or m.group(2)]} ", s)
    if _DIGIT.search(s):
        s = _MONEY.sub(_money, s)
        s = _TIME.sub(_time, s)
        s = _PERCENT.sub(lambda m: f" {number_words(m.group(1))} percent ", s)
        s = _ORDINAL.sub(lambda m: f" {_words(int(m.group(1)), 'ordinal')} ", s)
        s = _NUMBER.sub(lambda m: f" {number_words(m.group(0))} ", s)
    if report is not None:
        for m in _SYMBOLS.finditer(s):
            report["unspoken_symbol"] += len(m.group(0))
    return _tidy(_NOT_ALLOWED.sub(" ", s))  # num2words' hyphens and commas become spaces here


def clean_transcript(s: str | None, counts: Counter[str]) -> str | None:
    """Normalised transcript, or None (counted) when there is none or nothing speakable."""
    if s is None:
        counts["no_transcript"] += 1
        return None
    t = normalize_text(s, counts)
    if not t:
        counts["empty_transcript"] += 1
    return t or None
