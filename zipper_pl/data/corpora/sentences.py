"""Deterministic English sentence generator for the embedded corpus (its words: ``lexicon.py``).

A small hand-written grammar (declaratives in several tenses, questions, relative clauses,
subordinate and complement clauses, coordination, passives, existentials, imperatives) over a
lexicon of about 1,750 word forms. Output is already normalised (lowercase a-z, apostrophes, single
spaces) so espeak-ng can speak it and WER can score it without further cleaning. No downloads.
"""

from __future__ import annotations

import random

from zipper_pl.data.corpora.lexicon import (
    ADJECTIVES,
    ADVERBS,
    ANIMALS,
    ANIMATE,
    CLAUSE_VERBS,
    DAYS,
    FREQ_ADVERBS,
    INFINITIVE_VERBS,
    INTRANSITIVE,
    MONTHS,
    NAMES,
    NUMBERS,
    PEOPLE,
    PERSON_VERBS,
    PLACES,
    PREPS,
    THINGS,
    TIMES,
    TRANSITIVE,
    word_list,
)
from zipper_pl.data.corpora.textnorm import normalize_text
from zipper_pl.errors import UserError

# --- grammar ------------------------------------------------------------------------------------
# Agreement codes: "1s" (i), "2" (you), "3s" (he, the dog), "1p" (we), "3p" (they, the dogs).

_SUBJECT_PRONOUNS = {"1s": "i", "2": "you", "1p": "we", "3p": "they"}
_OBJECT_PRONOUNS = word_list("me you him her us them")
_BE = {"present": {"1s": "am", "3s": "is"}, "past": {"1s": "was", "3s": "was"}}
_MODALS = word_list("can/can't|could/couldn't|should/shouldn't|might/might not|must/must not", "|")
_SUBORDINATORS = word_list("when because although before after while since until once")
_DET_SG = word_list("the the the a my your his her our this that every their")
_DET_PL = word_list("the|the|some|these|those|many|our|their|all the|a few", "|")
_TENSES = word_list("present past past past future prog past_prog perfect past_perfect modal")


def _article(word: str) -> str:
    vowel = word[0] in "aeiou" and not word.startswith(("uni", "use", "usu", "one", "eu"))
    return "an" if vowel or word.startswith(("hour", "honest")) else "a"


def _be(agr: str, form: str) -> str:
    return _BE[form].get(agr, "were" if form == "past" else "are")


_KEEP_WHOLE = 8  # word lists this short are never cut by lexicon_frac


class _Grammar:
    """Random phrase builders; every method returns a list of words (some hold spaces)."""

    def __init__(self, rng: random.Random, lexicon_frac: float = 1.0) -> None:
        self.r = rng
        self.lexicon_frac = lexicon_frac

    def pick(self, seq):
        # a smaller world keeps the first share of every word list; short closed-class lists
        # (pronouns, determiners, days) stay whole so every construction remains possible
        n = len(seq)
        if self.lexicon_frac < 1.0 and n > _KEEP_WHOLE:
            n = max(_KEEP_WHOLE, round(n * self.lexicon_frac))
        return seq[self.r.randrange(n)]

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def noun_group(self, nouns, plural: bool, adj_p: float = 0.4) -> list[str]:
        sg, pl = self.pick(nouns)
        noun = pl if plural else sg
        words = [self.pick(ADJECTIVES), noun] if self.chance(adj_p) else [noun]
        if len(words) == 2 and self.chance(0.15):
            words.insert(0, self.pick(["very", "rather", "quite", self.pick(ADJECTIVES)]))
        if plural:
            return [self.pick([*_DET_PL, self.pick(NUMBERS)]), *words]
        det = self.pick(_DET_SG)
        return [_article(words[0]) if det == "a" else det, *words]

    def subject(self, depth: int = 0) -> tuple[list[str], str]:
        roll = self.r.random()
        if roll < 0.18:
            agr = self.pick(["1s", "2", "1p", "3p", "3s", "3s"])
            return [_SUBJECT_PRONOUNS.get(agr) or self.pick(["he", "she"])], agr
        if roll < 0.38:
            if self.chance(0.15):
                return [self.pick(NAMES), "and", self.pick(NAMES)], "3p"
            return [self.pick(NAMES)], "3s"
        plural = self.chance(0.3)
        words = self.noun_group(ANIMATE, plural)
        if not plural and self.chance(0.08):  # possessive: "the teacher's dog"
            words = [*words[:-1], words[-1] + "'s", self.pick(ANIMATE)[0]]
        if depth == 0 and self.chance(0.12):
            words += self.relative_clause()
        return words, "3p" if plural else "3s"

    def obj(self, person: bool = False, depth: int = 0) -> list[str]:
        if person:
            if self.chance(0.25):
                return [self.pick(_OBJECT_PRONOUNS)]
            if self.chance(0.3):
                return [self.pick(NAMES)]
            return self.noun_group(ANIMATE, self.chance(0.3))
        words = self.noun_group(THINGS, self.chance(0.3))
        if depth == 0 and self.chance(0.08):
            words += ["with", *self.noun_group(THINGS, False, adj_p=0.7)]
        elif depth == 0 and self.chance(0.06):
            words += self.relative_clause(for_thing=True)
        return words

    def relative_clause(self, for_thing: bool = False) -> list[str]:
        if for_thing:  # object relative: "that the farmer sold"
            return ["that", *self.subject(depth=1)[0], self.pick(TRANSITIVE)["past"]]
        rel = self.pick(["who", "that"])
        if self.chance(0.5):
            return [rel, self.pick(TRANSITIVE)["past"], *self.obj(depth=1)]
        return [rel, self.pick(INTRANSITIVE)["past"], *self.place_pp()]

    def place_pp(self) -> list[str]:
        noun = [self.pick(ADJECTIVES)] if self.chance(0.3) else []
        noun.append(self.pick(PLACES)[0])
        det = self.pick(["the", "the", "our", "that", "a"])
        return [self.pick(PREPS), _article(noun[0]) if det == "a" else det, *noun]

    def time_expr(self) -> list[str]:
        roll = self.r.random()
        if roll < 0.6:
            return [self.pick(TIMES)]
        return ["on", self.pick(DAYS)] if roll < 0.85 else ["in", self.pick(MONTHS)]

    def modifiers(self, tense: str) -> list[str]:
        out = self.place_pp() if self.chance(0.35) else []
        if self.chance(0.25):
            out.append(self.pick(ADVERBS))
        if tense in ("past", "future") and self.chance(0.2):
            out += self.time_expr()
        return out

    def verb(self, v: dict[str, str], agr: str, tense: str, neg: bool) -> list[str]:
        if tense == "present":
            if neg:
                return ["doesn't" if agr == "3s" else "don't", v["base"]]
            freq = [self.pick(FREQ_ADVERBS)] if self.chance(0.2) else []
            return [*freq, v["s3"] if agr == "3s" else v["base"]]
        if tense == "past":
            return ["didn't", v["base"]] if neg else [v["past"]]
        if tense in ("prog", "past_prog"):
            be = _be(agr, "past" if tense == "past_prog" else "present")
            return [be, "not", v["ing"]] if neg else [be, v["ing"]]
        if tense == "perfect":
            adv = "never" if neg else self.pick(["just", "already", "finally"])
            return ["has" if agr == "3s" else "have", adv, v["pp"]]
        if tense == "past_perfect":
            return ["had", "not", v["pp"]] if neg else ["had", v["pp"]]
        modal, negated = self.pick(_MODALS).split("/") if tense == "modal" else ("will", "won't")
        return [negated if neg else modal, v["base"]]

    def clause(self, tense: str | None = None, depth: int = 0) -> list[str]:
        tense = tense or self.pick(_TENSES)
        subj, agr = self.subject(depth)
        neg = self.chance(0.12)
        roll = self.r.random()
        if roll < 0.45:
            rest = self.verb(self.pick(TRANSITIVE), agr, tense, neg) + self.obj(depth=depth)
        elif roll < 0.65:
            rest = self.verb(self.pick(PERSON_VERBS), agr, tense, neg) + self.obj(True, depth)
        elif roll < 0.85:
            rest = self.verb(self.pick(INTRANSITIVE), agr, tense, neg)
        else:  # copula: "the soup was cold", "my aunt is a famous pianist"
            form = "past" if tense.startswith("past") else "present"
            be = [_be(agr, form), "not"] if neg else [_be(agr, form)]
            if self.chance(0.7) or agr not in ("3s", "1s"):
                degree = self.pick([[], [], ["very"], ["quite"], ["so"]])
                return [*subj, *be, *degree, self.pick(ADJECTIVES)]
            return [*subj, *be, *self.noun_group(PEOPLE, False, adj_p=0.6)]
        return subj + rest + self.modifiers(tense)

    def question(self) -> list[str]:
        subj, agr = self.subject(depth=1)
        v = self.pick(TRANSITIVE)
        roll = self.r.random()
        if roll < 0.3:  # yes/no: "did the baker sell the old cart"
            do, have = ("does", "has") if agr == "3s" else ("do", "have")
            aux, form = self.pick([("did", "base"), ("will", "base"), ("can", "base"),
                                   (do, "base"), (have, "pp")])  # fmt: skip
            return [aux, *subj, v[form], *self.obj(), *self.modifiers("past")[:3]]
        if roll < 0.55:  # "why does the cat open the box"
            wh = self.pick(["where", "why", "when", "how"])
            aux = self.pick(["did", "will", "should", "does" if agr == "3s" else "do"])
            return [wh, aux, *subj, v["base"], *self.obj(depth=1)]
        if roll < 0.7:  # object question: "how many apples did she count"
            what = self.pick([["what"], ["which", self.pick(THINGS)[0]],
                              ["how many", self.pick(THINGS)[1]]])  # fmt: skip
            aux = self.pick(["did", "will", "could"])
            return [*what, aux, *subj, v["base"], *self.modifiers("past")]
        if roll < 0.85:  # subject question: "who broke the window"
            who = self.pick(["who", "who", "which " + self.pick(PEOPLE)[0]])
            return [who, v["past"], *self.obj(), *self.modifiers("past")]
        be = _be(agr, self.pick(["present", "past"]))
        return [be, *subj, *self.pick([[], ["really"], ["still"]]), self.pick(ADJECTIVES)]

    def sentence(self) -> list[str]:
        roll = self.r.random()
        if roll < 0.30:
            return self.clause()
        if roll < 0.47:
            return self.question()
        if roll < 0.57:  # coordination
            tense = self.pick(["past", "present", "future", "modal"])
            conj = self.pick(["and", "but", "so", "or"])
            return [*self.clause(tense, 1), conj, *self.clause(tense, 1)]
        if roll < 0.69:  # subordinate clause first or second
            tense = self.pick(["past", "past", "present"])
            sub = [self.pick(_SUBORDINATORS), *self.clause(tense, 1)]
            main = self.clause(tense, 1)
            return sub + main if self.chance(0.5) else main + sub
        if roll < 0.74:  # conditional
            return ["if", *self.clause("present", 1), *self.clause("future", 1)]
        if roll < 0.82:  # complement clause: "she said that the train was late"
            subj, agr = self.subject(1)
            verb = self.verb(self.pick(CLAUSE_VERBS), agr, self.pick(["past", "present"]), False)
            that = ["that"] if self.chance(0.6) else []
            return [*subj, *verb, *that, *self.clause(depth=1)]
        if roll < 0.88:  # infinitive: "the farmer wanted to sell the horse"
            subj, agr = self.subject()
            tense = self.pick(["past", "present"])
            verb = self.verb(self.pick(INFINITIVE_VERBS), agr, tense, self.chance(0.15))
            obj = [self.pick(TRANSITIVE)["base"], *self.obj(), *self.modifiers("")]
            return [*subj, *verb, "to", *obj]
        if roll < 0.93:  # passive
            agent = ["by", *self.obj(True, 1)] if self.chance(0.6) else []
            aux = self.pick(["was", "will be", "has been"])
            head = self.noun_group(THINGS, False)
            return [*head, aux, self.pick(TRANSITIVE)["pp"], *agent, *self.modifiers("past")]
        if roll < 0.97:  # existential
            plural = self.chance(0.5)
            be = _be("3p" if plural else "3s", self.pick(["present", "past"]))
            return ["there", be, *self.noun_group(THINGS + ANIMALS, plural), *self.place_pp()]
        head = self.pick([["please"], ["don't"], ["let's"], []])  # imperative
        return [*head, self.pick(TRANSITIVE)["base"], *self.obj(), *self.modifiers("")]


def generate_sentences(
    n: int, seed: int, min_words: int = 4, max_words: int = 25, lexicon_frac: float = 1.0
) -> list[str]:
    """``n`` normalised English sentences of ``min_words``..``max_words`` words, set by ``seed``.

    ``lexicon_frac`` < 1 draws every open word class (nouns, verbs, adjectives, names, ...) from
    its first share only: the same grammar over a smaller vocabulary, so each word is heard more
    often (a world small models learn in minutes). 1.0 gives exactly the full-lexicon corpus.
    """
    if not 0.0 < lexicon_frac <= 1.0:
        raise UserError(f"lexicon_frac={lexicon_frac} must be in (0, 1]")
    if n < 0:
        raise UserError(f"cannot generate {n} sentences: the sentence count must be >= 0")
    if max_words < 6 or not 1 <= min_words <= max_words:
        raise UserError(
            f"sentence length range {min_words}..{max_words} is unusable: "
            "set max_words >= 6 and 1 <= min_words <= max_words"
        )
    g = _Grammar(random.Random(f"zipper-sentences-{seed}"), lexicon_frac)
    out: list[str] = []
    while len(out) < n:
        # Multi-word lexicon entries ("last night") are re-split by the normaliser.
        text = normalize_text(" ".join(g.sentence()))
        if min_words <= text.count(" ") + 1 <= max_words:
            out.append(text)
    return out
