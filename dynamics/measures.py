"""What the scan measures on one loaded checkpoint, as labelled arrays.

Each function takes a model (and what it needs) and returns numpy arrays or an
``xarray.Dataset`` without a ``step`` dimension; :mod:`dynamics.scan` adds the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import xarray as xr

from checkpoints.models import mlp_shape, neuron_input_weights
from dynamics.ablation import ablate
from dynamics.activations import iter_pre_activations
from dynamics.drift import cosine_drift
from dynamics.syntax.perplexity import perplexity
from dynamics.syntax.scoring import score_pairs
from dynamics.wasserstein import wasserstein_split


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


def syntax_and_perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    ppl_windows: torch.Tensor | None,
    conditions: Mapping[str, torch.Tensor | None],
    cases: Sequence[str],
    reduction: str = "sum",
    prefix: bool = True,
) -> xr.Dataset:
    """TSE accuracy and margin per case, and perplexity, under each condition.

    ``conditions`` maps a name to a neuron mask [layer, neuron] whose negative
    pre-activations are zeroed (``None``: the clean model).
    """
    acc = np.full((len(conditions), len(cases)), np.nan)
    margin = np.full((len(conditions), len(cases)), np.nan)
    ppl = np.full(len(conditions), np.nan)
    for i, (name, mask) in enumerate(conditions.items()):
        context = ablate(model, mask, mode="negative") if mask is not None else nullcontext()
        with context:
            if pairs:
                scores = score_pairs(model, tokenizer, pairs, group_by="case", reduction=reduction,  # type: ignore[arg-type]
                                     prefix=prefix, progress=False)
                acc[i], margin[i] = scores.aligned("accuracy", cases), scores.aligned("margin", cases)
            if ppl_windows is not None and len(ppl_windows):
                ppl[i] = perplexity(model, ppl_windows, progress=False)
    coords = {"condition": list(conditions), "tse_case": list(cases)}
    return xr.Dataset(
        {
            "tse_acc": (("condition", "tse_case"), acc, {"long_name": "TSE accuracy (good scores above bad)"}),
            "tse_margin": (("condition", "tse_case"), margin, {"units": "nats", "long_name": "mean log p(good) - log p(bad)"}),
            "ppl": (("condition",), ppl, {"long_name": "perplexity on the corpus windows"}),
        },
        coords=coords,
    )
