"""One condition's perplexity interval, against a slow resampling loop with its own generator."""

from __future__ import annotations

import numpy as np
import pytest

from dynamics.stats.intervals import perplexity_interval


def slow_interval(nll: np.ndarray, tokens: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """Windows drawn with replacement, one resample at a time; the percentile ends."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(nll), len(nll))
        values.append(np.exp(nll[pick].sum() / tokens[pick].sum()))
    return tuple(np.quantile(values, [0.025, 0.975]))


def test_the_interval_is_the_windows_bootstrap() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(200, 256, 300).astype(float)
    nll = tokens * rng.normal(3.0, 0.4, 300)  # windows of mean NLL around 3 nats
    value, low, high = perplexity_interval(nll, tokens, n_boot=20_000)
    assert value == pytest.approx(np.exp(nll.sum() / tokens.sum()), rel=1e-12)
    slow_low, slow_high = slow_interval(nll, tokens, 20_000, seed=99)
    assert low == pytest.approx(slow_low, rel=2e-3) and high == pytest.approx(slow_high, rel=2e-3)
    assert low < value < high
    assert perplexity_interval(nll, tokens, n_boot=20_000) == (value, low, high)  # seeded


def test_missing_windows_are_dropped_and_no_window_is_nan() -> None:
    nll, tokens = np.array([30.0, np.nan, 33.0, 28.0]), np.array([10.0, 10.0, 10.0, 10.0])
    assert perplexity_interval(nll, tokens, 500) == perplexity_interval(nll[[0, 2, 3]], tokens[[0, 2, 3]], 500)
    assert all(np.isnan(perplexity_interval(np.full(3, np.nan), np.ones(3))))
