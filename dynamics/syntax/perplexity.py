"""Perplexity on a corpus cut into non-overlapping token windows.

Each window is one independent forward pass; its first token is context only, so a window
of ``L`` tokens predicts ``L - 1`` of them. The perplexity is ``exp`` of the mean negative
log-likelihood over all predicted tokens of all windows. The model runs as the caller left
it: inside an ablation context the result is the ablated perplexity.
"""

from __future__ import annotations

import logging
import math

import torch

from dynamics.errors import UserInputError
from dynamics.execution.progress import progress_bar
from dynamics.models.cpu_threads import map_batches
from dynamics.models.modelcalls import capabilities, eval_mode, model_device, replicate_rows, sequence_log_probs

logger = logging.getLogger(__name__)


def token_nll(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Negative log-likelihood (nats, float64) of tokens ``1..L-1`` of each window: ``[n_windows, L - 1]``.

    Args:
        model: A causal language model returning ``.logits``.
        windows: Token ids, a LongTensor ``[n_windows, L]`` with ``L >= 2``.
        batch_size: Windows per forward pass (the logits take ``batch_size x L x vocab``
            floats).
        device: Where the windows go; default the model's device.
        progress: Show a tqdm bar over windows.
    """
    return token_nll_each(model, windows, 1, batch_size, device, progress)[0]


def token_nll_each(
    model: torch.nn.Module,
    windows: torch.Tensor,
    copies: int,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """:func:`token_nll` under ``copies`` ablation conditions at once, ``[copy, n_windows, L - 1]``: each
    batch of windows runs ``copies`` times over in one pass, block ``c`` being condition ``c`` of
    :func:`dynamics.ablation.hooks.ablate_rows`. On the CPU, batches may run side by side
    (:func:`dynamics.models.cpu_threads.map_batches`), each exactly as alone."""
    if copies < 1:
        raise UserInputError(f"copies={copies}; expected at least 1")
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.shape[0] < 1:
        raise UserInputError(f"token windows of shape {tuple(windows.shape)}; expected [n_windows >= 1, window >= 2]")
    if batch_size < 1:
        raise UserInputError(f"batch_size={batch_size}; expected a positive integer")
    device = torch.device(device) if device is not None else model_device(model)
    out = torch.zeros((copies, windows.shape[0], windows.shape[1] - 1), dtype=torch.float64)
    with (
        eval_mode(model),
        progress_bar(total=windows.shape[0], unit="window", desc="perplexity", disable=not progress) as bar,
    ):

        def run(start: int) -> torch.Tensor:
            batch = windows[start : start + batch_size].to(device=device, dtype=torch.long)
            return (-sequence_log_probs(model, replicate_rows(batch, copies))).double().cpu()

        capabilities(model)  # probed here, before batches may run side by side
        starts = range(0, windows.shape[0], batch_size)
        for start, nll in zip(starts, map_batches(device, run, starts)):
            rows = min(batch_size, windows.shape[0] - start)
            out[:, start : start + rows] = nll.reshape(copies, rows, -1)
            bar.update(rows)
    return out


def window_nll(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Summed negative log-likelihood (nats, float64) of tokens ``1..L-1`` of each window, ``[n_windows]``.

    See :func:`token_nll` for the arguments.
    """
    return token_nll(model, windows, batch_size, device, progress).sum(dim=1)


def window_nll_each(
    model: torch.nn.Module,
    windows: torch.Tensor,
    copies: int,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """:func:`window_nll` under ``copies`` conditions at once, ``[copy, n_windows]`` (see :func:`token_nll_each`)."""
    return torch.stack([nll.sum(dim=1) for nll in token_nll_each(model, windows, copies, batch_size, device, progress)])


def perplexity_of(windows_nll: torch.Tensor, predicted: int) -> float:
    """``exp`` of the mean NLL over ``predicted`` tokens, from per-window sums (as :func:`perplexity`)."""
    return math.exp(float(windows_nll.sum()) / predicted)


def perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 1,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> float:
    """``exp(mean NLL)`` over the predicted tokens (positions ``1..L-1``) of all windows.

    See :func:`window_nll` for the arguments.
    """
    totals = window_nll(model, windows, batch_size=batch_size, device=device, progress=progress)
    value = perplexity_of(totals, windows.shape[0] * (windows.shape[1] - 1))
    logger.info("perplexity %.4f over %d windows x %d tokens", value, windows.shape[0], windows.shape[1])
    return value


def perplexity_each(
    model: torch.nn.Module,
    windows: torch.Tensor,
    copies: int,
    batch_size: int = 1,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> list[float]:
    """:func:`perplexity` under each of ``copies`` conditions (see :func:`token_nll_each`)."""
    totals = window_nll_each(model, windows, copies, batch_size=batch_size, device=device, progress=progress)
    values = [perplexity_of(row, windows.shape[0] * (windows.shape[1] - 1)) for row in totals]
    for value in values:
        logger.info("perplexity %.4f over %d windows x %d tokens", value, windows.shape[0], windows.shape[1])
    return values
