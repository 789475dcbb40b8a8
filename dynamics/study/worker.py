"""The worker side of `dynamics ablate`: one condition (cube unit) as a pure task.

The driver fixes the neuron sets (WD, top/random masks, the matched control) once and
writes them to the cube; each condition is then :func:`run_condition` ``(spec, number)``
on the executor (:mod:`dynamics.executor`), so the serial run and a Dask cluster go through
the same code. A worker builds its inputs once per run (model, tokenizer, benchmark
samples, corpus windows, POS lines), cached by :attr:`StudySpec.key`; the serial driver
hands its own, already loaded, to the cache (:func:`seed_worker`) instead of loading twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import xarray as xr

from dynamics.runtime import resolve_device
from dynamics.study.conditions import NeuronSets, Unit, neuron_sets
from dynamics.study.config import StudyConfig, StudyPlan
from dynamics.study.inputs import load_inputs
from dynamics.study.measures import StudyInputs, measure_unit

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

    @property
    def key(self) -> str:
        c = self.config
        return repr((c.out, c.model, c.revision, c.analysis(), c.device, c.threads, c.batch_size))


@dataclass
class StudyWorker:
    model: torch.nn.Module
    inputs: StudyInputs
    sets: NeuronSets


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
    return measure_unit(worker.model, number, unit, worker.sets.mask(unit.neurons), worker.inputs)


def _build_worker(spec: StudySpec) -> StudyWorker:
    """Load the model and rebuild the run's inputs exactly as the driver did (same seeds)."""
    config = spec.config
    plan = replace(spec.plan, device=resolve_device(config.device))  # this worker's own device; the dtype is the run's
    log.info("worker: loading %s for the study on %s", config.model, plan.device)
    model, inputs, *_ = load_inputs(config, plan, spec.tagger)
    return StudyWorker(model, inputs, neuron_sets(spec.static, config.group_percent, [list(g) for g in spec.groups]))
