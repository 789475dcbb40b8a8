"""Log-probabilities through a plain float32 ``Linear`` vocabulary head, without the
``rows x vocabulary`` temporaries of ``log_softmax(head(hidden))``.

:func:`dynamics.models.modelcalls.hidden_log_probs` sends a head here when :func:`fits` says so.

- On CUDA, each chunk of rows is projected into one buffer and log-softmaxed in place
  (:func:`log_softmax_picked_`).
- On the CPU, each chunk of :data:`CPU_TILE_ROWS` rows is projected one vocabulary tile of
  :data:`CPU_TILE_VOCAB` columns at a time into one reused per-thread buffer, and the
  logsumexp is accumulated online (a running row maximum, and the sum rescaled when the
  maximum grows). A tile stays in the CPU's cache between the product that writes it and the
  reductions that read it; a whole row of a 50,304-word vocabulary does not. Measured on the
  project's machine (AMD EPYC, 2 MiB L2 per core, 32 MiB L3; ``scripts/bench_head.py``), this
  projects 4,096 positions of Pythia-14m's head about 1.3x faster than whole rows, on one
  thread or two, and it is faster for d_model 576 and 2048 as well.
  Its results differ from whole rows by float32 rounding of the sum only (a few 1e-7 relative).
  The chunk runs on the threads :mod:`dynamics.models.cpu_threads` gives the model (kind ``head``).
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import torch

from dynamics.models.cpu_threads import run_timed

#: Rows a projection needs before its CPU threads are timed on it (:func:`dynamics.models.cpu_threads.run_timed`).
HEAD_TIMING_ROWS = 64
#: Rows and vocabulary columns of one CPU logits tile (512 x 2048 float32 = 4 MiB).
CPU_TILE_ROWS = 512
CPU_TILE_VOCAB = 2048

#: ``(logit_scale, logits_scaling, final_logit_softcapping)``, each ``None`` where unset.
Transforms = tuple[float | None, float | None, float | None]

#: Each thread's reused CPU logits tile (:func:`_cpu_tile`).
_CPU_BUFFER = threading.local()


def fits(head: Any, hidden: torch.Tensor) -> bool:
    """Whether ``head`` is a plain float32 ``Linear`` that :func:`linear_head_log_probs` can run."""
    return (
        type(head) is torch.nn.Linear
        and head.weight.dtype == torch.float32
        and hidden.dtype == torch.float32
        and hidden.ndim == 2
        and not head._forward_hooks
        and not head._forward_pre_hooks
        and not (torch.is_grad_enabled() and (head.weight.requires_grad or hidden.requires_grad))  # out= has no grad
    )


def linear_head_log_probs(
    timing_key: Any,
    head: torch.nn.Linear,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    transforms: Transforms,
    step: int,
) -> torch.Tensor:
    """``log_softmax(transforms(head(hidden)))[targets]`` per row, float32, on ``hidden``'s
    device: :func:`whole_rows_log_probs` off the CPU, tile by tile on it. ``step``: rows per
    chunk off the CPU. ``timing_key``: the object (the model) whose CPU
    threads are timed."""
    if hidden.device.type != "cpu":
        return whole_rows_log_probs(head, hidden, targets, transforms, step)
    rows = hidden.shape[0]
    out = torch.empty(rows, dtype=torch.float32)
    if rows == 0:
        return out
    starts = list(range(0, rows, CPU_TILE_ROWS))

    def chunks(first: int, last: int | None) -> None:
        """Fill ``out`` for the row chunks ``starts[first:last]``."""
        for start in starts[first:last]:
            rows_here = slice(start, start + CPU_TILE_ROWS)
            out[rows_here] = _tiled_log_probs(head, hidden[rows_here], targets[rows_here], transforms)

    # The first chunk may be the one the head's threads are timed on; the rest run on them.
    threshold = min(CPU_TILE_ROWS, HEAD_TIMING_ROWS)
    run_timed(timing_key, "head", min(CPU_TILE_ROWS, rows), threshold, partial(chunks, 0, 1))
    if len(starts) > 1:
        run_timed(timing_key, "head", 0, threshold, partial(chunks, 1, None))
    return out


def whole_rows_log_probs(
    head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, transforms: Transforms, step: int
) -> torch.Tensor:
    """:func:`linear_head_log_probs` by chunks of ``step`` whole rows of logits in one buffer,
    each log-softmaxed in place: few large kernels, the shape a GPU wants."""
    rows = hidden.shape[0]
    out = torch.empty(rows, dtype=torch.float32, device=hidden.device)
    if rows == 0:
        return out
    buffer = torch.empty((min(step, rows), head.weight.shape[0]), dtype=torch.float32, device=hidden.device)
    for start in range(0, rows, step):
        logits = buffer[: hidden[start : start + step].shape[0]]
        head_logits(head, hidden[start : start + step], transforms, logits)
        out[start : start + logits.shape[0]] = log_softmax_picked_(logits, targets[start : start + step])
    return out


def _tiled_log_probs(
    head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, transforms: Transforms
) -> torch.Tensor:
    """:func:`linear_head_log_probs` of at most :data:`CPU_TILE_ROWS` rows, tile by vocabulary tile.

    A row whose logits are not all finite (an overflow, a NaN) is redone on its whole row by
    :func:`log_softmax_picked_`, which follows ``torch.logsumexp`` there."""
    rows, vocab = hidden.shape[0], head.weight.shape[0]
    peak = torch.full((rows,), float("-inf"))
    total = torch.zeros(rows)
    picked = torch.zeros(rows)
    for first in range(0, vocab, CPU_TILE_VOCAB):
        last = min(first + CPU_TILE_VOCAB, vocab)
        logits = _cpu_tile(rows, last - first)
        head_logits(head, hidden, transforms, logits, first, last)
        inside = ((targets >= first) & (targets < last)).nonzero().squeeze(1)
        if inside.numel():
            picked[inside] = logits[inside, targets[inside] - first]
        new_peak = torch.maximum(peak, logits.amax(dim=-1))
        total.mul_(torch.exp(peak - new_peak)).add_(logits.sub_(new_peak.unsqueeze(-1)).exp_().sum(dim=-1))
        peak = new_peak
    out = picked - (total.log() + peak)
    unusual = (~torch.isfinite(peak)).nonzero().squeeze(1)
    if unusual.numel():
        whole = torch.empty((unusual.numel(), vocab), dtype=torch.float32)
        head_logits(head, hidden[unusual], transforms, whole)
        out[unusual] = log_softmax_picked_(whole, targets[unusual])
    return out


def _cpu_tile(rows: int, columns: int) -> torch.Tensor:
    """A ``rows x columns`` float32 view of this thread's reused CPU tile. A fresh tensor per
    call is page-faulted in, which costs as much as 40% of a few-hundred-row product. It is
    made outside inference mode, so that calls in and out of ``torch.inference_mode`` share it."""
    kept = getattr(_CPU_BUFFER, "tile", None)
    if kept is None or kept.numel() < rows * columns:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            kept = torch.empty(max(rows * columns, CPU_TILE_ROWS * CPU_TILE_VOCAB), dtype=torch.float32)
        _CPU_BUFFER.tile = kept
    return kept[: rows * columns].view(rows, columns)


def head_logits(
    head: torch.nn.Linear,
    hidden: torch.Tensor,
    transforms: Transforms,
    out: torch.Tensor,
    first: int = 0,
    last: int | None = None,
) -> None:
    """The transformed logits of ``hidden`` for vocabulary entries ``first:last`` written into ``out``."""
    weight = head.weight[first:last]
    if head.bias is not None:
        torch.addmm(head.bias[first:last], hidden, weight.t(), out=out)
    else:
        torch.mm(hidden, weight.t(), out=out)
    scale, divisor, cap = transforms
    if scale is not None:
        out.mul_(scale)
    if divisor is not None:
        out.div_(divisor)
    if cap is not None:
        out.div_(cap).tanh_().mul_(cap)


def log_softmax_picked_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[target]`` per row of float32 ``logits`` ``[rows, vocab]``, which it
    overwrites (with ``exp(logits - row max)``): the target's logit minus the row's
    logsumexp, computed as ``torch.logsumexp`` does (a row whose max is infinite is not shifted)."""
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    peak = logits.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)
    logits.sub_(peak).exp_()
    return picked - (logits.sum(dim=-1).log() + peak.squeeze(-1))
