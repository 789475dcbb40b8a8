"""Paired statistics behind every verdict: conditions compared on the same benchmark items.

Each comparison reads per-item outcomes of two conditions on the same items (TSE pairs
grouped in cases, BLiMP pairs in paradigms, perplexity windows, training steps) and returns
a :class:`Comparison`: the statistic on the original data, a percentile bootstrap CI at
``level``, n, and a p-value where one applies. They share the arguments ``strata`` (a case
/ paradigm label per item; None: one stratum), ``n_boot`` (resamples), ``seed`` (of
``numpy.random.default_rng``) and ``level`` (of the CI). Pure functions on numpy arrays.

Missing outcomes: an item with a NaN in any of its values (in either condition, or in any
group of :func:`trend`) is dropped; ``Comparison.n_dropped`` counts them.

The bootstrap (:func:`paired_bootstrap_sums`) resamples items with replacement within each
stratum, keeping each stratum's size, with the same indices for both conditions (the
pairing). Every statistic but Spearman's is a function of column sums (a mean difference,
a ratio of sums, a slope of group means is the mean of per-item slopes), so the engine
returns resampled column sums. Its contract, which a slow loop can reproduce: resample
after resample, ``n`` uniforms ``u`` are drawn; item slots are laid out stratum by stratum
in sorted label order, and slot ``j`` of a stratum of ``n_s`` items (in input order) picks
its member ``floor(u[j] * n_s)``. Resamples are drawn in chunks of about
:data:`CHUNK_ELEMENTS` draws, which bounds memory and does not change the result.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from dynamics.errors import UserInputError

# Draws per chunk of resamples: the uniforms, the indices and one gathered column take
# 8 bytes each per draw, so a chunk holds about 12 MiB whatever n_boot and n are.
CHUNK_ELEMENTS = 1 << 19


@dataclass(frozen=True)
class Comparison:
    """A statistic of two conditions on the same items, with its percentile bootstrap CI."""

    statistic: str  # what ``estimate`` is: accuracy_difference, mean_difference, perplexity_ratio, ...
    estimate: float  # the statistic on the original data (not the bootstrap mean)
    low: float  # the CI's ends at ``level``
    high: float
    level: float
    n: int  # items (windows, steps) compared, after dropping missing ones
    p_value: float | None  # two-sided; None where no test applies
    p_method: str  # how ``p_value`` was computed ("" when None)
    n_boot: int
    seed: int
    n_dropped: int = 0  # items dropped for a missing (NaN) value
    n_strata: int = 1
    value_a: float | None = None  # each condition's own value: accuracy, mean, perplexity
    value_b: float | None = None
    only_a: int | None = None  # discordant items (accuracy): correct under A only / under B only
    only_b: int | None = None
    block: int | None = None  # the moving-block length (Spearman)

    @property
    def half_width(self) -> float:
        """Half the CI's width, ``(high - low) / 2``."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float | int | str | None]:
        """JSON-ready fields (plain floats, ints, strings; NaN as None), ``half_width`` included."""
        fields = {**asdict(self), "half_width": self.half_width}
        return {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in fields.items()}


# --- input checks ---------------------------------------------------------------------


def _check_settings(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise UserInputError(f"n_boot must be a positive number of resamples, got {n_boot!r}")
    if not 0 < level < 1:
        raise UserInputError(f"level must lie strictly between 0 and 1, got {level!r}")


def _vector(name: str, values: ArrayLike) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must hold numbers or booleans, one per item") from None
    if array.ndim != 1:
        raise UserInputError(f"{name} must be a 1-D array with one value per item, got shape {array.shape}")
    if array.size == 0:
        raise UserInputError(f"{name} is empty: there are no items to compare")
    return array


def complete_rows(strata: ArrayLike | None, **named: ArrayLike) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(the named inputs as columns ``[item, input]``, the items' strata, items dropped), NaN items dropped."""
    arrays = {name: _vector(name, values) for name, values in named.items()}
    lengths = {name: len(array) for name, array in arrays.items()}
    labels = None if strata is None else np.asarray(strata)
    if labels is not None:
        lengths["strata"] = len(labels) if labels.ndim == 1 else -1
    if len(set(lengths.values())) > 1:
        raise UserInputError(f"paired inputs need one value per item each, got lengths {lengths}")
    columns = np.column_stack(list(arrays.values()))
    keep = ~np.isnan(columns).any(axis=1)
    if not keep.any():
        raise UserInputError(f"no item has a value in all of {', '.join(arrays)}: every item has a NaN")
    return columns[keep], None if labels is None else labels[keep], int((~keep).sum())


# --- the bootstrap engine -------------------------------------------------------------


def _stratum_layout(strata: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items in slot order, stratum by stratum; the size and the first slot of each slot's stratum)."""
    if strata is None:
        return np.arange(n), np.full(n, n), np.zeros(n, dtype=np.int64)
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    stratum_of_slot = inverse.reshape(-1)[order]
    first_slots = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, counts[stratum_of_slot], first_slots[stratum_of_slot]


def paired_bootstrap_sums(
    columns: ArrayLike,
    strata: ArrayLike | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> np.ndarray:
    """Column sums of ``n_boot`` stratified resamples of the rows (items): ``[n_boot, columns]``.

    A row holds one item's values under every condition, so all conditions see the same
    resampled items. The resampling contract is in the module docstring.

    Args:
        columns: ``[item]`` or ``[item, column]``, no NaN.
        strata: a label per item (None: one stratum); each stratum keeps its size.
        n_boot: resamples.
        seed: of ``numpy.random.default_rng``.
        chunk_elements: draws per chunk of resamples (bounds memory; the result does not depend on it).
    """
    values = np.asarray(columns, dtype=float)
    values = values[:, None] if values.ndim == 1 else values
    n = len(values)
    order, sizes, first_slots = _stratum_layout(None if strata is None else np.asarray(strata), n)
    ordered = values[order]
    rng = np.random.default_rng(seed)
    sums = np.empty((n_boot, values.shape[1]))
    per_chunk = max(1, chunk_elements // n)
    for start in range(0, n_boot, per_chunk):
        draws = rng.random((min(per_chunk, n_boot - start), n))
        draws *= sizes
        picks = draws.astype(np.int64)
        np.minimum(picks, sizes - 1, out=picks)  # u * n_s may round up to n_s
        picks += first_slots
        for j in range(values.shape[1]):
            sums[start : start + len(picks), j] = ordered[:, j][picks].sum(axis=1)
    return sums


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _bootstrap_p(replicates: np.ndarray, null: float) -> float:
    """Two-sided percentile bootstrap p: twice the smaller share of replicates on either side of ``null``.

    Up to its resolution ``1 / (n_boot + 1)`` it is the smallest ``1 - level`` whose
    percentile CI excludes ``null``, so it agrees with the verdicts drawn from the CI.
    """
    finite = replicates[np.isfinite(replicates)]
    below, above = np.sum(finite <= null), np.sum(finite >= null)
    return float(min(1.0, 2 * (1 + min(below, above)) / (len(finite) + 1)))


def _comparison(
    statistic: str, estimate: float, replicates: np.ndarray, n_boot: int, seed: int, level: float, **fields: Any
) -> Comparison:
    """A comparison with the percentile CI of ``replicates`` and, unless given, their bootstrap p of 0."""
    if "p_value" not in fields:
        fields.update(p_value=_bootstrap_p(replicates, 0.0), p_method="bootstrap percentile")
    low, high = percentile_interval(replicates, level)
    return Comparison(statistic, estimate, low, high, level, n_boot=int(n_boot), seed=int(seed), **fields)


def _mean_comparison(
    statistic: str,
    per_item: np.ndarray,
    strata: np.ndarray | None,
    n_boot: int,
    seed: int,
    level: float,
    **fields: Any,
) -> Comparison:
    """The comparison of a statistic that is the mean of ``per_item`` (``estimate`` may be given as computed)."""
    replicates = paired_bootstrap_sums(per_item, strata, n_boot, seed)[:, 0] / len(per_item)
    estimate = fields.pop("estimate", float(np.mean(per_item)))
    fields["n_strata"] = 1 if strata is None else len(np.unique(strata))
    return _comparison(statistic, estimate, replicates, n_boot, seed, level, n=len(per_item), **fields)


# --- comparisons ----------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` items correct under A only, ``c`` under B only.

    The exact binomial test of ``b`` successes in ``b + c`` trials at p = 1/2 (1.0 without
    discordant items); the binomial being symmetric, its two-sided p is twice the smaller tail.
    """
    if min(b, c) < 0 or int(b) != b or int(c) != c:
        raise UserInputError(f"discordant counts must be non-negative integers, got b={b!r}, c={c!r}")
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5)))


def accuracy_difference(
    correct_a: ArrayLike,
    correct_b: ArrayLike,
    strata: ArrayLike | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Accuracy of A minus accuracy of B on the same items, with the exact McNemar p-value.

    ``correct_a`` / ``correct_b``: per item, whether the condition got it right (booleans,
    or 0/1 floats with NaN for a missing outcome: an item missing in either is dropped).
    """
    _check_settings(n_boot, level)
    columns, labels, dropped = complete_rows(strata, correct_a=correct_a, correct_b=correct_b)
    if not np.isin(columns, (0.0, 1.0)).all():
        raise UserInputError("correct_a and correct_b must be booleans (or 0/1, with NaN for a missing outcome)")
    a, b = columns.T
    only_a, only_b = int(np.sum(a > b)), int(np.sum(b > a))
    accuracies = {"value_a": float(np.mean(a)), "value_b": float(np.mean(b))}
    fields: dict[str, Any] = {**accuracies, "only_a": only_a, "only_b": only_b, "n_dropped": dropped}
    fields.update(p_value=mcnemar_exact(only_a, only_b), p_method="exact McNemar")
    estimate = accuracies["value_a"] - accuracies["value_b"]
    return _mean_comparison("accuracy_difference", a - b, labels, n_boot, seed, level, estimate=estimate, **fields)


def mean_difference(
    values_a: ArrayLike,
    values_b: ArrayLike,
    strata: ArrayLike | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Mean of the per-item differences ``a - b`` (e.g. the change of a margin); NaN items dropped.

    ``p_value`` is the two-sided percentile bootstrap p of a zero mean difference: twice the
    smaller share of resampled means on either side of 0 (resolution ``1 / (n_boot + 1)``),
    so ``p < 1 - level`` goes with a CI that excludes 0.
    """
    _check_settings(n_boot, level)
    columns, labels, dropped = complete_rows(strata, values_a=values_a, values_b=values_b)
    means = {"value_a": float(np.mean(columns[:, 0])), "value_b": float(np.mean(columns[:, 1]))}
    differences = columns[:, 0] - columns[:, 1]
    return _mean_comparison("mean_difference", differences, labels, n_boot, seed, level, n_dropped=dropped, **means)


def trend(
    values_by_group_item: ArrayLike,
    strata: ArrayLike | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Least-squares slope of the mean per-item value (e.g. harm) over group index 0..G-1.

    ``values_by_group_item`` is ``[group, item]`` (2+ groups, the same items in each).
    "Early layer groups hurt more than late ones" is a negative slope of the harm. The slope
    of the group means is the mean of per-item slopes, so items are resampled (stratified,
    all groups together) as for any paired mean; ``p_value`` as in :func:`mean_difference`.
    An item with a NaN in any group is dropped.
    """
    _check_settings(n_boot, level)
    matrix = np.asarray(values_by_group_item, dtype=float)
    if matrix.ndim != 2 or len(matrix) < 2:
        raise UserInputError(f"values_by_group_item must be [group, item] with 2+ groups, got shape {matrix.shape}")
    columns, labels, dropped = complete_rows(strata, **{f"group {g}": row for g, row in enumerate(matrix)})
    centred = np.arange(len(matrix)) - (len(matrix) - 1) / 2
    weights = centred / np.sum(centred**2)  # slope = weights @ values of the groups
    estimate = float(weights @ columns.mean(axis=0))  # of the group means themselves
    return _mean_comparison(
        "slope", columns @ weights, labels, n_boot, seed, level, estimate=estimate, n_dropped=dropped
    )


def perplexity_ratio(
    nll_a: ArrayLike,
    tokens_a: ArrayLike,
    nll_b: ArrayLike,
    tokens_b: ArrayLike,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Perplexity of A over perplexity of B on the same windows, windows resampled in pairs (no strata).

    ``nll_*``: summed NLL (nats) per window; ``tokens_*``: its predicted tokens; a window
    with a NaN anywhere is dropped. A condition's perplexity is ``exp(sum nll / sum tokens)``
    (``value_a`` / ``value_b``); ``p_value`` is the percentile bootstrap p of a ratio of 1;
    :func:`relative_increase` turns the result into ``ratio - 1``.
    """
    _check_settings(n_boot, level)
    columns, _, dropped = complete_rows(None, nll_a=nll_a, tokens_a=tokens_a, nll_b=nll_b, tokens_b=tokens_b)
    tokens = columns[:, [1, 3]]
    if (tokens < 0).any() or (tokens.sum(axis=0) <= 0).any():
        raise UserInputError("tokens_a and tokens_b must be non-negative counts with a positive total each")
    ppl_a = float(np.exp(columns[:, 0].sum() / columns[:, 1].sum()))
    ppl_b = float(np.exp(columns[:, 2].sum() / columns[:, 3].sum()))
    sums = paired_bootstrap_sums(columns, None, n_boot, seed)
    replicates = np.exp(sums[:, 0] / sums[:, 1] - sums[:, 2] / sums[:, 3])
    fields: dict[str, Any] = {"n": len(columns), "n_dropped": dropped, "value_a": ppl_a, "value_b": ppl_b}
    fields.update(p_value=_bootstrap_p(replicates, 1.0), p_method="bootstrap percentile")
    return _comparison("perplexity_ratio", ppl_a / ppl_b, replicates, n_boot, seed, level, **fields)


def ratio_difference(
    num_a: ArrayLike,
    den_a: ArrayLike,
    num_b: ArrayLike,
    den_b: ArrayLike,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """``sum(num_a) / sum(den_a) - sum(num_b) / sum(den_b)`` over the same units (e.g. a window's summed
    excess surprisal of function words over their count, minus the same for content words), units
    resampled in pairs (no strata); a unit with a NaN anywhere is dropped. ``value_a`` / ``value_b``
    are the two ratios; ``p_value`` the percentile bootstrap p of a difference of 0.
    """
    _check_settings(n_boot, level)
    columns, _, dropped = complete_rows(None, num_a=num_a, den_a=den_a, num_b=num_b, den_b=den_b)
    if (columns[:, [1, 3]].sum(axis=0) <= 0).any():
        raise UserInputError("den_a and den_b must each have a positive total")
    ratio_a = float(columns[:, 0].sum() / columns[:, 1].sum())
    ratio_b = float(columns[:, 2].sum() / columns[:, 3].sum())
    sums = paired_bootstrap_sums(columns, None, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample may miss every unit with a denominator
        replicates = sums[:, 0] / sums[:, 1] - sums[:, 2] / sums[:, 3]
    replicates = replicates[np.isfinite(replicates)]
    fields: dict[str, Any] = {"n": len(columns), "n_dropped": dropped, "value_a": ratio_a, "value_b": ratio_b}
    return _comparison("ratio_difference", ratio_a - ratio_b, replicates, n_boot, seed, level, **fields)


def relative_increase(ratio: Comparison) -> Comparison:
    """A :func:`perplexity_ratio` result as the relative increase ``ratio - 1`` (estimate and CI; p unchanged)."""
    return replace(
        ratio, statistic="perplexity_increase", estimate=ratio.estimate - 1, low=ratio.low - 1, high=ratio.high - 1
    )


def default_block_length(n: int) -> int:
    """``round(n ** (1/3))``, at least 2 and at most ``n``: the moving-block bootstrap's default."""
    return min(n, max(2, round(n ** (1 / 3))))


def _moving_blocks(n: int, block: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``[count, n]`` indices: ``ceil(n / block)`` blocks from random starts, concatenated, cut to ``n``."""
    starts = rng.integers(0, n - block + 1, size=(count, -(-n // block)))
    return (starts[:, :, None] + np.arange(block)).reshape(count, -1)[:, :n]


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rx, ry = (stats.rankdata(v, axis=1) for v in (x, y))
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample with constant ranks has no correlation
        return np.sum(rx * ry, axis=1) / np.sqrt(np.sum(rx**2, axis=1) * np.sum(ry**2, axis=1))


def spearman_block_bootstrap(
    x: ArrayLike,
    y: ArrayLike,
    block: int | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Spearman correlation of two series over ordered training steps, moving-block bootstrap CI.

    Neighbouring steps are correlated, so blocks of ``block`` consecutive steps (default
    :func:`default_block_length`) are drawn with replacement and concatenated to the
    original length. Steps with a NaN in either series are dropped first; resamples with
    constant ranks (no correlation) are left out of the CI and p. ``p_value``: the
    percentile bootstrap p of zero (scipy's assumes independent steps, which a training
    trajectory is not). A constant series has no correlation: NaN estimate and CI, p None.
    """
    _check_settings(n_boot, level)
    columns, _, dropped = complete_rows(None, x=x, y=y)
    n = len(columns)
    if n < 3:
        raise UserInputError(f"a Spearman correlation needs at least 3 steps with both values, got {n}")
    block = default_block_length(n) if block is None else block
    if not 1 <= block <= n:
        raise UserInputError(f"block must be between 1 and the number of steps ({n}), got {block}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        estimate = float(stats.spearmanr(columns[:, 0], columns[:, 1]).statistic)
    fields: dict[str, Any] = {"n": n, "n_dropped": dropped, "block": block}
    if math.isnan(estimate):
        return _comparison("spearman", estimate, np.array([]), n_boot, seed, level, p_value=None, p_method="", **fields)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK_ELEMENTS // n)
    chunks = (_moving_blocks(n, block, min(per_chunk, n_boot - s), rng) for s in range(0, n_boot, per_chunk))
    replicates = np.concatenate([_rowwise_spearman(columns[picks, 0], columns[picks, 1]) for picks in chunks])
    return _comparison("spearman", estimate, replicates, n_boot, seed, level, **fields)
