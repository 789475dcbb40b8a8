"""What the study measures under its conditions, through the one evaluation engine.

A unit's measures come in two parts, both from :func:`dynamics.evaluate.engine.evaluate`:

- the *shared* part (TSE, BLiMP, perplexity and POS per token): :func:`measure_shared` runs it
  for a group of units at once, conditions side by side in each pass whatever their modes;
- the unit's *own* part (lm-eval tasks, POS per word, one condition at a time):
  :func:`measure_unit` runs it when the unit's turn comes and merges the two into the unit's
  result, a dataset with a length-1 ``step`` dimension (the unit's number), the form
  :class:`store.cube.CubeWriter` writes.

So a unit is written as soon as its own part is done, and an interrupted study keeps every
unit written before. Coordinates are the same for every unit (every TSE case, every
requested BLiMP paradigm and task, the 17 universal POS tags), so the cube's arrays line up;
what a unit does not measure is NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from dynamics.evaluate.benchmarks import PHASES, Benchmarks
from dynamics.evaluate.conditions import Condition
from dynamics.evaluate.engine import evaluate
from dynamics.evaluate.planning import PassBudget
from dynamics.study.conditions import Unit

log = logging.getLogger(__name__)


def shared_phases(benchmarks: Benchmarks, measures: Sequence[str]) -> tuple[str, ...]:
    """The phases of ``measures`` that run for many units in one pass (POS per token rides on perplexity)."""
    pos_tokens = benchmarks.pos is not None and benchmarks.pos.unit == "tokens"
    return tuple(p for p in measures if p in ("tse", "blimp", "ppl") or (p == "pos" and pos_tokens))


def own_phases(benchmarks: Benchmarks, measures: Sequence[str]) -> tuple[str, ...]:
    """The phases of ``measures`` a unit runs alone (lm-eval, POS per word)."""
    shared = shared_phases(benchmarks, measures)
    return tuple(p for p in measures if p not in shared)


def _condition(number: int, unit: Unit, mask: torch.Tensor | None) -> Condition:
    return Condition(f"unit{number}", mask, unit.mode)


def measure_shared(
    model: torch.nn.Module,
    numbers: Sequence[int],
    units: Sequence[Unit],
    masks: Sequence[torch.Tensor | None],
    benchmarks: Benchmarks,
    budget: PassBudget,
    progress: bool = False,
) -> dict[int, xr.Dataset]:
    """The shared part of units ``numbers`` (``units[i]`` with neurons ``masks[i]``), which must ask for
    the same measures: ``{number: part}`` with a ``condition``-free dataset per unit (``progress``: the
    engine's bars, for a group's long shared passes)."""
    measures = {unit.measures for unit in units}
    if len(measures) != 1:
        raise ValueError(f"units measured together share their measures, got {sorted(measures)}")
    phases = shared_phases(benchmarks, units[0].measures)
    chosen = benchmarks.only(phases)
    if not chosen.phases():
        return {}
    conditions = [_condition(n, u, m) for n, u, m in zip(numbers, units, masks)]
    result = evaluate(model, conditions, chosen, budget, progress=progress)
    return {n: result.isel(condition=i, drop=True) for i, n in enumerate(numbers)}


def measure_unit(
    model: torch.nn.Module,
    number: int,
    unit: Unit,
    mask: torch.Tensor | None,
    benchmarks: Benchmarks,
    budget: PassBudget,
    shared: xr.Dataset | None = None,
) -> xr.Dataset:
    """Every measure of ``unit`` under its ablation, as unit ``number`` of the cube; its shared part is
    taken from ``shared`` (:func:`measure_shared`) when given, else measured now."""
    if shared is None:
        shared = measure_shared(model, [number], [unit], [mask], benchmarks, budget).get(number)
    parts = [shared] if shared is not None else []
    own = benchmarks.only(own_phases(benchmarks, unit.measures))
    if own.phases():
        parts.append(evaluate(model, [_condition(number, unit, mask)], own, budget).isel(condition=0, drop=True))
    seconds = sum((part["eval_seconds"].values for part in parts), np.zeros(len(PHASES)))
    merged = xr.merge([part.drop_vars(["eval_seconds", "eval_phase"]) for part in parts], compat="no_conflicts")
    merged["seconds"] = xr.DataArray(seconds, dims="phase", coords={"phase": list(PHASES)}, attrs={"units": "s"})
    log.info("unit %d (%s): %s", number, unit.name, ", ".join(f"{p} {s:.1f}s" for p, s in zip(PHASES, seconds) if s))
    return merged.expand_dims(step=[number])
