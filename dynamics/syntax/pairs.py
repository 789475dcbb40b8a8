"""The minimal-pair record shared by the TSE and BLiMP benchmarks, and stratified sampling.

A benchmark item is a grammatical sentence and an ungrammatical one that differ minimally.
TSE's NPI cases add a third, *intrusive* sentence (a licensor in a position that does not
license the NPI); a strict analysis asks the grammatical sentence to beat both.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from dynamics.errors import UserInputError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MinimalPair:
    """One benchmark item.

    Attributes:
        good: The grammatical sentence.
        bad: The ungrammatical sentence.
        case: The TSE case (``prep_anim``) or the BLiMP paradigm UID (``adjunct_island``).
        subcase: The TSE sub-case (``sing_MS_MV_plur_ES``, ``past``); empty for BLiMP.
        pair_id: The item's index inside its sub-case (TSE) or its ``pairID`` (BLiMP).
        intrusive: TSE NPI cases only: the sentence with a non-licensing licensor.
        linguistics_term: BLiMP only: the phenomenon (``island_effects``).
        field: BLiMP only: ``syntax``, ``morphology``, ``semantics``, ...
    """

    good: str
    bad: str
    case: str
    subcase: str = ""
    pair_id: int = 0
    intrusive: str | None = None
    linguistics_term: str | None = None
    field: str | None = None

    @property
    def uid(self) -> str:
        """A stable identifier: ``case/subcase/pair_id`` (``case/pair_id`` without sub-case)."""
        parts = [self.case, self.subcase, str(self.pair_id)] if self.subcase else [self.case, str(self.pair_id)]
        return "/".join(parts)


def check_per_case(per_case: int) -> int:
    """Validate a per-case sample size.

    Raises:
        UserInputError: ``per_case`` is not a positive integer.
    """
    if isinstance(per_case, bool) or not isinstance(per_case, (int, np.integer)) or per_case < 1:
        raise UserInputError(f"per_case must be a positive integer, got {per_case!r}")
    return int(per_case)


def case_rng(seed: int, case: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and the case name, so that a case's sample does not
    depend on which other cases are sampled with it."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode("utf-8"))])


def spread_evenly(sizes: Sequence[int], total: int, rng: np.random.Generator) -> list[int]:
    """Split ``total`` draws over groups as evenly as their sizes allow.

    Every group gets ``total // len(sizes)``; groups too small to take their share keep all
    of their items and the rest is shared again among the others; the final remainder
    (fewer draws than open groups) goes to a seeded choice of open groups.

    Args:
        sizes: Number of items in each group.
        total: Number of draws wanted; more than ``sum(sizes)`` keeps everything.
        rng: Source of the seeded choice of which groups take the remainder.

    Returns:
        The number of draws per group, in the order of ``sizes``.
    """
    quota = [0] * len(sizes)
    remaining = min(int(total), int(sum(sizes)))
    while remaining > 0:
        open_groups = [i for i, size in enumerate(sizes) if quota[i] < size]
        share = remaining // len(open_groups)
        if share == 0:
            for i in sorted(rng.choice(open_groups, size=remaining, replace=False).tolist()):
                quota[i] += 1
            break
        for i in open_groups:
            take = min(share, sizes[i] - quota[i])
            quota[i] += take
            remaining -= take
    return quota


def sample_indices(size: int, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` distinct indices of ``range(size)`` chosen by ``rng``, in increasing order."""
    if count >= size:
        return list(range(size))
    return sorted(rng.choice(size, size=count, replace=False).tolist())


def stratified_sample(
    groups: Mapping[str, Mapping[str, Sequence[T]]], per_case: int, seed: int = 0
) -> dict[str, dict[str, list[T]]]:
    """Deterministic stratified sample of ``{case: {sub-case: items}}``.

    Each case's ``per_case`` draws are split over its sub-cases by :func:`spread_evenly`,
    then drawn without replacement; items keep their original order. A case smaller than
    ``per_case`` is kept whole. A case's draw depends only on ``seed`` and its name, not on
    the other cases given.

    Raises:
        UserInputError: ``per_case`` is not a positive integer.
    """
    per_case = check_per_case(per_case)
    sample: dict[str, dict[str, list[T]]] = {}
    for case, subcases in groups.items():
        rng = case_rng(seed, case)
        quotas = spread_evenly([len(items) for items in subcases.values()], per_case, rng)
        sample[case] = {
            sub: [items[i] for i in sample_indices(len(items), quota, rng)]
            for (sub, items), quota in zip(subcases.items(), quotas, strict=True)
        }
    return sample


def check_names(
    names: Iterable[str] | str | None, known: tuple[str, ...], unknown: Callable[[str], str]
) -> tuple[str, ...]:
    """Validate names against ``known`` (``None`` = all), keeping the caller's order.

    Raises:
        UserInputError: ``unknown(name)`` for the first name not in ``known``.
    """
    if names is None:
        return known
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if name not in known:
            raise UserInputError(unknown(name))
    return names
