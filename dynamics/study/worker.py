"""The worker side of `dynamics ablate`: one condition (cube unit) as a pure task.

The driver fixes the neuron sets (WD, top/random masks, the matched control) once and
writes them to the cube; each condition is then :func:`run_condition` ``(spec, number)``
on the executor (:mod:`dynamics.execution.executor`), so the serial run and a Dask cluster go
through the same code. A worker builds its inputs once per run (model, tokenizer, benchmark
samples, corpus windows, POS lines), cached by :attr:`StudySpec.key`; the serial driver
hands its own, already loaded, to the cache (:func:`seed_worker`) instead of loading twice.

With the serial executor the conditions still to do are grouped by the measures they ask for
(:func:`groups_together`, :attr:`StudySpec.together`): the first condition of a group to run
measures the shared part (TSE, BLiMP, perplexity, POS per token) of the whole group in passes
shared by every mode (:func:`dynamics.study.measures.measure_shared`), and the worker keeps
each condition's part until its turn. A Dask worker runs one condition at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import xarray as xr

from dynamics.evaluate.benchmarks import Benchmarks
from dynamics.evaluate.planning import PassBudget
from dynamics.evaluate.sizing import stored_sizes
from dynamics.models.runtime import resolve_device
from dynamics.study.conditions import NeuronSets, Unit, neuron_sets
from dynamics.study.config import StudyConfig, StudyPlan
from dynamics.study.inputs import load_inputs, sized_benchmarks
from dynamics.study.measures import measure_shared, measure_unit, own_phases

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudySpec:
    """Everything a worker needs to measure a condition of this study (small, picklable)."""

    config: StudyConfig
    plan: StudyPlan = field(compare=False)
    units: tuple[Unit, ...] = field(compare=False)
    static: xr.Dataset = field(compare=False)  # the neuron sets, as stored in the cube
    groups: tuple[tuple[int, ...], ...] = field(compare=False)
    tagger: Any | None = field(default=None, compare=False)  # a POS tagger that overrides spaCy (tests)
    #: Unit numbers whose shared part is measured in shared passes (:func:`groups_together`).
    together: tuple[tuple[int, ...], ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return repr(self.config)  # the whole config: any option that changes what a worker holds


@dataclass
class StudyWorker:
    model: torch.nn.Module
    benchmarks: Benchmarks
    budget: PassBudget
    sets: NeuronSets
    shared: dict[int, xr.Dataset] = field(default_factory=dict)  # measured in a pass with an earlier unit


def groups_together(units: tuple[Unit, ...], todo: list[int]) -> tuple[tuple[int, ...], ...]:
    """The units still to do grouped by the measures they ask for, in ``todo`` order (any modes
    share a pass); a group of one unit is left out."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for number in todo:
        groups.setdefault(units[number].measures, []).append(number)
    return tuple(tuple(group) for group in groups.values() if len(group) > 1)


_WORKERS: dict[str, StudyWorker] = {}


def seed_worker(spec: StudySpec, model: torch.nn.Module, benchmarks: Benchmarks, budget: PassBudget) -> None:
    """Give this process's cache the driver's loaded model and inputs (the serial executor)."""
    _WORKERS.clear()
    _WORKERS[spec.key] = StudyWorker(model, benchmarks, budget, _sets(spec))


def forget_workers() -> None:
    """Free the cached models and inputs of this process."""
    _WORKERS.clear()


def run_condition(spec: StudySpec, number: int) -> xr.Dataset:
    """Unit ``number`` of the study: its measures under its ablation."""
    worker = _WORKERS.get(spec.key)
    if worker is None:
        _WORKERS.clear()  # one run per worker at a time: free an earlier run's model
        worker = _WORKERS[spec.key] = _build_worker(spec)
    unit = spec.units[number]
    if number not in worker.shared:
        _measure_group(spec, worker, number)
    mask, shared = worker.sets.mask(unit.neurons), worker.shared.get(number)
    result = measure_unit(worker.model, number, unit, mask, worker.benchmarks, worker.budget, shared)
    worker.shared.pop(number, None)  # only now: an interrupted unit's shared part can still be written
    return result


def finished_units(spec: StudySpec, numbers: list[int]) -> list[tuple[int, xr.Dataset]]:
    """Units of ``numbers`` whose every measure is in hand in this process: their shared part was
    measured with an earlier unit and they have no part of their own (lm-eval, POS per word) left
    to run. Written by the driver when a run is interrupted, so a shared pass is not lost."""
    worker = _WORKERS.get(spec.key)
    if worker is None:
        return []
    out = []
    for number in numbers:
        unit = spec.units[number]
        own = worker.benchmarks.only(own_phases(worker.benchmarks, unit.measures))
        if number in worker.shared and not own.phases():
            mask = worker.sets.mask(unit.neurons)
            shared = worker.shared.pop(number)
            out.append(
                (number, measure_unit(worker.model, number, unit, mask, worker.benchmarks, worker.budget, shared))
            )
    return out


def _measure_group(spec: StudySpec, worker: StudyWorker, number: int) -> None:
    """The shared part of ``number`` and of the units after it in its group not measured yet."""
    group = next((g for g in spec.together if number in g), ())
    if not group:
        return
    pending = [number] + [n for n in group[group.index(number) + 1 :] if n not in worker.shared]
    if len(pending) < 2:
        return
    units = [spec.units[n] for n in pending]
    log.info("units %s: their shared measures in passes shared by every condition", pending)
    masks = [worker.sets.mask(unit.neurons) for unit in units]
    shared = measure_shared(worker.model, pending, units, masks, worker.benchmarks, worker.budget, progress=True)
    worker.shared.update(shared)


def _sets(spec: StudySpec) -> NeuronSets:
    # the cube's identity holds --rank-by: its stored sets were ranked as this run ranks
    return neuron_sets(spec.static, spec.config.group_percent, [list(g) for g in spec.groups], spec.config.rank_by)


def _build_worker(spec: StudySpec) -> StudyWorker:
    """Load the model and rebuild the run's inputs exactly as the driver did (same seeds)."""
    config = spec.config
    plan = replace(spec.plan, device=resolve_device(config.device))  # this worker's own device; the dtype is the run's
    log.info("worker: loading %s for the study on %s", config.model, plan.device)
    model, benchmarks, budget, *_ = load_inputs(config, plan, spec.tagger)
    sizes = stored_sizes(spec.static)
    if sizes is not None:  # --target-ci: the samples the driver's pilot sized
        benchmarks = sized_benchmarks(config, plan, benchmarks, model, sizes)
    return StudyWorker(model, benchmarks, budget, _sets(spec))
