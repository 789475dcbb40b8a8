"""What the scan measures on one loaded checkpoint besides the evaluation (the engine's,
:mod:`dynamics.evaluate.engine`): the input-weight drift, and the step result that merges them.

:func:`drift_measures` takes what was read from a model (its input weights) and returns an
``xarray.Dataset`` without a ``step`` dimension; :func:`step_result` adds the step.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from dynamics.stats.neurons import weight_drift

log = logging.getLogger(__name__)

PHASES = ("download", "load", "statistics", "evaluation")


def step_result(step: int, parts: list[xr.Dataset], timings: dict[str, float]) -> xr.Dataset:
    """Merge measurement datasets into one step result with a length-1 step dimension."""
    merged = xr.merge(parts, compat="no_conflicts", join="exact") if parts else xr.Dataset()
    merged = merged.expand_dims(step=[step])
    merged["seconds"] = xr.DataArray(
        [[timings.get(p, 0.0) for p in PHASES]],
        dims=("step", "phase"),
        coords={"step": [step], "phase": list(PHASES)},
        attrs={"units": "s"},
    )
    log.info("step %d: %s", step, ", ".join(f"{p} {timings.get(p, 0.0):.1f}s" for p in PHASES))
    return merged


def drift_measures(
    weights: torch.Tensor, reference: torch.Tensor, cohort: np.ndarray, control: np.ndarray
) -> xr.Dataset:
    """``drift_ref`` for every neuron, and the input-weight rows of the cohort and control neurons.

    ``cohort_weights`` [member, d_model] lists the members in (layer, neuron) order; the
    member coordinates say which neuron each row is and which set it belongs to.
    """
    layers, neurons = np.nonzero(cohort | control)
    member_set = np.where(cohort[layers, neurons], "cohort", "random_control")
    rows = weights[torch.from_numpy(layers), torch.from_numpy(neurons)].numpy()
    return xr.Dataset(
        {
            "drift_ref": (
                ("layer", "neuron"),
                weight_drift(weights, reference),
                {"long_name": "1 - cos of input weights vs the reference step"},
            ),
            "cohort_weights": (
                ("member", "d_model"),
                rows.astype(np.float32),
                {"long_name": "input-weight rows of the cohort and random-control neurons"},
            ),
        },
        coords={
            "member": np.arange(len(layers)),
            "member_layer": ("member", layers),
            "member_neuron": ("member", neurons),
            "member_set": ("member", member_set),
        },
    )
