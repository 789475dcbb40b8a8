"""Streaming checkpoints with one step of prefetch and bounded disk use.

While the caller analyses step t, step t+1 is fetched in a background thread, so a scan
takes about N * max(fetch, compute) + min(fetch, compute) instead of N * (fetch + compute).
Step t is released (evicted from the cache) when the caller asks for the next step, i.e.
after it has stored t, and step t+2 is not fetched before then: at most two checkpoints
are on disk at any time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

from checkpoints.source import Checkpoint, CheckpointSource, one_line
from dynamics.errors import CheckpointError


def fetch_in_background(source: CheckpointSource, step: int) -> Future[Checkpoint]:
    """Fetch on a daemon thread (a pending download must not keep Ctrl-C from exiting)."""
    future: Future[Checkpoint] = Future()

    def work() -> None:
        try:
            future.set_result(source.fetch(step))
        except BaseException as exc:  # handed to the consumer, who decides what failure means
            future.set_exception(exc)

    threading.Thread(target=work, name=f"fetch-step{step}", daemon=True).start()
    return future


def fetch_outcome(fetch: Callable[[], Checkpoint], step: int) -> Checkpoint:
    """The fetched checkpoint, or one carrying the error that stopped the fetch."""
    try:
        return fetch()
    except CheckpointError as exc:
        return Checkpoint(step=step, revision=None, path=None, error=str(exc))
    except Exception as exc:
        return Checkpoint(step=step, revision=None, path=None, error=f"step {step}: {one_line(exc)}")


class Prefetcher:
    """Fetches announced steps in the background; what is fetched is the caller's to release.

    ``prefetch(step)`` starts fetching ``step`` on a daemon thread (and lets go of anything
    announced earlier and not asked for); ``fetch(step)`` returns it, waiting for a pending
    download or fetching it now. The scan's worker holds one per run
    (:class:`dynamics.scan.worker.WorkerContext`).
    """

    def __init__(self, source: CheckpointSource) -> None:
        self.source = source
        self.pending: dict[int, Future[Checkpoint]] = {}

    def fetch(self, step: int) -> Checkpoint:
        """The checkpoint of ``step``, or one whose ``error`` says why it could not be had."""
        pending = self.pending.pop(step, None)
        return fetch_outcome(pending.result if pending else lambda: self.source.fetch(step), step)

    def prefetch(self, step: int | None) -> None:
        """Start fetching ``step``; a stale download is released when it lands (never waited on)."""
        for stale in [s for s in self.pending if s != step]:
            self.pending.pop(stale).add_done_callback(lambda f: _release_quietly(self.source, f))
        if step is not None and step not in self.pending:
            self.pending[step] = fetch_in_background(self.source, step)

    def close(self) -> None:
        """Let go of every pending download (each is released when it lands)."""
        self.prefetch(None)


def stream_checkpoints(source: CheckpointSource, steps: Sequence[int], prefetch: bool = True) -> Iterator[Checkpoint]:
    """Yield a :class:`Checkpoint` per step, in order; a failed fetch yields one with ``error`` set.

    The previous checkpoint is released when the next one is requested, and whatever is
    still held is released when the generator is closed (a ``break``, an exception, Ctrl-C).
    """
    steps = list(steps)
    prefetcher = Prefetcher(source)
    current: Checkpoint | None = None
    try:
        if prefetch and steps:
            prefetcher.prefetch(steps[0])
        for i, step in enumerate(steps):
            current = prefetcher.fetch(step)
            if prefetch:
                prefetcher.prefetch(steps[i + 1] if i + 1 < len(steps) else None)
            yield current
            if current.ok:
                source.release(current)
            current = None
    finally:
        if current is not None and current.ok:
            source.release(current)
        # Never wait on a download here (Ctrl-C must be quick): release it when it lands.
        prefetcher.close()


def _release_quietly(source: CheckpointSource, future: Future[Checkpoint]) -> None:
    if future.exception() is None:
        source.release(future.result())
