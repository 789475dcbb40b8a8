"""The worker side of `dynamics ablate`: one condition (cube unit) as a pure task.

The driver fixes the neuron sets (WD, top/random masks, the matched control) once and
writes them to the cube; each condition is then :func:`run_condition` ``(spec, number)``
on the executor (:mod:`dynamics.execution.executor`), so the serial run and a Dask cluster go through
the same code. A worker builds its inputs once per run (model, tokenizer, benchmark
samples, corpus windows, POS lines), cached by :attr:`StudySpec.key`; the serial driver
hands its own, already loaded, to the cache (:func:`seed_worker`) instead of loading twice.

With the serial executor the conditions still to do are grouped by ablation mode
(:func:`groups_together`, :attr:`StudySpec.together`): the first condition of a group to run
measures the TSE, BLiMP and perplexity of the whole group in shared passes
(:func:`dynamics.study.measures.measure_together`) and the worker keeps each condition's part
until its turn. A Dask worker runs one condition at a time (the group's conditions land on
different workers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import xarray as xr

from dynamics.models.runtime import resolve_device
from dynamics.study.conditions import NeuronSets, Unit, neuron_sets
from dynamics.study.config import StudyConfig, StudyPlan
from dynamics.study.inputs import load_inputs
from dynamics.study.measures import Measured, StudyInputs, measure_together, measure_unit, shares_passes

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
    #: Unit numbers of one ablation mode whose TSE, BLiMP and perplexity share passes (:func:`groups_together`).
    together: tuple[tuple[int, ...], ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        c = self.config
        return repr((c.out, c.model, c.revision, c.analysis(), c.device, c.threads, c.batch_size))


@dataclass
class StudyWorker:
    model: torch.nn.Module
    inputs: StudyInputs
    sets: NeuronSets
    measured: dict[int, Measured] = field(default_factory=dict)  # measured in a pass with an earlier unit


def groups_together(units: tuple[Unit, ...], todo: list[int]) -> tuple[tuple[int, ...], ...]:
    """The units still to do grouped by ablation mode, in ``todo`` order; a mode that cannot share
    passes (:func:`dynamics.study.measures.shares_passes`) and a mode with one unit form no group."""
    groups: dict[str, list[int]] = {}
    for number in todo:
        if shares_passes(units[number].mode):
            groups.setdefault(units[number].mode, []).append(number)
    return tuple(tuple(group) for group in groups.values() if len(group) > 1)


_WORKERS: dict[str, StudyWorker] = {}


def seed_worker(spec: StudySpec, model: torch.nn.Module, inputs: StudyInputs) -> None:
    """Give this process's cache the driver's loaded model and inputs (the serial executor)."""
    _WORKERS.clear()
    _WORKERS[spec.key] = StudyWorker(
        model, inputs, neuron_sets(spec.static, spec.config.group_percent, [list(g) for g in spec.groups])
    )


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
    if number not in worker.measured:
        _measure_group(spec, worker, number)
    return measure_unit(
        worker.model, number, unit, worker.sets.mask(unit.neurons), worker.inputs, worker.measured.pop(number, None)
    )


def _measure_group(spec: StudySpec, worker: StudyWorker, number: int) -> None:
    """The shared phases of ``number`` and of the units after it in its group not measured yet."""
    group = next((g for g in spec.together if number in g), ())
    if not group:
        return
    pending = [number] + [n for n in group[group.index(number) + 1 :] if n not in worker.measured]
    if len(pending) < 2:
        return
    units = [spec.units[n] for n in pending]
    log.info("units %s (%s ablation): TSE, BLiMP and perplexity in shared passes", pending, units[0].mode)
    masks = [worker.sets.mask(unit.neurons) for unit in units]
    measured = measure_together(worker.model, units, masks, worker.inputs, spec.config.conditions_per_pass)
    worker.measured.update(zip(pending, measured))


def _build_worker(spec: StudySpec) -> StudyWorker:
    """Load the model and rebuild the run's inputs exactly as the driver did (same seeds)."""
    config = spec.config
    plan = replace(spec.plan, device=resolve_device(config.device))  # this worker's own device; the dtype is the run's
    log.info("worker: loading %s for the study on %s", config.model, plan.device)
    model, inputs, *_ = load_inputs(config, plan, spec.tagger)
    return StudyWorker(model, inputs, neuron_sets(spec.static, config.group_percent, [list(g) for g in spec.groups]))
