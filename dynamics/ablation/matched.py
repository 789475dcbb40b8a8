"""The perplexity-matched control: the bottom-m% WD neurons whose negative ablation raises perplexity as
much as the top set's does, m found by bisection (:func:`matched_control`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dynamics.ablation.hooks import ablate
from dynamics.config.parts import MatchOptions
from dynamics.execution.progress import progress_bar
from dynamics.stats.cohort import BisectionResult, bisect_to_target, bottom_percent_mask, wd_scores
from dynamics.syntax.perplexity import perplexity, window_nll

log = logging.getLogger(__name__)


def negative_ablation_perplexity(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int
) -> Callable[[torch.Tensor], float]:
    """``f(mask)``: perplexity on ``windows`` with the negative pre-activations of ``mask`` zeroed."""

    def ablated_ppl(mask: torch.Tensor) -> float:
        with ablate(model, mask, mode="negative"), torch.inference_mode():
            return perplexity(model, windows, batch_size=batch_size, progress=False)

    return ablated_ppl


def negative_ablation_window_nll(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """Summed NLL per window with ``mask``'s negative pre-activations zeroed (``None``: clean)."""
    if mask is None:
        with torch.inference_mode():
            return window_nll(model, windows, batch_size=batch_size, progress=False)
    with ablate(model, mask, mode="negative"), torch.inference_mode():
        return window_nll(model, windows, batch_size=batch_size, progress=False)


def paired_increase(
    clean_nll: torch.Tensor, ablated_nll: torch.Tensor, predicted_per_window: int
) -> tuple[float, float]:
    """(relative perplexity increase, its standard error) of an ablation, from per-window NLL on the same windows.

    The increase is ``exp(mean d) - 1`` with ``d`` the per-window change of the mean NLL per
    predicted token; its standard error ``exp(mean d) * std(d) / sqrt(n)`` (the delta method;
    NaN with one window). Paired windows cancel the text's own variation.
    """
    d = (ablated_nll.double() - clean_nll.double()).numpy() / predicted_per_window
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(np.expm1(mean)), float(np.exp(mean) * se)


def match_bottom_percent(
    wd: np.ndarray,
    ablated_ppl: Callable[[torch.Tensor], float],
    target: float,
    search: MatchOptions,
    clean: float | None = None,
) -> tuple[np.ndarray, BisectionResult]:
    """The bottom-``m``% WD mask whose negative ablation matches ``target`` perplexity, ``m`` bisected in
    ``search``'s bracket ``[match_low, match_high]`` within its tolerance and iterations.

    With ``clean`` (the clean perplexity) the tolerance is relative to the target's increase
    over it and a trial below clean never matches (:func:`bisect_to_target`).
    """
    scores = wd_scores(wd)
    bar = progress_bar(total=search.match_iterations + 2, desc="matched control", unit="trial")

    def perplexity_at(m: float) -> float:
        value = ablated_ppl(bottom_percent_mask(scores, m))
        log.info("matched control: bottom %.4g%% -> perplexity %.4f (target %.4f)", m, value, target)
        bar.set_postfix_str(f"m {m:.3g}% ppl {value:.4g} target {target:.4g}")
        bar.update()
        return value

    with bar:
        result = bisect_to_target(
            perplexity_at,
            target,
            search.match_low,
            search.match_high,
            search.match_tolerance,
            search.match_iterations,
            baseline=clean,
        )
    if not result.converged:
        log.warning("matched control not found: %s; keeping the closest, m = %.4g%%", result.reason, result.argument)
    return bottom_percent_mask(scores, result.argument).numpy(), result


def noise_warning(increase: float, standard_error: float) -> str:
    """A warning when the top set's own perplexity increase is within two standard errors of zero ("" otherwise)."""
    if np.isfinite(standard_error) and abs(increase) <= 2 * standard_error:
        return (
            f"the top set's own perplexity increase ({100 * increase:+.2f}%) is within the noise of the estimate "
            f"(2 standard errors = {200 * standard_error:.2f}%); the match means little: use more --ppl-tokens"
        )
    return ""


@dataclass(frozen=True)
class MatchedControl:
    """A perplexity-matched control (:func:`matched_control`) and what it was matched against."""

    mask: np.ndarray  # [layer, neuron] bool, the bottom-m% WD neurons
    match: BisectionResult  # m (``argument``), its perplexity (``value``), convergence, trials
    clean: float  # clean perplexity
    target: float  # perplexity with the reference set's negative pre-activations zeroed
    increase: float  # the reference set's relative perplexity increase over clean
    increase_se: float  # its standard error over the paired windows
    noise: str  # :func:`noise_warning` of the increase ("" when it stands out of the noise)


def matched_control(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    wd: np.ndarray,
    reference: torch.Tensor,
    search: MatchOptions,
) -> MatchedControl:
    """The bottom-m% WD neurons whose negative ablation's perplexity increase over clean matches
    that of ``reference`` (a ``[layer, neuron]`` mask) on ``windows``: the clean and reference
    perplexities, the reference's paired increase and noise warning, then
    :func:`match_bottom_percent` with ``search`` (the bracket, tolerance and iterations of
    ``--match-*``; a scan's or a study's config is one)."""
    predicted = windows.shape[0] * (windows.shape[1] - 1)
    clean_nll = negative_ablation_window_nll(model, windows, batch_size, None)
    reference_nll = negative_ablation_window_nll(model, windows, batch_size, reference)
    clean = float(np.exp(float(clean_nll.sum()) / predicted))
    target = float(np.exp(float(reference_nll.sum()) / predicted))
    increase, increase_se = paired_increase(clean_nll, reference_nll, windows.shape[1] - 1)
    noise = noise_warning(increase, increase_se)
    if noise:
        log.warning("matched control: %s", noise)
    ablated_ppl = negative_ablation_perplexity(model, windows, batch_size)
    mask, match = match_bottom_percent(wd, ablated_ppl, target, search, clean=clean)
    return MatchedControl(mask, match, clean, target, increase, increase_se, noise)
