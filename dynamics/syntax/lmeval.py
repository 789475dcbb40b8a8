"""Non-syntactic benchmarks through lm-evaluation-harness, on the (ablated) in-memory model.

lm-eval is an optional extra (``pip install 'wasserstein-dynamics[lmeval]'``). The model is
wrapped with ``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer)``, so
an ablation hook registered on ``model`` is active during the evaluation.

A task whose data cannot be reached (offline, no cache) is skipped with one log line and
recorded as NaN with the reason; the study goes on. Availability is probed once per run
(:func:`probe_tasks`) so that the same task is not retried under every condition.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from dynamics.errors import UserInputError
from dynamics.syntax.hub_data import (
    HubDataUnavailable,
    check_hub_reachable,
    hub_offline,
    note_connection_failure,
    unavailable_reason,
)

log = logging.getLogger(__name__)

DEFAULT_TASKS = (
    "arc_easy",
    "arc_challenge",
    "piqa",
    "hellaswag",
    "winogrande",
    "boolq",
    "openbookqa",
    "lambada_openai",
)
#: Metrics stored per task (``NaN`` where a task does not report one).
METRICS = ("acc", "acc_norm")
MISSING = "lm-eval is not installed (pip install 'wasserstein-dynamics[lmeval]')"


def lm_eval_installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def parse_tasks(spec: str) -> tuple[str, ...]:
    """``none`` -> (), ``default`` -> :data:`DEFAULT_TASKS`, else comma-separated names."""
    if spec.strip().lower() == "none":
        return ()
    if spec.strip().lower() == "default":
        return DEFAULT_TASKS
    names = tuple(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    if not names:
        raise UserInputError(f"--tasks {spec!r}: expected comma-separated lm-eval task names, default or none")
    return names


@lru_cache(maxsize=4)
def _task_manager(include_path: str | None, defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults) if include_path else TaskManager()


def task_manager(include_path: str | None = None, tasks: Sequence[str] = ()) -> Any:
    """One lm-eval TaskManager per process (indexing the built-in registry takes 10 s or more):
    only the ``include_path`` tasks when they are all that is asked for, else every task."""
    if include_path:
        local = _task_manager(include_path, False)
        if tasks and all(t in local.all_tasks for t in tasks):
            return local
    return _task_manager(include_path, True)


def check_task_names(tasks: Sequence[str], include_path: str | None = None) -> None:
    """Reject unknown task names (one line) when lm-eval is installed; no data is fetched."""
    if not tasks or not lm_eval_installed():
        return
    known = set(task_manager(include_path, tasks).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise UserInputError(
            f"--tasks: unknown lm-eval task {unknown[0]!r}; e.g. {', '.join(DEFAULT_TASKS[:4])} "
            "(`lm_eval ls tasks` lists them), or none to skip"
        )


@dataclass
class TaskPlan:
    """Which requested tasks can run, and why the others cannot."""

    runnable: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # task -> reason


def probe_tasks(tasks: Sequence[str], include_path: str | None = None) -> TaskPlan:
    """Load each task's data once; one warning line per task that cannot run.

    Tasks whose data is on the Hub are tried only while the Hub can be reached: once a request
    of this run found no network (:mod:`dynamics.syntax.hub_data`), they are skipped at once,
    with one line for all of them. Offline by the environment, ``datasets`` reads its cache.
    """
    plan = TaskPlan()
    if not tasks:
        return plan
    if not lm_eval_installed():
        log.warning("%s; skipping the lm-eval tasks %s", MISSING, ", ".join(tasks))
        plan.skipped = {t: MISSING for t in tasks}
        return plan
    manager = task_manager(include_path, tasks)
    local = set(_task_manager(include_path, False).all_tasks) if include_path else set()
    unreachable: list[str] = []
    for task in tasks:
        if task not in local and not hub_offline() and _hub_unreachable():
            unreachable.append(task)
            continue
        try:
            manager.load([task])
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "data not here"
            note_connection_failure(exc)
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            log.warning("lm-eval task %s skipped: its data cannot be loaded (%s)", task, reason)
            plan.skipped[task] = reason
        else:
            plan.runnable.append(task)
    if unreachable:
        reason = unavailable_reason() or "the Hub cannot be reached"
        log.warning("lm-eval tasks %s skipped: their data cannot be loaded (%s)", ", ".join(unreachable), reason)
        plan.skipped.update(dict.fromkeys(unreachable, reason))
    return plan


def _hub_unreachable() -> bool:
    """Whether the Hub was found unreachable in this run (asked once, without retries, when nothing is known)."""
    try:
        check_hub_reachable("lm-eval task data")
    except HubDataUnavailable:
        return True
    return False


@dataclass(frozen=True)
class TaskOutcomes:
    """What lm-eval reported: ``metrics`` (``{task: {metric: value}}``) and, per task whose samples carry
    ``acc``, each example's outcome: ``items[task] = (doc ids, acc 1/0)`` in doc-id order."""

    metrics: dict[str, dict[str, float]]
    items: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def evaluate_task_outcomes(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    batch_size: int = 8,
    include_path: str | None = None,
    seed: int = 0,
) -> TaskOutcomes:
    """``{task: {metric: value}}`` for ``METRICS`` of each task, on the model as it is now, and each
    example's ``acc`` (lm-eval's per-sample log), so that two conditions, which see the same examples
    (same limit, same seed), compare item by item."""
    if not tasks:
        return TaskOutcomes({})
    results = _simple_evaluate(model, tokenizer, tasks, limit, batch_size, include_path, seed)
    metrics = _metrics(results, tasks)
    samples = (results or {}).get("samples", {})
    items = {}
    for task in tasks:
        outcome = example_outcomes(samples.get(task, []))
        if outcome is not None and _agrees(task, outcome[1], metrics[task]["acc"]):
            items[task] = outcome
    return TaskOutcomes(metrics, items)


def _simple_evaluate(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    batch_size: int,
    include_path: str | None,
    seed: int,
) -> dict[str, Any] | None:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    results: dict[str, Any] | None = simple_evaluate(
        model=wrapped,
        tasks=list(tasks),
        limit=limit,
        task_manager=task_manager(include_path, tasks),
        log_samples=True,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        verbosity="ERROR",
    )
    return results


def _metrics(results: dict[str, Any] | None, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    table = (results or {}).get("results", {})
    return {
        task: {metric: float(table.get(task, {}).get(f"{metric},none", float("nan"))) for metric in METRICS}
        for task in tasks
    }


def example_outcomes(samples: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(doc ids, ``acc`` as 1/0 floats), sorted by doc id, of one task's logged samples under the ``none``
    filter (the one ``acc,none`` aggregates); None when they carry no ``acc`` (e.g. a group, a
    generation task)."""
    kept = [s for s in samples if s.get("filter", "none") == "none" and "acc" in s]
    if not kept:
        return None
    kept.sort(key=lambda s: int(s["doc_id"]))
    docs = np.asarray([int(s["doc_id"]) for s in kept], dtype=np.int64)
    correct = np.asarray([float(s["acc"]) for s in kept], dtype=np.float32)
    return docs, correct


def _agrees(task: str, correct: np.ndarray, acc: float) -> bool:
    """Whether the examples' mean is the task's ``acc`` (lm-eval aggregates it as a mean); if not, the
    examples are not what ``acc`` was computed from and are left out, with one warning."""
    if np.isclose(float(np.mean(correct, dtype=np.float64)), acc, rtol=0, atol=1e-9):
        return True
    log.warning(
        "lm-eval task %s: its %d examples' mean acc %.6g is not its acc %.6g; its per-example outcomes are not stored",
        task,
        len(correct),
        float(np.mean(correct)),
        acc,
    )
    return False
