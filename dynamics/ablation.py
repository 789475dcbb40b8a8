"""Sign-specific ablation of chosen MLP neurons, as a context manager.

The hook sits on the output of the adapter's pre-activation module (the input of the
nonlinearity; the gate of gated MLPs) and rewrites only the chosen neurons' columns:

=========  =====================  ==========================================
mode       a' =                   meaning
=========  =====================  ==========================================
negative   max(a, 0)              the paper's intervention: negative part gone
positive   min(a, 0)              the contrast: positive part gone
both       0                      the neuron's pre-activation is zeroed
signflip   abs(a)                 the negative side is mirrored to positive
=========  =====================  ==========================================

Layers without a chosen neuron get no hook. Hooks are removed on exit, also after an
exception. Nested ablations compose: the inner one acts on the outer one's output.

Example::

    with ablate(model, cohort_mask, mode="negative"):
        loss = model(input_ids=ids, labels=ids).loss
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from checkpoints.adapters import mlp_shape, pre_activation_modules
from dynamics.errors import UserInputError
from dynamics.stats.cohort import BisectionResult, bisect_to_target, bottom_percent_mask, wd_scores
from dynamics.syntax.perplexity import perplexity

log = logging.getLogger(__name__)

Mode = Literal["negative", "positive", "both", "signflip"]
MODES: tuple[str, ...] = ("negative", "positive", "both", "signflip")


def neuron_indices(neurons: Any, shape: tuple[int, int]) -> dict[int, torch.Tensor]:
    """Normalise a neuron set to ``{layer: sorted unique int64 indices}`` (non-empty layers only).

    Accepts a boolean mask [layer, neuron] (torch, numpy, or anything ``np.asarray`` turns
    into one, e.g. an xarray ``DataArray``), a dict ``{layer: indices}``, or a list with one
    index list per layer.
    """
    n_layers, n_neurons = shape
    if isinstance(neurons, Mapping):
        per_layer = dict(neurons.items())
    elif isinstance(neurons, (list, tuple)):
        if len(neurons) != n_layers:
            raise UserInputError(f"neuron list has {len(neurons)} per-layer entries; the model has {n_layers} layers")
        per_layer = dict(enumerate(neurons))
    else:
        mask = neurons.detach().cpu().numpy() if isinstance(neurons, torch.Tensor) else np.asarray(neurons)
        if mask.dtype != np.bool_:
            raise UserInputError(f"neuron mask has dtype {mask.dtype}; give a boolean mask [layer, neuron] or index lists")
        if mask.shape != (n_layers, n_neurons):
            raise UserInputError(f"neuron mask has shape {mask.shape}; the model needs ({n_layers}, {n_neurons}) [layer, neuron]")
        per_layer = {layer: np.flatnonzero(row) for layer, row in enumerate(mask)}
    indices: dict[int, torch.Tensor] = {}
    for layer, chosen in per_layer.items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
            raise UserInputError(f"layer {layer!r} in the neuron set does not exist: the model has layers 0..{n_layers - 1}")
        array = np.asarray(chosen.cpu() if isinstance(chosen, torch.Tensor) else chosen).reshape(-1)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise UserInputError(
                f"layer {layer} neuron indices have dtype {array.dtype}; give integer indices, "
                "or the whole set as one boolean mask [layer, neuron]"
            )
        values = torch.as_tensor(array.astype(np.int64))
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= n_neurons):
            raise UserInputError(f"layer {layer} neuron indices must lie in 0..{n_neurons - 1}, got {values.tolist()[:8]}")
        values = torch.unique(values)  # sorted, duplicates dropped
        if values.numel():
            indices[int(layer)] = values
    return indices


def _make_hook(mode: str, index: torch.Tensor):  # noqa: ANN202
    """A forward hook rewriting columns ``index`` of the module output.

    Gathering the chosen columns (``index_select``), rewriting them and scattering them back
    (``index_copy_``) touches ~1% of the tensor; a full-width ``torch.where`` with a column
    mask reads and writes all of it (see ``scripts/bench_ablation.py``). In place when no
    gradient is recorded, out of place otherwise so autograd stays correct.
    """
    cache: dict[torch.device, torch.Tensor] = {index.device: index}

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        idx = cache.get(output.device)
        if idx is None:
            idx = cache.setdefault(output.device, index.to(output.device))
        in_place = not (torch.is_grad_enabled() and output.requires_grad)
        if mode == "both":
            return output.index_fill_(-1, idx, 0) if in_place else output.index_fill(-1, idx, 0)
        chosen = output.index_select(-1, idx)
        if mode == "negative":
            chosen = chosen.clamp_min_(0)
        elif mode == "positive":
            chosen = chosen.clamp_max_(0)
        else:
            chosen = chosen.abs_()
        return output.index_copy_(-1, idx, chosen) if in_place else output.index_copy(-1, idx, chosen)

    return hook


@contextmanager
def ablate(model: torch.nn.Module, neurons: Any, mode: Mode = "negative") -> Iterator[dict[int, torch.Tensor]]:
    """Ablate the chosen neurons' pre-activations by sign while the context is open.

    Args:
        model: a model of a supported family (see ``checkpoints.adapters``).
        neurons: boolean mask [layer, neuron] (torch or numpy), ``{layer: indices}``, or one
            index list per layer.
        mode: ``negative`` (a' = max(a, 0)), ``positive`` (min(a, 0)), ``both`` (0) or
            ``signflip`` (|a|).

    Yields:
        ``{layer: indices}`` of the hooked layers (layers with no chosen neuron are absent).

    Raises:
        UserInputError: unknown mode, or a neuron set that does not fit the model.
    """
    if mode not in MODES:
        raise UserInputError(f"ablation mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    indices = neuron_indices(neurons, mlp_shape(model))
    modules = pre_activation_modules(model)
    handles = []
    try:
        for layer, index in indices.items():
            module = modules[layer]
            handles.append(module.register_forward_hook(_make_hook(mode, index.to(module.weight.device))))  # type: ignore[arg-type]
        yield indices
    finally:
        for handle in handles:
            handle.remove()


def ablation_function(mode: Mode) -> Any:
    """The elementwise map of ``mode`` on a tensor (out of place), for manual checks and plots."""
    functions = {
        "negative": lambda a: a.clamp_min(0),
        "positive": lambda a: a.clamp_max(0),
        "both": torch.zeros_like,
        "signflip": torch.abs,
    }
    if mode not in functions:
        raise UserInputError(f"ablation mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    return functions[mode]


def negative_ablation_perplexity(model: torch.nn.Module, windows: torch.Tensor,
                                 batch_size: int) -> Callable[[torch.Tensor], float]:
    """``f(mask)``: perplexity on ``windows`` with the negative pre-activations of ``mask`` zeroed."""
    def ablated_ppl(mask: torch.Tensor) -> float:
        with ablate(model, mask, mode="negative"), torch.inference_mode():
            return perplexity(model, windows, batch_size=batch_size, progress=False)

    return ablated_ppl


def match_bottom_percent(wd: np.ndarray, ablated_ppl: Callable[[torch.Tensor], float], target: float, low: float,
                         high: float, tolerance: float, max_iterations: int) -> tuple[np.ndarray, BisectionResult]:
    """The bottom-``m``% WD mask whose negative ablation matches ``target`` perplexity."""
    scores = wd_scores(wd)
    bar = tqdm(total=max_iterations + 2, desc="matched control", unit="trial", dynamic_ncols=True)

    def perplexity_at(m: float) -> float:
        value = ablated_ppl(bottom_percent_mask(scores, m))
        log.info("matched control: bottom %.4g%% -> perplexity %.4f (target %.4f)", m, value, target)
        bar.set_postfix_str(f"m {m:.3g}% ppl {value:.4g} target {target:.4g}")
        bar.update()
        return value

    with bar:
        result = bisect_to_target(perplexity_at, target, low, high, tolerance, max_iterations)
    if not result.converged:
        log.warning("matched control not found: %s; keeping the closest, m = %.4g%%", result.reason, result.argument)
    return bottom_percent_mask(scores, result.argument).numpy(), result
