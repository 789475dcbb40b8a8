"""Planning and verdicts on :class:`dynamics.stats.paired.Comparison` results: the standard error of a
paired difference, the minimum detectable difference, how many items a target CI half-width needs,
the verdict of a claim (``supported`` / ``contradicted`` / ``inconclusive``), and the sentence a
report prints about its precision."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from dynamics.errors import UserInputError
from dynamics.stats.paired import Comparison, complete_rows

# --- planning -------------------------------------------------------------------------


def _stratified_variance(differences: ArrayLike, strata: ArrayLike | None) -> tuple[float, int]:
    """(the per-item variance ``sum_s (n_s / n) var_s``, ``ddof=1``; n), NaN items dropped.

    A one-item stratum adds 0: it has no variance estimate, and the bootstrap, which
    always redraws its one item, gives it none either.
    """
    columns, labels, _ = complete_rows(strata, differences=differences)
    d = columns[:, 0]
    groups = [d] if labels is None else [d[labels == label] for label in np.unique(labels)]
    variance = sum(len(g) / len(d) * float(np.var(g, ddof=1)) for g in groups if len(g) > 1)
    return float(variance), len(d)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise UserInputError(f"level must lie strictly between 0 and 1, got {level!r}")
    return float(stats.norm.ppf((1 + level) / 2))


def standard_error(differences: ArrayLike, strata: ArrayLike | None = None) -> float:
    """Standard error of the mean paired difference (``a - b`` per item), stratified.

    ``sqrt(sum_s (n_s / n)^2 var_s / n_s)`` with ``ddof=1``; one stratum: ``sd / sqrt(n)``.
    """
    variance, n = _stratified_variance(differences, strata)
    return math.sqrt(variance / n)


def minimum_detectable_difference(se: float, level: float = 0.95, power: float = 0.8) -> float:
    """The true difference a two-sided test at ``level`` detects with ``power``: ``(z_{1-a/2} + z_power) se``."""
    if not 0 < power < 1:
        raise UserInputError(f"power must lie strictly between 0 and 1, got {power!r}")
    return (_z(level) + float(stats.norm.ppf(power))) * se


def items_needed(differences: ArrayLike, strata: ArrayLike | None, half_width: float, level: float = 0.95) -> int:
    """Items (in the same stratum proportions) whose normal-approximation CI half-width is ``half_width``.

    ``ceil((z sigma / half_width)^2)``, ``sigma^2`` the stratified per-item variance of the
    paired differences. A target the current items already reach returns their number:
    never fewer items than there are.
    """
    if not half_width > 0:
        raise UserInputError(f"half_width must be positive, got {half_width!r}")
    variance, n = _stratified_variance(differences, strata)
    return max(n, math.ceil(_z(level) ** 2 * variance / half_width**2))


def items_for(comparison: Comparison, target_half_width: float) -> int:
    """Items that would give ``target_half_width``: the bootstrap CI scaled by ``1 / sqrt(n)``.

    For any statistic (ratio, slope, correlation); never fewer than ``comparison.n``.
    """
    if not target_half_width > 0:
        raise UserInputError(f"target_half_width must be positive, got {target_half_width!r}")
    if not math.isfinite(comparison.half_width):
        raise UserInputError(f"the {comparison.statistic} has no finite CI to plan from")
    return max(comparison.n, math.ceil(comparison.n * (comparison.half_width / target_half_width) ** 2))


# --- verdicts and words ---------------------------------------------------------------


def verdict(comparison_or_low_high: Comparison | tuple[float, float], expected_sign: int, null: float = 0.0) -> str:
    """Whether a CI supports, contradicts or leaves open an effect of ``expected_sign`` (+1 / -1).

    "supported" when the CI lies strictly on the expected side of ``null``, "contradicted"
    when strictly on the other, else (also with a NaN end) "inconclusive". For a ratio use
    ``null=1`` (or :func:`relative_increase` and 0).
    """
    if expected_sign not in (1, -1):
        raise UserInputError(f"expected_sign must be +1 or -1, got {expected_sign!r}")
    given = comparison_or_low_high
    ends = (given.low, given.high) if isinstance(given, Comparison) else given
    signed = [expected_sign * (float(end) - null) for end in ends]
    if min(signed) > 0:
        return "supported"
    if max(signed) < 0:
        return "contradicted"
    return "inconclusive"


def equivalence_verdict(low: float, high: float, margin: float) -> str:
    """Whether a CI shows two conditions equivalent within ``margin`` (the matched control is matched).

    "supported" when ``[low, high]`` lies inside ``[-margin, margin]``, "contradicted" when
    entirely outside it, else (also with a NaN end) "inconclusive".
    """
    if not margin > 0:
        raise UserInputError(f"margin must be positive, got {margin!r}")
    if -margin <= low and high <= margin:
        return "supported"
    if low > margin or high < -margin:
        return "contradicted"
    return "inconclusive"


def _rounded_up(n: int, figures: int = 2) -> int:
    step = 10 ** max(0, len(str(n)) - figures)
    return -(-n // step) * step


def precision_sentence(
    n: int,
    half_width: float,
    needed_for_target: int,
    target: float,
    unit: str = "points",
    scale: float = 100.0,
    items: str = "pairs",
) -> str:
    """E.g. "880 pairs give +/-2.9 points; about 7,000 pairs would give +/-1".

    ``half_width`` and ``target`` are in the statistic's units and shown times ``scale``
    (100: accuracy in percentage points); ``needed_for_target`` (:func:`items_needed`,
    :func:`items_for`) is rounded up to two significant figures.
    """
    reached = f"{n:,} {items} give +/-{half_width * scale:.2g}" + (f" {unit}" if unit else "")
    if needed_for_target <= n:
        return f"{reached}, within the +/-{target * scale:g} target"
    return f"{reached}; about {_rounded_up(needed_for_target):,} {items} would give +/-{target * scale:g}"
