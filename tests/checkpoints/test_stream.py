"""Prefetch overlaps downloads with compute, up to a depth and within a bound on disk; eviction frees each step.

No test here reads a clock: a download lasts until the test lets it land (a gate), and what
happened before what is read off one event log whose entries are numbered in the order they
happened. A waiting test waits on the event it needs with a generous timeout, which only
the failure of the property under test (or a hang) can reach, so a loaded machine slows
these tests down but cannot turn them red.
"""

import itertools
import threading
from pathlib import Path

import pytest

from checkpoints.checkpoint import Checkpoint
from checkpoints.stream import Prefetcher, checkpoint_bytes, stream_checkpoints
from dynamics.errors import CheckpointError

#: Seconds a test waits for an event that a correct prefetcher makes happen at once.
PATIENCE = 60.0


class EventLog:
    """Numbered events: ``(kind, step) -> number``, numbers in the order the events happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = itertools.count()
        self.at: dict[tuple[str, int], int] = {}
        self._events: dict[tuple[str, int], threading.Event] = {}

    def record(self, kind: str, step: int) -> int:
        with self._lock:
            number = self.at[(kind, step)] = next(self._count)
            event = self._events.setdefault((kind, step), threading.Event())
        event.set()
        return number

    def wait(self, kind: str, step: int, timeout: float = PATIENCE) -> bool:
        with self._lock:
            event = self._events.setdefault((kind, step), threading.Event())
        return event.wait(timeout)

    def before(self, first: tuple[str, int], then: tuple[str, int]) -> bool:
        """Whether ``first`` happened, and before ``then`` (or ``then`` did not happen)."""
        return first in self.at and (then not in self.at or self.at[first] < self.at[then])


def wait_until(condition, timeout: float = PATIENCE) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` passes (False)."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return condition()


class GatedSource:
    """Downloads land when the test opens their gate (``open``), or at once for steps in ``free``.

    Tracks which fetched checkpoints are not yet released, their bytes (``size`` each, taken
    when the download starts), how many downloads run at once, and logs ``start``/``land``.
    """

    model_id = "fake/gated"

    def __init__(self, fail=frozenset(), size: int = 0, free=None) -> None:
        self.fail, self.size, self.free = set(fail), size, free
        self.log = EventLog()
        self.lock = threading.Lock()
        self.on_disk: set[int] = set()
        self.peak = 0
        self.released: list[int] = []
        self.held_bytes = self.peak_bytes = 0
        self.in_flight = self.peak_in_flight = 0
        self.gates: dict[int, threading.Event] = {}

    def gate(self, step: int) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(step, threading.Event())

    def open(self, *steps: int) -> None:
        for step in steps:
            self.gate(step).set()

    def available_steps(self):
        return None

    def expected_bytes(self, step: int) -> int:
        return self.size

    def fetch(self, step: int) -> Checkpoint:
        with self.lock:  # a download in flight already takes disk space
            self.on_disk.add(step)
            self.peak = max(self.peak, len(self.on_disk))
            self.held_bytes += self.size
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.log.record("start", step)
        if self.free is None or step not in self.free:
            assert self.gate(step).wait(PATIENCE), f"step {step}: its download was never let land"
        with self.lock:
            self.in_flight -= 1
        self.log.record("land", step)
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


def consume(source: GatedSource, n: int, depth: int, max_bytes=None, wait_ahead: int = 0) -> list[int]:
    """Stream steps 0..n-1; while step i is "computed" the next ``wait_ahead`` downloads are waited
    for (they must start) and then let land. Logs ``computed`` for each step."""
    source.open(0)
    seen = []
    for ckpt in stream_checkpoints(source, list(range(n)), depth=depth, max_bytes=max_bytes):
        ahead = [s for s in range(ckpt.step + 1, ckpt.step + 1 + wait_ahead) if s < n]
        for step in ahead:
            assert source.log.wait("start", step), f"step {step} was not fetched ahead while step {ckpt.step} computed"
        source.open(*ahead, ckpt.step + 1)  # a step not fetched ahead lands when it is asked for
        seen.append(ckpt.step)
        source.log.record("computed", ckpt.step)
    return seen


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


def test_depth_one_downloads_the_next_step_while_this_one_is_computed():
    """The overlap that makes a scan take N x max(d, c) + min(d, c) instead of N x (d + c)."""
    n = 6
    source = GatedSource()
    assert consume(source, n, depth=1, wait_ahead=1) == list(range(n))
    for i in range(n - 1):
        assert source.log.before(("start", i + 1), ("computed", i))
        if i + 2 < n:  # never two ahead at depth 1
            assert source.log.before(("computed", i), ("start", i + 2))
    assert source.peak <= 2
    assert source.released == list(range(n)) and not source.on_disk


def test_without_prefetch_the_next_download_waits_for_the_step():
    n = 4
    source = GatedSource()
    consume(source, n, depth=0)
    for i in range(n - 1):
        assert source.log.before(("computed", i), ("start", i + 1))
    assert source.peak == 1


def test_failed_fetch_yields_an_error_checkpoint_and_goes_on():
    source = GatedSource(fail={2}, free={1, 2, 3})
    got = [(c.step, c.ok, c.error) for c in stream_checkpoints(source, [1, 2, 3])]
    assert got == [(1, True, None), (2, False, "step 2: broken"), (3, True, None)]


def test_breaking_out_releases_everything():
    source = GatedSource(free={1, 2, 3, 4})
    for ckpt in stream_checkpoints(source, [1, 2, 3, 4]):
        if ckpt.step == 2:
            break
    # the prefetched step 3 is released when its download lands
    assert wait_until(lambda: not source.on_disk and sorted(source.released) == [1, 2, 3]), (
        source.on_disk,
        source.released,
    )


def test_depth_two_runs_two_downloads_at_once_and_keeps_the_order():
    n = 6
    source = GatedSource()
    assert consume(source, n, depth=2, wait_ahead=2) == list(range(n))
    assert source.peak_in_flight == 2 and source.peak == 3  # the step computed and two downloading
    for i in range(n - 2):
        assert source.log.before(("start", i + 2), ("computed", i))
        if i + 3 < n:
            assert source.log.before(("computed", i), ("start", i + 3))
    assert source.released == list(range(n)) and not source.on_disk and source.held_bytes == 0


def test_a_disk_bound_of_two_steps_gives_depth_one():
    """Depth 3, but only two steps' bytes fit: the step computed and one ahead."""
    n, size = 5, 100
    source = GatedSource(size=size)
    assert consume(source, n, depth=3, max_bytes=2 * size + 50, wait_ahead=1) == list(range(n))
    assert source.peak_bytes <= 2 * size + 50 and source.peak == 2
    for i in range(n - 2):  # step i+2 starts only once step i is stored and released
        assert source.log.before(("computed", i), ("start", i + 2))
        assert source.log.before(("start", i + 1), ("computed", i))  # while step i+1 did download during step i


def test_a_disk_bound_of_one_step_fetches_one_at_a_time():
    n, size = 4, 100
    source = GatedSource(size=size)
    consume(source, n, depth=2, max_bytes=size)
    assert source.peak_bytes == size and source.peak == 1
    for i in range(n - 1):
        assert source.log.before(("computed", i), ("start", i + 1))


def test_a_first_step_larger_than_the_bound_is_fetched_anyway():
    source = GatedSource(size=300, free={0, 1, 2})
    got = [c.step for c in stream_checkpoints(source, [0, 1, 2], depth=2, max_bytes=100)]
    assert got == [0, 1, 2] and source.peak == 1 and source.peak_bytes == 300


class FilesSource:
    """Downloads ``size`` real bytes per step into ``root`` once its gate opens; says nothing of sizes beforehand."""

    model_id = "fake/files"

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size = root, size
        self.gated = GatedSource()
        self.log = self.gated.log
        self.released: list[int] = []

    def fetch(self, step: int) -> Checkpoint:
        self.log.record("start", step)
        assert self.gated.gate(step).wait(PATIENCE)
        folder = self.root / f"step{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w" * (self.size - 10))
        (folder / "config.json").write_bytes(b"{}" * 5)
        self.log.record("land", step)
        return Checkpoint(step=step, revision=f"step{step}", path=folder, downloaded=True)

    def bytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def release(self, checkpoint: Checkpoint) -> None:
        for f in checkpoint.path.iterdir():
            f.unlink()
        checkpoint.path.rmdir()
        self.released.append(checkpoint.step)


def test_checkpoint_bytes_counts_the_files_of_a_downloaded_step(tmp_path):
    source = FilesSource(tmp_path, 1000)
    source.gated.open(3)
    checkpoint = source.fetch(3)
    assert checkpoint_bytes(checkpoint) == 1000 == source.bytes_on_disk()
    assert checkpoint_bytes(Checkpoint(step=3, revision=None, path=checkpoint.path, downloaded=False)) == 0


def test_without_expected_sizes_the_last_step_on_disk_sizes_the_next(tmp_path):
    """Unknown sizes: nothing starts ahead of an unlanded step; then each counts as the last one on disk."""
    source = FilesSource(tmp_path, 1000)
    prefetcher = Prefetcher(source, depth=2, max_bytes=2500)
    try:
        prefetcher.prefetch([0, 1])
        assert source.log.wait("start", 0)
        assert ("start", 1) not in source.log.at  # its size cannot be told before step 0 lands
        source.gated.open(0, 1)
        first = prefetcher.fetch(0)
        prefetcher.prefetch([1, 2])
        second = prefetcher.fetch(1)
        assert source.log.before(("land", 0), ("start", 1))
        prefetcher.prefetch([2])
        assert ("start", 2) not in source.log.at  # 0 and 1 held (2000 bytes): a third would make 3000
        assert prefetcher.held_steps() == [0, 1] and source.bytes_on_disk() == 2000
        prefetcher.release(first)
        assert source.log.wait("start", 2)  # released: step 2 fits now
        prefetcher.release(second)
        source.gated.open(2)
        prefetcher.release(prefetcher.fetch(2))
    finally:
        prefetcher.close()
    assert source.released == [0, 1, 2] and source.bytes_on_disk() == 0


def test_close_never_waits_and_releases_what_lands():
    source = GatedSource(size=10)
    prefetcher = Prefetcher(source, depth=2)
    prefetcher.prefetch([1, 2])
    assert source.log.wait("start", 1) and source.log.wait("start", 2)
    closer = threading.Thread(target=prefetcher.close)
    closer.start()
    closer.join(PATIENCE)
    assert not closer.is_alive(), "close() waited for downloads that had not landed"
    assert source.in_flight == 2  # closed while both downloads were still running
    prefetcher.prefetch([3])  # closed: nothing more is fetched
    source.open(1, 2)
    assert wait_until(lambda: sorted(source.released) == [1, 2]), source.released
    assert ("start", 3) not in source.log.at
    assert wait_until(lambda: source.held_bytes == 0 and prefetcher.held_steps() == [])


def test_a_step_no_longer_announced_is_released_when_it_lands():
    source = GatedSource()
    prefetcher = Prefetcher(source, depth=2)
    prefetcher.prefetch([1, 2])
    prefetcher.prefetch([2, 3])  # the caller skipped step 1
    assert source.log.wait("start", 3)
    source.open(1, 2, 3)
    assert wait_until(lambda: source.released == [1]), source.released
    assert {step for kind, step in source.log.at if kind == "start"} == {1, 2, 3}
    prefetcher.close()


class GatedSuite:
    """A real local suite whose downloads are logged; steps in ``together`` land only once all of
    them have started (so they can only land if they download at once)."""

    def __init__(self, inner, size: int = 0, together=()) -> None:
        self.inner, self.size = inner, size
        self.model_id = inner.model_id
        self.log = EventLog()
        self.lock = threading.Lock()
        self.held_bytes = self.peak_bytes = 0
        self.together = set(together)

    def available_steps(self):
        return self.inner.available_steps()

    def expected_bytes(self, step: int) -> int:
        return self.size

    def fetch(self, step: int) -> Checkpoint:
        with self.lock:
            self.held_bytes += self.size
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        self.log.record("start", step)
        if step in self.together:
            for other in self.together:
                assert self.log.wait("start", other), f"step {other} did not download while step {step} did"
        checkpoint = self.inner.fetch(step)
        self.log.record("land", step)
        return checkpoint

    def release(self, checkpoint: Checkpoint) -> None:
        self.inner.release(checkpoint)
        with self.lock:
            self.held_bytes -= self.size


def scan_with_gated_source(monkeypatch, suite, out, depth, max_disk_gib=0.0, size=0, wait_ahead=0, together=()):
    """The real serial scan of steps 0, 1, 2, 4 (cohort at step 8). Each step's measurement waits
    until the next ``wait_ahead`` steps' downloads have started (the overlap under test) and
    logs ``computed`` when it ends. Returns the gated source."""
    from checkpoints.source import open_source
    from dynamics.scan import worker
    from dynamics.scan.config import ScanConfig
    from dynamics.scan.driver import run_scan

    steps = [0, 1, 2, 4]
    sources: list[GatedSuite] = []

    def gated_open_source(ref, **options):
        sources.append(GatedSuite(open_source(ref, **options), size, together))
        return sources[-1]

    real_measure = worker.WorkerContext.measure

    def measure_then_wait(self, checkpoint, *args, **kwargs):
        result = real_measure(self, checkpoint, *args, **kwargs)
        (source,) = sources
        position = steps.index(checkpoint.step)
        for step in steps[position + 1 : position + 1 + wait_ahead]:
            assert source.log.wait("start", step), f"step {step} was not fetched while {checkpoint.step} was measured"
        source.log.record("computed", checkpoint.step)
        return result

    worker.forget_contexts()
    monkeypatch.setattr(worker, "open_source", gated_open_source)
    monkeypatch.setattr(worker.WorkerContext, "measure", measure_then_wait)
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
    assert summary.done == steps and not summary.failed, summary
    (source,) = sources
    return source


@pytest.mark.slow
def test_the_serial_scan_overlaps_download_and_compute(monkeypatch, tiny_suite, tmp_path):
    """Step i+1 downloads while step i is measured; never two ahead at depth 1."""
    source = scan_with_gated_source(monkeypatch, tiny_suite, tmp_path / "p.zarr", 1, wait_ahead=1)
    steps = [0, 1, 2, 4]
    for i in range(len(steps) - 1):
        assert source.log.before(("start", steps[i + 1]), ("computed", steps[i]))
        if i + 2 < len(steps):
            assert source.log.before(("computed", steps[i]), ("start", steps[i + 2]))


@pytest.mark.slow
def test_the_serial_scan_without_prefetch_fetches_after_each_step(monkeypatch, tiny_suite, tmp_path):
    source = scan_with_gated_source(monkeypatch, tiny_suite, tmp_path / "s.zarr", 0)
    steps = [0, 1, 2, 4]
    for i in range(len(steps) - 1):  # nothing is fetched ahead
        assert source.log.before(("computed", steps[i]), ("start", steps[i + 1]))


@pytest.mark.slow
def test_the_serial_scan_at_depth_two_downloads_two_steps_at_once(monkeypatch, tiny_suite, tmp_path):
    """Steps 1 and 2 can only land once both have started: at depth 2 they download together while step 0 is measured."""
    source = scan_with_gated_source(monkeypatch, tiny_suite, tmp_path / "d.zarr", 2, wait_ahead=2, together=(1, 2))
    assert source.log.before(("start", 2), ("computed", 0))
    assert source.log.before(("start", 2), ("land", 1)) and source.log.before(("start", 1), ("land", 2))


@pytest.mark.slow
@pytest.mark.parametrize("steps_that_fit", [2, 1])
def test_the_serial_scan_keeps_within_max_disk_gib(monkeypatch, tiny_suite, tmp_path, steps_that_fit):
    """Depth 2, but room for two steps is depth 1 (the step measured and one ahead), for one step no prefetch."""
    size = 1 << 30  # what the fake source says each step takes; nothing is written
    source = scan_with_gated_source(
        monkeypatch,
        tiny_suite,
        tmp_path / "b.zarr",
        2,
        max_disk_gib=steps_that_fit + 0.5,
        size=size,
        wait_ahead=steps_that_fit - 1,
    )
    assert source.peak_bytes <= steps_that_fit * size and source.held_bytes == 0
    steps = [0, 1, 2, 4]
    for i in range(len(steps) - 1):
        if steps_that_fit == 2:
            assert source.log.before(("start", steps[i + 1]), ("computed", steps[i]))  # one step ahead
        else:
            assert source.log.before(("computed", steps[i]), ("start", steps[i + 1]))  # none ahead
        if i + 2 < len(steps):  # never two ahead
            assert source.log.before(("computed", steps[i]), ("start", steps[i + 2]))
