"""Mapping difficulty (MD): how much a neuron separates tokens whose inputs are close."""

from __future__ import annotations

import math

import torch

from dynamics.errors import UserInputError
from dynamics.stats.wasserstein import check_matrix, column_chunks, work_dtype

__all__ = ["mapping_difficulty"]


def mapping_difficulty(
    inputs: torch.Tensor, outputs: torch.Tensor, n_pairs: int = 10_000, seed: int = 0
) -> torch.Tensor:
    """Mapping difficulty (MD) of each neuron, as in the Wasserstein-neuron work.

    ``n_pairs`` token pairs ``(i, j)`` are drawn uniformly with replacement from
    ``torch.Generator().manual_seed(seed)``. Pairs whose inputs coincide
    (``||x_i - x_j|| == 0``, including ``i == j``) carry no ratio and are dropped, so
    slightly fewer than ``n_pairs`` pairs may be used. With ``dx = ||x_i - x_j||_2``,
    ``N_x = max dx``, ``dy = |y_i - y_j|`` per neuron and ``N_y`` its median over the
    pairs (the mean of the two middle values for an even count)::

        MD = mean over pairs of (dy / N_y) / (dx / N_x)

    Args:
        inputs: the MLP input vectors ``[tokens, d_in]``.
        outputs: the pre-activations ``[tokens, neurons]`` of the same tokens.
        n_pairs: how many random token pairs to draw.
        seed: seed of the pair draw.

    Returns:
        float32 ``[neurons]`` on ``outputs.device``; NaN where ``N_y == 0``.

    Raises:
        UserInputError: bad shapes, ``n_pairs < 1`` or no pair with distinct inputs.
    """
    check_matrix(inputs, "inputs")
    check_matrix(outputs, "outputs")
    n = inputs.shape[0]
    if outputs.shape[0] != n:
        raise UserInputError(f"inputs and outputs must share the token axis, got {n} and {outputs.shape[0]} tokens")
    if int(n_pairs) < 1:
        raise UserInputError(f"n_pairs must be a positive integer, got {n_pairs!r}")
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(n, (int(n_pairs),), generator=generator).to(inputs.device)
    second = torch.randint(n, (int(n_pairs),), generator=generator).to(inputs.device)
    dx = torch.cat(
        [
            torch.linalg.vector_norm((inputs[a] - inputs[b]).double(), dim=1)
            for a, b in zip(first.split(1024), second.split(1024))
        ]
    )
    keep = dx > 0
    if not bool(keep.any()):
        raise UserInputError(
            "mapping difficulty needs at least one token pair with distinct inputs; all drawn pairs coincide"
        )
    device, dtype = outputs.device, work_dtype(outputs)
    first, second, dx = first[keep].to(device), second[keep].to(device), dx[keep].to(device)
    weight = (dx.max() / dx).to(dtype)  # 1 / (dx / N_x) per pair
    pairs = len(dx)
    out, chunks = [], column_chunks(pairs, outputs.shape[1], device)
    width = chunks[0].stop - chunks[0].start
    buffers = [torch.empty(pairs * width, dtype=outputs.dtype, device=device) for _ in range(2)]
    for cols in chunks:
        block, size = outputs[:, cols], cols.stop - cols.start
        a, b = (buf[: pairs * size].view(pairs, size) for buf in buffers)  # reused: no page faults
        torch.index_select(block, 0, first, out=a)
        torch.index_select(block, 0, second, out=b)
        dy = a.sub_(b).abs_().to(dtype)
        ratio = (weight @ dy).to(torch.float64) / pairs
        median = _column_median(dy)
        out.append(torch.where(median > 0, ratio / median, math.nan))
    return torch.cat(out).to(torch.float32)


def _column_median(values: torch.Tensor) -> torch.Tensor:
    """Float64 median of each column (mean of the two middle values for an even count)."""
    count = values.shape[0]
    if values.device.type == "cpu":
        rows = values.T.contiguous()
        rows.numpy().sort(axis=1)  # NumPy's SIMD sort beats np.median's partition and torch.sort here
        ordered = rows.T
    else:
        ordered = values.sort(dim=0).values
    return (ordered[(count - 1) // 2].double() + ordered[count // 2].double()) / 2
