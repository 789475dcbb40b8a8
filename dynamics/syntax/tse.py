"""Targeted Syntactic Evaluation (Marvin & Linzen, 2018): the generator and sampling.

Export and loaders of the original files live in :mod:`dynamics.syntax.tse_io`.

The benchmark is fully determined by templates and word lists, so it is generated here
rather than downloaded (``../shared/specs/tse.md``). The generator follows the original
LM_syneval one (``make_templates.py``): for each template every combination of its word
lists is expanded in order (the first slot varies slowest), the ungrammatical sentence
flips the number of the verb or anaphor only, and a sentence whose last phrase repeats an
earlier one (also up to number) is dropped, which is what makes the coordination cases
pair two *different* verb phrases. The result is 22 cases and 158,084 items.

Layout everywhere in this module (the original pickles' layout)::

    {case: {sub-case: [(good, bad), ...]}}          # agreement cases
    {case: {"past" | "future": [(good, intrusive, bad), ...]}}   # NPI cases
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from itertools import product

from dynamics.syntax.pairs import MinimalPair, check_names, stratified_sample

log = logging.getLogger(__name__)

TseData = dict[str, dict[str, list[tuple[str, ...]]]]

AGREEMENT_TERMINALS: dict[str, tuple[str, ...]] = {
    "D": ("the",),
    "C": ("that",),
    "IC": ("that",),
    "AND": ("and",),
    "MS": (
        "author",
        "pilot",
        "surgeon",
        "farmer",
        "manager",
        "customer",
        "officer",
        "teacher",
        "senator",
        "consultant",
    ),
    "ES": (
        "guard",
        "chef",
        "architect",
        "skater",
        "dancer",
        "minister",
        "taxi driver",
        "assistant",
        "executive",
        "parent",
    ),
    "IS": ("movie", "book", "game", "song", "picture", "painting", "novel", "poem", "show"),
    "MV": ("laughs", "swims", "smiles", "is tall", "is old", "is young", "is short"),
    "EV": ("likes", "admires", "hates", "loves"),
    "IV": ("is good", "is bad", "is new", "is popular", "is unpopular", "brings joy to people", "interests people"),
    "P": ("next to", "behind", "in front of", "near", "to the side of", "across from"),
    "IP": ("from", "by"),
    "BS": ("mechanic", "banker"),
    "BV": ("said", "thought", "knew"),
    "LMV": (
        "knows many different foreign languages",
        "likes to watch television shows",
        "is twenty three years old",
        "enjoys playing tennis with colleagues",
        "writes in a journal every day",
    ),
    "RMV": ("hurt", "injured", "congratulated", "embarrassed", "disguised", "hated", "doubted"),
    "ANPHR": ("himself", "herself"),
}

NPI_TERMINALS: dict[str, tuple[str, ...]] = {
    "NO": ("no", "few"),
    "MOST": ("most", "many"),
    "SD": ("the", "some"),
    "D": ("the",),
    "C": ("that",),
    "MS": tuple(w + "s" for w in AGREEMENT_TERMINALS["MS"]),
    "ES": (
        "guards",
        "chefs",
        "architects",
        "skaters",
        "dancers",
        "ministers",
        "drivers",
        "assistants",
        "executives",
        "parents",
    ),
    "IS": tuple(w + "s" for w in AGREEMENT_TERMINALS["IS"]),
    "EV": ("like", "admire", "hate", "love"),
    "PASTAUX": ("have",),
    "FUTAUX": ("will",),
    "NPI": ("ever",),
    "APMV": ("been popular", "been famous", "had children"),
    "AFMV": ("be popular", "be famous", "have children"),
    "IPMV": ("been seen", "been appreciated", "been ignored", "gotten old"),
    "IFMV": ("be seen", "be appreciated", "be ignored", "get old"),
}

# case: (preterminals, (subject positions, verb/anaphor positions), attractor positions)
AGREEMENT_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[tuple[int, ...], tuple[int, ...]], tuple[int, ...]]] = {
    "simple_agrmt": (("D", "MS", "MV"), ((1,), (2,)), ()),
    "sent_comp": (("D", "BS", "BV", "D", "MS", "MV"), ((4,), (5,)), (1,)),
    "vp_coord": (("D", "MS", "MV", "AND", "MV"), ((1, 2), (4,)), ()),
    "long_vp_coord": (("D", "MS", "LMV", "AND", "LMV"), ((1, 2), (4,)), ()),
    "prep_anim": (("D", "MS", "P", "D", "ES", "MV"), ((1,), (5,)), (4,)),
    "prep_inanim": (("D", "IS", "IP", "D", "ES", "IV"), ((1,), (5,)), (4,)),
    "subj_rel": (("D", "MS", "C", "EV", "D", "ES", "MV"), ((1, 3), (6,)), (5,)),
    "obj_rel_across_anim": (("D", "MS", "C", "D", "ES", "EV", "MV"), ((1,), (6,)), (4, 5)),
    "obj_rel_within_anim": (("D", "MS", "C", "D", "ES", "EV", "MV"), ((4,), (5,)), (1, 6)),
    "obj_rel_across_inanim": (("D", "IS", "IC", "D", "ES", "EV", "IV"), ((1,), (6,)), (4, 5)),
    "obj_rel_within_inanim": (("D", "IS", "IC", "D", "ES", "EV", "IV"), ((4,), (5,)), (1, 6)),
    "obj_rel_no_comp_across_anim": (("D", "MS", "D", "ES", "EV", "MV"), ((1,), (5,)), (3, 4)),
    "obj_rel_no_comp_within_anim": (("D", "MS", "D", "ES", "EV", "MV"), ((3,), (4,)), (1, 5)),
    "obj_rel_no_comp_across_inanim": (("D", "IS", "D", "ES", "EV", "IV"), ((1,), (5,)), (3, 4)),
    "obj_rel_no_comp_within_inanim": (("D", "IS", "D", "ES", "EV", "IV"), ((3,), (4,)), (1, 5)),
    "simple_reflexives": (("D", "MS", "RMV", "ANPHR"), ((1,), (3,)), ()),
    "reflexive_sent_comp": (("D", "BS", "BV", "D", "MS", "RMV", "ANPHR"), ((4,), (6,)), (1,)),
    "reflexives_across": (("D", "MS", "C", "D", "ES", "EV", "RMV", "ANPHR"), ((1,), (7,)), (4, 5)),
}

NPI_TEMPLATES: dict[str, tuple[str, ...]] = {
    "simple_npi_anim": ("NO", "MS", "PASTAUX", "NPI", "APMV"),
    "simple_npi_inanim": ("NO", "IS", "PASTAUX", "NPI", "IPMV"),
    "npi_across_anim": ("NO", "MS", "C", "D", "ES", "EV", "PASTAUX", "NPI", "APMV"),
    "npi_across_inanim": ("NO", "IS", "C", "D", "ES", "EV", "PASTAUX", "NPI", "IPMV"),
}

#: The 22 cases in the order of the specification's tables (the paper's order).
TSE_CASES: tuple[str, ...] = (*AGREEMENT_TEMPLATES, *NPI_TEMPLATES)
NPI_CASES: tuple[str, ...] = tuple(NPI_TEMPLATES)
_FUTURE = {"PASTAUX": "FUTAUX", "APMV": "AFMV", "IPMV": "IFMV"}


def switch_number(phrase: str, verb: bool) -> str:
    """Singular -> plural: ``is X`` -> ``are X``; a verb phrase drops its first word's
    final ``s``; ``himself``/``herself`` -> ``themselves``; anything else gains an ``s``."""
    words = phrase.split(" ")
    if words[0] == "is":
        return " ".join(["are", *words[1:]])
    if verb:
        return " ".join([words[0][:-1], *words[1:]])
    if phrase.endswith("self"):
        return "themselves"
    return phrase + "s"


def _keeps_last(phrase: str, prefix: str, terminals: Mapping[str, tuple[str, ...]]) -> bool:
    """The original generator's repetition filter on a sentence's last phrase.

    The phrase is dropped when it occurs (as a substring) in the words before it, when it
    occurs there with the other number, or when it is a determiner or complementizer.
    """
    first, *rest = phrase.split(" ")
    tail = " ".join(rest)
    return not (
        phrase in prefix
        or phrase in terminals["D"]
        or phrase in terminals["C"]
        or f"{first}s {tail}" in prefix
        or f"{first[:-1]} {tail}" in prefix
        or (phrase.startswith("is") and "are " + phrase[3:] in prefix)
        or (phrase.startswith("are") and "is " + phrase[4:] in prefix)
    )


def _expand(
    slots: Sequence[Sequence[str]], terminals: Mapping[str, tuple[str, ...]], keep_repeats: bool = False
) -> list[str]:
    """Every sentence of the slots' word lists, first slot slowest, filtered unless told."""
    sentences: list[str] = []
    for words in product(*slots[:-1]):
        prefix = " ".join(words) + " "
        sentences.extend(prefix + last for last in slots[-1] if keep_repeats or _keeps_last(last, prefix, terminals))
    return sentences


def _switched(
    slots: list[tuple[str, ...]], positions: Iterable[int], preterminals: Sequence[str]
) -> list[tuple[str, ...]]:
    new = list(slots)
    for i in positions:
        new[i] = tuple(switch_number(w, preterminals[i].endswith("V")) for w in new[i])
    return new


def _agreement_case(case: str) -> dict[str, tuple[tuple[str, str], ...]]:
    preterminals, (subject, target), attractors = AGREEMENT_TEMPLATES[case]
    base = [AGREEMENT_TERMINALS[p] for p in preterminals]
    matched = "_".join(preterminals[i] for i in subject + target)
    varied = "_".join(preterminals[i] for i in attractors)
    subcases = {}
    for number in ("sing", "plur"):
        for attractor in ("sing", "plur") if attractors else ("",):
            slots = _switched(base, attractors, preterminals) if attractor == "plur" else base
            if number == "sing":
                good, bad = slots, _switched(slots, target, preterminals)
            else:
                good = _switched(slots, subject + target, preterminals)
                bad = _switched(slots, subject, preterminals)
            name = f"{number}_{matched}" + (f"_{attractor}_{varied}" if attractors else "")
            subcases[name] = tuple(
                zip(_expand(good, AGREEMENT_TERMINALS), _expand(bad, AGREEMENT_TERMINALS), strict=True)
            )
    return subcases


def _move_licensor(sentence: str) -> str:
    """``no X that the Y ...`` -> ``the X that no Y ...`` (the across-case intrusive)."""
    words = sentence.split(" ")
    return " ".join([words[3], *words[1:3], words[0], *words[4:]])


def _npi_slots(preterminals: Sequence[str], licensor: str) -> list[tuple[str, ...]]:
    return [NPI_TERMINALS[licensor if p == "NO" else p] for p in preterminals]


def _npi_case(case: str) -> dict[str, tuple[tuple[str, str, str], ...]]:
    past = NPI_TEMPLATES[case]
    subcases = {}
    for tense, pre in (("past", past), ("future", [_FUTURE.get(p, p) for p in past])):
        good = _expand(_npi_slots(pre, "NO"), NPI_TERMINALS)
        bad = _expand(_npi_slots(pre, "MOST"), NPI_TERMINALS)
        if case.startswith("simple"):  # intrusive: a determiner that licenses nothing
            intrusive = _expand(_npi_slots(pre, "SD"), NPI_TERMINALS)
        else:  # intrusive: the licensor inside the relative clause
            intrusive = [_move_licensor(s) for s in _expand(_npi_slots(pre, "NO"), NPI_TERMINALS, keep_repeats=True)]
        subcases[tense] = tuple(zip(good, intrusive, bad, strict=True))
    return subcases


@cache
def generated_case(case: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    return _npi_case(case) if case in NPI_TEMPLATES else _agreement_case(case)  # type: ignore[return-value]


def check_cases(cases: Iterable[str] | None) -> tuple[str, ...]:
    """Validate case names (``None`` = all 22), keeping the caller's order.

    Raises:
        UserInputError: An unknown case name.
    """
    return check_names(
        cases, TSE_CASES, lambda case: f"unknown TSE case {case!r}; expected one of {', '.join(TSE_CASES)}"
    )


def generate_tse(cases: Iterable[str] | None = None) -> TseData:
    """Generate the Marvin & Linzen (2018) benchmark.

    Args:
        cases: Case names to generate, default all 22 (:data:`TSE_CASES`).

    Returns:
        ``{case: {sub-case: [(good, bad) | (good, intrusive, bad), ...]}}``, a fresh copy
        the caller may modify; the same call always returns the same data, in order.
    """
    return {case: {sub: list(items) for sub, items in generated_case(case).items()} for case in check_cases(cases)}


def flatten_tse(data: Mapping[str, Mapping[str, Sequence[Sequence[str]]]]) -> list[MinimalPair]:
    """The flat view of TSE data: one :class:`MinimalPair` per item, in order."""
    pairs = []
    for case, subcases in data.items():
        for subcase, items in subcases.items():
            for i, item in enumerate(items):
                intrusive = item[1] if len(item) == 3 else None
                pairs.append(
                    MinimalPair(good=item[0], bad=item[-1], case=case, subcase=subcase, pair_id=i, intrusive=intrusive)
                )
    return pairs


def tse_pairs(cases: Iterable[str] | None = None) -> list[MinimalPair]:
    """The generated benchmark as a flat list of :class:`MinimalPair` (NPI keeps intrusive)."""
    return flatten_tse(generate_tse(cases))


def sample_tse(data: TseData | Sequence[MinimalPair], per_case: int, seed: int = 0) -> TseData | list[MinimalPair]:
    """Deterministic stratified sample: ``per_case`` items per case, even over sub-cases.

    Each case's draws are split over its sub-cases as evenly as their sizes allow (the
    remainder goes to a seeded choice of sub-cases), then drawn without replacement; items
    keep their original order. A case smaller than ``per_case`` is kept whole. A case's
    draw depends only on ``seed`` and its name, so adding cases never changes it.

    Args:
        data: TSE data in the pickle layout, or a flat list of :class:`MinimalPair`.
        per_case: Items to keep per case.
        seed: Seed of every random choice.

    Returns:
        The sample in the same form as ``data``.

    Raises:
        UserInputError: ``per_case`` is not a positive integer.
    """
    if isinstance(data, Mapping):
        return stratified_sample(data, per_case, seed)
    grouped: dict[str, dict[str, list[MinimalPair]]] = {}
    for pair in data:
        grouped.setdefault(pair.case, {}).setdefault(pair.subcase, []).append(pair)
    sample = stratified_sample(grouped, per_case, seed)
    return [pair for subcases in sample.values() for items in subcases.values() for pair in items]
