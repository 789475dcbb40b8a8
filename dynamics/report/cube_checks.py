"""Checks of a scan cube's meaning before its numbers are reported or drawn.

The store checks that values are what was written (:mod:`store.verify`); what a cohort
mask *should* hold is the scan's rule, which the store does not know: the cube's identity
records ``cohort_percent`` and ``cohort_scope``, and :func:`dynamics.stats.cohort.cohort_size`
says how many neurons that selects. A mask of another size (set all true, emptied, a
layer's row duplicated) would put every table and figure about the cohort on the wrong
neurons, so it is refused in one line naming the layer and both counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from dynamics.errors import DamagedCubeError, UserInputError
from dynamics.stats.cohort import SCOPES, cohort_size

_RESTORE = "nothing was changed: restore the cube from a copy, or scan again into a new --out"


def check_cohort_size(ds: xr.Dataset, cube: str) -> None:
    """Refuse (DamagedCubeError, one line) a scan cube whose cohort masks disagree with its stored cohort rule."""
    if ds.attrs.get("cube_kind") == "units" or "cohort" not in ds:
        return
    analysis = ds.attrs.get("identity", {}).get("analysis", {})
    if not isinstance(analysis, dict) or "cohort_percent" not in analysis:
        return  # nothing recorded to check against
    percent, scope = analysis.get("cohort_percent"), analysis.get("cohort_scope", "layer")
    cohort = np.asarray(ds["cohort"].values)
    if cohort.ndim != 2 or scope not in SCOPES:
        raise DamagedCubeError(
            f"cube {cube!r} is damaged: its cohort mask has shape {cohort.shape} and cohort_scope={scope!r} "
            f"(expected a layer x neuron mask and one of {', '.join(SCOPES)}); {_RESTORE}"
        )
    per_layer = cohort.astype(bool).sum(axis=1)
    layers, neurons = cohort.shape
    expected = _expected(percent, neurons if scope == "layer" else layers * neurons, cube)
    rule = f"cohort_percent={percent} with cohort_scope={scope}"
    if scope == "layer":
        wrong = np.flatnonzero(per_layer != expected)
        if len(wrong):
            layer = int(wrong[0])
            raise DamagedCubeError(
                f"cube {cube!r} is damaged: its cohort mask selects {int(per_layer[layer])} neurons in layer "
                f"{_label(ds, layer)}, but {rule} selects {expected} of {neurons} per layer; {_RESTORE}"
            )
    elif int(per_layer.sum()) != expected:
        raise DamagedCubeError(
            f"cube {cube!r} is damaged: its cohort mask selects {int(per_layer.sum())} neurons, but {rule} "
            f"selects {expected} of {layers * neurons}; {_RESTORE}"
        )
    _check_control(ds, per_layer, cube)


def _expected(percent: Any, n: int, cube: str) -> int:
    try:
        return cohort_size(percent, n)
    except UserInputError:
        raise DamagedCubeError(
            f"cube {cube!r} is damaged: its identity records cohort_percent={percent!r}, not a percent in "
            f"(0, 100]; {_RESTORE}"
        ) from None


def _check_control(ds: xr.Dataset, per_layer: np.ndarray, cube: str) -> None:
    """The random control has as many neurons per layer as the cohort (its definition)."""
    if "random_control" not in ds:
        return
    control = np.asarray(ds["random_control"].values).astype(bool)
    counts = control.sum(axis=1) if control.shape == (len(per_layer), control.shape[-1]) else None
    wrong = np.flatnonzero(counts != per_layer) if counts is not None else np.array([0])
    if len(wrong):
        layer = int(wrong[0])
        found = int(counts[layer]) if counts is not None else f"a {control.shape} mask"
        raise DamagedCubeError(
            f"cube {cube!r} is damaged: its random control selects {found} neurons in layer "
            f"{_label(ds, layer)}, but the cohort has {int(per_layer[layer])} there (the control has as many per "
            f"layer); {_RESTORE}"
        )


def _label(ds: xr.Dataset, index: int) -> str:
    return str(ds["layer"].values[index]) if "layer" in ds.coords else str(index)
