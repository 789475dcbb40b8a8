"""Neuron sets as boolean masks ``[layer, neuron]``: top/bottom p% by a score, random controls.

Counting rule: a set of p% of ``n`` neurons has exactly ``round(p / 100 * n)`` members,
rounded half up and computed on the decimal value of ``p`` (so 0.5% of 300 is 2, not 1),
where ``n`` is the neurons of one layer (``scope="layer"``, the count applies to every
layer) or of all layers together (``scope="global"``).

Ordering rule: neurons are ranked by score (descending for the top, ascending for the
bottom); equal scores are broken by the lower index first (within a layer for the layer
scope, by flat index ``layer * neurons + neuron`` for the global scope); NaN scores rank
after every number in both directions, so they are picked last.

Matching: :func:`bisect_to_target` finds the argument of a function (the perplexity as the
bottom-m% are ablated) whose value is within a tolerance of a target, keeping a bracket
whose ends lie on either side of the target (so a non-monotone function is still refined
towards a crossing), and says honestly when the target lies outside the bracket. With a
``baseline`` (the clean perplexity) the tolerance is relative to the target's distance from
it (the top set's *increase*), and a value on the baseline's side of it never matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from dynamics.errors import UserInputError

__all__ = [
    "SCOPES",
    "BisectionResult",
    "bisect_to_target",
    "bottom_percent_mask",
    "cohort_size",
    "indices_to_mask",
    "mask_to_indices",
    "random_control_mask",
    "top_percent_mask",
]

SCOPES = ("layer", "global")


def cohort_size(percent: float, n: int) -> int:
    """``round(percent / 100 * n)``, rounded half up on the decimal value of ``percent``.

    Raises:
        UserInputError: ``percent`` is not a number in (0, 100].
    """
    try:
        value = float(percent)
    except (TypeError, ValueError):
        raise UserInputError(f"percent must be a number in (0, 100], got {percent!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 100:
        raise UserInputError(f"percent must be a number in (0, 100], got {percent!r}")
    return math.floor(Fraction(repr(value)) * n / 100 + Fraction(1, 2))


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise UserInputError(f"scores must be a 2-D tensor [layers, neurons], got {shape}")


def _ranked(scores: torch.Tensor, descending: bool) -> torch.Tensor:
    """Indices along the last axis in rank order (ties by lower index, NaN last)."""
    order = torch.sort(scores, dim=-1, descending=descending, stable=True).indices
    is_nan = torch.isnan(scores).gather(-1, order)
    # A second stable sort moves NaN (first in descending, last in ascending) to the end.
    return order.gather(-1, torch.sort(is_nan.to(torch.uint8), dim=-1, stable=True).indices)


def _extreme_mask(scores: torch.Tensor, percent: float, scope: str, descending: bool) -> torch.Tensor:
    _check_scores(scores)
    if scope not in SCOPES:
        raise UserInputError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    layers, neurons = scores.shape
    mask = torch.zeros(layers * neurons, dtype=torch.bool, device=scores.device)
    if scope == "layer":
        count = cohort_size(percent, neurons)
        chosen = _ranked(scores, descending)[:, :count]
        chosen = chosen + torch.arange(layers, device=scores.device)[:, None] * neurons
    else:
        count = cohort_size(percent, layers * neurons)
        chosen = _ranked(scores.reshape(-1), descending)[:count]
    mask[chosen.reshape(-1)] = True
    return mask.view(layers, neurons)


def top_percent_mask(scores: torch.Tensor, percent: float = 1.0, scope: str = "layer") -> torch.Tensor:
    """The ``percent``% of neurons with the highest scores (e.g. WD), as a bool mask.

    Args:
        scores: ``[layers, neurons]``.
        percent: in (0, 100]; the count follows the module's counting rule.
        scope: ``"layer"`` (that many per layer) or ``"global"`` (over all layers).

    Raises:
        UserInputError: bad ``percent``, ``scope`` or ``scores`` shape.
    """
    return _extreme_mask(scores, percent, scope, descending=True)


def bottom_percent_mask(scores: torch.Tensor, percent: float = 1.0, scope: str = "layer") -> torch.Tensor:
    """The ``percent``% of neurons with the lowest scores; see :func:`top_percent_mask`."""
    return _extreme_mask(scores, percent, scope, descending=False)


def random_control_mask(cohort_mask: torch.Tensor, seed: int, pool: str = "non-top") -> torch.Tensor:
    """A random set with as many neurons per layer as the cohort.

    ``pool="all"`` draws them from every neuron of the layer (the official code, so the set
    may share members with the cohort); ``pool="non-top"`` from the layer's non-cohort
    neurons. Layer by layer (in order), ``torch.randperm`` of the pool from one
    ``torch.Generator().manual_seed(seed)`` picks the members.

    Raises:
        UserInputError: an unknown pool, or (non-top) a layer with fewer non-cohort neurons
            than cohort neurons.
    """
    _check_scores(cohort_mask)
    if pool not in ("all", "non-top"):
        raise UserInputError(f"random control pool {pool!r}: expected 'all' or 'non-top'")
    cohort = cohort_mask.to(torch.bool).cpu()
    generator = torch.Generator().manual_seed(seed)
    control = torch.zeros_like(cohort)
    for layer, row in enumerate(cohort):
        size = int(row.sum())
        candidates = torch.arange(len(row)) if pool == "all" else torch.nonzero(~row).view(-1)
        if size > len(candidates):
            raise UserInputError(
                f"layer {layer} has {size} cohort neurons but only {len(candidates)} others to draw a control from"
            )
        control[layer, candidates[torch.randperm(len(candidates), generator=generator)[:size]]] = True
    return control.to(cohort_mask.device)


def mask_to_indices(mask: torch.Tensor) -> list[list[int]]:
    """Per-layer sorted neuron indices of a bool mask ``[layers, neurons]``."""
    _check_scores(mask)
    return [torch.nonzero(row).view(-1).tolist() for row in mask.to(torch.bool).cpu()]


def indices_to_mask(indices: list[list[int]], neurons: int) -> torch.Tensor:
    """Bool mask ``[len(indices), neurons]`` from per-layer index lists.

    Raises:
        UserInputError: an index outside ``[0, neurons)``.
    """
    mask = torch.zeros((len(indices), neurons), dtype=torch.bool)
    for layer, row in enumerate(indices):
        bad = [i for i in row if not 0 <= int(i) < neurons]
        if bad:
            raise UserInputError(f"layer {layer}: neuron index {bad[0]} is outside [0, {neurons})")
        mask[layer, list(map(int, row))] = True
    return mask


@dataclass(frozen=True)
class BisectionResult:
    """What :func:`bisect_to_target` found: the argument, its value, and how it got there.

    Attributes:
        argument: the best argument tried (the matched one when ``converged``).
        value: ``f(argument)``.
        target: the value asked for.
        converged: ``|value - target| <= band``.
        trials: every ``(argument, value)`` evaluated, in order.
        reason: why it did not converge ("" when it did).
        band: the accepted distance from the target (``tolerance * target`` without a
            baseline, ``tolerance * |target - baseline|`` with one).
        bracket: the last ``(low, high)`` arguments whose values lay below and above the target
            (empty when the target was never bracketed).
    """

    argument: float
    value: float
    target: float
    converged: bool
    trials: tuple[tuple[float, float], ...]
    reason: str = ""
    band: float = float("nan")
    bracket: tuple[float, ...] = ()

    @property
    def relative_gap(self) -> float:
        return self.value / self.target - 1.0


def bisect_to_target(
    f: Callable[[float], float],
    target: float,
    low: float,
    high: float,
    tolerance: float = 0.02,
    max_iterations: int = 12,
    baseline: float | None = None,
) -> BisectionResult:
    """Find ``x`` in ``[low, high]`` with ``f(x)`` within the tolerance of ``target``.

    The tolerance is relative to ``target`` (``|f / target - 1| <= tolerance``), or, with a
    ``baseline``, to the target's distance from it (``|f - target| <= tolerance * |target -
    baseline|``: the matched control's perplexity increase within 5% of the top set's for
    ``tolerance=0.05``); a value on the baseline's side of the target by more than the band
    never matches, so a trial below clean cannot match a top set above clean. The bracket's
    ends are evaluated first; a target outside ``[f(low), f(high)]`` cannot be matched, and
    the closer end is returned with ``converged=False`` and the reason. Each iteration
    evaluates the midpoint and keeps the half whose ends still lie on either side of the
    target, so a non-monotone ``f`` is refined towards a crossing too; after
    ``max_iterations`` midpoints the closest trial is returned, converged or not.

    Raises:
        UserInputError: an empty bracket, a non-positive tolerance or target, or no iterations.
    """
    _check_bisection(target, low, high, tolerance, max_iterations)
    band = tolerance * (target if baseline is None else abs(target - baseline))
    trials: list[tuple[float, float]] = []
    bracket: tuple[float, ...] = ()

    def trial(x: float) -> float:
        value = float(f(x))
        trials.append((x, value))
        return value

    def within(value: float) -> bool:
        return math.isfinite(value) and abs(value - target) <= band

    def closest(reason: str) -> BisectionResult:
        x, value = min(trials, key=lambda t: abs(t[1] - target) if math.isfinite(t[1]) else math.inf)
        return BisectionResult(
            x, value, target, within(value), tuple(trials), "" if within(value) else reason, band, bracket
        )

    if baseline is not None and not target > baseline:
        trial(low)
        return closest(f"the top set's perplexity {target:.4g} is not above clean {baseline:.4g}: nothing to match")
    f_low = trial(low)
    if within(f_low) or f_low > target:
        return closest(f"f({low:g}) = {f_low:.4g} is already above the target {target:.4g}")
    f_high = trial(high)
    if within(f_high) or f_high < target:
        return closest(f"f({high:g}) = {f_high:.4g} is still below the target {target:.4g}")
    for _ in range(max_iterations):
        bracket = (low, high)
        middle = (low + high) / 2
        value = trial(middle)
        if within(value):
            return closest("")
        low, high = (middle, high) if value < target else (low, middle)
    bracket = (low, high)
    return closest(
        f"not within {band:.4g} of {target:.4g} after {max_iterations} iterations "
        f"(bracket m in [{low:.4g}, {high:.4g}])"
    )


def _check_bisection(target: float, low: float, high: float, tolerance: float, max_iterations: int) -> None:
    """Refuse an empty bracket, a non-positive tolerance or target, or no iterations (one line each)."""
    if not low < high:
        raise UserInputError(f"bisection bracket [{low}, {high}] is empty; expected low < high")
    if tolerance <= 0 or not math.isfinite(target) or target <= 0 or max_iterations < 1:
        raise UserInputError(
            f"bisection needs tolerance > 0, a positive finite target and iterations >= 1; "
            f"got tolerance {tolerance}, target {target}, iterations {max_iterations}"
        )


def wd_scores(wd: np.ndarray) -> torch.Tensor:
    """WD as ranking scores (the cohort rules rank NaN last, for the top and the bottom)."""
    return torch.from_numpy(np.asarray(wd, dtype=np.float64).copy())
