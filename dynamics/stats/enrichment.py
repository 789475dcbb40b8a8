"""Which tokens the differentiated pairs of a neuron set involve (:mod:`dynamics.stats.differentiation`
finds the pairs): the share of each part of speech against its base rate, with a bootstrap CI over
neurons, the difference between two sets, and the most frequent token pairs.

Definitions
-----------
*Part-of-speech enrichment.* Each token ``t`` has a tag ``g(t)`` in ``0 .. G-1``. A neuron's
share of tag ``g`` is the fraction of the tokens of its differentiated pairs with tag ``g``
(both tokens of every pair, a token counted as often as it occurs; padding ignored).
Neurons without any pair are left out; ``n`` counts the others. Over the neurons of a set:

- mean share ``m(g)``: the mean over the ``n`` neurons of their shares of ``g``;
- base share ``b(g)``: the fraction of the ``T`` analysed tokens with tag ``g``;
- enrichment ``e(g) = m(g) / b(g)`` (NaN where ``b(g) = 0``);
- CI: percentile bootstrap over neurons. ``n_boot`` resamples of the ``n`` neurons with
  replacement (``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))``), ``m*(g)``
  of each; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
  ``m*`` (NumPy's linear interpolation). ``b(g)`` comes from all tokens and is held fixed,
  so the CI of ``e(g)`` is the CI of ``m(g)`` divided by ``b(g)``;
- difference of two sets ``A`` (e.g. the top-1% WD neurons) and ``B`` (a random control):
  ``m_A(g) - m_B(g)``, its CI from resampling the neurons of ``A`` and of ``B``
  independently (``A``'s draws first, from the one seeded generator).

*Token pairs.* The number of times each unordered pair of token ids occurs among the
differentiated pairs of the neurons (a pair found for three neurons counts three times).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from dynamics.errors import UserInputError

IndexLike = torch.Tensor | np.ndarray | Sequence[int]


def _as_numpy_ints(values: torch.Tensor | np.ndarray | Sequence[int], name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        raise UserInputError(f"{name} must hold integers, got {array.dtype}")
    return array.astype(np.int64)


def _check_pair_tokens(pair_tokens: IndexLike, n_tokens: int) -> np.ndarray:
    tokens = _as_numpy_ints(pair_tokens, "pair_tokens")
    if tokens.ndim != 3 or tokens.shape[2] != 2:
        raise UserInputError(f"pair_tokens must be [neuron, top, 2], got {tokens.shape}")
    if tokens.size and (tokens.min() < -1 or tokens.max() >= n_tokens):
        bad = tokens[(tokens < -1) | (tokens >= n_tokens)][0]
        raise UserInputError(f"pair_tokens holds token {bad}, outside 0..{n_tokens - 1} (or -1 padding)")
    return tokens


def tag_shares(pair_tokens: IndexLike, token_tags: IndexLike, n_tags: int) -> np.ndarray:
    """Each neuron's share of every tag among the tokens of its pairs: float64 ``[neuron, n_tags]``
    (both tokens of every pair counted, ``-1`` padding ignored; NaN rows for neurons without pairs)."""
    tags = _as_numpy_ints(token_tags, "token_tags")
    if int(n_tags) < 1 or tags.ndim != 1 or tags.min(initial=0) < 0 or tags.max(initial=0) >= int(n_tags):
        raise UserInputError(f"token_tags must be a 1-D array of tags in 0..n_tags - 1, with n_tags={n_tags!r} >= 1")
    tokens = _check_pair_tokens(pair_tokens, len(tags))
    tokens = tokens.reshape(tokens.shape[0], -1)
    n_neurons, n_tags = tokens.shape[0], int(n_tags)
    rows = np.repeat(np.arange(n_neurons), tokens.shape[1])
    flat = tokens.ravel()
    keep = flat >= 0
    counts = np.bincount(rows[keep] * n_tags + tags[flat[keep]], minlength=n_neurons * n_tags)
    counts = counts.reshape(n_neurons, n_tags).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return counts / counts.sum(axis=1, keepdims=True)


def _check_bootstrap(n_boot: int, level: float) -> None:
    if int(n_boot) < 1:
        raise UserInputError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < float(level) < 1:
        raise UserInputError(f"level must lie strictly between 0 and 1, got {level!r}")


def _defined(shares: np.ndarray, name: str) -> np.ndarray:
    kept = shares[~np.isnan(shares).any(axis=1)]
    if len(kept) == 0:
        raise UserInputError(f"{name}: no neuron has a differentiated pair")
    return kept


def _boot_means(shares: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, tags]`` means over resampled neurons (rows drawn with replacement)."""
    n = len(shares)
    draws = rng.integers(0, n, size=(n_boot, n))
    weights = np.bincount((np.arange(n_boot)[:, None] * n + draws).ravel(), minlength=n_boot * n)
    return weights.reshape(n_boot, n) @ shares / n


def _interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return low, high


def pos_enrichment(
    pair_tokens: IndexLike,
    token_tags: IndexLike,
    n_tags: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> xr.Dataset:
    """Tag shares among the neurons' differentiated pairs against all tokens' (module docstring).

    Args:
        pair_tokens: token indices ``[neuron, top, 2]`` (``DifferentiatedPairs.pairs``).
        token_tags: tag of each of the ``T`` analysed tokens, ints in ``0..n_tags - 1``.
        n_tags: number of tags.
        n_boot: bootstrap resamples of the neurons.
        seed: seed of the resampling.
        level: coverage of the intervals.

    Returns:
        Over ``tag``: ``mean_share``, ``mean_share_low``/``_high``, ``base_share``,
        ``enrichment``, ``enrichment_low``/``_high``; attrs ``n_neurons`` (neurons with pairs),
        ``n_boot``, ``seed``, ``level``.
    """
    _check_bootstrap(n_boot, level)
    shares = _defined(tag_shares(pair_tokens, token_tags, n_tags), "pos_enrichment")
    tags = _as_numpy_ints(token_tags, "token_tags")
    base = np.bincount(tags, minlength=int(n_tags)) / len(tags)
    mean = shares.mean(axis=0)
    low, high = _interval(_boot_means(shares, int(n_boot), np.random.default_rng(seed)), float(level))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = [np.where(base > 0, v / np.where(base > 0, base, 1.0), np.nan) for v in (mean, low, high)]
    names = (
        "mean_share",
        "mean_share_low",
        "mean_share_high",
        "base_share",
        "enrichment",
        "enrichment_low",
        "enrichment_high",
    )
    data = {name: ("tag", v) for name, v in zip(names, (mean, low, high, base, *ratios))}
    attrs = {"n_neurons": len(shares), "n_boot": int(n_boot), "seed": int(seed), "level": float(level)}
    return xr.Dataset(data, coords={"tag": np.arange(int(n_tags))}, attrs=attrs)


def enrichment_difference(
    set_a: IndexLike,
    set_b: IndexLike,
    token_tags: IndexLike,
    n_tags: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> xr.Dataset:
    """Mean tag share of neuron set A minus set B, with a bootstrap CI (module docstring).

    Args:
        set_a: token indices ``[neuron, top, 2]`` of set A (e.g. the top-1% WD neurons).
        set_b: the same for set B (e.g. the random control), on the same tokens.
        token_tags: tag of each analysed token, ints in ``0..n_tags - 1``.
        n_tags: number of tags.
        n_boot: bootstrap resamples (of each set).
        seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        Over ``tag``: ``mean_share_a``, ``mean_share_b``, ``difference``,
        ``difference_low``/``_high``; attrs ``n_a``, ``n_b``, ``n_boot``, ``seed``, ``level``.
    """
    _check_bootstrap(n_boot, level)
    shares_a = _defined(tag_shares(set_a, token_tags, n_tags), "enrichment_difference (set A)")
    shares_b = _defined(tag_shares(set_b, token_tags, n_tags), "enrichment_difference (set B)")
    rng = np.random.default_rng(seed)
    boot = _boot_means(shares_a, int(n_boot), rng) - _boot_means(shares_b, int(n_boot), rng)
    low, high = _interval(boot, float(level))
    mean_a, mean_b = shares_a.mean(axis=0), shares_b.mean(axis=0)
    data = {
        "mean_share_a": ("tag", mean_a),
        "mean_share_b": ("tag", mean_b),
        "difference": ("tag", mean_a - mean_b),
        "difference_low": ("tag", low),
        "difference_high": ("tag", high),
    }
    attrs = {
        "n_a": len(shares_a),
        "n_b": len(shares_b),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "level": float(level),
    }
    return xr.Dataset(data, coords={"tag": np.arange(int(n_tags))}, attrs=attrs)


def token_pair_counts(pair_tokens: IndexLike, token_ids: IndexLike) -> Counter[tuple[int, int]]:
    """Occurrences of each unordered pair of token ids ``(smaller id, larger id)`` over all
    neurons' differentiated pairs ``[neuron, top, 2]`` (padding ignored)."""
    ids = _as_numpy_ints(token_ids, "token_ids")
    tokens = _check_pair_tokens(pair_tokens, len(ids)).reshape(-1, 2)
    tokens = tokens[(tokens >= 0).all(axis=1)]
    a, b = ids[tokens[:, 0]], ids[tokens[:, 1]]
    return Counter(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
