"""Exact Wasserstein-1 distance of standardized neuron pre-activations to N(0, 1).

Every function takes pre-activations ``x`` of shape ``[tokens, neurons]`` and treats each
column (neuron) on its own, so callers may pass any slice of columns (``x[:, a:b]``) and
concatenate the results; the Gaussian tables depend only on the token count and are cached.

The exact distance
------------------
Column values are standardized with the population standard deviation (``ddof=0``) and
sorted, ``z_(1) <= ... <= z_(n)``. The empirical quantile function is the step function
``F^{-1}(u) = z_(i)`` on ``u in ((i-1)/n, i/n]``, so with ``Phi`` / ``phi`` the standard
normal cdf / pdf and ``A_i = Phi^{-1}((i-1)/n)``, ``B_i = Phi^{-1}(i/n)`` (``A_1 = -inf``,
``B_n = +inf``)::

    W1 = sum_i  int_{(i-1)/n}^{i/n} |z_(i) - Phi^{-1}(u)| du
       = sum_i  int_{A_i}^{B_i} |z_(i) - t| phi(t) dt            (u = Phi(t))

With ``H(t) = z Phi(t) + phi(t)`` (an antiderivative of ``(z - t) phi(t)``) and
``c = clamp(z, A, B)`` the cell integral is ``2 H(c) - H(A) - H(B)``. Written around the
cell's conditional mean ``mu_i = n (phi(A_i) - phi(B_i))`` this is::

    cell_i = |z_(i) - mu_i| / n + extra_i,
    extra_i = 2 int_{A}^{c} (z - t) phi dt   if z < mu_i,   2 int_{c}^{B} (t - z) phi dt  else

``extra_i`` is zero unless ``A_i < z_(i) < B_i``. The engine therefore spends a few
cheap dense passes on ``|z - mu| / n`` (in the working dtype) and evaluates ``Phi`` and
``phi`` in float64 only where a sample value may fall inside its own Gaussian cell (a
superset selected with a rounding margin; cells outside contribute an exact 0).

Precision: float64 input is computed in float64 (agrees with numerical integration to
~1e-12). Other float dtypes are computed in float32, centred before the sum of squares
and with float64 cell corrections; against the float64 result the absolute error is a
few 1e-8, also for shifted columns (|mean| >> std).

Constant columns (population std 0, including a single token) have no standardization;
their distances are ``NaN`` (``wd``, ``wd_neg`` and ``wd_pos`` alike), and so are the
distances of columns holding NaN or infinite values.

Sorting is the floor of any exact method. On CPU, chunks of columns are gathered into
cache-sized blocks and sorted with NumPy's vectorized (AVX-512 where available)
quicksort, many times faster than ``torch.sort`` over the token axis; the chunks run on
``torch.get_num_threads()`` worker threads while torch itself is set to one thread. On
CUDA, ``torch.sort`` runs on large chunks.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from dynamics.errors import UserInputError
from dynamics.models.cpu_threads import batch_workers, one_torch_thread, threads_outside, torch_on_one_thread_here

__all__ = ["wasserstein_split", "wasserstein_to_gaussian"]

_CPU_CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per buffer: stays in the L3 cache
_MIN_WIDTH = 16  # gather at least a whole 64-byte cache line per token row
_CUDA_CHUNK_ELEMENTS = 1 << 27
_LOOP_MIN_TOKENS = 8192  # below this, per-row Python loops cost more than extra passes
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class _GaussianCells:
    """The n cells of N(0, 1) of probability 1/n each, float64 on CPU (length n)."""

    lower: torch.Tensor  # A_i
    upper: torch.Tensor  # B_i
    pdf_lower: torch.Tensor  # phi(A_i)
    pdf_upper: torch.Tensor  # phi(B_i)
    mean: torch.Tensor  # mu_i, the conditional mean of N(0, 1) on the cell
    reach: torch.Tensor  # max(mu_i - A_i, B_i - mu_i), widened by a rounding margin


_CELLS: dict[int, _GaussianCells] = {}
_CELLS_ON_DEVICE: dict[tuple[int, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
_CELL_TABLES_ON_DEVICE: dict[tuple[int, str, torch.dtype], tuple[torch.Tensor, ...]] = {}


def _gaussian_cells(n: int) -> _GaussianCells:
    """Gaussian quantile cells for sample size ``n``; they depend on nothing else."""
    cells = _CELLS.get(n)
    if cells is None:
        probs = torch.arange(1, n, dtype=torch.float64) / n
        inner = torch.special.ndtri(probs)
        inf = torch.tensor([math.inf], dtype=torch.float64)
        lower = torch.cat([-inf, inner])
        upper = torch.cat([inner, inf])
        pdf_lower = _pdf(lower)
        pdf_upper = _pdf(upper)
        mean = n * (pdf_lower - pdf_upper)
        reach = torch.maximum(mean - lower, upper - mean)
        reach = reach * (1 + 1e-6) + 1e-5 * (1 + mean.abs())
        cells = _GaussianCells(lower, upper, pdf_lower, pdf_upper, mean, reach)
        if len(_CELLS) > 16:
            _CELLS.clear()
        _CELLS[n] = cells
    return cells


def _cells_on(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(-mean, reach)`` of the cells in the working dtype on the working device."""
    key = (n, str(device), dtype)
    found = _CELLS_ON_DEVICE.get(key)
    if found is None:
        cells = _gaussian_cells(n)
        found = ((-cells.mean).to(device, dtype), cells.reach.to(device, dtype))
        if len(_CELLS_ON_DEVICE) > 16:
            _CELLS_ON_DEVICE.clear()
        _CELLS_ON_DEVICE[key] = found
    return found


def _pdf(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * t * t) * _INV_SQRT_2PI


def check_matrix(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserInputError(f"{name} must be a 2-D float tensor [tokens, neurons], got {shape}")
    if x.shape[0] < 1:
        raise UserInputError(f"{name} must hold at least one token, got shape {tuple(x.shape)}")


def work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def column_chunks(n_tokens: int, n_neurons: int, device: torch.device) -> list[slice]:
    budget = _CUDA_CHUNK_ELEMENTS if device.type == "cuda" else _CPU_CHUNK_ELEMENTS
    width = max(_MIN_WIDTH, budget // max(n_tokens, 1))
    return [slice(s, min(s + width, n_neurons)) for s in range(0, n_neurons, width)]


class _Scratch:
    """Reusable CPU buffers of one worker thread (fresh allocations would page-fault)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        t = self.tensors.get(name)
        if t is None or t.dtype != dtype or t.shape[1] != shape[1] or t.shape[0] < shape[0]:
            t = self.tensors[name] = torch.empty(shape, dtype=dtype)
        return t[: shape[0]]


def _sorted_rows(x: torch.Tensor, cols: slice, dtype: torch.dtype, scratch: _Scratch | None) -> torch.Tensor:
    """Columns ``cols`` of ``x`` as rows ``[width, tokens]`` in ``dtype``, each sorted."""
    if scratch is None:
        return torch.sort(x[:, cols].T.to(dtype).contiguous(), dim=1).values
    n, width = x.shape[0], cols.stop - cols.start
    # Gather whole cache lines of x first, then transpose the small block in cache:
    # transposing straight from a wide x costs a TLB miss per element.
    block = scratch.get("block", (n, width), dtype) if width > 1 else None
    rows = scratch.get("rows", (width, n), dtype)
    if block is None:
        rows.copy_(x[:, cols].T)
    else:
        block.copy_(x[:, cols])
        rows.copy_(block.T)
    rows.numpy().sort(axis=1)  # in place; NumPy's SIMD quicksort, NaN last like torch
    return rows


def _center_(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre sorted rows in place on their working-dtype mean; returns the float64
    ``(inv_std, bias, undefined)`` with ``z = rows * inv_std + bias`` (population std).

    Centring before the sum of squares (an MKL dot per long row, accurate to ~1e-7) and
    keeping the small residual mean in ``bias`` keeps shifted columns (|mean| >> std)
    accurate in float32.
    """
    n = rows.shape[1]
    constant = rows[:, 0] == rows[:, -1]
    rows.sub_(rows.mean(dim=1, keepdim=True))
    rest = rows.mean(dim=1).to(torch.float64)
    if rows.device.type == "cpu" and n >= _LOOP_MIN_TOKENS:
        squares = torch.tensor([float(torch.dot(r, r)) for r in rows], dtype=torch.float64)
    else:
        squares = (rows * rows).sum(dim=1).to(torch.float64)
    var = (squares / n - rest * rest).clamp_min(0.0)
    undefined = constant | ~torch.isfinite(var) | (var == 0)
    inv_std = torch.where(undefined, 0.0, var.rsqrt())
    return inv_std, -rest * inv_std, undefined


def _cell_tables(n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(lower, upper, pdf_lower, pdf_upper, mean)`` of the cells, float64 on ``device`` (cached).

    On a GPU the millions of cells a chunk may look up are gathered there: a gather on the
    host plus two transfers cost more than all the dense passes of the chunk together.
    """
    cells = _gaussian_cells(n)
    tables = (cells.lower, cells.upper, cells.pdf_lower, cells.pdf_upper, cells.mean)
    if device.type == "cpu":
        return tables
    key = (n, str(device), torch.float64)
    found = _CELL_TABLES_ON_DEVICE.get(key)
    if found is None:
        found = tuple(t.to(device) for t in tables)
        if len(_CELL_TABLES_ON_DEVICE) > 4:
            _CELL_TABLES_ON_DEVICE.clear()
        _CELL_TABLES_ON_DEVICE[key] = found
    return found


def _cell_extras(z: torch.Tensor, cell: torch.Tensor, n: int) -> torch.Tensor:
    """Exact ``extra_i`` (see the module docstring) in float64 at values ``z`` of cells ``cell``."""
    idx = cell.to(z.device)
    lower, upper, pdf_lower, pdf_upper, mean = (t[idx] for t in _cell_tables(n, z.device))
    cell = cell.to(torch.float64)
    c = torch.minimum(torch.maximum(z, lower), upper)
    pdf_c = _pdf(c)
    # Phi(c) - a and b - Phi(c), each taken from the tail where it is small.
    below = 2.0 * (z * (torch.special.ndtr(c) - cell / n) + pdf_c - pdf_lower)
    above = 2.0 * (pdf_c - pdf_upper - z * (torch.special.ndtr(-c) - (n - 1 - cell) / n))
    return torch.where(z < mean, below, above).clamp_min_(0.0)


def _split_sums(values: torch.Tensor, n_neg: torch.Tensor, loop: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 sums of each row's first ``n_neg[r]`` entries and of the rest."""
    if loop:
        # A loop over rows reads each value once; a mask would cost two more passes.
        halves = [(float(v[:k].sum()), float(v[k:].sum())) for v, k in zip(values, n_neg.tolist())]
        both = torch.tensor(halves, dtype=torch.float64).reshape(-1, 2)
        return both[:, 0], both[:, 1]
    is_neg = torch.arange(values.shape[1], device=values.device)[None, :] < n_neg[:, None]
    neg = torch.where(is_neg, values, 0).sum(dim=1).to(torch.float64)
    pos = torch.where(is_neg, 0, values).sum(dim=1).to(torch.float64)
    return neg, pos


def _exact_chunk(x: torch.Tensor, cols: slice, scratch: _Scratch | None) -> tuple[torch.Tensor, ...]:
    """``(wd_neg, wd_pos, undefined)`` float64/bool for the columns ``cols`` of ``x``."""
    n, dtype, device = x.shape[0], work_dtype(x), x.device
    neg_mean, reach = _cells_on(n, device, dtype)
    rows = _sorted_rows(x, cols, dtype, scratch)
    width = rows.shape[0]
    n_neg = torch.searchsorted(rows, torch.zeros((width, 1), dtype=dtype, device=device)).view(-1)
    inv_std, bias, undefined = _center_(rows)
    scale, shift = inv_std[:, None].to(device, dtype), bias[:, None].to(device, dtype)
    # |z - mu| with z = rows * inv_std + bias, in three fused-ish passes.
    diff = scratch.get("diff", (width, n), dtype) if scratch is not None else torch.empty_like(rows)
    torch.addcmul(neg_mean, rows, scale, out=diff).add_(shift).abs_()
    if scratch is None:
        rows_idx, cells = torch.nonzero(diff < reach, as_tuple=True)
    else:
        inside = scratch.get("inside", (width, n), torch.bool)
        np.less(diff.numpy(), reach.numpy(), out=inside.numpy())  # 3x faster than torch.lt here
        flat = torch.from_numpy(np.flatnonzero(inside.numpy()))
        rows_idx, cells = flat // n, flat % n
    neg, pos = _split_sums(diff, n_neg, loop=scratch is not None and n >= _LOOP_MIN_TOKENS)
    z = rows[rows_idx, cells].to(torch.float64) * inv_std.to(device)[rows_idx] + bias.to(device)[rows_idx]
    extras = _cell_extras(z, cells, n)
    on_neg = cells < n_neg[rows_idx]
    neg = neg.to(device).div_(n).index_add_(0, rows_idx[on_neg], extras[on_neg])
    pos = pos.to(device).div_(n).index_add_(0, rows_idx[~on_neg], extras[~on_neg])
    return neg, pos, undefined.to(device)


def _exact_columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(wd_neg, wd_pos, undefined)`` of every column, float64/bool on ``x.device``."""
    check_matrix(x)
    x = x.detach()
    chunks = column_chunks(x.shape[0], x.shape[1], x.device)
    _cells_on(x.shape[0], x.device, work_dtype(x))  # build the shared tables once, up front
    if x.device.type != "cpu":
        parts = [_exact_chunk(x, cols, None) for cols in chunks]
    else:
        # Chunks are independent and each computed alike on any worker: as many workers as
        # torch's threads, or as the evaluation's batch workers (a small model's one thread).
        workers = max(1, min(max(threads_outside(), batch_workers()), len(chunks)))
        local = threading.local()

        def run(cols: slice) -> tuple[torch.Tensor, ...]:
            if not hasattr(local, "scratch"):
                local.scratch = _Scratch()
            return _exact_chunk(x, cols, local.scratch)

        with one_torch_thread():
            if workers == 1:
                parts = [run(cols) for cols in chunks]
            else:
                with ThreadPoolExecutor(workers, initializer=torch_on_one_thread_here) as pool:
                    parts = list(pool.map(run, chunks))
    return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]


def _finish(values: torch.Tensor, undefined: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return values.masked_fill(undefined, math.nan).to(dtype)


def wasserstein_to_gaussian(x: torch.Tensor) -> torch.Tensor:
    """Exact W1 distance of each standardized column of ``x`` to N(0, 1).

    Args:
        x: pre-activations ``[tokens, neurons]``, any float dtype, any device.

    Returns:
        ``[neurons]`` on ``x.device``, float64 for float64 input and float32 otherwise;
        NaN for constant or non-finite columns.
        Identical to the ``wd`` of :func:`wasserstein_split` (same computation).

    Raises:
        UserInputError: ``x`` is not a 2-D float tensor with at least one token.
    """
    wd, _, _ = wasserstein_split(x)
    return wd


def wasserstein_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W1 to N(0, 1) and its parts below and at/above each neuron's raw zero.

    The integral over the quantile axis ``u in [0, 1]`` is split at ``u0 = k / n``, where
    ``k`` is the number of the column's raw values strictly below 0 (so ``-0.0`` and ``0``
    count as "at/above"). The empirical quantile function is a step function, so the
    sample crosses raw zero exactly at a cell boundary and no cell is cut in two:
    ``wd_neg`` is the sum of the cells of the ``k`` negative raw values, ``wd_pos`` the sum
    of the others. In standardized units these are the cells with ``z < z0 = -mean/std``.

    Args:
        x: pre-activations ``[tokens, neurons]``, any float dtype, any device.

    Returns:
        ``(wd, wd_neg, wd_pos)``, each ``[neurons]`` on ``x.device`` (float64 for float64
        input, float32 otherwise), with ``wd`` computed as ``wd_neg + wd_pos`` in that
        dtype, so the identity holds exactly. NaN for constant or non-finite columns.
    """
    neg, pos, undefined = _exact_columns(x)
    dtype = work_dtype(x)
    wd_neg, wd_pos = _finish(neg, undefined, dtype), _finish(pos, undefined, dtype)
    return wd_neg + wd_pos, wd_neg, wd_pos
