"""Intervals of one condition's value on its own (the comparisons of two are in :mod:`dynamics.stats.paired`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from dynamics.errors import UserInputError
from dynamics.stats.paired import complete_rows, paired_bootstrap_sums, percentile_interval


def perplexity_interval(
    window_nll: ArrayLike, window_tokens: ArrayLike, n_boot: int = 2_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """``(perplexity, low, high)``: ``exp(sum nll / sum tokens)`` over the windows and its percentile
    bootstrap interval, the windows resampled (as :func:`dynamics.stats.paired.perplexity_ratio`
    resamples them in pairs); a window with a NaN is dropped, NaNs when none is left."""
    if n_boot < 1 or not 0 < level < 1:
        raise UserInputError(f"n_boot={n_boot}, level={level}: expected n_boot >= 1 and 0 < level < 1")
    nll, tokens = np.asarray(window_nll, dtype=float), np.asarray(window_tokens, dtype=float)
    if not np.isfinite(nll + tokens).any():  # a condition not measured (yet)
        return np.nan, np.nan, np.nan
    columns, _, _ = complete_rows(None, nll=nll, tokens=tokens)
    if columns[:, 1].sum() <= 0:
        return np.nan, np.nan, np.nan
    sums = paired_bootstrap_sums(columns, None, n_boot, seed)
    low, high = percentile_interval(np.exp(sums[:, 0] / sums[:, 1]), level)
    return float(np.exp(columns[:, 0].sum() / columns[:, 1].sum())), low, high
