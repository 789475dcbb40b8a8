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
import os
import platform
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from checkpoints import hub_status
from checkpoints.names import resolve_model, training_seed
from dynamics import __version__
from dynamics.config.identity import IDENTITY_VERSION, analysis_identity, settle_identity
from dynamics.config.options import config_dict
from dynamics.config.protocol import resolve_protocol
from dynamics.errors import CheckpointError
from dynamics.evaluate.benchmarks import CONTENT_LABELS
from dynamics.evaluate.sizing import stored_sizes
from dynamics.execution.executor import (
    Completed,
    ExecutorSettings,
    free_worker_caches,
    open_executor,
    stop_on_unrecoverable,
)
from dynamics.execution.progress import progress_bar
from dynamics.models.cpu_threads import run_scope
from dynamics.scan.benchmarks import (
    SIZED_LABELS,
    SizedSamples,
    sized_samples,
)
from dynamics.scan.cohort_setup import prepare_reference
from dynamics.scan.config import ScanConfig
from dynamics.scan.duplicates import copied_result, plan_duplicates
from dynamics.scan.measures import PHASES
from dynamics.scan.plan import ScanPlan, plan_scan
from dynamics.scan.weights_check import refuse_changed_weights
from dynamics.scan.worker import RunSpec, StepTask, forget_contexts, measure_step
from store.cube import CubeWriter
from store.leftovers import discard_new_cube

log = logging.getLogger(__name__)


# Cubes store each step's cohort weight rows and derive drift_prev from them when opened;
# cubes of the earlier layout stored drift_prev itself and cannot be extended by this one.
DRIFT_PREV = {
    "drift_prev": {
        "cosine_to_previous_step": "cohort_weights",
        "over": "d_model",
        "attrs": {"long_name": "1 - cos of the member's input weights vs the previous done step"},
    }
}


@dataclass
class ScanSummary:
    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already done before this run
    copied: dict[int, int] = field(default_factory=dict)  # duplicate step -> the step its numbers were copied from


def run_scan(config: ScanConfig) -> ScanSummary:
    """Scan the steps of ``config`` into its cube; resumable, one region write per step.

    The driver (this process) validates, pre-allocates the cube, holds its writer lock and
    writes every result and done marker; the steps themselves run on the executor
    (:mod:`dynamics.execution.executor`), each as :func:`dynamics.scan.worker.measure_step`.
    The run's CPU thread settings end with it (:func:`dynamics.models.cpu_threads.run_scope`).
    """
    with run_scope():
        return _run_scan(config)


def _run_scan(config: ScanConfig) -> ScanSummary:
    hub_status.forget()  # a new run: the Hub is tried again, with one retry budget for the whole run
    plan = plan_scan(config)
    identity = {
        "model": plan.source.model_id,
        "reference_step": plan.reference_step,
        "corpus": plan.corpus,
        "analysis": analysis_identity(config),
        "identity_version": IDENTITY_VERSION,
        "texts": {"wd": config.wd_corpus or plan.corpus, "ppl": config.ppl_corpus or plan.corpus},
        "derived": DRIFT_PREV,
    }
    if plan.benchmarks.identity():  # absent when none is measured: cubes made before BLiMP per step still resume
        identity["benchmarks"] = plan.benchmarks.identity()
    identity = settle_identity(config.out, identity, type(config))  # a cube made by an earlier version resumes
    provenance = {
        "model": config.model,
        "model_id": plan.source.model_id,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "config": config_dict(config),
        "host": platform.node(),
        "revision_template": config.revision_template,
        "benchmarks_skipped": plan.benchmarks.skipped,
        "model_seed": training_seed(resolve_model(config.model)),
        "protocol": resolve_protocol(config).record(),
        "reference_weights": plan.source.weights_record(plan.reference_step),  # compared by the next run
    }
    refuse_changed_weights(config.out, identity, plan.source, plan.reference_step, plan.steps, config.overwrite)
    created = not os.path.lexists(config.out)
    summary = ScanSummary()
    with (
        open_executor(ExecutorSettings.of(config)) as pool,
        CubeWriter(config.out, plan.steps, identity, provenance, overwrite=config.overwrite) as cube,
    ):
        todo = cube.todo()
        summary.skipped = [s for s in plan.steps if s not in todo]
        if not todo:
            return summary
        duplicates, prints = plan_duplicates(todo, cube.records(), plan.source.weight_fingerprint)
        labels = StepLabels(plan.tokens, duplicates, prints)
        copies = {} if config.recompute_duplicates else duplicates
        for step, original in duplicates.items():
            log.warning(
                "step %d has the same weight files as step %d: %s",
                step,
                original,
                "measured anyway (--recompute-duplicates)"
                if config.recompute_duplicates
                else f"its numbers are copied from step {original}, flagged duplicate_of",
            )
        measure = [s for s in todo if s not in copies]
        for step, original in sorted(copies.items()):  # originals done by an earlier run: copy now
            if original not in measure:
                _copy(cube, step, original, labels, summary)
        try:
            if measure:
                spec = _prepare(pool, config, plan, cube, discard=created)
                _measure_all(pool, spec, measure, cube, summary, labels, copies)
        finally:
            if config.executor == "serial":
                _forget(pool)
        if config.executor == "dask" and config.scheduler != "local":  # a local cluster stops anyway
            _forget(pool)
    summary.done.sort()
    return summary


def _forget(pool: Any) -> None:
    """Free the workers' per-run caches (the reference weights)."""
    free_worker_caches(pool, forget_contexts)


def _prepare(pool: Any, config: ScanConfig, plan: ScanPlan, cube: CubeWriter, discard: bool) -> Any:
    """Fix (or read) the cohort and record the corpus provenance: one unit on the executor.

    A reference step that cannot be fetched or loaded stops the run; with ``discard`` (this run
    created the cube) and no step done, the cube goes too: nothing was measured into it.
    """
    try:
        return _fix_cohort(pool, config, plan, cube)
    except CheckpointError:
        if discard and not any(r.get("status") == "done" for r in cube.records().values()):
            discard_new_cube(cube.path)
        raise


def _fix_cohort(pool: Any, config: ScanConfig, plan: ScanPlan, cube: CubeWriter) -> Any:
    static = cube.read_static()
    spec = RunSpec(config, plan.reference_step, plan.corpus, benchmarks=plan.benchmarks, revisions=plan.revisions)
    if static is not None:
        spec = replace(
            spec, cohort=static["cohort"].values, control=static["random_control"].values, matched=_matched_mask(static)
        )
    outcome = next(iter(pool.map(prepare_reference, [spec], name="reference")))
    if not outcome.ok:
        stop_on_unrecoverable(outcome, f"the reference step {plan.reference_step}")  # a bad option: exit 2
        raise CheckpointError(outcome.error)
    cube.check_content(outcome.result["content"], CONTENT_LABELS)  # a changed text or benchmark: refused, never mixed
    if static is None:
        static = outcome.result["static"]
        cube.write_static(static)
    cube.record_provenance(outcome.result["provenance"])
    return replace(
        spec,
        cohort=static["cohort"].values,
        control=static["random_control"].values,
        matched=_matched_mask(static),
        sized=_sized_samples(config, plan, static, cube),
    )


def _sized_samples(config: ScanConfig, plan: ScanPlan, static: Any, cube: CubeWriter) -> SizedSamples | None:
    """``--target-ci``: the samples of the sizes the cube stores (chosen by this run's pilot or an earlier
    one's, never piloted again), whose content must be what the cube's steps were scored on."""
    sizes = stored_sizes(static)
    if sizes is None:
        return None
    sized = sized_samples(plan.benchmarks, sizes, config.blimp, config.seed)
    cube.check_content(sized.content(), SIZED_LABELS)  # the BLiMP or TSE data changed: refused, never mixed
    cube.record_provenance({"tse_pairs": len(sized.tse), "blimp_pairs": len(sized.blimp)})
    return sized


def _matched_mask(static: Any) -> Any:
    return static["matched_control"].values if "matched_control" in static else None


@dataclass
class StepLabels:
    """What the driver adds to every step it writes: tokens seen, duplicate flags, fingerprints."""

    tokens: dict[int, int]
    duplicates: dict[int, int]  # step -> the earlier step with the same weights
    fingerprints: dict[int, dict[str, str] | None]

    def label(self, result: Any, step: int) -> Any:
        """``result`` with its ``tokens`` and ``duplicate_of`` (coordinates along step when the cube is opened)."""
        result["tokens"] = (
            "step",
            np.array([self.tokens.get(step, -1)], dtype="int64"),
            {"long_name": "training tokens seen at this step (-1: unknown)"},
        )
        if "duplicate_of" not in result:
            result["duplicate_of"] = (
                "step",
                np.array([self.duplicates.get(step, -1)], dtype="int64"),
                {"long_name": "the earlier step with the same weight files (-1: none)"},
            )
        return result


def _copy(cube: CubeWriter, step: int, original: int, labels: StepLabels, summary: ScanSummary) -> None:
    """Write the stored numbers of ``original`` as those of its duplicate ``step``, marked as a copy."""
    record = cube.records().get(original, {})
    if record.get("status") != "done":
        cube.mark_failed(
            step, f"step {step} duplicates step {original}, which is not done: its numbers cannot be copied"
        )
        summary.failed.append(step)
        return
    copy = labels.label(copied_result(cube.read_step(original), step, original), step)
    cube.write_step(
        copy, {"weights_sha256": labels.fingerprints.get(step), "duplicate_of": original, "copied_from": original}
    )
    summary.copied[step] = original
    summary.done.append(step)


def _measure_all(
    pool: Any,
    spec: Any,
    todo: list[int],
    cube: CubeWriter,
    summary: ScanSummary,
    labels: StepLabels,
    copies: dict[int, int],
) -> None:
    """Fan the steps out; write each result as it completes, in any order."""
    # Serially one worker takes the steps in order, so it can fetch the next ones while measuring this one.
    depth = spec.config.prefetch_depth if spec.config.executor == "serial" else 0
    tasks = [StepTask(step, tuple(todo[i + 1 : i + 1 + depth])) for i, step in enumerate(todo)]
    bar = progress_bar(total=len(todo), desc=f"scan {spec.config.model}", unit="step")
    results = pool.map(partial(measure_step, spec), tasks, name="step")
    try:
        for done in results:
            if done.ok:
                _write(cube, done, labels)
                summary.done.append(done.unit.step)
                for step in sorted(s for s, original in copies.items() if original == done.unit.step):
                    _copy(cube, step, done.unit.step, labels, summary)
                phases = done.result["seconds"].values[0]
                bar.set_postfix_str(
                    f"step {done.unit.step} " + " ".join(f"{p} {t:.1f}s" for p, t in zip(PHASES, phases))
                )
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


def _write(cube: CubeWriter, done: Completed, labels: StepLabels) -> None:
    step = done.unit.step
    result = labels.label(done.result, step)
    record = {**result.attrs.pop("checkpoint", {}), "task_attempts": done.attempts}
    if step in labels.duplicates:
        record["duplicate_of"] = labels.duplicates[step]
    cube.write_step(result, record)  # a full disk is one line (CubeError), done steps kept
