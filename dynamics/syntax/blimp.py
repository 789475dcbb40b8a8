"""BLiMP (Warstadt et al., 2020): 67 paradigms of 1,000 minimal pairs, and their accuracy.

Two sources give the same records: the Hub dataset ``nyu-mll/blimp`` (one configuration per
paradigm, split ``train``, pair id in ``pair_id``) and a directory of the release's
``<paradigm>.jsonl`` files (pair id in ``pairID``). Both become :class:`MinimalPair` records
whose ``case`` is the paradigm (the ``UID`` field).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dynamics.errors import DynamicsError, UserInputError
from dynamics.syntax.hub_data import HubDataUnavailable, check_hub_reachable, note_connection_failure
from dynamics.syntax.pairs import MinimalPair, check_names, stratified_sample

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/blimp"

#: The 67 paradigms (``UID``), in the order of the release's file names.
BLIMP_PARADIGMS: tuple[str, ...] = (
    "adjunct_island",
    "anaphor_gender_agreement",
    "anaphor_number_agreement",
    "animate_subject_passive",
    "animate_subject_trans",
    "causative",
    "complex_NP_island",
    "coordinate_structure_constraint_complex_left_branch",
    "coordinate_structure_constraint_object_extraction",
    "determiner_noun_agreement_1",
    "determiner_noun_agreement_2",
    "determiner_noun_agreement_irregular_1",
    "determiner_noun_agreement_irregular_2",
    "determiner_noun_agreement_with_adj_2",
    "determiner_noun_agreement_with_adj_irregular_1",
    "determiner_noun_agreement_with_adj_irregular_2",
    "determiner_noun_agreement_with_adjective_1",
    "distractor_agreement_relational_noun",
    "distractor_agreement_relative_clause",
    "drop_argument",
    "ellipsis_n_bar_1",
    "ellipsis_n_bar_2",
    "existential_there_object_raising",
    "existential_there_quantifiers_1",
    "existential_there_quantifiers_2",
    "existential_there_subject_raising",
    "expletive_it_object_raising",
    "inchoative",
    "intransitive",
    "irregular_past_participle_adjectives",
    "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1",
    "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question",
    "left_branch_island_simple_question",
    "matrix_question_npi_licensor_present",
    "npi_present_1",
    "npi_present_2",
    "only_npi_licensor_present",
    "only_npi_scope",
    "passive_1",
    "passive_2",
    "principle_A_c_command",
    "principle_A_case_1",
    "principle_A_case_2",
    "principle_A_domain_1",
    "principle_A_domain_2",
    "principle_A_domain_3",
    "principle_A_reconstruction",
    "regular_plural_subject_verb_agreement_1",
    "regular_plural_subject_verb_agreement_2",
    "sentential_negation_npi_licensor_present",
    "sentential_negation_npi_scope",
    "sentential_subject_island",
    "superlative_quantifiers_1",
    "superlative_quantifiers_2",
    "tough_vs_raising_1",
    "tough_vs_raising_2",
    "transitive",
    "wh_island",
    "wh_questions_object_gap",
    "wh_questions_subject_gap",
    "wh_questions_subject_gap_long_distance",
    "wh_vs_that_no_gap",
    "wh_vs_that_no_gap_long_distance",
    "wh_vs_that_with_gap",
    "wh_vs_that_with_gap_long_distance",
)

_FIELDS = ("sentence_good", "sentence_bad", "UID", "linguistics_term", "field")


def check_paradigms(paradigms: Iterable[str] | None) -> tuple[str, ...]:
    """Validate paradigm names (``None`` = all 67), keeping the caller's order.

    Raises:
        UserInputError: An unknown paradigm.
    """
    return check_names(
        paradigms,
        BLIMP_PARADIGMS,
        lambda name: (
            f"unknown BLiMP paradigm {name!r}; expected one of the 67 "
            f"UIDs such as {BLIMP_PARADIGMS[0]!r} (see BLIMP_PARADIGMS)"
        ),
    )


def parse_paradigms(spec: str) -> tuple[str, ...]:
    """``--blimp-paradigms``: ``all``, or paradigm names separated by commas (spaces around them ignored),
    checked (:func:`check_paradigms`); the one parser of the option for every command."""
    names = None if spec.strip() == "all" else [name.strip() for name in spec.split(",") if name.strip()]
    if names == []:
        raise UserInputError(f"--blimp-paradigms {spec!r}: expected all or comma-separated BLiMP paradigm names")
    return check_paradigms(names)


def _pair(record: object, paradigm: str, where: str, error: type[DynamicsError]) -> MinimalPair:
    """One record as a pair; ``error`` (a user's file: UserInputError) names ``where`` and what is accepted."""
    if not isinstance(record, Mapping):
        raise error(f"{where}: a {type(record).__name__}, expected a JSON object with the fields {', '.join(_FIELDS)}")
    missing = [k for k in _FIELDS if k not in record]
    pair_id = record.get("pair_id", record.get("pairID"))
    if pair_id is None:
        missing.append("pairID")
    if missing:
        raise error(f"{where}: missing BLiMP field(s) {', '.join(missing)}")
    if record["UID"] != paradigm:
        raise error(f"{where}: UID {record['UID']!r} differs from paradigm {paradigm!r}")
    for name in ("sentence_good", "sentence_bad"):
        if not isinstance(record[name], str) or not record[name].strip():  # scored as a loss, silently
            raise error(f"{where}: {name} {record[name]!r}: expected a non-empty sentence")
    if isinstance(pair_id, bool) or not str(pair_id).strip().isdigit():
        raise error(f"{where}: pairID {pair_id!r}: expected a whole number such as 0 or '17'")
    return MinimalPair(
        good=record["sentence_good"],
        bad=record["sentence_bad"],
        case=paradigm,
        pair_id=int(pair_id),
        linguistics_term=record["linguistics_term"],
        field=record["field"],
    )


def _from_directory(directory: Path, paradigm: str) -> list[MinimalPair]:
    path = directory / f"{paradigm}.jsonl"
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        raise UserInputError(
            f"BLiMP file {path} not found; the directory must hold the release's <paradigm>.jsonl files"
        )
    return list(_read_paradigm_file(str(path), paradigm, stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=128)
def _read_paradigm_file(path: str, paradigm: str, size: int, mtime_ns: int) -> tuple[MinimalPair, ...]:
    """The pairs of one release file, every defect a :class:`UserInputError` naming ``path:line``.

    Cached by size and modification time: the planner's check and the load read each file once.
    """
    del size, mtime_ns  # the cache key: a changed file is read again
    pairs = []
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                pairs += _parse_line(raw, paradigm, f"{path}:{number}")
    except OSError as exc:
        raise UserInputError(f"BLiMP file {path}: cannot be read ({exc.strerror or exc})") from None
    if not pairs:  # else it would be a paradigm of no pairs: accuracy NaN, and no line said why
        raise UserInputError(
            f"{path}: no BLiMP pairs (the file is empty); expected one JSON object per line, "
            "or leave the paradigm out with --blimp-paradigms"
        )
    return tuple(pairs)


def _parse_line(raw: bytes, paradigm: str, where: str) -> list[MinimalPair]:
    """The pair on one line of a release file (none for a blank line)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(
            f"{where}: not UTF-8 text (byte {exc.start + 1} of the line); expected UTF-8 JSON lines"
        ) from None
    if not line.strip():
        return []
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{where}: not a JSON line ({exc.msg}); expected one JSON object per line") from None
    return [_pair(record, paradigm, where, UserInputError)]


def check_blimp_source(source: str, paradigms: Sequence[str]) -> None:
    """Check a ``--blimp`` directory (every paradigm's file, every line of it) before any work.

    ``hub`` is checked when it is loaded. Raises :class:`UserInputError`: a missing directory or
    paradigm file, or a defect in a file (named ``path:line``).
    """
    if source == "hub":
        return
    directory = Path(source)
    if not directory.is_dir():
        raise UserInputError(f"--blimp {source!r} is neither hub nor a directory of <paradigm>.jsonl files")
    missing = [p for p in paradigms if not (directory / f"{p}.jsonl").is_file()]
    if missing:
        raise UserInputError(
            f"--blimp {source!r} has no {missing[0]}.jsonl ({len(missing)} of {len(paradigms)} "
            "paradigms missing); choose them with --blimp-paradigms"
        )
    for paradigm in paradigms:
        _from_directory(directory, paradigm)


def hub_blimp_skip_reason(source: str, model_kind: str) -> str | None:
    """Why ``--blimp hub`` is not asked of the Hub for a model of ``model_kind`` (None: it is).

    A local suite (the toy organism, a suite trained or saved here) is measured offline: its
    scan or study makes no Hub request for BLiMP unless ``--blimp DIR`` names a local copy.
    """
    if source == "hub" and model_kind == "local_suite":
        return (
            "a local suite is measured offline; pass --blimp DIR (the release's <paradigm>.jsonl files) to include it"
        )
    return None


def _from_hub(paradigm: str, cache_dir: str | os.PathLike | None) -> list[MinimalPair]:
    import datasets  # imported here: slow, and only this source needs it

    where = f"BLiMP paradigm {paradigm!r} from the Hub ({HUB_DATASET})"
    try:
        rows = datasets.load_dataset(HUB_DATASET, paradigm, split="train", cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        note_connection_failure(exc)
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise HubDataUnavailable(
            f"could not load {where}: {reason}; pass a local directory of the release .jsonl files instead"
        ) from None
    return [_pair(row, paradigm, f"{HUB_DATASET}/{paradigm} row {i}", DynamicsError) for i, row in enumerate(rows)]


def load_blimp(
    source: str | os.PathLike = "hub",
    paradigms: Iterable[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[MinimalPair]:
    """Load BLiMP minimal pairs.

    Args:
        source: ``"hub"`` for ``nyu-mll/blimp`` through ``datasets``, or a directory of the
            release's ``<paradigm>.jsonl`` files.
        paradigms: Paradigm UIDs to load, default all 67 (:data:`BLIMP_PARADIGMS`).
        cache_dir: ``datasets`` cache folder for the Hub source (default: its own).

    Returns:
        Pairs in paradigm order then file order; ``case`` is the paradigm, ``pair_id`` the
        pair id, ``linguistics_term`` and ``field`` as in the data.

    Raises:
        UserInputError: Unknown paradigm, a source that is neither ``"hub"`` nor a
            directory, a missing paradigm file, or a defect in one (invalid UTF-8, a line
            that is not a JSON object, a missing field, an empty sentence, an empty file),
            named ``path:line``.
        HubDataUnavailable: The Hub is offline or cannot be reached (tried once per run).
        DynamicsError: A Hub record lacks a field.
    """
    paradigms = check_paradigms(paradigms)
    if str(source) == "hub":
        if paradigms:  # one request without retries first: a run that finds no network gives up at once
            check_hub_reachable(f"BLiMP from the Hub ({HUB_DATASET})")
        load = lambda name: _from_hub(name, cache_dir)  # noqa: E731
    else:
        directory = Path(source)
        if not directory.is_dir():
            raise UserInputError(
                f"BLiMP source {str(source)!r} is neither 'hub' nor a directory of the release .jsonl files"
            )
        load = lambda name: _from_directory(directory, name)  # noqa: E731
    pairs = [pair for name in paradigms for pair in load(name)]
    log.info("loaded %d BLiMP pairs from %d paradigms (%s)", len(pairs), len(paradigms), source)
    return pairs


@dataclass(frozen=True)
class BlimpAccuracy:
    """Accuracy of a model on BLiMP pairs.

    Attributes:
        overall: Mean correctness over all pairs (pooled, not a mean of paradigm means; the
            two agree when every paradigm has the same number of pairs, as in full BLiMP).
        per_paradigm: Paradigm -> mean correctness over its pairs, in first-seen order.
        per_term: ``linguistics_term`` -> mean correctness over its pairs (pooled).
        n_pairs: Number of pairs scored.
    """

    overall: float
    per_paradigm: dict[str, float]
    per_term: dict[str, float]
    n_pairs: int

    def to_frame(self) -> pd.DataFrame:
        """A long table with columns ``level`` (paradigm/linguistics_term/overall),
        ``name`` and ``accuracy``."""
        import pandas as pd  # a dependency of xarray; only this view needs it

        rows = [("paradigm", k, v) for k, v in self.per_paradigm.items()]
        rows += [("linguistics_term", k, v) for k, v in self.per_term.items()]
        rows.append(("overall", "overall", self.overall))
        return pd.DataFrame(rows, columns=["level", "name", "accuracy"])


def paradigm_sample(
    pairs: Sequence[MinimalPair], paradigms: Sequence[str], per_paradigm: int, seed: int
) -> list[MinimalPair]:
    """``per_paradigm`` seeded pairs of each paradigm (all of a smaller one), in the paradigms' order:
    the sample that ``scan`` and ``ablate`` both score."""
    grouped = {p: {"": [x for x in pairs if x.case == p]} for p in paradigms}
    sample = stratified_sample(grouped, per_paradigm, seed=seed)
    return [x for p in paradigms for x in sample[p][""]]


def blimp_accuracy(pairs: Sequence[MinimalPair], correct: Sequence[bool] | np.ndarray) -> BlimpAccuracy:
    """Aggregate per-pair correctness per paradigm, per ``linguistics_term`` and overall.

    Args:
        pairs: The scored pairs (as from :func:`load_blimp`).
        correct: Boolean per pair, aligned with ``pairs`` (good scored above bad).

    Returns:
        The three levels of accuracy; every level is a mean over the pairs it holds.

    Raises:
        UserInputError: ``correct`` is not boolean, or its length differs from ``pairs``.
    """
    correct = np.asarray(correct)
    if correct.dtype != np.bool_ or correct.ndim != 1:
        raise UserInputError(
            f"correct must be a 1-d boolean array, got dtype {correct.dtype} and shape {correct.shape}"
        )
    if len(correct) != len(pairs) or not len(pairs):
        raise UserInputError(
            f"correct has {len(correct)} values for {len(pairs)} pairs; expected one per pair (and at least one pair)"
        )
    return BlimpAccuracy(
        overall=float(correct.mean()),
        per_paradigm=_group_means([p.case for p in pairs], correct),
        per_term=_group_means([str(p.linguistics_term) for p in pairs], correct),
        n_pairs=len(pairs),
    )


def _group_means(labels: Sequence[str], values: np.ndarray) -> dict[str, float]:
    """Mean of ``values`` per label, labels in first-seen order."""
    names, first, codes = np.unique(np.asarray(labels, dtype=object), return_index=True, return_inverse=True)
    means = np.bincount(codes, weights=values) / np.bincount(codes)
    return {str(names[i]): float(means[i]) for i in np.argsort(first)}
