"""The paper's reference variant of WD: W1 to a seeded random N(0, 1) sample.

The exact engine (:mod:`dynamics.stats.wasserstein`) integrates against the Gaussian itself; this
variant reproduces what ``scipy.stats.wasserstein_distance(z, normal_sample)`` gives, for
comparison with published numbers.
"""

from __future__ import annotations

import math

import torch

from dynamics.errors import UserInputError
from dynamics.stats.wasserstein import check_matrix, column_chunks, work_dtype

__all__ = ["wasserstein_to_gaussian_sampled"]


def _standardized_columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 standardized columns (population std) and the mask of constant ones."""
    x = x.detach().to(torch.float64)
    std, mean = torch.std_mean(x, dim=0, correction=0)
    undefined = ~torch.isfinite(std) | (std == 0)
    return (x - mean) / torch.where(undefined, 1.0, std), undefined


def _sorted_columns(z: torch.Tensor) -> torch.Tensor:
    """Each column of ``z`` sorted (NumPy on CPU, where torch.sort over dim 0 is slow)."""
    if z.device.type == "cpu":
        rows = z.T.contiguous()
        rows.numpy().sort(axis=1)
        return rows.T
    return z.sort(dim=0).values


def wasserstein_to_gaussian_sampled(x: torch.Tensor, n_samples: int | None = None, seed: int = 0) -> torch.Tensor:
    """The paper's reference variant: W1 to a seeded random N(0, 1) sample.

    Each standardized column is compared with one sample of ``n_samples`` draws (default:
    as many as there are tokens) from ``torch.Generator().manual_seed(seed)``, shared by
    all neurons. The distance between the two empirical distributions is what
    ``scipy.stats.wasserstein_distance(z, sample)`` returns: the integral of
    ``|F_z^{-1}(u) - F_s^{-1}(u)|`` over the merged grid of both quantile steps.

    Args:
        x: pre-activations ``[tokens, neurons]``, any float dtype, any device.
        n_samples: size of the normal sample; None means ``tokens``.
        seed: seed of the normal sample.

    Returns:
        float32 ``[neurons]`` on ``x.device`` (float64 for float64 input); NaN for
        constant or non-finite columns.
    """
    check_matrix(x)
    n = x.shape[0]
    m = n if n_samples is None else int(n_samples)
    if m < 1:
        raise UserInputError(f"n_samples must be a positive integer or None, got {n_samples!r}")
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(m, generator=generator, dtype=torch.float64).sort().values.to(x.device)
    # Steps of both quantile functions on the common integer grid of 1/(n m).
    edges = torch.unique(torch.cat([torch.arange(n + 1) * m, torch.arange(m + 1) * n])).to(x.device)
    left, weight = edges[:-1], (edges[1:] - edges[:-1]).to(torch.float64) / (n * m)
    ref = sample[left // n][:, None]
    out = []
    for cols in column_chunks(len(left), x.shape[1], x.device):
        z, undefined = _standardized_columns(x[:, cols])
        z = _sorted_columns(z)[left // m]
        out.append(((z - ref).abs_() * weight[:, None]).sum(dim=0).masked_fill_(undefined, math.nan))
    return torch.cat(out).to(work_dtype(x))
