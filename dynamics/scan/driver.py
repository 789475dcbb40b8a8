"""`dynamics scan`: stream a model's checkpoints and store one step result per step.

Data flow: step spec -> checkpoint source (prefetch, eviction) -> measurements on one
loaded checkpoint (:mod:`dynamics.scan.measures`) -> one step result (an ``xarray.Dataset`` with
a length-1 ``step`` dimension) -> the cube, which writes it and then marks the step done.

The neuron cohort is fixed once, at the reference step (default: the last step asked
for): the top ``--cohort-percent`` by WD, and a random control set of equal size per layer.
Both are static variables of the cube, so every step is measured on the same neurons.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from checkpoints.names import resolve_model
from checkpoints.source import CheckpointSource, RetryPolicy, open_source
from checkpoints.steps import parse_steps
from dynamics import __version__
from dynamics.config import DTYPES, check_numbers, config_dict, resolve_protocol, shared_checks
from dynamics.corpus import check_texts
from dynamics.errors import CheckpointError, UserInputError
from dynamics.executor import (
    Completed,
    ExecutorSettings,
    check_settings,
    free_worker_caches,
    open_executor,
    stop_on_unrecoverable,
)
from dynamics.runtime import resolve_device
from dynamics.scan.config import ScanConfig
from dynamics.scan.measures import PHASES
from dynamics.scan.worker import RunSpec, StepTask, forget_contexts, measure_step, prepare_reference
from dynamics.toy.builtin import ensure_toy_suite, is_toy_alias
from store.cube import CubeWriter, read_identity

log = logging.getLogger(__name__)


# Cubes store each step's cohort weight rows and derive drift_prev from them when opened;
# cubes of the earlier layout stored drift_prev itself and cannot be extended by this one.
DRIFT_PREV = {"drift_prev": {"cosine_to_previous_step": "cohort_weights", "over": "d_model",
                             "attrs": {"long_name": "1 - cos of the member's input weights vs the previous done step"}}}


@dataclass
class ScanSummary:
    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already done before this run


@dataclass
class ScanPlan:
    source: CheckpointSource
    steps: list[int]
    reference_step: int
    corpus: str
    device: str


def plan_scan(config: ScanConfig, source: CheckpointSource | None = None) -> ScanPlan:
    """Validate the whole request before anything is downloaded or written."""
    ref = resolve_model(config.model)
    _check_numbers(config)
    resolve_protocol(config)
    if not config.out.endswith(".zarr"):
        raise UserInputError(f"--out {config.out!r}: a cube is a directory whose name ends in .zarr")
    check_settings(ExecutorSettings.of(config))
    device = resolve_device(config.device, here=config.executor == "serial")
    if is_toy_alias(ref):  # every option checked: now the built-in suite may be trained (once)
        ensure_toy_suite(ref)
    corpus = _resolve_corpus(config.corpus, ref.location if ref.kind == "local_suite" else None)
    check_texts(config, corpus)
    if source is None:
        source = open_source(
            ref, cache_dir=config.cache_dir, retry=RetryPolicy(attempts=config.retries), keep=config.keep_checkpoints
        )
    available = source.available_steps()
    steps = parse_steps(config.steps, available, source=source.model_id)
    stored = read_identity(config.out).get("reference_step")  # a resumed or extended cube keeps its cohort
    reference = config.reference_step if config.reference_step is not None else stored if stored is not None else steps[-1]
    if config.reference_step is not None:
        parse_steps(str(reference), available, source=source.model_id)  # same check, same message
    source.check_available()  # a model missing from an offline cache: one line now, not one per step
    return ScanPlan(source, steps, reference, corpus, device)


def _check_numbers(config: ScanConfig) -> None:
    check_numbers(config, [
        *shared_checks(config),
        ("ppl-tokens", config.ppl_tokens is None or config.ppl_tokens >= 0, "0 or more tokens"),
        ("cohort-percent", 0 < config.cohort_percent <= 100, "a percent in (0, 100]"),
        ("ppl-tokens", not config.matched or config.ppl_tokens != 0,
         "more than 0 with --matched (the match is on perplexity)"),
    ])
    if config.dtype not in ("auto", *DTYPES):
        raise UserInputError(f"--dtype {config.dtype!r} is not one of auto, {', '.join(DTYPES)}")


def _resolve_corpus(corpus: str, suite: str | None) -> str:
    if corpus == "auto":
        heldout = Path(suite) / "heldout.txt" if suite else None
        return str(heldout) if heldout is not None and heldout.is_file() else "wikitext2"
    if corpus != "wikitext2" and not corpus.startswith("wikitext2:") and not Path(corpus).expanduser().is_file():
        raise UserInputError(f"--corpus {corpus!r} is neither wikitext2, auto nor an existing text file")
    return corpus


def run_scan(config: ScanConfig) -> ScanSummary:
    """Scan the steps of ``config`` into its cube; resumable, one region write per step.

    The driver (this process) validates, pre-allocates the cube, holds its writer lock and
    writes every result and done marker; the steps themselves run on the executor
    (:mod:`dynamics.executor`), each as :func:`dynamics.scan.worker.measure_step`.
    """
    plan = plan_scan(config)
    identity = {"model": plan.source.model_id, "reference_step": plan.reference_step, "corpus": plan.corpus,
                "analysis": config.analysis(), "derived": DRIFT_PREV}
    provenance = {"model": config.model, "model_id": plan.source.model_id, "package_version": __version__,
                  "torch_version": torch.__version__, "config": config_dict(config), "host": platform.node(),
                  "protocol": resolve_protocol(config).record()}
    summary = ScanSummary()
    with open_executor(ExecutorSettings.of(config)) as pool, \
            CubeWriter(config.out, plan.steps, identity, provenance, overwrite=config.overwrite) as cube:
        todo = cube.todo()
        summary.skipped = [s for s in plan.steps if s not in todo]
        if not todo:
            return summary
        try:
            _measure_all(pool, _prepare(pool, config, plan, cube), todo, cube, summary)
        finally:
            if config.executor == "serial":
                _forget(pool)
        if config.executor == "dask" and config.scheduler != "local":  # a local cluster stops anyway
            _forget(pool)
    return summary


def _forget(pool: Any) -> None:
    """Free the workers' per-run caches (the reference weights)."""
    free_worker_caches(pool, forget_contexts)


def _prepare(pool: Any, config: ScanConfig, plan: ScanPlan, cube: CubeWriter) -> Any:
    """Fix (or read) the cohort and record the corpus provenance: one unit on the executor."""
    static = cube.read_static()
    spec = RunSpec(config, plan.reference_step, plan.corpus)
    if static is not None:
        spec = replace(spec, cohort=static["cohort"].values, control=static["random_control"].values,
                       matched=_matched_mask(static))
    outcome = next(iter(pool.map(prepare_reference, [spec], name="reference")))
    if not outcome.ok:
        raise CheckpointError(outcome.error)
    if static is None:
        static = outcome.result["static"]
        cube.write_static(static)
    cube.record_provenance(outcome.result["provenance"])
    return replace(spec, cohort=static["cohort"].values, control=static["random_control"].values,
                   matched=_matched_mask(static))


def _matched_mask(static: Any) -> Any:
    return static["matched_control"].values if "matched_control" in static else None


def _measure_all(pool: Any, spec: Any, todo: list[int], cube: CubeWriter, summary: ScanSummary) -> None:
    """Fan the steps out; write each result as it completes, in any order."""
    # Serially one worker takes the steps in order, so it can fetch the next one while measuring this one.
    ahead = spec.config.executor == "serial" and spec.config.prefetch
    tasks = [StepTask(step, todo[i + 1] if ahead and i + 1 < len(todo) else None) for i, step in enumerate(todo)]
    bar = tqdm(total=len(todo), desc=f"scan {spec.config.model}", unit="step", dynamic_ncols=True)
    results = pool.map(partial(measure_step, spec), tasks, name="step")
    try:
        for done in results:
            if done.ok:
                _write(cube, done)
                summary.done.append(done.unit.step)
                phases = done.result["seconds"].values[0]
                bar.set_postfix_str(f"step {done.unit.step} " + " ".join(f"{p} {t:.1f}s" for p, t in zip(PHASES, phases)))
            else:
                _record_failure(cube, done, spec.config, summary)
            bar.update()
    finally:
        results.close()  # Ctrl-C or --on-error stop: cancel what is still queued
        bar.close()
    summary.done.sort()
    summary.failed.sort()


def _record_failure(cube: CubeWriter, done: Completed, config: ScanConfig, summary: ScanSummary) -> None:
    step = done.unit.step
    cube.mark_failed(step, done.error or "unknown error", done.failure_record())
    summary.failed.append(step)
    stop_on_unrecoverable(done, f"step {step}")
    if config.on_error == "stop":
        raise CheckpointError(f"{done.error} (stopping: --on-error stop)")
    log.warning("step %d failed after %d attempt(s), recorded and skipped: %s", step, done.attempts, done.error)


def _write(cube: CubeWriter, done: Completed) -> None:
    result = done.result
    record = {**result.attrs.pop("checkpoint", {}), "task_attempts": done.attempts}
    cube.write_step(result, record)  # a full disk is one line (CubeError), done steps kept
