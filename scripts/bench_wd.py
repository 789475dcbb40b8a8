"""Benchmark the exact Wasserstein engine against the paper's per-neuron scipy loop.

Same data, same run: float32 pre-activations ``[tokens, neurons]`` whose columns are a mix
of Gaussian, heavy-tailed (Gaussian scale mixture) and shifted-GELU columns. Rows:

* the paper's reference style: per neuron, ``scipy.stats.wasserstein_distance`` of the
  standardized column against a fresh random normal sample of the same size; timed on
  ``--scipy-neurons`` neurons and extrapolated linearly to all neurons (marked so);
* the sort floor: ``torch.sort(x, dim=0)`` on the full tensor (any exact method sorts);
* the sort the engine itself uses (gather + NumPy sort of column chunks on CPU);
* ``wasserstein_to_gaussian`` and ``wasserstein_split`` on the full tensor.

Then the seconds per layer of a Pythia-1.4b-shaped layer: a ``Linear(2048, 8192)``
forward over the token budget (in chunks) plus the statistics.

Example::

    python scripts/bench_wd.py --neurons 8192 --tokens 65536 --device cpu
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from dynamics.models.cpu_threads import one_torch_thread
from dynamics.stats.mapping_difficulty import mapping_difficulty
from dynamics.stats.wasserstein import (
    _Scratch,
    _sorted_rows,
    column_chunks,
    wasserstein_split,
    wasserstein_to_gaussian,
)

log = logging.getLogger("bench_wd")


@dataclass
class Measure:
    """Seconds (best of the repeats) and memory peak above the start, in MiB."""

    seconds: float = float("inf")
    peak_mib: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


class _RssSampler:
    """Peak resident memory of this process while a block runs (sampled every 5 ms)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.peak = self.start = self._rss()
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:  # not Linux: fall back to the lifetime maximum
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> _RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS growth shows a block's own peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may then be understated
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _peak_memory(device: torch.device, measure: Measure) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        _release_free_heap()
        with _RssSampler() as sampler:
            yield
        peak = sampler.peak - sampler.start
    measure.peak_mib = max(measure.peak_mib, peak / 2**20)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[Measure, object]:
    """Best wall time of ``repeats`` runs of ``fn`` and its memory peak."""
    measure, result = Measure(), None
    for _ in range(repeats):
        result = None
        with _peak_memory(device, measure):
            _sync(device)
            start = time.perf_counter()
            result = fn()
            _sync(device)
            measure.seconds = min(measure.seconds, time.perf_counter() - start)
    return measure, result


def make_data(tokens: int, neurons: int, seed: int, device: torch.device) -> torch.Tensor:
    """Float32 ``[tokens, neurons]``: Gaussian, heavy-tailed and shifted-GELU columns."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(tokens, neurons, dtype=torch.float32)
    width = 512
    for start in range(0, neurons, width):
        block = torch.randn(tokens, min(width, neurons - start), generator=gen)
        kind = (torch.arange(start, start + block.shape[1]) % 3)[None, :]
        shift = torch.randn(1, block.shape[1], generator=gen)
        scale = torch.rand(1, block.shape[1], generator=gen) + 0.5
        heavy = block * torch.exp(0.7 * torch.randn(block.shape, generator=gen))
        gelu = torch.nn.functional.gelu(2 * block * scale + shift)
        mixed = torch.where(kind == 0, block * scale + shift, torch.where(kind == 1, heavy, gelu))
        x[:, start : start + block.shape[1]] = mixed
    return x.to(device)


def scipy_reference(x: torch.Tensor, count: int, seed: int) -> tuple[float, np.ndarray]:
    """The paper's style on the first ``count`` neurons: seconds and the distances."""
    rng = np.random.default_rng(seed)
    data = x[:, :count].double().cpu().numpy()
    start = time.perf_counter()
    out = []
    for column in data.T:
        z = (column - column.mean()) / column.std()
        out.append(stats.wasserstein_distance(z, rng.normal(size=len(z))))
    return time.perf_counter() - start, np.array(out)


def engine_sort(x: torch.Tensor) -> None:
    """Only the sorting step of the engine, done as the engine does it."""
    chunks = column_chunks(x.shape[0], x.shape[1], x.device)
    if x.device.type != "cpu":
        for cols in chunks:
            _sorted_rows(x, cols, torch.float32, None)
        return
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def run(cols: slice) -> None:
        if not hasattr(local, "scratch"):
            local.scratch = _Scratch()
        _sorted_rows(x, cols, torch.float32, local.scratch)

    with one_torch_thread(), ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        list(pool.map(run, chunks))


def bench_engine(args: argparse.Namespace, device: torch.device) -> list[str]:
    x = make_data(args.tokens, args.neurons, args.seed, device)
    count = min(args.scipy_neurons, args.neurons)
    log.info("scipy reference loop on %d neurons", count)
    scipy_s, scipy_wd = scipy_reference(x, count, args.seed)
    scipy_total = scipy_s * args.neurons / count
    rows = {}
    floor_count = min(args.floor_neurons or args.neurons, args.neurons)
    floor_x = x if floor_count == args.neurons else x[:, :floor_count]  # same strides as x
    log.info("torch.sort floor on %d neurons", floor_count)
    rows["sort"], _ = timed(lambda: torch.sort(floor_x, dim=0), device, args.repeats)
    rows["sort"].seconds *= args.neurons / floor_count
    log.info("torch.sort on the transposed, contiguous layout")
    rows["sort_t"], _ = timed(lambda: torch.sort(x.T.contiguous(), dim=1), device, args.repeats)
    log.info("engine sort step")
    rows["engine_sort"], _ = timed(lambda: engine_sort(x), device, args.repeats)
    log.info("wasserstein_to_gaussian")
    rows["wd"], wd = timed(lambda: wasserstein_to_gaussian(x), device, args.repeats)
    log.info("wasserstein_split")
    rows["split"], _ = timed(lambda: wasserstein_split(x), device, args.repeats)
    gap = np.abs(wd[:count].double().cpu().numpy() - scipy_wd)
    sort_s = rows["sort"].seconds
    lines = [
        f"Data: {args.tokens} tokens x {args.neurons} neurons float32 on {device}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; best of {args.repeats}.",
        "",
        "| method | seconds | vs scipy loop | vs torch.sort floor | peak memory (MiB) |",
        "|---|---:|---:|---:|---:|",
        f"| scipy.stats.wasserstein_distance per neuron vs random normal sample "
        f"(timed on {count} neurons, extrapolated x{args.neurons / count:g}) | {scipy_total:.2f} | 1.00x | "
        f"{scipy_total / sort_s:.2f}x | - |",
    ]
    floor_name = "torch.sort(x, dim=0), full tensor (the floor)"
    if floor_count < args.neurons:
        floor_name = (
            f"torch.sort(x, dim=0) (the floor; timed on {floor_count} neurons, "
            f"extrapolated x{args.neurons / floor_count:g})"
        )
    names = {
        "sort": floor_name,
        "sort_t": "torch.sort(x.T.contiguous(), dim=1) (transposed copy included)",
        "engine_sort": "engine's own sort step only (gather + NumPy sort per chunk on CPU)",
        "wd": "wasserstein_to_gaussian (exact)",
        "split": "wasserstein_split (exact, wd/wd_neg/wd_pos)",
    }
    for key, name in names.items():
        m = rows[key]
        peak = "-" if key == "sort" and floor_count < args.neurons else f"{m.peak_mib:.0f}"
        lines.append(
            f"| {name} | {m.seconds:.3f} | {scipy_total / m.seconds:.1f}x faster | {m.seconds / sort_s:.3f}x | {peak} |"
        )
    lines += [
        "",
        f"Exact engine vs engine sort step: {rows['wd'].seconds / rows['engine_sort'].seconds:.2f}x. "
        f"|exact - scipy sampled| on the {count} timed neurons: mean {gap.mean():.2e}, max {gap.max():.2e} "
        f"(the scipy value carries the sampling error of a {args.tokens}-draw normal sample).",
    ]
    return lines


def bench_layer(args: argparse.Namespace, device: torch.device) -> list[str]:
    tokens, d_in, d_out, chunk = args.layer_tokens, 2048, 8192, 4096
    gen = torch.Generator().manual_seed(args.seed)
    layer = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        layer.weight.normal_(0, 0.02, generator=gen)
        layer.bias.normal_(0, 0.02, generator=gen)
    layer = layer.to(device)
    hidden = torch.randn(tokens, d_in, generator=gen).to(device)
    pre = torch.empty(tokens, d_out, device=device)

    @torch.no_grad()
    def forward() -> None:
        for start in range(0, tokens, chunk):
            pre[start : start + chunk] = layer(hidden[start : start + chunk])

    fwd, _ = timed(forward, device, 1)
    split, _ = timed(lambda: wasserstein_split(pre), device, 1)
    md, _ = timed(lambda: mapping_difficulty(hidden, pre, n_pairs=10_000, seed=0), device, 1)
    total = fwd.seconds + split.seconds + md.seconds
    return [
        f"Pythia-1.4b-shaped layer (Linear 2048 -> 8192), {tokens} tokens, float32 on {device}:",
        "",
        "| step | seconds |",
        "|---|---:|",
        f"| forward (chunks of {chunk} tokens) | {fwd.seconds:.2f} |",
        f"| wasserstein_split | {split.seconds:.2f} |",
        f"| mapping_difficulty (10,000 pairs) | {md.seconds:.2f} |",
        f"| **total per layer** | **{total:.2f}** |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neurons", type=int, default=8192, help="neurons (columns) (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=65536, help="tokens (rows) (default: %(default)s)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row, best kept (default: %(default)s)")
    parser.add_argument(
        "--scipy-neurons", type=int, default=256, help="neurons timed with the scipy loop (default: %(default)s)"
    )
    parser.add_argument(
        "--floor-neurons",
        type=int,
        default=None,
        help="neurons timed with torch.sort(x, dim=0), extrapolated linearly (default: all)",
    )
    parser.add_argument("--layer-tokens", type=int, default=None, help="tokens of the layer timing (default: --tokens)")
    parser.add_argument("--skip-layer", action="store_true", help="skip the Pythia-layer timing")
    parser.add_argument("--skip-engine", action="store_true", help="run only the Pythia-layer timing")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    args.layer_tokens = args.layer_tokens or args.tokens
    device = torch.device(args.device)
    lines = [] if args.skip_engine else bench_engine(args, device)
    if not args.skip_layer:
        lines += ([""] if lines else []) + bench_layer(args, device)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
