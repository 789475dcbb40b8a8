"""Per-neuron statistics of one loaded model: WD of every MLP neuron, input weights, drift.

Each function takes a model (and what it needs) and returns numpy arrays or an
``xarray.Dataset`` over ``(layer, neuron)``; the scan and the study both build on them.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from checkpoints.adapters import mlp_shape, neuron_input_weights
from dynamics.stats.activations import iter_pre_activations
from dynamics.stats.drift import cosine_drift
from dynamics.stats.wasserstein import wasserstein_split


def neuron_wasserstein(
    model: torch.nn.Module, windows: torch.Tensor, memory_budget: int, batch_size: int, progress: bool = False
) -> xr.Dataset:
    """``wd``, ``wd_neg``, ``wd_pos`` [layer, neuron] for every MLP neuron, on ``windows``."""
    n_layers, n_neurons = mlp_shape(model)
    out = {name: np.full((n_layers, n_neurons), np.nan, dtype=np.float32) for name in ("wd", "wd_neg", "wd_pos")}
    for layer, pre in iter_pre_activations(
        model, windows, memory_budget=memory_budget, batch_size=batch_size, progress=progress
    ):
        for name, values in zip(("wd", "wd_neg", "wd_pos"), wasserstein_split(pre)):
            out[name][layer] = values.float().cpu().numpy()
        del pre
    dims = ("layer", "neuron")
    return xr.Dataset(
        {
            "wd": (dims, out["wd"], {"long_name": "W1 of the standardized pre-activation to N(0,1)"}),
            "wd_neg": (dims, out["wd_neg"], {"long_name": "part of wd below the neuron's raw zero"}),
            "wd_pos": (dims, out["wd_pos"], {"long_name": "part of wd at or above the neuron's raw zero"}),
        },
        coords={"layer": np.arange(n_layers), "neuron": np.arange(n_neurons)},
    )


def input_weights(model: torch.nn.Module) -> torch.Tensor:
    """Every neuron's input-weight row, [layer, neuron, d_model], float32 on the CPU."""
    n_layers, _ = mlp_shape(model)
    return torch.stack([neuron_input_weights(model, layer).float().cpu() for layer in range(n_layers)])


def weight_drift(weights: torch.Tensor, reference: torch.Tensor | None) -> np.ndarray:
    """1 - cos of each neuron's input weights against ``reference`` (NaN without one)."""
    if reference is None:
        return np.full(weights.shape[:2], np.nan, dtype=np.float32)
    return cosine_drift(weights, reference).float().numpy()
