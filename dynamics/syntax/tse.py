"""Targeted Syntactic Evaluation (Marvin & Linzen, 2018): the generator, export, loaders.

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

import json
import logging
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Literal

from dynamics.errors import DynamicsError, UserInputError
from dynamics.syntax.pairs import MinimalPair, check_names, stratified_sample

log = logging.getLogger(__name__)

TseData = dict[str, dict[str, list[tuple[str, ...]]]]

AGREEMENT_TERMINALS: dict[str, tuple[str, ...]] = {
    "D": ("the",), "C": ("that",), "IC": ("that",), "AND": ("and",),
    "MS": ("author", "pilot", "surgeon", "farmer", "manager", "customer", "officer",
           "teacher", "senator", "consultant"),
    "ES": ("guard", "chef", "architect", "skater", "dancer", "minister", "taxi driver",
           "assistant", "executive", "parent"),
    "IS": ("movie", "book", "game", "song", "picture", "painting", "novel", "poem", "show"),
    "MV": ("laughs", "swims", "smiles", "is tall", "is old", "is young", "is short"),
    "EV": ("likes", "admires", "hates", "loves"),
    "IV": ("is good", "is bad", "is new", "is popular", "is unpopular",
           "brings joy to people", "interests people"),
    "P": ("next to", "behind", "in front of", "near", "to the side of", "across from"),
    "IP": ("from", "by"),
    "BS": ("mechanic", "banker"),
    "BV": ("said", "thought", "knew"),
    "LMV": ("knows many different foreign languages", "likes to watch television shows",
            "is twenty three years old", "enjoys playing tennis with colleagues",
            "writes in a journal every day"),
    "RMV": ("hurt", "injured", "congratulated", "embarrassed", "disguised", "hated",
            "doubted"),
    "ANPHR": ("himself", "herself"),
}

NPI_TERMINALS: dict[str, tuple[str, ...]] = {
    "NO": ("no", "few"), "MOST": ("most", "many"), "SD": ("the", "some"),
    "D": ("the",), "C": ("that",),
    "MS": tuple(w + "s" for w in AGREEMENT_TERMINALS["MS"]),
    "ES": ("guards", "chefs", "architects", "skaters", "dancers", "ministers", "drivers",
           "assistants", "executives", "parents"),
    "IS": tuple(w + "s" for w in AGREEMENT_TERMINALS["IS"]),
    "EV": ("like", "admire", "hate", "love"),
    "PASTAUX": ("have",), "FUTAUX": ("will",), "NPI": ("ever",),
    "APMV": ("been popular", "been famous", "had children"),
    "AFMV": ("be popular", "be famous", "have children"),
    "IPMV": ("been seen", "been appreciated", "been ignored", "gotten old"),
    "IFMV": ("be seen", "be appreciated", "be ignored", "get old"),
}

# case: (preterminals, (subject positions, verb/anaphor positions), attractor positions)
AGREEMENT_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[tuple[int, ...], tuple[int, ...]],
                                     tuple[int, ...]]] = {
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
    "obj_rel_no_comp_across_inanim": (("D", "IS", "D", "ES", "EV", "IV"), ((1,), (5,)),
                                      (3, 4)),
    "obj_rel_no_comp_within_inanim": (("D", "IS", "D", "ES", "EV", "IV"), ((3,), (4,)),
                                      (1, 5)),
    "simple_reflexives": (("D", "MS", "RMV", "ANPHR"), ((1,), (3,)), ()),
    "reflexive_sent_comp": (("D", "BS", "BV", "D", "MS", "RMV", "ANPHR"), ((4,), (6,)), (1,)),
    "reflexives_across": (("D", "MS", "C", "D", "ES", "EV", "RMV", "ANPHR"), ((1,), (7,)),
                          (4, 5)),
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
        or phrase in terminals["D"] or phrase in terminals["C"]
        or f"{first}s {tail}" in prefix or f"{first[:-1]} {tail}" in prefix
        or (phrase.startswith("is") and "are " + phrase[3:] in prefix)
        or (phrase.startswith("are") and "is " + phrase[4:] in prefix))


def _expand(slots: Sequence[Sequence[str]], terminals: Mapping[str, tuple[str, ...]],
            keep_repeats: bool = False) -> list[str]:
    """Every sentence of the slots' word lists, first slot slowest, filtered unless told."""
    sentences = []
    for words in product(*slots[:-1]):
        prefix = " ".join(words) + " "
        sentences.extend(prefix + last for last in slots[-1]
                         if keep_repeats or _keeps_last(last, prefix, terminals))
    return sentences


def _switched(slots: list[tuple[str, ...]], positions: Iterable[int],
              preterminals: Sequence[str]) -> list[tuple[str, ...]]:
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
            subcases[name] = tuple(zip(_expand(good, AGREEMENT_TERMINALS),
                                       _expand(bad, AGREEMENT_TERMINALS), strict=True))
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
            intrusive = [_move_licensor(s) for s in
                         _expand(_npi_slots(pre, "NO"), NPI_TERMINALS, keep_repeats=True)]
        subcases[tense] = tuple(zip(good, intrusive, bad, strict=True))
    return subcases


@lru_cache(maxsize=None)
def _generated_case(case: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    return _npi_case(case) if case in NPI_TEMPLATES else _agreement_case(case)


def check_cases(cases: Iterable[str] | None) -> tuple[str, ...]:
    """Validate case names (``None`` = all 22), keeping the caller's order.

    Raises:
        UserInputError: An unknown case name.
    """
    return check_names(cases, TSE_CASES, lambda case: (
        f"unknown TSE case {case!r}; expected one of {', '.join(TSE_CASES)}"))


def generate_tse(cases: Iterable[str] | None = None) -> TseData:
    """Generate the Marvin & Linzen (2018) benchmark.

    Args:
        cases: Case names to generate, default all 22 (:data:`TSE_CASES`).

    Returns:
        ``{case: {sub-case: [(good, bad) | (good, intrusive, bad), ...]}}``, a fresh copy
        the caller may modify; the same call always returns the same data, in order.
    """
    return {case: {sub: list(items) for sub, items in _generated_case(case).items()}
            for case in check_cases(cases)}


def flatten_tse(data: Mapping[str, Mapping[str, Sequence[Sequence[str]]]]) -> list[MinimalPair]:
    """The flat view of TSE data: one :class:`MinimalPair` per item, in order."""
    pairs = []
    for case, subcases in data.items():
        for subcase, items in subcases.items():
            for i, item in enumerate(items):
                intrusive = item[1] if len(item) == 3 else None
                pairs.append(MinimalPair(good=item[0], bad=item[-1], case=case,
                                         subcase=subcase, pair_id=i, intrusive=intrusive))
    return pairs


def tse_pairs(cases: Iterable[str] | None = None) -> list[MinimalPair]:
    """The generated benchmark as a flat list of :class:`MinimalPair` (NPI keeps intrusive)."""
    return flatten_tse(generate_tse(cases))


def sample_tse(data: TseData | Sequence[MinimalPair], per_case: int,
               seed: int = 0) -> TseData | list[MinimalPair]:
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
    return [pair for subcases in sample.values() for items in subcases.values()
            for pair in items]


# --------------------------------------------------------------------------- export


def _case_bytes(case: str, format: str) -> bytes:
    subcases = _generated_case(case)
    if format == "pickle":
        return pickle.dumps({sub: list(items) for sub, items in subcases.items()}, protocol=4)
    lines = []
    for subcase, items in subcases.items():
        for item in items:
            record = {"sentence_good": item[0], "sentence_bad": item[-1]}
            if len(item) == 3:
                record["sentence_intrusive"] = item[1]
            record |= {"case": case, "subcase": subcase}
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


def export_tse(directory: str | os.PathLike, format: Literal["pickle", "jsonl"] = "pickle",
               overwrite: bool = False, cases: Iterable[str] | None = None) -> list[Path]:
    """Write the generated benchmark, one file per case.

    ``pickle`` writes the original layout, ``<case>.pickle`` holding ``{sub-case: [tuples]}``;
    ``jsonl`` writes ``<case>.jsonl`` with one item per line (``sentence_good``,
    ``sentence_bad``, ``sentence_intrusive`` for NPI items, ``case``, ``subcase``). An
    existing file with the same content is left as it is; nothing is written when any
    existing file differs, unless ``overwrite``.

    Args:
        directory: Output folder, created when missing.
        format: ``"pickle"`` or ``"jsonl"``.
        overwrite: Replace existing files whose content differs.
        cases: Cases to write, default all 22.

    Returns:
        The paths of the case files, in case order.

    Raises:
        UserInputError: Unknown format or case, or an existing different file without
            ``overwrite``.
    """
    if format not in ("pickle", "jsonl"):
        raise UserInputError(f"unknown TSE export format {format!r}; expected pickle or jsonl")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserInputError(f"TSE export target {directory} exists and is not a directory")
    contents = {directory / f"{case}.{format}": _case_bytes(case, format)
                for case in check_cases(cases)}
    changed = {path: data for path, data in contents.items()
               if not path.is_file() or path.read_bytes() != data}
    if not overwrite:
        for path in changed:
            if path.exists():
                raise UserInputError(f"{path} already exists with different content; pass "
                                     "overwrite=True (--overwrite) to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    for path, data in changed.items():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    log.info("wrote %d of %d TSE %s files to %s", len(changed), len(contents), format,
             directory)
    return list(contents)


# --------------------------------------------------------------------------- loaders


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and strings only: a TSE pickle names no class, so any
    global a file asks for is refused instead of being imported and run."""

    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def _case_files(directory: str | os.PathLike, suffix: str, what: str) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"TSE directory {directory} does not exist or is not a directory")
    files = sorted(directory.glob(f"*{suffix}"), key=_case_order)
    if not files:
        raise UserInputError(f"no {what} files (*{suffix}) in {directory}")
    return files


def _case_name(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_all")] if stem.endswith("_all") else stem


def _case_order(path: Path) -> tuple[int, str]:
    case = _case_name(path)
    return (TSE_CASES.index(case) if case in TSE_CASES else len(TSE_CASES), path.name)


def _check_item(item: object, where: str) -> tuple[str, ...]:
    if (not isinstance(item, (tuple, list)) or len(item) not in (2, 3)
            or not all(isinstance(s, str) for s in item)):
        raise DynamicsError(f"{where}: expected (good, bad) or (good, intrusive, bad) strings, "
                            f"got {str(item)[:80]!r}")
    return tuple(item)


def load_tse_pickles(directory: str | os.PathLike) -> TseData:
    """Read a directory of the original generator's ``<case>.pickle`` files.

    Only plain containers and strings are unpickled; a file that names any class is
    refused.

    Returns:
        ``{case: {sub-case: [tuples]}}``, known cases in :data:`TSE_CASES` order first.

    Raises:
        UserInputError: The directory is missing or holds no ``.pickle`` file.
        DynamicsError: A file is not a TSE pickle.
    """
    data: TseData = {}
    for path in _case_files(directory, ".pickle", "TSE pickle"):
        try:
            with path.open("rb") as f:
                content = _DataOnlyUnpickler(f, encoding="utf-8").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, UnicodeDecodeError) as exc:
            raise DynamicsError(f"{path} is not a readable TSE pickle: {exc}") from None
        if not isinstance(content, dict) or not all(
                isinstance(k, str) and isinstance(v, list) for k, v in content.items()):
            raise DynamicsError(f"{path}: expected a dict sub-case -> list of tuples, "
                                f"got {type(content).__name__}")
        data[path.stem] = {sub: [_check_item(item, f"{path} [{sub}]") for item in items]
                           for sub, items in content.items()}
    return data


def load_tse_jsonl(path_or_dir: str | os.PathLike) -> TseData:
    """Read TSE JSONL: this module's export or the refining-TSE variant.

    Each line needs ``sentence_good`` and ``sentence_bad``, and a sub-case in ``subcase``
    or ``label``; ``sentence_intrusive`` makes a triple. The case is the line's ``case``
    field, else the file name (``<case>_all.jsonl`` or ``<case>.jsonl``).

    Args:
        path_or_dir: One ``.jsonl`` file or a directory of them.

    Returns:
        ``{case: {sub-case: [tuples]}}``, known cases in :data:`TSE_CASES` order first.

    Raises:
        UserInputError: The path is missing or the directory holds no ``.jsonl`` file.
        DynamicsError: A line is not JSON or lacks a required field.
    """
    path = Path(path_or_dir)
    if path.is_file():
        files = [path]
    else:
        files = _case_files(path, ".jsonl", "TSE JSONL")
    data: TseData = {}
    for file in files:
        with file.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    case, subcase, item = _jsonl_item(line, file, number)
                    data.setdefault(case, {}).setdefault(subcase, []).append(item)
    return data


#: The refining-TSE reader is the general JSONL reader (``label`` names the sub-case).
load_refining_tse_jsonl = load_tse_jsonl


def _jsonl_item(line: str, file: Path, number: int) -> tuple[str, str, tuple[str, ...]]:
    where = f"{file}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DynamicsError(f"{where}: not a JSON line ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DynamicsError(f"{where}: expected a JSON object")
    missing = [k for k in ("sentence_good", "sentence_bad") if k not in record]
    if "subcase" not in record and "label" not in record:
        missing.append("label")
    if missing:
        raise DynamicsError(f"{where}: missing field(s) {', '.join(missing)}")
    subcase = str(record.get("subcase", record.get("label")))
    sentences = [record["sentence_good"], record["sentence_bad"]]
    if "sentence_intrusive" in record:
        sentences.insert(1, record["sentence_intrusive"])
    return str(record.get("case", _case_name(file))), subcase, _check_item(sentences, where)
