"""Per-neuron statistics of one loaded model: WD of every MLP neuron, input weights, drift.

Each function takes a model (and what it needs) and returns numpy arrays or an
``xarray.Dataset`` over ``(layer, neuron)``; the scan and the study both build on them.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from checkpoints.adapters import mlp_shape, neuron_input_weights
from dynamics.stats.activations import CaptureSettings, Site, iter_layer_captures
from dynamics.stats.drift import cosine_drift
from dynamics.stats.mapping_difficulty import mapping_difficulty
from dynamics.stats.wasserstein import wasserstein_split

#: Token pairs drawn for each layer's mapping difficulty (``--mapping-difficulty``).
MD_PAIRS = 10_000


def neuron_wasserstein(
    model: torch.nn.Module,
    windows: torch.Tensor,
    memory_budget: int,
    batch_size: int,
    progress: bool = False,
    with_mapping_difficulty: bool = False,
    seed: int = 0,
) -> xr.Dataset:
    """``wd``, ``wd_neg``, ``wd_pos`` [layer, neuron] for every MLP neuron, on ``windows``; with
    ``with_mapping_difficulty`` also ``md`` (:func:`dynamics.stats.mapping_difficulty.mapping_difficulty`
    on the same tokens, :data:`MD_PAIRS` pairs seeded by ``seed + layer``)."""
    n_layers, n_neurons = mlp_shape(model)
    names = ("wd", "wd_neg", "wd_pos") + (("md",) if with_mapping_difficulty else ())
    out = {name: np.full((n_layers, n_neurons), np.nan, dtype=np.float32) for name in names}
    sites: tuple[Site, ...] = ("pre_activation", "mlp_input") if with_mapping_difficulty else ("pre_activation",)
    capture = CaptureSettings(memory_budget=memory_budget, batch_size=batch_size, progress=progress)
    for layer, captured in iter_layer_captures(model, windows, capture, sites=sites):
        pre = captured["pre_activation"]
        for name, values in zip(("wd", "wd_neg", "wd_pos"), wasserstein_split(pre)):
            out[name][layer] = values.float().cpu().numpy()
        if with_mapping_difficulty:
            out["md"][layer] = mapping_difficulty(captured["mlp_input"], pre, MD_PAIRS, seed + layer).cpu().numpy()
        del pre, captured
    dims = ("layer", "neuron")
    data: dict[str, tuple] = {
        "wd": (dims, out["wd"], {"long_name": "W1 of the standardized pre-activation to N(0,1)"}),
        "wd_neg": (dims, out["wd_neg"], {"long_name": "part of wd below the neuron's raw zero"}),
        "wd_pos": (dims, out["wd_pos"], {"long_name": "part of wd at or above the neuron's raw zero"}),
    }
    if with_mapping_difficulty:
        data["md"] = (
            dims,
            out["md"],
            {"long_name": "mapping difficulty on the WD tokens", "pairs": str(MD_PAIRS), "seed": f"{seed} + layer"},
        )
    return xr.Dataset(data, coords={"layer": np.arange(n_layers), "neuron": np.arange(n_neurons)})


def spearman_by_layer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of ``a`` and ``b`` [layer, neuron] in each layer (ties: average ranks;
    NaN pairs dropped; NaN for a layer with fewer than 3 pairs or a constant column)."""
    from scipy.stats import spearmanr

    out = np.full(a.shape[0], np.nan)
    for layer in range(a.shape[0]):
        keep = np.isfinite(a[layer]) & np.isfinite(b[layer])
        if keep.sum() >= 3 and np.ptp(a[layer][keep]) > 0 and np.ptp(b[layer][keep]) > 0:
            out[layer] = float(spearmanr(a[layer][keep], b[layer][keep]).statistic)
    return out


def input_weights(model: torch.nn.Module) -> torch.Tensor:
    """Every neuron's input-weight row, [layer, neuron, d_model], float32 on the CPU."""
    n_layers, _ = mlp_shape(model)
    return torch.stack([neuron_input_weights(model, layer).float().cpu() for layer in range(n_layers)])


def weight_drift(weights: torch.Tensor, reference: torch.Tensor | None) -> np.ndarray:
    """1 - cos of each neuron's input weights against ``reference`` (NaN without one)."""
    if reference is None:
        return np.full(weights.shape[:2], np.nan, dtype=np.float32)
    return cosine_drift(weights, reference).float().numpy()
