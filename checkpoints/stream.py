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

from checkpoints.source import Checkpoint, CheckpointSource, _one_line
from dynamics.errors import CheckpointError


def _in_background(source: CheckpointSource, step: int) -> Future[Checkpoint]:
    """Fetch on a daemon thread (a pending download must not keep Ctrl-C from exiting)."""
    future: Future[Checkpoint] = Future()

    def work() -> None:
        try:
            future.set_result(source.fetch(step))
        except BaseException as exc:  # handed to the consumer, who decides what failure means
            future.set_exception(exc)

    threading.Thread(target=work, name=f"fetch-step{step}", daemon=True).start()
    return future


def _outcome(fetch: Callable[[], Checkpoint], step: int) -> Checkpoint:
    """The fetched checkpoint, or one carrying the error that stopped the fetch."""
    try:
        return fetch()
    except CheckpointError as exc:
        return Checkpoint(step=step, revision=None, path=None, error=str(exc))
    except Exception as exc:
        return Checkpoint(step=step, revision=None, path=None, error=f"step {step}: {_one_line(exc)}")


def stream_checkpoints(source: CheckpointSource, steps: Sequence[int], prefetch: bool = True) -> Iterator[Checkpoint]:
    """Yield a :class:`Checkpoint` per step, in order; a failed fetch yields one with ``error`` set.

    The previous checkpoint is released when the next one is requested, and whatever is
    still held is released when the generator is closed (a ``break``, an exception, Ctrl-C).
    """
    steps = list(steps)
    if not steps:
        return
    pending: Future[Checkpoint] | None = _in_background(source, steps[0]) if prefetch else None
    current: Checkpoint | None = None
    try:
        for i, step in enumerate(steps):
            if prefetch:
                assert pending is not None
                current = _outcome(pending.result, step)
                pending = _in_background(source, steps[i + 1]) if i + 1 < len(steps) else None
            else:
                current = _outcome(lambda: source.fetch(step), step)
            yield current
            if current.ok:
                source.release(current)
            current = None
    finally:
        if current is not None and current.ok:
            source.release(current)
        if pending is not None:
            # Never wait on a download here (Ctrl-C must be quick): release it when it lands.
            pending.add_done_callback(lambda f: _release_quietly(source, f))


def _release_quietly(source: CheckpointSource, future: Future[Checkpoint]) -> None:
    if future.exception() is None:
        source.release(future.result())
