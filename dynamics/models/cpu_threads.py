"""CPU threads of the evaluation: batches side by side (:func:`map_batches`), and how many
threads the vocabulary projection runs on: as the process is set, a fixed count, or *timed*
per model.

``--threads 0`` on a small model runs the evaluation's batches on every usable core, one
torch thread each (:func:`map_batches`; numbers bitwise those of one thread). What follows
concerns a batch that runs alone.

``--threads 0`` runs a model under 50M parameters on one thread (its small operations stall
on thread barriers when other jobs share the cores, :func:`dynamics.models.runtime.threads_for`), and
sets the policy ``"timed"`` here for its vocabulary projection, one large matrix product per
chunk of rows: for each model object, the first chunk large enough is projected twice on one
thread and twice on every core this process may use, alternating, and the faster count serves
every later chunk. On an idle machine that is every core, on a busy one a single thread: it
is measured where the work runs, not assumed. Timing costs three extra chunks once per model
object (once per scan step, once per ablate run).

Only the projection is timed. Its product and its per-row reductions come out bit for bit the
same on any thread count (the scan's serial and Dask cubes are compared bit for bit with it
on), while the decoder's layers did not: timed onto two cores they were faster (17.4 against
19.9 s per scan step evaluation on two idle cores) but moved TSE margins by a float32 rounding
between a serial and a Dask run, so a cube would depend on the machine's load. ``run_timed``
takes a ``kind`` so that another call could be timed on its own the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
POLICIES = ("timed",)

_policy: dict[str, int | str | None] = {"threads": None, "batch_workers": 1}
#: Set in a thread of :func:`map_batches`: its calls run on the one torch thread as they are.
_IN_BATCH_WORKER = threading.local()
#: Per model object, the thread count timed fastest for each kind of call.
_TIMED: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


@contextmanager
def run_scope() -> Iterator[None]:
    """A run's CPU thread settings last as long as the run: torch's thread count, the projection's policy
    (and what it timed) and the batch workers are as before once the context exits, also after an
    exception, so one in-process run (a test, a notebook) does not change the next one's rounding."""
    saved = (torch.get_num_threads(), _policy["threads"], _policy["batch_workers"])
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        _policy["threads"], _policy["batch_workers"] = saved[1], saved[2]
        _TIMED.clear()


def set_cpu_threads(threads: int | str | None) -> None:
    """The policy of :func:`run_timed`: ``None`` (the default) the process's torch threads, a
    count, or ``"timed"`` (see the module docstring). Forgets earlier timings."""
    if threads is not None and threads not in POLICIES and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"CPU threads {threads!r}: expected None, 'timed' or a count >= 1")
    _policy["threads"] = threads
    _TIMED.clear()


def cpu_policy() -> int | str | None:
    """The policy :func:`set_cpu_threads` set."""
    return _policy["threads"]


def run_timed(model: Any, kind: str, size: int, threshold: int, work: Callable[[], T]) -> T:
    """``work()`` on the CPU threads the policy gives ``model``'s calls of ``kind``.

    With ``"timed"``, a call of at least ``threshold`` (``size`` counts its work: rows, tokens)
    that finds ``kind`` not yet timed for ``model`` is the one timed; smaller calls run on the
    process's threads until then.
    """
    policy = _policy["threads"]
    if policy is None or getattr(_IN_BATCH_WORKER, "active", False):
        return work()
    if isinstance(policy, int):
        with cpu_threads(policy):
            return work()
    chosen = _TIMED.get(model, {}).get(kind)
    if chosen is None:
        if size < threshold:
            return work()
        chosen, result = _time(work, kind)
        _TIMED.setdefault(model, {})[kind] = chosen
        return result
    with cpu_threads(chosen):
        return work()


def timed_threads(model: Any) -> dict[str, int]:
    """What was timed for ``model`` so far (``{kind: threads}``)."""
    return dict(_TIMED.get(model, {}))


def _time(work: Callable[[], T], kind: str) -> tuple[int, T]:
    """The faster of one thread and every usable core for ``work`` (two rounds each,
    alternating), and a result of ``work``."""
    cores = usable_cores()
    if cores <= 1:
        with cpu_threads(1):
            return 1, work()
    seconds: dict[int, float] = {1: float("inf"), cores: float("inf")}
    result: Any = None
    for _ in range(2):
        for threads in seconds:
            with cpu_threads(threads):
                start = time.perf_counter()
                result = work()
                seconds[threads] = min(seconds[threads], time.perf_counter() - start)
    chosen = min(seconds, key=lambda t: (seconds[t], t))
    log.debug("%s calls on %d CPU thread(s) (timed: %s)", kind, chosen, seconds)
    return chosen, result


def usable_cores() -> int:
    """The cores this process may run on, at most ``OMP_NUM_THREADS`` where that is set
    (Dask's worker processes set it to 1)."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(limit)) if limit.isdigit() and int(limit) > 0 else cores


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` while the context is open."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)


def set_batch_workers(workers: int) -> None:
    """How many threads :func:`map_batches` runs CPU batches on (1: in the calling thread)."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"batch workers {workers!r}: expected a count >= 1")
    _policy["batch_workers"] = workers


def batch_workers() -> int:
    """The count :func:`set_batch_workers` set."""
    return int(_policy["batch_workers"] or 1)


def map_batches(device: Any, work: Callable[[T], R], batches: Iterable[T]) -> Iterator[R]:
    """``work(batch)`` of each batch, in order: on the CPU with :func:`batch_workers` > 1, on as
    many threads at once, each running torch on one thread.

    Every batch is computed exactly as a serial one-thread call computes it (same inputs, one
    torch thread), so the numbers do not depend on the workers, the cores or the load; only
    batches run side by side. Unlike one batch on several torch threads, independent batches
    never wait on each other's thread barriers, which stall badly on a busy machine
    (:func:`dynamics.models.runtime.threads_for`). Calls that :func:`run_timed` would time run on
    the one thread instead. At most two batches per worker are taken ahead of the one yielded;
    an exception in one stops the rest and is raised here.
    """
    workers = batch_workers()
    if str(device) != "cpu" or workers <= 1:
        yield from map(work, batches)
        return

    # Grad and inference mode are per thread: the workers take the caller's.
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def in_worker(batch: T) -> R:
        _IN_BATCH_WORKER.active = True
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return work(batch)
        finally:
            _IN_BATCH_WORKER.active = False

    pending: deque[Future[R]] = deque()
    with one_torch_thread():
        pool = ThreadPoolExecutor(workers, thread_name_prefix="batch", initializer=torch_on_one_thread_here)
        try:
            for batch in batches:
                pending.append(pool.submit(in_worker, batch))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 1}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Single-threaded torch ops inside; the caller's own worker threads provide the parallelism.

    Many small ops with OpenMP barriers stall badly on a busy machine; independent
    chunks in a thread pool do not. This changes torch's process-wide thread count for
    the duration of the call (nested and concurrent calls restore it once, at the end).
    """
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])


def torch_on_one_thread_here() -> None:
    """Run the calling (fresh) thread's torch ops on one thread, from its first op on.

    Torch applies its thread count to a new thread lazily, at the thread's first parallel
    op; a matrix product before that runs on OpenMP's default team (every core), which
    oversubscribes the workers and rounds differently from one thread. Meant for worker
    threads inside :func:`one_torch_thread`, where the process-wide count is already one."""
    torch.set_num_threads(1)


def threads_outside() -> int:
    """Torch's thread count as set outside :func:`one_torch_thread` (the workers a pool may use)."""
    with _THREADS_LOCK:
        return _THREADS_STATE["saved"] if _THREADS_STATE["depth"] else torch.get_num_threads()
