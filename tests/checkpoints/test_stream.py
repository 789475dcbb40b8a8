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
