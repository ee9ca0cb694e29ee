"""The embedded corpus's lexicon: about 1,750 English word forms by class, as the sentence
grammar (``sentences.py``) draws them. Nouns are "singular" or "singular/plural"; verbs are
"base" or "base/past/participle[/ing]"."""

from __future__ import annotations

import re


def word_list(block: str, sep: str | None = None) -> list[str]:
    return [w.strip() for w in block.replace("\n", " ").split(sep)]


_w = word_list  # short: the word lists below are long literals


_PEOPLE = """teacher doctor farmer student baker nurse pilot driver writer painter singer dancer
sailor soldier captain king queen prince princess child/children woman/women man/men girl boy
friend neighbor brother sister mother father uncle aunt cousin baby/babies lawyer judge officer
engineer scientist artist poet musician player coach manager clerk waiter cook guard hunter
fisherman/fishermen gardener builder carpenter merchant traveler stranger visitor guest tourist
priest monk knight wizard witch/witches giant thief/thieves miner shepherd tailor barber banker
pianist actor author editor reporter professor librarian mechanic plumber porter servant pupil
scholar chef surgeon dentist detective inspector mayor general sergeant grandmother grandfather
nephew niece husband wife/wives farmhand shopkeeper fireman/firemen postman/postmen architect"""
_ANIMALS = """dog cat horse cow sheep/sheep goat pig rabbit fox/foxes wolf/wolves bear lion tiger
mouse/mice bird owl eagle duck goose/geese hen crow sparrow frog snake monkey donkey squirrel bee
spider elephant camel whale dolphin turtle parrot pony/ponies puppy/puppies kitten calf/calves"""
_THINGS = """book letter key box/boxes table chair door window lamp cup glass/glasses plate bottle
basket bag coat hat shoe shirt dress/dresses ring watch/watches clock bell map picture photograph
painting song story/stories poem newspaper message card ticket coin bicycle car truck boat ship
train bus/buses plane wagon ladder rope stone rock apple orange pear cherry/cherries lemon
potato/potatoes tomato/tomatoes carrot onion loaf/loaves cake pie sandwich/sandwiches bowl spoon
knife/knives fork candle pencil pen notebook blanket pillow mirror umbrella wallet piano guitar
violin drum flute trumpet radio computer phone camera kettle bucket hammer nail shovel
brush/brushes broom towel carpet curtain fence gate idea plan question answer problem secret
promise mistake dream lesson puzzle gift present prize reward meal dinner breakfast lunch/lunches
report envelope parcel package jar sack barrel scarf/scarves glove sock jacket sweater
necklace bracelet diary/diaries album calendar compass lantern torch/torches saddle engine wheel
button feather pebble shell flower rose tulip seed leaf/leaves branch/branches log recipe"""
_PLACES = """house/houses cottage castle barn shed tent cabin church/churches school library
hospital museum market shop station office factory garden field forest river lake hill
mountain valley island beach/beaches road street path village town city farm park harbor
kitchen bedroom cellar attic roof hall bakery theater stadium airport bank tunnel
meadow orchard pond cave desert jungle palace bridge tower square corner shore cliff stable"""
NAMES = _w("""alice bob carol david emma frank grace henry isabel jack julia kevin laura michael
nina oliver paul rachel samuel sarah thomas victoria william anna peter maria john james mary robert
linda daniel lucy george helen edward charlotte arthur margaret harry sophie oscar ruby walter
clara simon eva martin irene victor hugo ada felix nora leo iris max hannah ben molly kate jane
rosa elena ivan omar yusuf priya ravi mei chen kenji hana lars ingrid pablo carmen diego fatima""")
ADJECTIVES = _w("""old young big small tall short long little large tiny huge heavy light dark
bright quiet loud happy sad angry tired hungry thirsty brave clever kind gentle proud shy calm busy
lazy rich poor strong weak fast slow warm cold hot cool wet dry clean dirty new ancient modern empty
full broken strange curious famous friendly lonely lucky careful careless honest polite rude wise
foolish silly funny serious simple difficult easy soft hard smooth rough sharp sweet bitter sour
fresh rotten green red blue yellow white black brown grey purple golden silver wooden narrow wide
deep shallow thin thick round square beautiful pretty ugly handsome lovely pleasant terrible
wonderful excellent perfect useful useless expensive cheap precious rare common noisy peaceful
dangerous safe hidden open closed distant foreign local northern southern eastern western wild
tame patient nervous worried excited surprised frightened delighted cheerful grumpy sleepy
mysterious ordinary elegant clumsy fierce gloomy shiny dusty muddy rusty sticky tidy messy
crowded cozy graceful hopeful jealous magnificent nasty odd plain sturdy tender velvet""")
ADVERBS = _w("""quickly slowly carefully quietly loudly happily sadly suddenly finally gently
eagerly easily rarely often always never sometimes usually probably certainly really almost nearly
already soon later again together alone everywhere secretly proudly bravely calmly politely
patiently angrily nervously cheerfully gladly kindly badly barely softly silently warmly
wisely foolishly carelessly honestly openly seriously briefly gradually immediately""")
_TRANSITIVE = """see/saw/seen find/found/found take/took/taken bring/brought/brought
buy/bought/bought sell/sold/sold build/built/built make/made/made break/broke/broken carry
hold/held/held keep/kept/kept lose/lost/lost paint open close clean wash fix move push pull lift
drop/dropped/dropped/dropping hide/hid/hidden steal/stole/stolen borrow lend/lent/lent
send/sent/sent write/wrote/written read/read/read draw/drew/drawn cook bake eat/ate/eaten
drink/drank/drunk watch want need choose/chose/chosen throw/threw/thrown kick fold
cut/cut/cut/cutting sweep/swept/swept deliver repair collect count measure describe discover
notice admire wear/wore/worn pack fill check examine order prepare plant pick climb cross reach
forget/forgot/forgotten/forgetting remember destroy protect polish sharpen share
wrap/wrapped/wrapped/wrapping hang/hung/hung ring/rang/rung bend/bent/bent shake/shook/shaken
grab/grabbed/grabbed/grabbing"""
_PERSON_VERBS = """meet/met/met help call follow chase visit thank invite teach/taught/taught
greet warn trust blame forgive/forgave/forgiven/forgiving tease praise rescue admire answer ask
hug/hugged/hugged/hugging miss guide carry watch hear/heard/heard"""
_INTRANSITIVE = """sleep/slept/slept laugh cry smile sing/sang/sung dance run/ran/run/running walk
swim/swam/swum/swimming arrive wait work rest shout whisper jump fall/fell/fallen
sit/sat/sat/sitting stand/stood/stood wander travel listen play cough sneeze yawn shiver hurry
return appear disappear fly/flew/flown snore complain agree stay fight/fought/fought
win/won/won/winning relax pray hide/hid/hidden kneel/knelt/knelt sigh giggle"""
_CLAUSE_VERBS = """think/thought/thought say/said/said know/knew/known believe hope hear/heard/heard
notice feel/felt/felt suspect discover remember forget/forgot/forgotten/forgetting explain realize
guess dream imagine understand/understood/understood admit/admitted/admitted/admitting fear worry
doubt"""
_INFINITIVE_VERBS = """want decide try plan/planned/planned/planning hope promise refuse need
agree offer forget/forgot/forgotten/forgetting learn/learned/learned
prefer/preferred/preferred/preferring"""
PREPS = _w("in near behind beside under above inside outside across through past by")
NUMBERS = _w("""two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety""")
_TIMES = """yesterday|today|tomorrow|tonight|last night|this morning|this afternoon|every day|
this evening|every morning|last week|next week|last year|next summer|at noon|at midnight|
in the morning|in the evening|after dinner|before breakfast"""
TIMES = _w(_TIMES, "|")
DAYS = _w("monday tuesday wednesday thursday friday saturday sunday")
MONTHS = _w("january february march april may june july august september october november december")
FREQ_ADVERBS = _w("always never often sometimes usually rarely")


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _nouns(block: str) -> list[tuple[str, str]]:
    return [(sg, pl or _plural(sg)) for sg, _, pl in (e.partition("/") for e in _w(block))]


def _verbs(block: str) -> list[dict[str, str]]:
    out = []
    for entry in _w(block):
        base, *irr = entry.split("/")
        regular = base + "d" if base.endswith("e") else re.sub(r"([^aeiou])y$", r"\1i", base) + "ed"
        past, pp = irr[:2] if irr else (regular, regular)
        ing = irr[2] if len(irr) == 3 else re.sub(r"(?<![eyo])e$", "", base) + "ing"
        s3 = base + "es" if base.endswith("o") else _plural(base)
        out.append({"base": base, "s3": s3, "past": past, "pp": pp, "ing": ing})
    return out


PEOPLE, ANIMALS, THINGS, PLACES = (_nouns(b) for b in (_PEOPLE, _ANIMALS, _THINGS, _PLACES))
TRANSITIVE, PERSON_VERBS, INTRANSITIVE = map(_verbs, (_TRANSITIVE, _PERSON_VERBS, _INTRANSITIVE))
CLAUSE_VERBS, INFINITIVE_VERBS = _verbs(_CLAUSE_VERBS), _verbs(_INFINITIVE_VERBS)
ANIMATE = PEOPLE + ANIMALS


def lexicon() -> set[str]:
    """Every word form in the lexicon (a superset of what the grammar emits; for sizing)."""
    words: set[str] = set()
    for sg, pl in PEOPLE + ANIMALS + THINGS + PLACES:
        words.update((sg, pl))
    for v in TRANSITIVE + PERSON_VERBS + INTRANSITIVE + CLAUSE_VERBS + INFINITIVE_VERBS:
        words.update(v.values())
    words.update(NAMES + ADJECTIVES + ADVERBS + PREPS + NUMBERS + DAYS + MONTHS)
    return words
