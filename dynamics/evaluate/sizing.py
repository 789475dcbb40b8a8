"""`--target-ci POINTS`: the TSE and BLiMP samples sized from a pilot so that the CI of a command's
headline accuracy difference reaches the target (`dynamics ablate`: neg_top against neg_random at the
match percent; `dynamics scan`: neg_cohort against clean at the reference step).

The pilot is the sample the options ask for (``--tse-per-case``, ``--blimp-per-paradigm``),
scored under the headline pair once the neuron sets are fixed. Its paired bootstrap CI half-width
h at n pairs gives the pairs a half-width of the target t needs, n x (h / t)^2
(:func:`dynamics.stats.verdicts.items_for`), spread evenly over the cases (paradigms) and capped
by the pairs the data holds. The chosen sizes are static variables of the cube (a resumed or
distributed run reads them instead of repeating the pilot) and the pilot is in the provenance.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import xarray as xr

from dynamics.evaluate.benchmarks import Benchmarks, check_benchmarks
from dynamics.evaluate.conditions import Condition
from dynamics.evaluate.engine import evaluate
from dynamics.evaluate.planning import PassBudget
from dynamics.stats.paired import accuracy_difference
from dynamics.stats.verdicts import items_for

log = logging.getLogger(__name__)

#: The most pairs of one TSE case or BLiMP paradigm a sized sample takes (BLiMP has 1,000 each).
BLIMP_PER_PARADIGM = 1000


@dataclass(frozen=True)
class SampleSizes:
    """Pairs per TSE case and per BLiMP paradigm (0: that benchmark is not measured)."""

    tse_per_case: int
    blimp_per_paradigm: int

    def record(self, pilot: dict[str, Any]) -> dict[str, Any]:
        """The provenance entry ``target_ci``: what the pilot measured and the sizes it chose."""
        return {**pilot, **asdict(self)}

    def to_static(self, pilot: dict[str, Any]) -> xr.Dataset:
        return xr.Dataset(
            {
                "sized_tse_per_case": (
                    (),
                    self.tse_per_case,
                    {"long_name": "TSE pairs per case chosen by --target-ci"},
                ),
                "sized_blimp_per_paradigm": (
                    (),
                    self.blimp_per_paradigm,
                    {"long_name": "BLiMP pairs per paradigm chosen by --target-ci", **pilot},
                ),
            }
        )


def stored_sizes(static: xr.Dataset | None) -> SampleSizes | None:
    """The sizes a cube's earlier run chose (None: not sized)."""
    if static is None or "sized_tse_per_case" not in static:
        return None
    return SampleSizes(int(static["sized_tse_per_case"].values), int(static["sized_blimp_per_paradigm"].values))


def pilot_sizes(
    model: torch.nn.Module,
    benchmarks: Benchmarks,
    budget: PassBudget,
    pair: tuple[Condition, Condition],
    target_points: float,
    seed: int,
) -> tuple[SampleSizes, dict[str, Any]]:
    """The sizes that reach ``target_points`` on the pilot ``benchmarks``, and what the pilot measured.

    ``pair``: the headline comparison (ablated, baseline); its accuracy difference is the baseline's
    accuracy minus the ablated one's, paired per item and stratified by case (paradigm).
    """
    ablated, baseline = pair
    result = evaluate(model, list(pair), benchmarks.only(("tse", "blimp")), budget)
    pilot: dict[str, Any] = {
        "pilot_target_points": float(target_points),
        "pilot_comparison": f"{baseline.name} - {ablated.name}",
    }
    sizes = {}
    for name in ("tse", "blimp"):
        variable = f"{name}_item_margin"
        if variable not in result:
            sizes[name] = 0
            continue
        margins = result[variable]
        strata = np.asarray([str(c) for c in result[f"{name}_item_case"].values.tolist()], dtype=object)
        comparison = accuracy_difference(
            margins.sel(condition=baseline.name).values > 0,
            margins.sel(condition=ablated.name).values > 0,
            strata,
            n_boot=2000,
            seed=seed,
        )
        groups = len(set(strata.tolist()))
        needed = items_for(comparison, target_points / 100) if comparison.half_width > 0 else comparison.n
        sizes[name] = math.ceil(needed / groups)
        pilot |= {f"pilot_{name}_pairs": comparison.n, f"pilot_{name}_half_width_points": 100 * comparison.half_width}
        log.info(
            "--target-ci: the %s pilot (%d pairs) gives +/-%.2f points; about %d pairs would give +/-%g: %d per %s",
            name.upper(),
            comparison.n,
            100 * comparison.half_width,
            needed,
            target_points,
            sizes[name],
            "case" if name == "tse" else "paradigm",
        )
    return SampleSizes(sizes["tse"], min(sizes["blimp"], BLIMP_PER_PARADIGM)), pilot


def resized(benchmarks: Benchmarks, tse: list, blimp: list, context: int | None) -> Benchmarks:
    """``benchmarks`` with the sized TSE and BLiMP samples, checked as the first ones were."""
    sized = replace(benchmarks, tse=tuple(tse), blimp=tuple(blimp))
    check_benchmarks(sized, context)
    return sized
