"""The toy suite's training text: a small random English grammar around the TSE phenomena.

Every sentence is lower case, words separated by single spaces, no punctuation (the form
of the TSE benchmark). The grammar draws *random combinations*; it does not enumerate the
benchmark. Its word lists contain every TSE preterminal list verbatim (imported from
:mod:`dynamics.syntax.tse`, singular/plural by the spec's :func:`switch_number`), mixed
with filler words, and every noun or verb slot draws from the union, so the TSE words
appear in many roles and frames beside the benchmark's own.

What the grammar teaches (all agreement is by the grammar, never by copying a template):

* agreement of the main verb (short, long or coordinated VPs; ``is``/``are`` predicates)
  with its subject across an optional prepositional phrase, subject relative clause,
  object relative clause with or without ``that``; inside the relative clause the verb
  agrees with *its* subject;
* sentential complements (``the mechanic said (that) the author laughs``);
* reflexives (``himself``/``herself`` after a singular subject, ``themselves`` after a
  plural one) in simple clauses, across relative clauses and in complements;
* NPIs: ``ever`` follows ``have``/``will`` only when the sentence's *first* word is
  ``no`` or ``few``; ``no``/``few`` also occur inside relative clauses, and ``most``,
  ``many``, ``the``, ``some`` head the same frames without ``ever``;
* filler: existentials, past ``was``/``were``, modals, adverbs, ditransitives, clause
  coordination, locative phrases.

Held out: when :func:`generate_sentences` is given ``exclude=tse_sentences()`` (the
toy suite's default), no sentence of the benchmark (grammatical, ungrammatical or
intrusive) occurs in the corpus, so TSE accuracy measures generalisation to unseen
combinations of seen words and frames. The ungrammatical sentences can never occur anyway
(the grammar only makes grammatical sentences); the exclusion removes the grammatical ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from dynamics.errors import UserInputError
from dynamics.syntax.tse import AGREEMENT_TERMINALS as T
from dynamics.syntax.tse import NPI_TERMINALS as NPI
from dynamics.syntax.tse import generate_tse, switch_number

# ---------------------------------------------------------------------------- lexicon
# Singular base forms; plurals by the TSE rule. Filler words are chosen so that the rule
# gives the right plural (no "watches", no "stories").
ANIMATE_NOUNS: tuple[str, ...] = (*T["MS"], *T["ES"], *T["BS"]) + (
    "doctor",
    "lawyer",
    "student",
    "nurse",
    "writer",
    "singer",
    "painter",
    "driver",
    "worker",
    "neighbor",
    "soldier",
    "baker",
)
INANIMATE_NOUNS: tuple[str, ...] = (*T["IS"],) + (
    "car",
    "house",
    "letter",
    "film",
    "photo",
    "play",
    "album",
    "report",
    "record",
)
PLACES: tuple[str, ...] = ("park", "city", "office", "kitchen", "station", "library", "school", "garden")
ADJECTIVES: tuple[str, ...] = ("old", "young", "tall", "famous", "busy", "new", "quiet", "clever")
INTRANSITIVE_VPS: tuple[str, ...] = (*T["MV"],) + (
    "sleeps",
    "runs",
    "sings",
    "waits",
    "works",
    "is happy",
    "is tired",
    "is busy",
)
TRANSITIVE_VERBS: tuple[str, ...] = (*T["EV"],) + ("sees", "meets", "helps", "calls", "visits", "thanks")
LONG_VPS: tuple[str, ...] = (*T["LMV"],) + (
    "plays the piano every evening",
    "reads books about history",
    "lives in a small town",
    "works at the hospital on weekends",
)
INANIMATE_VPS: tuple[str, ...] = (*T["IV"],) + (
    "is long",
    "is boring",
    "is cheap",
    "costs a lot of money",
    "makes people happy",
)
PAST_TRANSITIVE_VERBS: tuple[str, ...] = (*T["RMV"],) + ("blamed", "praised", "trusted")
BELIEF_VERBS: tuple[str, ...] = (*T["BV"],) + ("believed", "heard", "noticed")
PREPOSITIONS: tuple[str, ...] = (*T["P"], *T["IP"]) + ("with", "beside")
ANAPHORS_SINGULAR: tuple[str, ...] = T["ANPHR"]
ANAPHOR_PLURAL = "themselves"
# NPI predicates, past participle phrase i <-> future phrase i.
ANIMATE_PAST: tuple[str, ...] = (*NPI["APMV"],) + ("been happy", "won a prize")
ANIMATE_FUTURE: tuple[str, ...] = (*NPI["AFMV"],) + ("be happy", "win a prize")
INANIMATE_PAST: tuple[str, ...] = (*NPI["IPMV"],) + ("been sold", "been praised")
INANIMATE_FUTURE: tuple[str, ...] = (*NPI["IFMV"],) + ("be sold", "be praised")
LICENSORS: tuple[str, ...] = NPI["NO"]  # no, few
NON_LICENSORS: tuple[str, ...] = (*NPI["MOST"], *NPI["SD"])  # most, many, the, some

# Determiners by number, with weights. "the" dominates, as in the benchmark.
SINGULAR_DETERMINERS: tuple[tuple[str, float], ...] = (("the", 0.70), ("a", 0.15), ("this", 0.08), ("every", 0.07))
PLURAL_DETERMINERS: tuple[tuple[str, float], ...] = (
    ("the", 0.68),
    ("some", 0.08),
    ("these", 0.08),
    ("many", 0.05),
    ("most", 0.05),
    ("no", 0.03),
    ("few", 0.03),
)

#: Sentence kinds and their probabilities.
SENTENCE_MIXTURE: tuple[tuple[str, float], ...] = (("agreement", 0.62), ("npi", 0.14), ("filler", 0.24))
#: Subject modifiers (attractors) in agreement sentences and their probabilities.
SUBJECT_MODIFIERS: tuple[tuple[str, float], ...] = (
    ("none", 0.30),
    ("prepositional", 0.20),
    ("subject_relative", 0.15),
    ("object_relative", 0.18),
    ("object_relative_no_that", 0.17),
)
#: Predicates of animate subjects and their probabilities.
ANIMATE_PREDICATES: tuple[tuple[str, float], ...] = (
    ("intransitive", 0.22),
    ("transitive", 0.14),
    ("long", 0.10),
    ("reflexive", 0.16),
    ("coordination", 0.10),
    ("long_coordination", 0.08),
    ("complement", 0.20),
)
ADJECTIVE_PROBABILITY = 0.1


def plural(word: str) -> str:
    """The plural of a noun (``taxi driver`` -> ``taxi drivers``), by the TSE rule."""
    return switch_number(word, verb=False)


def plural_verb(phrase: str) -> str:
    """The plural form of a present-tense verb phrase (``is old`` -> ``are old``)."""
    return switch_number(phrase, verb=True)


def lexicon_words() -> set[str]:
    """Every word the grammar can produce (both numbers of every noun and verb phrase)."""
    phrases: list[str] = [*ANIMATE_NOUNS, *INANIMATE_NOUNS, *PLACES]
    phrases += [plural(n) for n in (*ANIMATE_NOUNS, *INANIMATE_NOUNS)]
    verbs = (*INTRANSITIVE_VPS, *TRANSITIVE_VERBS, *LONG_VPS, *INANIMATE_VPS)
    phrases += [*verbs, *(plural_verb(v) for v in verbs)]
    phrases += [
        *ADJECTIVES,
        *PAST_TRANSITIVE_VERBS,
        *BELIEF_VERBS,
        *PREPOSITIONS,
        *ANAPHORS_SINGULAR,
        ANAPHOR_PLURAL,
        *ANIMATE_PAST,
        *ANIMATE_FUTURE,
        *INANIMATE_PAST,
        *INANIMATE_FUTURE,
        *LICENSORS,
        *NON_LICENSORS,
        *(d for d, _ in SINGULAR_DETERMINERS + PLURAL_DETERMINERS),
    ]
    phrases += [
        "an",
        "that",
        "and",
        "have",
        "will",
        "ever",
        "always",
        "often",
        "there",
        "was",
        "were",
        "can",
        "must",
        "yesterday",
        "gave",
        "book",
        "in",
        "at",
    ]
    return {w for p in phrases for w in p.split(" ")}


@lru_cache(maxsize=1)
def tse_sentences() -> frozenset[str]:
    """Every sentence of the TSE benchmark: grammatical, ungrammatical and intrusive."""
    return frozenset(
        s for subcases in generate_tse().values() for items in subcases.values() for item in items for s in item
    )


# ---------------------------------------------------------------------------- grammar
class _Grammar:
    """Random sentences; every choice goes through ``self.rng`` (one seeded stream)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: Sequence[str]) -> str:
        return options[self.rng.randrange(len(options))]

    def weighted(self, options: Sequence[tuple[str, float]]) -> str:
        x = self.rng.random() * sum(w for _, w in options)
        for name, weight in options:
            x -= weight
            if x < 0:
                return name
        return options[-1][0]

    def number(self) -> bool:
        """True for plural (half the time: attractors carry no information)."""
        return self.rng.random() < 0.5

    # ------------------------------------------------------------------ noun phrases
    def noun_phrase(self, plural_: bool, animate: bool = True, adjective: bool = True) -> list[str]:
        noun = self.pick(ANIMATE_NOUNS if animate else INANIMATE_NOUNS)
        words = (plural(noun) if plural_ else noun).split(" ")
        if adjective and self.rng.random() < ADJECTIVE_PROBABILITY:
            words = [self.pick(ADJECTIVES), *words]
        determiner = self.weighted(PLURAL_DETERMINERS if plural_ else SINGULAR_DETERMINERS)
        if determiner == "a" and words[0][0] in "aeiou":
            determiner = "an"
        return [determiner, *words]

    def any_noun_phrase(self) -> list[str]:
        return self.noun_phrase(self.number(), animate=self.rng.random() < 0.7)

    def subject(self, plural_: bool, animate: bool) -> list[str]:
        """A subject noun phrase with an optional attractor-bearing modifier."""
        head = self.noun_phrase(plural_, animate)
        modifier = self.weighted(SUBJECT_MODIFIERS)
        if modifier == "prepositional":
            return [*head, *self.pick(PREPOSITIONS).split(" "), *self.noun_phrase(self.number())]
        if modifier == "subject_relative":
            return [*head, "that", *self.transitive(plural_), *self.any_noun_phrase()]
        if modifier.startswith("object_relative"):
            inner = self.number()
            that = ["that"] if modifier == "object_relative" else []
            return [*head, *that, *self.noun_phrase(inner), *self.transitive(inner)]
        return head

    # ------------------------------------------------------------------ verb phrases
    def agree(self, phrase: str, plural_: bool) -> list[str]:
        return (plural_verb(phrase) if plural_ else phrase).split(" ")

    def transitive(self, plural_: bool) -> list[str]:
        if self.rng.random() < 0.2:  # number-invariant past tense
            return [self.pick(PAST_TRANSITIVE_VERBS)]
        return self.agree(self.pick(TRANSITIVE_VERBS), plural_)

    def reflexive(self, plural_: bool) -> str:
        return ANAPHOR_PLURAL if plural_ else self.pick(ANAPHORS_SINGULAR)

    def two_different(self, options: Sequence[str]) -> tuple[str, str]:
        first = self.pick(options)
        second = self.pick([o for o in options if o != first])
        return first, second

    def predicate(self, plural_: bool, animate: bool, complement: bool) -> list[str]:
        if not animate:
            if self.rng.random() < 0.15:
                a, b = self.two_different(INANIMATE_VPS)
                return [*self.agree(a, plural_), "and", *self.agree(b, plural_)]
            return self.agree(self.pick(INANIMATE_VPS), plural_)
        kind = self.weighted(ANIMATE_PREDICATES)
        if kind == "complement" and not complement:
            kind = "intransitive"
        if kind == "intransitive":
            return self.agree(self.pick(INTRANSITIVE_VPS), plural_)
        if kind == "transitive":
            return [*self.transitive(plural_), *self.any_noun_phrase()]
        if kind == "long":
            return self.agree(self.pick(LONG_VPS), plural_)
        if kind == "reflexive":
            return [self.pick(PAST_TRANSITIVE_VERBS), self.reflexive(plural_)]
        if kind in ("coordination", "long_coordination"):
            a, b = self.two_different(INTRANSITIVE_VPS if kind == "coordination" else LONG_VPS)
            return [*self.agree(a, plural_), "and", *self.agree(b, plural_)]
        that = ["that"] if self.rng.random() < 0.3 else []
        return [self.pick(BELIEF_VERBS), *that, *self.clause(complement=False)]

    def clause(self, complement: bool = True) -> list[str]:
        plural_ = self.number()
        animate = self.rng.random() < 0.75
        return [*self.subject(plural_, animate), *self.predicate(plural_, animate, complement)]

    # ------------------------------------------------------------------ NPIs
    def npi(self) -> list[str]:
        r = self.rng.random()
        head_det = self.pick(LICENSORS) if r < 0.4 else self.pick(NON_LICENSORS)
        animate = self.rng.random() < 0.6
        words = [head_det, *self.noun_phrase(True, animate)[1:]]
        if self.rng.random() < 0.5:  # relative clause, possibly with its own licensor
            inner = self.rng.random()
            if inner < 0.25:
                words += ["that", *self.noun_phrase(False), *self.agree(self.pick(TRANSITIVE_VERBS), False)]
            else:
                det = self.pick(LICENSORS) if inner < 0.5 else self.pick(NON_LICENSORS)
                embedded = [det, *self.noun_phrase(True)[1:]]
                words += ["that", *embedded, *self.agree(self.pick(TRANSITIVE_VERBS), True)]
        future = self.rng.random() < 0.5
        adverb = self.rng.random()
        if head_det in LICENSORS:
            middle = ["ever"] if adverb < 0.6 else (["always"] if adverb < 0.7 else [])
        else:
            middle = ["always"] if adverb < 0.15 else []
        past, fut = (ANIMATE_PAST, ANIMATE_FUTURE) if animate else (INANIMATE_PAST, INANIMATE_FUTURE)
        i = self.rng.randrange(len(past))
        return [*words, "will" if future else "have", *middle, *(fut[i] if future else past[i]).split(" ")]

    # ------------------------------------------------------------------ filler
    def filler(self) -> list[str]:
        kind = self.rng.randrange(8)
        plural_ = self.number()
        if kind == 0:
            where = [self.pick(("in", "at", "near")), "the", self.pick(PLACES)]
            return ["there", "are" if plural_ else "is", *self.noun_phrase(plural_), *where]
        if kind == 1:
            return [*self.noun_phrase(plural_), "were" if plural_ else "was", self.pick(ADJECTIVES), "yesterday"]
        if kind == 2:
            if self.rng.random() < 0.5:  # modal + bare (= plural) verb form
                verb = [plural_verb(self.pick(TRANSITIVE_VERBS)), *self.any_noun_phrase()]
            else:
                verb = [plural_verb(self.pick(("sleeps", "runs", "sings", "waits", "works")))]
            return [*self.noun_phrase(plural_), self.pick(("can", "will", "must")), *verb]
        if kind == 3:
            return ["yesterday", *self.noun_phrase(plural_), self.pick(PAST_TRANSITIVE_VERBS), *self.any_noun_phrase()]
        if kind == 4:
            thing = self.pick(("a book", "a letter", "a photo", "a record"))
            return [*self.noun_phrase(plural_), "gave", *self.noun_phrase(self.number()), *thing.split(" ")]
        if kind == 5:
            return [*self.simple_clause(), "and", *self.simple_clause()]
        if kind == 6:
            where = [self.pick(("in", "at", "near")), "the", self.pick(PLACES)]
            return [*self.noun_phrase(plural_), *where, *self.agree(self.pick(INTRANSITIVE_VPS), plural_)]
        adverb = self.pick(("often", "always"))
        return [*self.noun_phrase(plural_), adverb, *self.agree(self.pick(INTRANSITIVE_VPS), plural_)]

    def simple_clause(self) -> list[str]:
        plural_ = self.number()
        return [*self.noun_phrase(plural_), *self.agree(self.pick(INTRANSITIVE_VPS), plural_)]

    def sentence(self) -> str:
        kind = self.weighted(SENTENCE_MIXTURE)
        makers: dict[str, Callable[[], list[str]]] = {"agreement": self.clause, "npi": self.npi, "filler": self.filler}
        return " ".join(makers[kind]())


def generate_sentences(count: int, seed: int | str, exclude: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """``count`` random sentences of the toy grammar, the same for the same seed.

    Args:
        count: Sentences to return.
        seed: Seed of the one random stream every choice is drawn from (a string seed is
            hashed by ``random.Random`` with SHA-512, the same in every process).
        exclude: Sentences never to return (drawn again instead), e.g. :func:`tse_sentences`.

    Raises:
        UserInputError: ``count`` is negative.
    """
    if count < 0:
        raise UserInputError(f"sentence count {count} must be zero or more")
    grammar = _Grammar(random.Random(seed))
    out: list[str] = []
    while len(out) < count:
        s = grammar.sentence()
        if s not in exclude:
            out.append(s)
    return out


def corpus_description() -> dict[str, Any]:
    """What the corpus is made of, for the suite's provenance (``suite.json``)."""
    return {
        "generator": "dynamics.toy.corpus (random grammar; see its module docstring)",
        "sentence_mixture": dict(SENTENCE_MIXTURE),
        "subject_modifiers": dict(SUBJECT_MODIFIERS),
        "animate_predicates": dict(ANIMATE_PREDICATES),
        "singular_determiners": dict(SINGULAR_DETERMINERS),
        "plural_determiners": dict(PLURAL_DETERMINERS),
        "adjective_probability": ADJECTIVE_PROBABILITY,
        "lexicon": {
            "animate_nouns": len(ANIMATE_NOUNS),
            "inanimate_nouns": len(INANIMATE_NOUNS),
            "intransitive_vps": len(INTRANSITIVE_VPS),
            "transitive_verbs": len(TRANSITIVE_VERBS),
            "long_vps": len(LONG_VPS),
            "inanimate_vps": len(INANIMATE_VPS),
            "words": len(lexicon_words()),
        },
        "npi_rule": "ever follows have/will only when the first word is no or few",
        "format": "lower case, single spaces, no punctuation; sentences separated by <|endoftext|>",
    }
