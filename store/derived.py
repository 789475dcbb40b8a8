"""Variables computed when a cube is opened, from variables stored per step.

A cube declares them in ``attrs["identity"]["derived"]`` (so a cube of another layout is
refused rather than mixed), e.g.::

    {"drift_prev": {"cosine_to_previous_step": "cohort_weights", "over": "d_model", "attrs": {...}}}

They are functions of the *done* steps only, in step order, so they are the same whatever
order the steps were computed in, and however many runs it took. Nothing here knows what
the stored vectors mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from dynamics.errors import CubeError


def cosine_to_previous_step(values: xr.DataArray, over: str) -> tuple[xr.DataArray, xr.DataArray]:
    """``1 - cos`` between each step's vectors and the previous step's (along ``over``).

    ``values`` must be sorted by step and hold only the steps to chain. Returns the
    dissimilarity (NaN at the first step, and where a vector has zero norm), computed in
    float64 and stored as float32, lazily when ``values`` is a dask array, and the step
    each step was compared with (-1 for the first).
    """
    if over not in values.dims or values.dims[0] != "step":
        raise CubeError(f"cannot derive a cosine over {over!r} from {values.name!r} with dims {values.dims}")
    current = values.astype("float64")
    n = current.sizes["step"]
    steps = values["step"].values
    if n == 0:  # no done step yet (a crash during the first step's write): empty, not an error
        empty = xr.DataArray(np.zeros((0,), dtype="int64"), dims="step", coords={"step": steps})
        return current.isel({over: 0}, drop=True).astype("float32"), empty
    # Index with the step before (not .shift, which dask cannot do on one step); the first has none.
    previous = current.isel(step=np.r_[0, np.arange(n - 1)][:n]).assign_coords(step=current["step"])
    previous = previous.where(xr.DataArray(np.arange(n) > 0, dims="step", coords={"step": current["step"]}))
    dot = (current * previous).sum(over, skipna=False)
    norms = np.sqrt((current**2).sum(over, skipna=False) * (previous**2).sum(over, skipna=False))
    cosine = (dot / norms.where(norms > 0)).clip(-1.0, 1.0)
    previous_step = xr.DataArray(
        np.concatenate([[-1], steps[:-1]]).astype("int64"), dims="step", coords={"step": steps}
    )
    return (1.0 - cosine).astype("float32"), previous_step


def add_derived(done: xr.Dataset, declared: Mapping[str, Mapping[str, Any]]) -> xr.Dataset:
    """``done`` (the done steps, sorted) with every declared variable added."""
    for name, spec in declared.items():
        source = spec.get("cosine_to_previous_step")
        if source is None:
            raise CubeError(f"unknown derivation for {name!r}: {dict(spec)} (a newer version wrote this cube?)")
        if source not in done:
            continue  # a cube with no step done yet has no stored source variable
        drift, previous = cosine_to_previous_step(done[source], spec["over"])
        done[name] = drift.assign_attrs(spec.get("attrs", {}))
        done[f"{name}_from"] = previous.assign_attrs(long_name=f"step {name} compares with (-1: none)")
    return done
