"""Differentiated token pairs: tokens whose MLP inputs are close but whose pre-activations are far apart.

Definitions
-----------
The ``T`` analysed tokens of one layer have MLP inputs ``x_t`` (``[T, d]``) and
pre-activations ``y_t[n]`` (``[T, N]``), ``n`` a neuron.

*Neighbours.* ``cos(i, j) = <x_i, x_j> / (||x_i|| ||x_j||)``, computed in float64 and
rounded to float32. The ``k`` nearest neighbours of token ``i`` are the ``k`` tokens
``j != i`` of largest ``cos(i, j)``; equal (float32) similarities are ordered by the smaller
``j`` (float32 spacing is ~6e-8 near 1, far above the float64 product's rounding, so the
tie rule holds on CPU and GPU alike). A token with ``||x|| = 0`` has no direction: it has
no neighbours and is nobody's neighbour. Rows short of ``k`` eligible neighbours are
padded with ``-1``. Duplicated inputs are neighbours of each other (cosine 1) like any
other tokens, and take up neighbour slots.

*Candidate pairs.* The unordered pairs ``(i, j)``, ``i < j``, of the kNN graph (``j`` a
neighbour of ``i`` or ``i`` one of ``j``), each once, in the order of ``(i, j)``. Pairs with
``||x_i - x_j|| = 0`` (duplicated inputs) carry no ratio and are dropped.

*Ratio.* For neuron ``n`` and candidate pair ``(i, j)``::

    r_n(i, j) = |y_i[n] - y_j[n]| / ||x_i - x_j||_2        (float64)

This is the summand of mapping difficulty without its per-layer constants (``N_x`` and the
neuron's ``N_y``), which leave each neuron's ranking unchanged. A neuron's *differentiated
pairs* are its ``top`` candidate pairs of largest ``r_n``; equal ratios are ordered by the
smaller ``(i, j)``. If there are fewer than ``top`` candidate pairs, the remaining slots hold
token ``-1``, ratio and pre-activations NaN.

*Regions.* A pair with pre-activations ``(a, b)`` is *negative* if ``a < 0`` and ``b < 0``,
*positive* if ``a >= 0`` and ``b >= 0`` (``-0.0`` counts as ``>= 0``), *straddling*
otherwise. A neuron's region fractions are over its differentiated pairs (padding
ignored); its *base rate* is the same fractions over all its candidate pairs.

*Part-of-speech enrichment* and *token pairs*: :mod:`dynamics.stats.enrichment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dynamics.errors import UserInputError
from dynamics.stats.wasserstein import check_matrix, work_dtype

__all__ = [
    "REGIONS",
    "DifferentiatedPairs",
    "base_region_fractions",
    "candidate_pairs",
    "differentiated_pairs",
    "nearest_neighbours",
    "pair_regions",
    "region_fractions",
]

REGIONS = ("negative", "positive", "straddling")

# Bytes of working memory per chunk. On CPU a chunk's buffers stay near the caches; on a GPU
# larger chunks keep the device busy.
_CPU_BYTES = 1 << 26
_CUDA_BYTES = 1 << 30
# Selection runs in float32 and is then redone exactly in float64 on every pair whose float32
# ratio is within this relative margin of the top-th one (float32 rounding is ~2e-7 here).
_SLACK = 1e-5

IndexLike = torch.Tensor | np.ndarray | Sequence[int]


@dataclass(frozen=True)
class DifferentiatedPairs:
    """Each chosen neuron's differentiated pairs (see the module docstring).

    Attributes:
        neurons: the neurons' column indices ``[neuron]`` (int64).
        pairs: token indices ``[neuron, top, 2]`` (int64, ``i < j``; ``-1`` padding).
        ratio: ``r_n(i, j)`` ``[neuron, top]`` (float64, descending; NaN padding).
        pre: pre-activations of both tokens ``[neuron, top, 2]`` (NaN padding).
        first: first tokens of all candidate pairs with distinct inputs ``[pairs]`` (int64).
        second: their second tokens ``[pairs]``, ``first < second``.
    """

    neurons: torch.Tensor
    pairs: torch.Tensor
    ratio: torch.Tensor
    pre: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor


def _budget(device: torch.device) -> int:
    return _CUDA_BYTES if device.type == "cuda" else _CPU_BYTES


def _check_inputs(inputs: torch.Tensor) -> None:
    check_matrix(inputs, "inputs")
    bad = (~torch.isfinite(inputs)).any(dim=1).nonzero()
    if len(bad):
        raise UserInputError(f"inputs hold non-finite values, first at token {int(bad[0])}")


def _check_k(k: int, n_tokens: int) -> None:
    if not 1 <= int(k) <= n_tokens - 1:
        raise UserInputError(f"k must be between 1 and the token count - 1 = {n_tokens - 1}, got k={k!r}")


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values.reshape(-1)[index]`` via ``index_select``: advanced indexing is far slower on CPU."""
    return values.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)


def _ordered_take(
    rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, n_rows: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the ``width`` entries of largest ``keys``, equal keys in the given order.

    ``rows`` must be ascending and the entries of a row in tie-break order (as
    ``nonzero`` yields them). Returns ``(values [n_rows, width], keys [n_rows, width],
    valid [n_rows, width])``; slots beyond a row's entries are not valid.
    """
    # Two stable sorts: by descending key, then by row: rows stay ascending, ties keep their order.
    order = torch.argsort(-keys, stable=True)
    order = _take(order, torch.argsort(_take(rows, order), stable=True))
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(width, device=rows.device)
    valid = slot[None, :] < counts[:, None]
    at = (starts[:, None] + slot[None, :]).clamp(max=max(len(order) - 1, 0))
    if len(order) == 0:
        return (
            torch.zeros((n_rows, width), dtype=values.dtype, device=rows.device),
            torch.zeros((n_rows, width), dtype=keys.dtype, device=rows.device),
            valid,
        )
    return _take(values, _take(order, at)), _take(keys, _take(order, at)), valid


def nearest_neighbours(inputs: torch.Tensor, k: int, chunk_rows: int | None = None) -> torch.Tensor:
    """Each token's ``k`` nearest other tokens by cosine similarity of their inputs, exactly.

    Similarities are float64 matrix products of the unit rows, rounded to float32 before
    ranking, so values equal up to the product's rounding tie; ties go to the lower index
    (``topk`` gives each row's k-th value, every entry at or above it is then ordered by
    two stable sorts). Zero-norm rows have no neighbours and are nobody's neighbour.

    Args:
        inputs: MLP inputs ``[tokens, d]``, any float dtype, any device.
        k: neighbours per token, ``1 <= k < tokens``.
        chunk_rows: rows of the similarity matrix computed at once; by default what keeps a
            chunk within 64 MiB on CPU, 1 GiB on CUDA.

    Returns:
        int64 ``[tokens, k]`` on ``inputs.device``, nearest first; ``-1`` where a row has
        fewer than ``k`` eligible neighbours.

    Raises:
        UserInputError: not a 2-D float tensor, non-finite values, bad ``k`` or ``chunk_rows``.
    """
    _check_inputs(inputs)
    n = inputs.shape[0]
    _check_k(k, n)
    k = int(k)
    if chunk_rows is None:
        chunk_rows = max(1, _budget(inputs.device) // (16 * n))  # float64 + float32 + mask per entry
    elif int(chunk_rows) < 1:
        raise UserInputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    x = inputs.detach().to(torch.float64)
    norms = torch.linalg.vector_norm(x, dim=1)
    zero = norms == 0
    unit = x / torch.where(zero, 1.0, norms)[:, None]
    has_zero = bool(zero.any())
    out = []
    for start in range(0, n, int(chunk_rows)):
        stop = min(start + int(chunk_rows), n)
        sim = (unit[start:stop] @ unit.T).to(torch.float32)
        if has_zero:
            sim[:, zero] = -torch.inf
            sim[zero[start:stop]] = -torch.inf
        sim.view(-1).index_fill_(0, torch.arange(stop - start, device=sim.device) * (n + 1) + start, -torch.inf)
        # Cosines are >= -1: the clamp keeps excluded (-inf) entries out of short rows.
        kth = sim.topk(k, dim=1).values[:, -1:].clamp(min=-2.0)
        rows, cols = (sim >= kth).nonzero(as_tuple=True)
        picked, _, valid = _ordered_take(rows, _take(sim, rows * n + cols), cols, stop - start, k)
        out.append(torch.where(valid, picked, -1))
    return torch.cat(out)


def candidate_pairs(neighbours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unique unordered pairs ``(first < second)`` of a kNN graph, sorted by ``(first, second)``.

    Args:
        neighbours: ``[tokens, k]`` from :func:`nearest_neighbours` (``-1`` entries ignored).

    Returns:
        ``(first, second)``, int64 ``[pairs]`` each, on ``neighbours.device``.
    """
    n = neighbours.shape[0]
    rows = torch.arange(n, device=neighbours.device)[:, None].expand_as(neighbours)
    keep = neighbours >= 0
    a, b = rows[keep], neighbours[keep].to(torch.int64)
    key = torch.unique(torch.minimum(a, b) * n + torch.maximum(a, b))
    return key // n, key % n


def _as_neurons(neurons: IndexLike | None, n_neurons: int, device: torch.device) -> torch.Tensor:
    if neurons is None:
        return torch.arange(n_neurons, device=device)
    chosen = torch.as_tensor(np.asarray(neurons.cpu() if isinstance(neurons, torch.Tensor) else neurons))
    if chosen.ndim != 1 or chosen.is_floating_point() or chosen.dtype == torch.bool:
        raise UserInputError(f"neurons must be a 1-D array of column indices, got {chosen.dtype} {tuple(chosen.shape)}")
    bad = chosen[(chosen < 0) | (chosen >= n_neurons)]
    if len(bad):
        raise UserInputError(f"neuron {int(bad[0])} is out of range: pre has {n_neurons} neurons")
    return chosen.to(device, torch.int64)


def _pair_distances(inputs: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Float64 ``||x_i - x_j||`` of each pair (the float32 differences are exact in float64)."""
    step = max(1, _budget(inputs.device) // (16 * inputs.shape[1]))
    x = inputs.detach()
    parts = [
        torch.linalg.vector_norm(x.index_select(0, a).double() - x.index_select(0, b).double(), dim=1)
        for a, b in zip(first.split(step), second.split(step))
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=inputs.device)


def differentiated_pairs(
    inputs: torch.Tensor, pre: torch.Tensor, neurons: IndexLike | None = None, k: int = 10, top: int = 20
) -> DifferentiatedPairs:
    """Each neuron's ``top`` kNN pairs of largest ``|pre_i - pre_j| / ||x_i - x_j||``.

    Ratios are computed in the working dtype (float32 for float32 ``pre``) in chunks of
    neurons that keep the ``[neurons, pairs]`` buffers within 64 MiB on CPU, 1 GiB on CUDA;
    every pair within a relative :data:`_SLACK` of a neuron's top-th ratio is then ranked
    again on its exact float64 ratio, so the result is the float64 ranking (ties: smaller
    ``(i, j)`` first).

    Args:
        inputs: MLP inputs ``[tokens, d]``.
        pre: pre-activations ``[tokens, neurons]`` of the same tokens, on the same device.
        neurons: column indices of ``pre`` to analyse, in the order wanted; ``None``: all.
        k: neighbours per token of the kNN graph.
        top: differentiated pairs kept per neuron.

    Returns:
        :class:`DifferentiatedPairs` on ``inputs.device``.

    Raises:
        UserInputError: bad shapes or devices, non-finite values, bad ``k``, ``top`` or neurons.
    """
    _check_inputs(inputs)
    check_matrix(pre, "pre")
    n = inputs.shape[0]
    if pre.shape[0] != n:
        raise UserInputError(f"inputs and pre must share the token axis, got {n} and {pre.shape[0]} tokens")
    if pre.device != inputs.device:
        raise UserInputError(f"inputs and pre must be on one device, got {inputs.device} and {pre.device}")
    _check_k(k, n)
    if int(top) < 1:
        raise UserInputError(f"top must be a positive integer, got top={top!r}")
    top, device = int(top), inputs.device
    chosen = _as_neurons(neurons, pre.shape[1], device)
    first, second = candidate_pairs(nearest_neighbours(inputs, k))
    dx = _pair_distances(inputs, first, second)
    distinct = dx > 0
    first, second, dx = first[distinct], second[distinct], dx[distinct]
    n_pairs, dtype, values = len(dx), work_dtype(pre), pre.detach()
    width = min(top, n_pairs)
    pairs = torch.full((len(chosen), top, 2), -1, dtype=torch.int64, device=device)
    ratio = torch.full((len(chosen), top), torch.nan, dtype=torch.float64, device=device)
    pre_pairs = torch.full((len(chosen), top, 2), torch.nan, dtype=pre.dtype, device=device)
    if width > 0:
        # 1/dx capped at the dtype's max, so a zero difference never makes 0 * inf = NaN
        inv_dx = (1.0 / dx).clamp(max=torch.finfo(dtype).max).to(dtype)
        per_chunk = max(1, _budget(device) // ((2 * n_pairs + n) * dtype.itemsize + n_pairs))  # 2 ratio buffers, mask
        for start in range(0, len(chosen), per_chunk):
            cols = chosen[start : start + per_chunk]
            block = values.index_select(1, cols).T.to(dtype).contiguous()  # [neurons, tokens]
            if not bool(torch.isfinite(block.sum(dim=1)).all()):  # cheap; an overflowing sum is re-checked
                bad = cols[(~torch.isfinite(block)).any(dim=1)]
                if len(bad):
                    raise UserInputError(f"pre holds non-finite values in neuron {int(bad[0])}")
            rough = block.index_select(1, first).sub_(block.index_select(1, second)).abs_().mul_(inv_dx)
            threshold = rough.topk(width, dim=1).values[:, -1:] * (1 - _SLACK)
            rows, cand = (rough >= threshold).nonzero(as_tuple=True)
            del rough
            # The block holds pre exactly (an upcast at most): exact ratios and values come from it.
            a, b = _take(first, cand), _take(second, cand)
            exact = (_take(block, rows * n + a).double() - _take(block, rows * n + b).double()).abs()
            best, best_ratio, _ = _ordered_take(rows, exact / _take(dx, cand), cand, len(cols), width)
            a, b = _take(first, best), _take(second, best)
            offset = torch.arange(len(cols), device=device)[:, None] * n
            span = slice(start, start + len(cols))
            pairs[span, :width, 0], pairs[span, :width, 1] = a, b
            ratio[span, :width] = best_ratio
            pre_pairs[span, :width, 0] = _take(block, offset + a).to(pre.dtype)
            pre_pairs[span, :width, 1] = _take(block, offset + b).to(pre.dtype)
    return DifferentiatedPairs(chosen, pairs, ratio, pre_pairs, first, second)


def pair_regions(pre_pairs: torch.Tensor) -> torch.Tensor:
    """Region code of each pair of pre-activations ``[..., 2]``: 0 negative, 1 positive,
    2 straddling (indices into :data:`REGIONS`); ``-1`` where a value is NaN (padding)."""
    pre_pairs = torch.as_tensor(pre_pairs)
    if pre_pairs.ndim < 1 or pre_pairs.shape[-1] != 2:
        raise UserInputError(f"pre_pairs must end in an axis of 2 (both tokens), got {tuple(pre_pairs.shape)}")
    negatives = (pre_pairs < 0).sum(dim=-1)
    codes = torch.where(negatives == 2, 0, torch.where(negatives == 0, 1, 2))
    return torch.where(pre_pairs.isnan().any(dim=-1), -1, codes)


def region_fractions(pre_pairs: torch.Tensor) -> torch.Tensor:
    """Fractions ``[neuron, 3]`` (float64, :data:`REGIONS` order) of each neuron's pairs
    ``[neuron, top, 2]`` in each region, padding ignored; NaN rows for neurons without pairs."""
    codes = pair_regions(pre_pairs)
    if codes.ndim != 2:
        raise UserInputError(f"pre_pairs must be [neuron, top, 2], got {tuple(torch.as_tensor(pre_pairs).shape)}")
    counts = torch.stack([(codes == r).sum(dim=1) for r in range(3)], dim=1).to(torch.float64)
    return counts / counts.sum(dim=1, keepdim=True)


def base_region_fractions(
    pre: torch.Tensor, first: torch.Tensor, second: torch.Tensor, neurons: IndexLike | None = None
) -> torch.Tensor:
    """Fractions ``[neuron, 3]`` (float64, :data:`REGIONS` order) of ALL candidate pairs
    ``(first, second)`` of each neuron in each region: the base rate of :func:`region_fractions`.

    Pass the ``first`` / ``second`` of a :class:`DifferentiatedPairs` to compare like with like.
    """
    check_matrix(pre, "pre")
    chosen = _as_neurons(neurons, pre.shape[1], pre.device)
    first, second = torch.as_tensor(first, device=pre.device), torch.as_tensor(second, device=pre.device)
    if first.shape != second.shape or first.ndim != 1 or len(first) == 0:
        raise UserInputError(
            f"first and second must be equal, non-empty 1-D, got {tuple(first.shape)}, {tuple(second.shape)}"
        )
    per_chunk = max(1, _budget(pre.device) // (4 * len(first)))
    parts = []
    for start in range(0, len(chosen), per_chunk):
        negative = (pre.detach().index_select(1, chosen[start : start + per_chunk]) < 0).to(torch.uint8)
        count = negative.index_select(0, first) + negative.index_select(0, second)  # negatives per pair: 2, 0, 1
        parts.append(torch.stack([(count == 2).sum(0), (count == 0).sum(0), (count == 1).sum(0)], dim=1))
    counts = torch.cat(parts).to(torch.float64)
    return counts / len(first)
