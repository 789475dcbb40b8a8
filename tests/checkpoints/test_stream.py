"""Prefetch overlaps downloads with compute, up to a depth and within a bound on disk; eviction frees each step."""

import threading
import time
from pathlib import Path

import pytest

from checkpoints.checkpoint import Checkpoint
from checkpoints.stream import Prefetcher, checkpoint_bytes, stream_checkpoints
from dynamics.errors import CheckpointError


class SlowSource:
    """Downloads take ``d`` seconds each, however many run at once (a per-connection limit, not the link's).

    Tracks which fetched checkpoints are not yet released, their bytes (``size`` each, taken
    when the download starts), how many downloads run at once, and when each fetch started.
    """

    model_id = "fake/slow"

    def __init__(self, d: float, fail: set[int] = frozenset(), size: int = 0) -> None:
        self.d, self.fail, self.size = d, fail, size
        self.lock = threading.Lock()
        self.on_disk: set[int] = set()
        self.peak = 0
        self.released: list[int] = []
        self.held_bytes = self.peak_bytes = 0
        self.in_flight = self.peak_in_flight = 0
        self.started: dict[int, float] = {}

    def available_steps(self):
        return None

    def expected_bytes(self, step: int) -> int:
        return self.size

    def fetch(self, step: int) -> Checkpoint:
        with self.lock:  # a download in flight already takes disk space
            self.started[step] = time.perf_counter()
            self.on_disk.add(step)
            self.peak = max(self.peak, len(self.on_disk))
            self.held_bytes += self.size
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        time.sleep(self.d)
        with self.lock:
            self.in_flight -= 1
        if step in self.fail:
            with self.lock:
                self.on_disk.discard(step)
                self.held_bytes -= self.size
            raise CheckpointError(f"step {step}: broken")
        return Checkpoint(step=step, revision=f"step{step}", path=Path("/nonexistent"), downloaded=True)

    def release(self, ckpt: Checkpoint) -> None:
        with self.lock:
            self.on_disk.discard(ckpt.step)
            self.released.append(ckpt.step)
            self.held_bytes -= self.size


def run(source, n, c, depth=1, max_bytes=None, computed=None):
    start = time.perf_counter()
    seen = []
    for ckpt in stream_checkpoints(source, list(range(n)), depth=depth, max_bytes=max_bytes):
        time.sleep(c)  # "compute"
        seen.append(ckpt.step)
        if computed is not None:
            computed[ckpt.step] = time.perf_counter()  # the step is stored: it is released next
    return time.perf_counter() - start, seen


def simulated_wall(n: int, d: float, c: float, depth: int) -> float:
    """The schedule's wall time, computed independently: step i is fetched (or waited for), steps
    i+1..i+depth not started yet start then, step i is computed; every download takes d."""
    started: dict[int, float] = {}
    t = 0.0
    for i in range(n):
        started.setdefault(i, t)
        t = max(t, started[i] + d)
        for j in range(i + 1, min(n, i + 1 + depth)):
            started.setdefault(j, t)
        t += c
    return t


def test_the_simulated_schedule_matches_the_closed_forms():
    for d, c in [(0.3, 0.1), (0.1, 0.3)]:  # depth 1: N x max(d, c) + min(d, c)
        assert simulated_wall(6, d, c, 1) == pytest.approx(6 * max(d, c) + min(d, c))
    assert simulated_wall(6, 0.1, 0.3, 0) == pytest.approx(6 * 0.4)  # no prefetch: the sum
    # depth 2, downloads twice as long as compute: N x max(d / 2, c) plus the first download and last compute
    assert simulated_wall(6, 0.4, 0.1, 2) == pytest.approx(6 * max(0.4 / 2, 0.1) + 0.4 + 0.1)


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
    elapsed, _ = run(source, 4, 0.1, depth=0)
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
    """A real local suite whose downloads take ``d`` seconds and ``size`` bytes each; records when each fetch ran."""

    def __init__(self, inner, d: float, size: int = 0) -> None:
        self.inner, self.d, self.size = inner, d, size
        self.model_id = inner.model_id
        self.fetches: dict[int, tuple[float, float]] = {}
        self.lock = threading.Lock()
        self.held_bytes = self.peak_bytes = 0

    def available_steps(self):
        return self.inner.available_steps()

    def expected_bytes(self, step: int) -> int:
        return self.size

    def fetch(self, step: int) -> Checkpoint:
        start = time.perf_counter()
        with self.lock:
            self.held_bytes += self.size
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        time.sleep(self.d)
        checkpoint = self.inner.fetch(step)
        self.fetches[step] = (start, time.perf_counter())
        return checkpoint

    def release(self, checkpoint: Checkpoint) -> None:
        self.inner.release(checkpoint)
        with self.lock:
            self.held_bytes -= self.size


def scan_with_slow_source(monkeypatch, suite, out, d, c, depth, max_disk_gib=0.0, size=0):
    """The real serial scan of steps 0, 1, 2, 4 (cohort at step 8) with d s downloads and >= c s compute.

    Returns ``(seconds from the first step's fetch to the last step's measurement, fetch
    intervals, compute intervals, the slow source)``; each step's compute is its real
    measurement padded to ``c``.
    """
    from checkpoints.source import open_source
    from dynamics.scan import worker
    from dynamics.scan.config import ScanConfig
    from dynamics.scan.driver import run_scan

    sources: list[SlowSuite] = []

    def slow_open_source(ref, **options):
        sources.append(SlowSuite(open_source(ref, **options), d, size))
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
            prefetch_depth=depth,
            max_disk_gib=max_disk_gib,
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
    return elapsed, [source.fetches[s] for s in steps], [computes[s] for s in steps], source


@pytest.mark.slow
@pytest.mark.parametrize("d, c", [(0.8, 0.4), (0.4, 0.8)])
def test_the_serial_scan_overlaps_download_and_compute(monkeypatch, tiny_suite, tmp_path, d, c):
    """N steps of d s download and c s compute take about N x max(d, c) + min(d, c), not N x (d + c)."""
    n = 4
    elapsed, fetches, computes, _ = scan_with_slow_source(monkeypatch, tiny_suite, tmp_path / "p.zarr", d, c, 1)
    compute = max(end - start for start, end in computes)  # >= c; more if the machine is slow
    overlapped = n * max(d, compute) + min(d, compute)
    assert elapsed <= overlapped + 0.25 * n, (elapsed, overlapped)
    assert elapsed < n * (d + compute) - 0.5 * min(d, compute), (elapsed, n * (d + compute))
    for i in range(n - 1):  # step i+1 was downloading while step i was measured
        assert fetches[i + 1][0] < computes[i][1]


@pytest.mark.slow
def test_the_serial_scan_without_prefetch_adds_the_times(monkeypatch, tiny_suite, tmp_path):
    n, d, c = 4, 0.4, 0.4
    elapsed, fetches, computes, _ = scan_with_slow_source(monkeypatch, tiny_suite, tmp_path / "s.zarr", d, c, 0)
    assert elapsed >= n * (d + c) - 0.05
    for i in range(n - 1):  # nothing is fetched ahead
        assert fetches[i + 1][0] >= computes[i][1]


def test_depth_two_runs_two_downloads_at_once_and_keeps_the_order():
    n, d, c = 6, 0.4, 0.1
    source = SlowSource(d)
    elapsed, seen = run(source, n, c, depth=2)
    expected = simulated_wall(n, d, c, 2)  # 1.7 s, against 2.5 s with depth 1
    assert seen == list(range(n))
    assert expected - 0.05 <= elapsed <= expected + 0.3, (elapsed, expected)
    assert elapsed < simulated_wall(n, d, c, 1) - 0.4
    assert source.peak_in_flight == 2 and source.peak == 3  # the step computed and two downloading
    assert source.released == list(range(n)) and not source.on_disk and source.held_bytes == 0


def test_a_disk_bound_of_two_steps_gives_depth_one():
    """Depth 3, but only two steps' bytes fit: the step computed and one ahead."""
    n, d, c, size = 5, 0.2, 0.2, 100
    source, computed = SlowSource(d, size=size), {}
    elapsed, seen = run(source, n, c, depth=3, max_bytes=2 * size + 50, computed=computed)
    assert seen == list(range(n))
    assert source.peak_bytes <= 2 * size + 50 and source.peak == 2
    for i in range(n - 2):  # step i+2 starts only once step i is stored and released
        assert source.started[i + 2] >= computed[i]
        assert source.started[i + 1] < computed[i]  # while step i+1 did download during step i
    expected = simulated_wall(n, d, c, 1)
    assert expected - 0.05 <= elapsed <= expected + 0.3, (elapsed, expected)


def test_a_disk_bound_of_one_step_fetches_one_at_a_time():
    n, d, c, size = 4, 0.1, 0.1, 100
    source, computed = SlowSource(d, size=size), {}
    elapsed, _ = run(source, n, c, depth=2, max_bytes=size, computed=computed)
    assert source.peak_bytes == size and source.peak == 1
    for i in range(n - 1):
        assert source.started[i + 1] >= computed[i]
    assert elapsed >= n * (d + c) - 0.02


def test_a_first_step_larger_than_the_bound_is_fetched_anyway():
    source = SlowSource(0.0, size=300)
    got = [c.step for c in stream_checkpoints(source, [0, 1, 2], depth=2, max_bytes=100)]
    assert got == [0, 1, 2] and source.peak == 1 and source.peak_bytes == 300


class FilesSource:
    """Downloads ``size`` real bytes per step into ``root``; says nothing of sizes beforehand."""

    model_id = "fake/files"

    def __init__(self, root: Path, size: int, d: float) -> None:
        self.root, self.size, self.d = root, size, d
        self.lock = threading.Lock()
        self.started: dict[int, float] = {}
        self.landed: dict[int, float] = {}
        self.released: list[int] = []

    def fetch(self, step: int) -> Checkpoint:
        with self.lock:
            self.started[step] = time.perf_counter()
        time.sleep(self.d)
        folder = self.root / f"step{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w" * (self.size - 10))
        (folder / "config.json").write_bytes(b"{}" * 5)
        with self.lock:
            self.landed[step] = time.perf_counter()
        return Checkpoint(step=step, revision=f"step{step}", path=folder, downloaded=True)

    def bytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def release(self, checkpoint: Checkpoint) -> None:
        for f in checkpoint.path.iterdir():
            f.unlink()
        checkpoint.path.rmdir()
        self.released.append(checkpoint.step)


def test_checkpoint_bytes_counts_the_files_of_a_downloaded_step(tmp_path):
    source = FilesSource(tmp_path, 1000, 0.0)
    checkpoint = source.fetch(3)
    assert checkpoint_bytes(checkpoint) == 1000 == source.bytes_on_disk()
    assert checkpoint_bytes(Checkpoint(step=3, revision=None, path=checkpoint.path, downloaded=False)) == 0


def test_without_expected_sizes_the_last_step_on_disk_sizes_the_next(tmp_path):
    """Unknown sizes: nothing starts ahead of an unlanded step; then each counts as the last one on disk."""
    source = FilesSource(tmp_path, 1000, 0.2)
    prefetcher = Prefetcher(source, depth=2, max_bytes=2500)
    try:
        prefetcher.prefetch([0, 1])
        first = prefetcher.fetch(0)
        prefetcher.prefetch([1, 2])
        second = prefetcher.fetch(1)
        assert source.started[1] >= source.landed[0]  # its size could not be told before step 0 landed
        prefetcher.prefetch([2])
        assert 2 not in source.started  # 0 and 1 held (2000 bytes): a third would make 3000
        assert prefetcher.held_steps() == [0, 1] and source.bytes_on_disk() == 2000
        prefetcher.release(first)
        time.sleep(0.05)
        assert 2 in source.started  # released: step 2 fits now
        prefetcher.release(second)
        prefetcher.release(prefetcher.fetch(2))
    finally:
        prefetcher.close()
    assert source.released == [0, 1, 2] and source.bytes_on_disk() == 0


def test_close_never_waits_and_releases_what_lands():
    source = SlowSource(0.5, size=10)
    prefetcher = Prefetcher(source, depth=2)
    prefetcher.prefetch([1, 2])
    time.sleep(0.05)
    start = time.perf_counter()
    prefetcher.close()
    assert time.perf_counter() - start < 0.05
    prefetcher.prefetch([3])  # closed: nothing more is fetched
    time.sleep(0.7)
    assert sorted(source.released) == [1, 2] and 3 not in source.started
    assert source.held_bytes == 0 and prefetcher.held_steps() == []


def test_a_step_no_longer_announced_is_released_when_it_lands():
    source = SlowSource(0.2)
    prefetcher = Prefetcher(source, depth=2)
    prefetcher.prefetch([1, 2])
    prefetcher.prefetch([2, 3])  # the caller skipped step 1
    time.sleep(0.3)
    assert source.released == [1] and sorted(source.started) == [1, 2, 3]
    prefetcher.close()


@pytest.mark.slow
def test_the_serial_scan_at_depth_two_downloads_two_steps_at_once(monkeypatch, tiny_suite, tmp_path):
    """Downloads of d = 3c: at depth 2 the scan takes about N x max(d / 2, c) + d + c, not N x max(d, c) + c."""
    n, d, c = 4, 1.2, 0.4
    elapsed, fetches, computes, _ = scan_with_slow_source(monkeypatch, tiny_suite, tmp_path / "d.zarr", d, c, 2)
    compute = max(end - start for start, end in computes)  # >= c; more if the machine is slow
    expected = simulated_wall(n, d, compute, 2)
    assert elapsed <= expected + 0.25 * n, (elapsed, expected)
    assert elapsed < simulated_wall(n, d, compute, 1) - 0.6, (elapsed, simulated_wall(n, d, compute, 1))
    assert fetches[2][0] < computes[0][1]  # steps 1 and 2 both downloading while step 0 is measured
    assert fetches[1][0] < fetches[2][1] and fetches[2][0] < fetches[1][1]


@pytest.mark.slow
@pytest.mark.parametrize("steps_that_fit", [2, 1])
def test_the_serial_scan_keeps_within_max_disk_gib(monkeypatch, tiny_suite, tmp_path, steps_that_fit):
    """Depth 2, but room for two steps is depth 1 (the step measured and one ahead), for one step no prefetch."""
    size = 1 << 30  # what the fake source says each step takes; nothing is written
    elapsed, fetches, computes, source = scan_with_slow_source(
        monkeypatch, tiny_suite, tmp_path / "b.zarr", 0.4, 0.4, 2, max_disk_gib=steps_that_fit + 0.5, size=size
    )
    assert source.peak_bytes <= steps_that_fit * size and source.held_bytes == 0
    for i in range(len(fetches) - 1):
        if steps_that_fit == 2:
            assert fetches[i + 1][0] < computes[i][1]  # one step ahead
        else:
            assert fetches[i + 1][0] >= computes[i][1]  # none ahead
        if i + 2 < len(fetches):  # never two ahead
            assert fetches[i + 2][0] >= computes[i][1]
