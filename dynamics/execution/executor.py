"""Run independent units of work (scan steps, study conditions) serially or on a Dask cluster.

One small interface for every command that fans work out::

    with open_executor(settings) as pool:
        for done in pool.map(measure_step, units, name="step"):
            ...  # done.unit, done.result or done.error, done.attempts; in completion order

- ``serial``: the units run one after the other in this process, in order (the same code
  path as a cluster, with a trivial map).
- ``dask``: each unit is one ``dask.distributed`` task. ``--scheduler local`` starts a
  ``LocalCluster`` of ``--workers`` processes with one thread each; with CUDA, one worker
  per GPU that sees only its GPU (``dask_cuda``'s ``LocalCUDACluster`` when installed,
  else the same layout through ``CUDA_VISIBLE_DEVICES``); any other
  value is the address of a running scheduler (``tcp://host:8786``) or its scheduler file
  (``scheduler.json``, as written by ``dask scheduler --scheduler-file``).

A unit that raises is submitted again up to ``task_retries`` times (Dask places it on
whichever worker is free) and then reported with its error, never raised: the caller
decides what a failure means. A worker that dies mid-task is handled by the scheduler,
which re-runs the task elsewhere up to its ``distributed.scheduler.allowed-failures``
(set to ``task_retries`` for a local cluster); past that the unit is reported failed.
Closing the iterator early (``break``, an exception, Ctrl-C) cancels what is still queued.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dynamics.config.options import option, titled
from dynamics.errors import (
    ComputationBug,
    DynamicsError,
    UserInputError,
    failure_phase,
    is_checkpoint_problem,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = "20s"  # how long to wait for a scheduler to answer
_ADDRESS = re.compile(r"^((tcp|tls|ucx|ucxx|ws|wss|inproc)://)?[^\s/:]+(:\d+)?$")


HELP = {
    "executor": "serial: in this process; dask: one task per unit on a Dask cluster",
    "scheduler": "with --executor dask: local (a LocalCluster here), a scheduler address (tcp://host:8786) "
    "or a scheduler file (scheduler.json)",
    "workers": "local: worker processes, one thread each (0: one per GPU, else 1); an address: wait for this many "
    "workers before submitting (0: do not wait)",
    "task_retries": "times a failed unit (or one whose worker died) is run again before it is recorded failed",
    "resources": "Dask worker resources each task needs, e.g. GPU=1 (start workers with --resources GPU=1; "
    "a local cluster gets them)",
}


@titled("executor")
@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    """Where units run: an option part of every command that fans work out (help: :data:`HELP`)."""

    executor: Literal["serial", "dask"] = option("serial", help=HELP["executor"], identity=False)
    scheduler: str = option("local", help=HELP["scheduler"], identity=False)
    workers: int = option(0, help=HELP["workers"], identity=False)
    task_retries: int = option(1, help=HELP["task_retries"], identity=False)
    resources: str = option("", help=HELP["resources"], identity=False)

    @classmethod
    def of(cls, config: Any) -> ExecutorSettings:
        """The executor fields of any config that carries them."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


@dataclass
class Completed:
    """One unit's outcome: ``result`` or a one-line ``error``; ``attempts`` submissions it took.

    A failure also carries ``error_type`` (the exception's class name), ``phase`` (where it
    was raised, when known), ``trace`` (the formatted traceback) and ``kind``:
    ``checkpoint`` (a problem of the unit's input, retried and recorded), ``worker`` (the
    process running it died: retried and recorded), ``user`` (a bad
    value: stops the run with one line) or ``bug`` (our own computation raised: stops the
    run with the traceback; never retried).
    """

    unit: Any
    result: Any = None
    error: str | None = None
    attempts: int = 1
    error_type: str = ""
    phase: str | None = None
    trace: str = ""
    kind: Literal["checkpoint", "worker", "user", "bug", ""] = ""

    @property
    def retryable(self) -> bool:
        """A checkpoint problem or a lost worker may pass on another try; a bug or a user error not."""
        return self.kind in ("checkpoint", "worker")

    @property
    def ok(self) -> bool:
        return self.error is None

    def failure_record(self) -> dict[str, Any]:
        """What the cube stores about a failed unit (error type, phase, the last frames)."""
        return {
            "error_type": self.error_type,
            "phase": self.phase or "",
            "kind": self.kind,
            "traceback": last_frames(self.trace),
            "task_attempts": self.attempts,
        }


def failed(unit: Any, exc: BaseException, attempts: int, trace: str | None = None) -> Completed:
    """The :class:`Completed` of a unit that raised ``exc``."""
    if trace is None:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    kind: Literal["checkpoint", "user", "bug"] = (
        "checkpoint" if is_checkpoint_problem(exc) else "user" if isinstance(exc, DynamicsError) else "bug"
    )
    return Completed(
        unit,
        error=one_line(exc),
        attempts=attempts,
        error_type=type(exc).__name__,
        phase=failure_phase(exc),
        trace=trace,
        kind=kind,
    )


def stop_on_unrecoverable(done: Completed, unit_name: str) -> None:
    """Raise for a failure that must stop the run: a bug (with its traceback) or a user error.

    Called after the failure is recorded, so the cube keeps it and every done unit.
    """
    if done.kind == "bug":
        phase = f" (phase {done.phase})" if done.phase else ""
        raise ComputationBug(
            f"bug in dynamics at {unit_name}{phase}: {done.error}; the run stopped and every done unit is kept "
            "(the traceback is above; -v shows all of it); please report it",
            done.trace,
        )
    if done.kind == "user":
        raise (UserInputError if done.error_type == "UserInputError" else DynamicsError)(done.error or "unknown error")


def last_frames(trace: str, frames: int = 3) -> str:
    """The exception line and the last ``frames`` frames of a formatted traceback."""
    lines = trace.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if len(starts) <= frames:
        return "\n".join(lines)
    return "\n".join(["Traceback (most recent call last, last frames):"] + lines[starts[-frames] :])


def check_settings(settings: ExecutorSettings) -> dict[str, float]:
    """Validate before anything is started or written; returns the parsed resources."""
    if settings.executor not in ("serial", "dask"):
        raise UserInputError(f"--executor {settings.executor!r} is not one of serial, dask")
    if settings.workers < 0:
        raise UserInputError(f"--workers {settings.workers}: expected 0 (auto) or a positive number of workers")
    if settings.task_retries < 0:
        raise UserInputError(f"--task-retries {settings.task_retries}: expected 0 or more")
    scheduler = settings.scheduler.strip()
    if (
        settings.executor == "dask"
        and scheduler != "local"
        and not _is_scheduler_file(scheduler)
        and not _ADDRESS.match(scheduler)
    ):
        raise UserInputError(
            f"--scheduler {settings.scheduler!r} is neither local, an address like tcp://host:8786 "
            "nor an existing scheduler file (.json)"
        )
    return parse_resources(settings.resources)


def parse_resources(text: str) -> dict[str, float]:
    """``"GPU=1,MEM=2e9"`` -> ``{"GPU": 1.0, "MEM": 2e9}``."""
    resources: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not name.strip() or value <= 0:
            raise UserInputError(
                f"--resources {text!r}: expected NAME=AMOUNT[,NAME=AMOUNT] with positive amounts, e.g. GPU=1"
            )
        resources[name.strip()] = value
    return resources


def _is_scheduler_file(scheduler: str) -> bool:
    return scheduler.endswith(".json") and Path(scheduler).expanduser().is_file()


class SerialExecutor:
    """Units one after the other in this process."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    def map(self, fn: Callable[[Any], Any], units: Iterable[Any], name: str = "unit") -> Iterator[Completed]:
        for unit in units:
            for attempt in range(1, self.settings.task_retries + 2):
                try:
                    result = fn(unit)
                except Exception as exc:  # reported, not raised: the caller decides what a failure means
                    outcome = failed(unit, exc, attempt)
                    if outcome.retryable and attempt <= self.settings.task_retries:
                        log.info("%s %s failed (%s); running it again", name, unit, outcome.error)
                        continue
                    yield outcome
                else:
                    yield Completed(unit, result=result, attempts=attempt)
                break

    def broadcast(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` once in every worker process (here: this one)."""
        fn()

    def close(self) -> None:
        """Nothing to release."""


class DaskExecutor:
    """Units as tasks on a Dask cluster (started here for ``--scheduler local``)."""

    def __init__(self, settings: ExecutorSettings, resources: dict[str, float]) -> None:
        self.settings = settings
        self.resources = resources
        self._stack = ExitStack()
        try:
            self.client = self._connect()
        except BaseException:
            self._stack.close()
            raise

    def _connect(self) -> Any:
        import dask
        from distributed import Client

        if not logging.getLogger().isEnabledFor(logging.DEBUG):  # -vv shows Dask's own events
            logging.getLogger("distributed").setLevel(logging.WARNING)
        scheduler = self.settings.scheduler.strip()
        if scheduler == "local":
            # The scheduler reads allowed-failures when it starts: a task whose worker died
            # is re-run elsewhere this many times before it counts as failed.
            self._stack.enter_context(
                dask.config.set({"distributed.scheduler.allowed-failures": self.settings.task_retries})
            )
            cluster = self._stack.enter_context(_local_cluster(self.settings.workers, self.resources))
            return self._stack.enter_context(Client(cluster))
        try:
            if _is_scheduler_file(scheduler):
                client = Client(scheduler_file=str(Path(scheduler).expanduser()), timeout=CONNECT_TIMEOUT)
            else:
                client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise UserInputError(
                f"--scheduler {scheduler!r}: no Dask scheduler answered ({one_line(exc)}); "
                "start one with `dask scheduler` or use --scheduler local"
            ) from None
        self._stack.enter_context(client)
        if self.settings.workers:
            client.wait_for_workers(self.settings.workers)
        return client

    def map(self, fn: Callable[[Any], Any], units: Iterable[Any], name: str = "unit") -> Iterator[Completed]:
        from distributed import as_completed

        attempts: dict[Any, tuple[Any, int]] = {}

        def submit(unit: Any, attempt: int) -> Any:
            future = self.client.submit(
                fn,
                unit,
                key=f"{name}-{unit}-attempt{attempt}-{id(attempts)}",
                pure=False,
                resources=self.resources or None,
                retries=0,
            )
            attempts[future] = (unit, attempt)
            return future

        queue = as_completed([submit(unit, 1) for unit in units])
        try:
            for future in queue:
                unit, attempt = attempts.pop(future)
                if future.status == "finished":
                    yield Completed(unit, result=future.result(), attempts=attempt)
                    continue
                if future.status == "error":
                    exc = future.exception()
                    trace = "".join(traceback.format_exception(type(exc), exc, future.traceback()))
                    outcome = failed(unit, exc, attempt, trace)
                    if type(exc).__name__ == "KilledWorker":  # the scheduler gave up on dying workers
                        outcome.kind = "worker"
                else:  # cancelled
                    outcome = Completed(
                        unit, error=f"task {future.status}", attempts=attempt, error_type="TaskLost", kind="worker"
                    )
                if outcome.retryable and attempt <= self.settings.task_retries:
                    log.info("%s %s failed (%s); submitting it again", name, unit, outcome.error)
                    queue.add(submit(unit, attempt + 1))
                else:
                    yield outcome
        finally:
            if attempts:  # closed early: nothing left queued keeps running for nobody
                self.client.cancel(list(attempts))

    def broadcast(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` once in every worker process (e.g. to free a per-run cache)."""
        self.client.run(fn)

    def close(self) -> None:
        self._stack.close()


def free_worker_caches(pool: SerialExecutor | DaskExecutor, forget: Callable[[], Any]) -> None:
    """Run ``forget`` (a per-run cache's reset) on every worker; a run never fails over it."""
    try:
        pool.broadcast(forget)
    except Exception as exc:
        log.info("could not free the workers' caches: %s", exc)


def _local_cluster(workers: int, resources: dict[str, float], gpus: int | None = None) -> Any:
    """N one-thread worker processes here; with GPUs, one per GPU, each seeing only its own."""
    from distributed import LocalCluster

    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus:
        return LocalCluster(
            n_workers=workers or 1,
            threads_per_worker=1,
            processes=True,
            resources=resources or None,
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        )
    resources = resources or {"GPU": 1}
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:  # the same layout by hand: CUDA_VISIBLE_DEVICES per worker process
        return _gpu_cluster(workers or gpus, gpus, resources)
    return LocalCUDACluster(
        n_workers=workers or gpus,
        threads_per_worker=1,
        resources=resources,
        dashboard_address=":0",
        silence_logs=logging.WARNING,
    )


def _gpu_cluster(workers: int, gpus: int, resources: dict[str, float]) -> Any:
    from distributed import Nanny, Scheduler, SpecCluster

    specs = {
        i: {
            "cls": Nanny,
            "options": {"nthreads": 1, "resources": resources, "env": {"CUDA_VISIBLE_DEVICES": str(i % gpus)}},
        }
        for i in range(workers)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.WARNING)


class open_executor:  # noqa: N801 - used like a function: `with open_executor(settings) as pool`
    """The executor for ``settings`` as a context manager (a local cluster stops on exit)."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.resources = check_settings(settings)
        self.settings = settings
        self.pool: SerialExecutor | DaskExecutor | None = None

    def __enter__(self) -> SerialExecutor | DaskExecutor:
        if self.settings.executor == "serial":
            self.pool = SerialExecutor(self.settings)
        else:
            self.pool = DaskExecutor(self.settings, self.resources)
        return self.pool

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.close()


def one_line(exc: BaseException | None) -> str:
    """``Type: first line of the message`` (a worker's traceback stays in the worker's log)."""
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()
    if isinstance(exc, DynamicsError) and text:  # already written for the user
        return text[0]
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
