"""Drift of neurons' input-weight vectors between checkpoints: cosine dissimilarity."""

from __future__ import annotations

import math

import torch

from dynamics.errors import UserInputError

__all__ = ["cosine_drift"]

_CHUNK_ELEMENTS = 1 << 22


def cosine_drift(weights: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between each neuron's weight vector and its reference vector.

    Works on any leading shape (``[neurons, d]``, ``[layers, neurons, d]``, ...); the
    cosine is taken over the last axis. Rows are processed in chunks in float64 (cheap
    next to loading a checkpoint), and the result is float32 on ``weights.device``.
    Use it against a fixed reference checkpoint and against the previous checkpoint alike.

    Args:
        weights: input weights, ``[..., d]``.
        reference: the same shape, from the reference checkpoint.

    Returns:
        ``[...]`` float32 in [0, 2]; NaN where either vector has zero norm (no direction).

    Raises:
        UserInputError: the shapes differ or there is no feature axis.
    """
    if weights.shape != reference.shape or weights.ndim < 1:
        raise UserInputError(
            "weights and reference must have the same shape [..., d], "
            f"got {tuple(weights.shape)} and {tuple(reference.shape)}"
        )
    d = weights.shape[-1]
    flat_w = weights.detach().reshape(-1, d)
    flat_r = reference.detach().reshape(-1, d).to(weights.device)
    step = max(1, _CHUNK_ELEMENTS // max(d, 1))
    out = []
    for start in range(0, flat_w.shape[0], step):
        w = flat_w[start : start + step].to(torch.float64)
        r = flat_r[start : start + step].to(torch.float64)
        norms = torch.linalg.vector_norm(w, dim=1) * torch.linalg.vector_norm(r, dim=1)
        cos = (w * r).sum(dim=1) / norms
        out.append(torch.where(norms > 0, 1.0 - cos.clamp(-1.0, 1.0), math.nan))
    result = torch.cat(out) if out else torch.empty(0, dtype=torch.float64, device=weights.device)
    return result.to(torch.float32).reshape(weights.shape[:-1])
