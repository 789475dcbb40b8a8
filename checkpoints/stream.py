"""Streaming checkpoints: up to ``depth`` steps fetched ahead, concurrently, within a bound on disk.

While the caller analyses step t, steps t+1 .. t+depth download in background threads, so
when a download takes d seconds whatever else downloads (a per-connection limit, not the
link) and a step's analysis c, a scan takes about N x max(d / depth, c) plus the first
download instead of N x (d + c). A fetch ahead starts only while the checkpoints held on
disk, the one being analysed and those fetched ahead (pending or landed), stay within
``max_bytes`` with it (a first step is always allowed); a step's size is what its source
expects a fetch to take (the Hub's file sizes), else the size of the last downloaded step
on disk, and a fetch whose size cannot be told yet waits until one has landed.

Steps are handed out in the order asked for; each is released (evicted from the cache) when
the caller says it is stored, which may start the next fetch ahead. Closing never waits on
a download: a step fetched for nothing is released when it lands.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

from checkpoints.checkpoint import Checkpoint
from checkpoints.hub_errors import one_line
from checkpoints.source import CheckpointSource
from dynamics.errors import CheckpointError

log = logging.getLogger(__name__)

GIB = 1 << 30
#: ``--max-disk-gib 0``: this share of the free space of the cache's filesystem at the start of a
#: run; the rest stays for the cube, hf_xet's chunk cache and whatever else writes there.
AUTO_DISK_SHARE = 0.5


def fetch_outcome(fetch: Callable[[], Checkpoint], step: int) -> Checkpoint:
    """The fetched checkpoint, or one carrying the error that stopped the fetch."""
    try:
        return fetch()
    except CheckpointError as exc:
        return Checkpoint(step=step, revision=None, path=None, error=str(exc))
    except Exception as exc:
        return Checkpoint(step=step, revision=None, path=None, error=f"step {step}: {one_line(exc)}")


def checkpoint_bytes(checkpoint: Checkpoint) -> int:
    """Bytes a fetched checkpoint added to disk: its files (links followed, each blob once), 0 if not downloaded."""
    if not checkpoint.downloaded or checkpoint.path is None or not checkpoint.path.is_dir():
        return 0
    blobs = {os.path.realpath(p) for p in checkpoint.path.rglob("*")}
    return sum(os.path.getsize(b) for b in blobs if os.path.isfile(b))


def free_bytes(directory: Path) -> int:
    """Free bytes on the filesystem that holds ``directory`` (or would: its nearest existing parent)."""
    here = directory.expanduser().absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    return shutil.disk_usage(here).free


def disk_bound(max_disk_gib: float, cache_dir: Path | None) -> int | None:
    """Bytes of checkpoints allowed on disk: ``--max-disk-gib``, or for 0 a share of the cache's free space.

    None (no bound) for 0 without a cache: a local source downloads nothing.
    """
    free = free_bytes(cache_dir) if cache_dir is not None else None
    if max_disk_gib > 0:
        bound = int(max_disk_gib * GIB)
        if free is not None and bound > free:
            log.warning(
                "--max-disk-gib %g is more than the %.1f GiB free in %s: downloads ahead may fill the disk",
                max_disk_gib,
                free / GIB,
                cache_dir,
            )
        return bound
    return int(free * AUTO_DISK_SHARE) if free is not None else None


class Prefetcher:
    """Fetches announced steps in the background; what is fetched is the caller's to release.

    ``prefetch(steps)`` announces the steps the caller will ask for next, in order: the first
    ``depth`` of them are fetched concurrently as far as ``max_bytes`` allows (None: no bound),
    and anything announced earlier and no longer wanted is let go (released when it lands).
    ``fetch(step)`` returns a step, waiting for its pending download or fetching it now;
    ``release(checkpoint)`` frees it and lets the next fetch ahead start. The scan's worker
    holds one per run (:class:`dynamics.scan.worker.WorkerContext`).
    """

    def __init__(self, source: CheckpointSource, depth: int = 1, max_bytes: int | None = None) -> None:
        self.source = source
        self.depth = depth
        self.max_bytes = max_bytes
        self.pending: dict[int, Future[Checkpoint]] = {}
        self._lock = threading.Lock()  # fetch threads land, release and start fetches while the caller asks
        self._wanted: list[int] = []
        self._held: dict[int, int | None] = {}  # step -> bytes on disk (None: unknown yet), fetched and not released
        self._sizes: dict[int, int | None] = {}  # step -> bytes its fetch is expected to take, asked once
        self._last_size: int | None = None  # bytes the last downloaded step took on disk
        self._closed = False

    def fetch(self, step: int) -> Checkpoint:
        """The checkpoint of ``step``, or one whose ``error`` says why it could not be had."""
        with self._lock:
            if step in self._wanted:
                self._wanted.remove(step)
            pending = self.pending.pop(step, None)
        if pending is None:  # asked for now: fetched whatever the bound (the caller cannot go on without it)
            size = self._size_of(step)
            with self._lock:
                self._held[step] = size
        outcome = fetch_outcome(pending.result if pending else lambda: self._fetch_now(step), step)
        if not outcome.ok:
            self._forget(step)
        return outcome

    def prefetch(self, steps: Sequence[int]) -> None:
        """Fetch the first ``depth`` of ``steps`` ahead; a stale download is released when it lands (never waited on)."""
        with self._lock:
            if self._closed:
                return
            self._wanted = list(steps)[: self.depth]
            stale = {s: self.pending.pop(s) for s in list(self.pending) if s not in self._wanted}
        for step, future in stale.items():
            self._let_go(step, future)
        self._fill()

    def release(self, checkpoint: Checkpoint) -> None:
        """Free what fetching ``checkpoint`` took (the caller has stored it), then fetch further ahead."""
        try:
            if checkpoint.ok:
                self.source.release(checkpoint)
        finally:
            self._forget(checkpoint.step)

    def close(self) -> None:
        """Let go of every pending download (each is released when it lands) and fetch nothing more."""
        with self._lock:
            self._closed, self._wanted = True, []
            stale, self.pending = self.pending, {}
        for step, future in stale.items():
            self._let_go(step, future)

    def held_steps(self) -> list[int]:
        """The steps fetched or fetching and not released yet."""
        with self._lock:
            return sorted(self._held)

    def _fill(self) -> None:
        """Start fetching the wanted steps, in order, while the disk bound allows."""
        while True:
            with self._lock:
                step = self._next_to_start()
                if step is None:
                    return
                asked = step in self._sizes
            if not asked:
                self._size_of(step)
                continue
            with self._lock:
                if step != self._next_to_start():
                    continue
                if not self._fits(self._sizes[step]):
                    log.debug("step %d waits for disk space (%s bytes held)", step, self._held)
                    return
                self._held[step] = self._sizes[step]
                self.pending[step] = self._start(step)

    def _next_to_start(self) -> int | None:
        if self._closed:
            return None
        return next((s for s in self._wanted if s not in self.pending and s not in self._held), None)

    def _fits(self, size: int | None) -> bool:
        """Whether one more fetch of ``size`` bytes keeps what is held within the bound (called with the lock)."""
        if self.max_bytes is None or not self._held:
            return True
        sizes = [*self._held.values(), size]
        if any(s is None for s in sizes):
            if self._last_size is None:
                return False  # nothing has landed to tell a step's size: wait until one has
            sizes = [self._last_size if s is None else s for s in sizes]
        return sum(s or 0 for s in sizes) <= self.max_bytes

    def _size_of(self, step: int) -> int | None:
        """The bytes ``step``'s fetch is expected to take, asked of the source once (it may ask the Hub: no lock held)."""
        with self._lock:
            if step in self._sizes:
                return self._sizes[step]
        expected = getattr(self.source, "expected_bytes", None)  # a source may not know: None
        size = expected(step) if expected is not None else None
        with self._lock:
            return self._sizes.setdefault(step, size)

    def _start(self, step: int) -> Future[Checkpoint]:
        """Fetch on a daemon thread (a pending download must not keep Ctrl-C from exiting)."""
        future: Future[Checkpoint] = Future()

        def work() -> None:
            try:
                checkpoint = self._fetch_now(step)
            except BaseException as exc:  # handed to the consumer, who decides what failure means
                with self._lock:
                    self._held.pop(step, None)
                future.set_exception(exc)
            else:
                future.set_result(checkpoint)
            self._fill()

        threading.Thread(target=work, name=f"fetch-step{step}", daemon=True).start()
        return future

    def _fetch_now(self, step: int) -> Checkpoint:
        checkpoint = self.source.fetch(step)
        on_disk = checkpoint_bytes(checkpoint)
        with self._lock:
            if step in self._held and self._held[step] is None:
                self._held[step] = on_disk
            if checkpoint.downloaded:
                self._last_size = on_disk
        return checkpoint

    def _let_go(self, step: int, future: Future[Checkpoint]) -> None:
        def release_when_landed(done: Future[Checkpoint]) -> None:
            try:
                if done.exception() is None:
                    self.source.release(done.result())
            finally:
                self._forget(step)

        future.add_done_callback(release_when_landed)

    def _forget(self, step: int) -> None:
        with self._lock:
            self._held.pop(step, None)
        self._fill()


def stream_checkpoints(
    source: CheckpointSource, steps: Sequence[int], depth: int = 1, max_bytes: int | None = None
) -> Iterator[Checkpoint]:
    """Yield a :class:`Checkpoint` per step, in order; a failed fetch yields one with ``error`` set.

    Up to ``depth`` steps are fetched ahead within ``max_bytes`` on disk (:class:`Prefetcher`).
    The previous checkpoint is released when the next one is requested, and whatever is
    still held is released when the generator is closed (a ``break``, an exception, Ctrl-C).
    """
    steps = list(steps)
    prefetcher = Prefetcher(source, depth, max_bytes)
    current: Checkpoint | None = None
    try:
        for i, step in enumerate(steps):
            current = prefetcher.fetch(step)
            prefetcher.prefetch(steps[i + 1 : i + 1 + depth])
            yield current
            prefetcher.release(current)
            current = None
    finally:
        if current is not None:
            prefetcher.release(current)
        # Never wait on a download here (Ctrl-C must be quick): release it when it lands.
        prefetcher.close()
