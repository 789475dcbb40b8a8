"""Prefetch overlaps download with compute; eviction keeps at most two checkpoints on disk."""

import threading
import time
from pathlib import Path

import pytest

from checkpoints.source import Checkpoint
from checkpoints.stream import stream_checkpoints
from dynamics.errors import CheckpointError


class SlowSource:
    """Downloads take ``d`` seconds; tracks how many fetched checkpoints are not yet released."""

    model_id = "fake/slow"

    def __init__(self, d: float, fail: set[int] = frozenset()) -> None:
        self.d, self.fail = d, fail
        self.lock = threading.Lock()
        self.on_disk: set[int] = set()
        self.peak = 0
        self.released: list[int] = []

    def available_steps(self):
        return None

    def fetch(self, step: int) -> Checkpoint:
        with self.lock:  # a download in flight already takes disk space
            self.on_disk.add(step)
            self.peak = max(self.peak, len(self.on_disk))
        time.sleep(self.d)
        if step in self.fail:
            with self.lock:
                self.on_disk.discard(step)
            raise CheckpointError(f"step {step}: broken")
        return Checkpoint(step=step, revision=f"step{step}", path=Path("/nonexistent"), downloaded=True)

    def release(self, ckpt: Checkpoint) -> None:
        with self.lock:
            self.on_disk.discard(ckpt.step)
            self.released.append(ckpt.step)


def run(source, n, c, prefetch=True):
    start = time.perf_counter()
    seen = []
    for ckpt in stream_checkpoints(source, list(range(n)), prefetch=prefetch):
        time.sleep(c)  # "compute"
        seen.append(ckpt.step)
    return time.perf_counter() - start, seen


@pytest.mark.parametrize("d, c", [(0.3, 0.1), (0.1, 0.3)])
def test_wall_time_is_n_max_plus_min_not_the_sum(d, c):
    n = 6
    source = SlowSource(d)
    elapsed, seen = run(source, n, c)
    overlapped = n * max(d, c) + min(d, c)
    serial = n * (d + c)
    assert seen == list(range(n))
    assert overlapped - 0.05 <= elapsed <= overlapped + 0.3, (elapsed, overlapped, serial)
    assert elapsed < serial - 0.3
    assert source.peak <= 2
    assert source.released == list(range(n)) and not source.on_disk


def test_without_prefetch_the_times_add_up():
    source = SlowSource(0.1)
    elapsed, _ = run(source, 4, 0.1, prefetch=False)
    assert elapsed >= 4 * 0.2 - 0.02
    assert source.peak == 1


def test_failed_fetch_yields_an_error_checkpoint_and_goes_on():
    source = SlowSource(0.0, fail={2})
    got = [(c.step, c.ok, c.error) for c in stream_checkpoints(source, [1, 2, 3])]
    assert got == [(1, True, None), (2, False, "step 2: broken"), (3, True, None)]


def test_breaking_out_releases_everything():
    source = SlowSource(0.05)
    for ckpt in stream_checkpoints(source, [1, 2, 3, 4]):
        if ckpt.step == 2:
            break
    time.sleep(0.2)  # the prefetched step 3 is released when its download lands
    assert not source.on_disk
    assert sorted(source.released) == [1, 2, 3]


class SlowSuite:
    """A real local suite whose downloads take ``d`` seconds; records when each fetch ran."""

    def __init__(self, inner, d: float) -> None:
        self.inner, self.d = inner, d
        self.model_id = inner.model_id
        self.fetches: dict[int, tuple[float, float]] = {}

    def available_steps(self):
        return self.inner.available_steps()

    def fetch(self, step: int) -> Checkpoint:
        start = time.perf_counter()
        time.sleep(self.d)
        checkpoint = self.inner.fetch(step)
        self.fetches[step] = (start, time.perf_counter())
        return checkpoint

    def release(self, checkpoint: Checkpoint) -> None:
        self.inner.release(checkpoint)


def scan_with_slow_source(monkeypatch, suite, out, d, c, prefetch):
    """The real serial scan of steps 0, 1, 2, 4 (cohort at step 8) with d s downloads and >= c s compute.

    Returns ``(seconds from the first step's fetch to the last step's measurement, fetch
    intervals, compute intervals)``; each step's compute is its real measurement padded to ``c``.
    """
    from checkpoints.source import open_source
    from dynamics.scan import worker
    from dynamics.scan.config import ScanConfig
    from dynamics.scan.driver import run_scan

    sources: list[SlowSuite] = []

    def slow_open_source(ref, **options):
        sources.append(SlowSuite(open_source(ref, **options), d))
        return sources[-1]

    real_measure, computes = worker.WorkerContext.measure, {}

    def padded_measure(self, checkpoint, *args, **kwargs):
        start = time.perf_counter()
        result = real_measure(self, checkpoint, *args, **kwargs)
        time.sleep(max(0.0, c - (time.perf_counter() - start)))
        computes[checkpoint.step] = (start, time.perf_counter())
        return result

    worker.forget_contexts()
    monkeypatch.setattr(worker, "open_source", slow_open_source)
    monkeypatch.setattr(worker.WorkerContext, "measure", padded_measure)
    summary = run_scan(
        ScanConfig(
            model=str(suite),
            out=str(out),
            steps="0,1,2,4",
            reference_step=8,
            prefetch=prefetch,
            wd_tokens=256,
            ppl_tokens=0,
            tse_per_case=1,
            cohort_percent=5.0,
        )
    )
    assert summary.done == [0, 1, 2, 4] and not summary.failed
    (source,) = sources
    steps = [0, 1, 2, 4]
    elapsed = computes[steps[-1]][1] - source.fetches[steps[0]][0]
    return elapsed, [source.fetches[s] for s in steps], [computes[s] for s in steps]


@pytest.mark.slow
@pytest.mark.parametrize("d, c", [(0.8, 0.4), (0.4, 0.8)])
def test_the_serial_scan_overlaps_download_and_compute(monkeypatch, tiny_suite, tmp_path, d, c):
    """N steps of d s download and c s compute take about N x max(d, c) + min(d, c), not N x (d + c)."""
    n = 4
    elapsed, fetches, computes = scan_with_slow_source(monkeypatch, tiny_suite, tmp_path / "p.zarr", d, c, True)
    compute = max(end - start for start, end in computes)  # >= c; more if the machine is slow
    overlapped = n * max(d, compute) + min(d, compute)
    assert elapsed <= overlapped + 0.25 * n, (elapsed, overlapped)
    assert elapsed < n * (d + compute) - 0.5 * min(d, compute), (elapsed, n * (d + compute))
    for i in range(n - 1):  # step i+1 was downloading while step i was measured
        assert fetches[i + 1][0] < computes[i][1]


@pytest.mark.slow
def test_the_serial_scan_without_prefetch_adds_the_times(monkeypatch, tiny_suite, tmp_path):
    n, d, c = 4, 0.4, 0.4
    elapsed, fetches, computes = scan_with_slow_source(monkeypatch, tiny_suite, tmp_path / "s.zarr", d, c, False)
    assert elapsed >= n * (d + c) - 0.05
    for i in range(n - 1):  # nothing is fetched ahead
        assert fetches[i + 1][0] >= computes[i][1]
