"""Sign-specific ablation of chosen MLP neurons, as a context manager.

The modes are named as the official code names them. Pre-activation modes hook the output
of the adapter's pre-activation module (the input of the nonlinearity; the gate of gated
MLPs) and rewrite only the chosen neurons' columns ``a``; activation modes hook the MLP's
activation module (``act``, ``act_fn`` or ``activation_fn`` beside it) and rewrite the
chosen columns of its output ``act(a)``:

=========  ==================================  ===============================================
mode       the chosen neuron's output is       meaning
=========  ==================================  ===============================================
negative   act(max(a, 0))                      the paper's intervention: negative part gone
positive   act(min(a, 0))                      the contrast: positive part gone
both       act(0)                              the neuron's pre-activation is zeroed
signflip   abs(act(a))                         official ``SelectiveSignFlip``: the activation's
                                               negative outputs mirrored to positive
posrelu    a if a > 0 else act(a)              official ``SelectivePosReLU``: identity on the
                                               positive side, the activation on the negative
abs_pre    act(abs(a))                         the pre-activation's negative side mirrored (the
                                               ``signflip`` of this project before --protocol)
=========  ==================================  ===============================================

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
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from checkpoints.adapters import adapter_for, mlp_shape, pre_activation_modules, transformer_layers
from dynamics.errors import UserInputError
from dynamics.execution.progress import progress_bar
from dynamics.stats.cohort import BisectionResult, bisect_to_target, bottom_percent_mask, wd_scores
from dynamics.syntax.perplexity import perplexity, window_nll

log = logging.getLogger(__name__)

Mode = Literal["negative", "positive", "both", "signflip", "posrelu", "abs_pre"]
MODES: tuple[str, ...] = ("negative", "positive", "both", "signflip", "posrelu", "abs_pre")
#: Modes that rewrite the activation's output rather than its input.
ACTIVATION_MODES: tuple[str, ...] = ("signflip", "posrelu")
#: Names under which transformers' MLPs keep their activation module, beside the pre-activation module.
ACTIVATION_ATTRIBUTES: tuple[str, ...] = ("act", "act_fn", "activation_fn")


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
            raise UserInputError(
                f"neuron mask has dtype {mask.dtype}; give a boolean mask [layer, neuron] or index lists"
            )
        if mask.shape != (n_layers, n_neurons):
            raise UserInputError(
                f"neuron mask has shape {mask.shape}; the model needs ({n_layers}, {n_neurons}) [layer, neuron]"
            )
        per_layer = {layer: np.flatnonzero(row) for layer, row in enumerate(mask)}
    indices: dict[int, torch.Tensor] = {}
    for layer, chosen in per_layer.items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
            raise UserInputError(
                f"layer {layer!r} in the neuron set does not exist: the model has layers 0..{n_layers - 1}"
            )
        array = np.asarray(chosen.cpu() if isinstance(chosen, torch.Tensor) else chosen).reshape(-1)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise UserInputError(
                f"layer {layer} neuron indices have dtype {array.dtype}; give integer indices, "
                "or the whole set as one boolean mask [layer, neuron]"
            )
        values = torch.as_tensor(array.astype(np.int64))
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= n_neurons):
            raise UserInputError(
                f"layer {layer} neuron indices must lie in 0..{n_neurons - 1}, got {values.tolist()[:8]}"
            )
        values = torch.unique(values)  # sorted, duplicates dropped
        if values.numel():
            indices[int(layer)] = values
    return indices


def _make_hook(mode: str, index: torch.Tensor):  # noqa: ANN202
    """A forward hook rewriting columns ``index`` of the module output.

    Gathering the chosen columns (``index_select``), rewriting them and scattering them back
    (``index_copy_``) touches ~1% of the tensor; a full-width ``torch.where`` with a column
    mask reads and writes all of it (see ``scripts/bench_ablation.py``). In place when no
    gradient is recorded, out of place otherwise so autograd stays correct. For the
    activation modes the module is the activation: ``args[0]`` is its input ``a``.
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
        elif mode == "posrelu":
            a = args[0].index_select(-1, idx)
            chosen = torch.where(a > 0, a, chosen)
        else:  # abs_pre (on the pre-activation) and signflip (on the activation's output)
            chosen = chosen.abs_()
        return output.index_copy_(-1, idx, chosen) if in_place else output.index_copy(-1, idx, chosen)

    return hook


def activation_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The MLP activation module of each layer: the ``act``/``act_fn``/``activation_fn`` beside the
    pre-activation module.

    Raises:
        UserInputError: a family whose MLP keeps its activation elsewhere (no activation mode there).
    """
    parent_path = adapter_for(model).pre_activation.rpartition(".")[0]
    found = []
    for layer, block in enumerate(transformer_layers(model)):
        parent = block.get_submodule(parent_path) if parent_path else block
        module = next(
            (
                getattr(parent, name)
                for name in ACTIVATION_ATTRIBUTES
                if isinstance(getattr(parent, name, None), torch.nn.Module)
            ),
            None,
        )
        if module is None:
            raise UserInputError(
                f"layer {layer}: no activation module ({', '.join(ACTIVATION_ATTRIBUTES)}) beside the "
                f"pre-activation; the modes {', '.join(ACTIVATION_MODES)} need one"
            )
        found.append(module)
    return found


@contextmanager
def ablate(model: torch.nn.Module, neurons: Any, mode: Mode = "negative") -> Iterator[dict[int, torch.Tensor]]:
    """Ablate the chosen neurons' pre-activations by sign while the context is open.

    Args:
        model: a model of a supported family (see ``checkpoints.adapters``).
        neurons: boolean mask [layer, neuron] (torch or numpy), ``{layer: indices}``, or one
            index list per layer.
        mode: one of :data:`MODES` (see the module docstring).

    Yields:
        ``{layer: indices}`` of the hooked layers (layers with no chosen neuron are absent).

    Raises:
        UserInputError: unknown mode, or a neuron set that does not fit the model.
    """
    if mode not in MODES:
        raise UserInputError(f"ablation mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    indices = neuron_indices(neurons, mlp_shape(model))
    pre_modules = pre_activation_modules(model)
    modules = activation_modules(model) if mode in ACTIVATION_MODES else pre_modules
    handles = []
    try:
        for layer, index in indices.items():
            device = pre_modules[layer].weight.device
            handles.append(modules[layer].register_forward_hook(_make_hook(mode, index.to(device))))  # type: ignore[arg-type]
        yield indices
    finally:
        for handle in handles:
            handle.remove()


def ablation_function(mode: Mode, activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Any:
    """The elementwise map of ``mode`` on a chosen neuron (out of place), for manual checks and plots.

    Pre-activation modes: ``a -> a'`` (the activation then applies). Activation modes
    (``signflip``, ``posrelu``): ``a -> `` the neuron's output, which needs ``activation``.
    """
    functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "negative": lambda a: a.clamp_min(0),
        "positive": lambda a: a.clamp_max(0),
        "both": torch.zeros_like,
        "abs_pre": torch.abs,
    }
    if activation is not None:
        act = activation
        functions["signflip"] = lambda a: act(a).abs()
        functions["posrelu"] = lambda a: torch.where(a > 0, a, act(a))
    if mode in ACTIVATION_MODES and activation is None:
        raise UserInputError(f"ablation mode {mode!r} rewrites the activation's output: pass the activation")
    if mode not in functions:
        raise UserInputError(f"ablation mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    return functions[mode]


def negative_ablation_perplexity(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int
) -> Callable[[torch.Tensor], float]:
    """``f(mask)``: perplexity on ``windows`` with the negative pre-activations of ``mask`` zeroed."""

    def ablated_ppl(mask: torch.Tensor) -> float:
        with ablate(model, mask, mode="negative"), torch.inference_mode():
            return perplexity(model, windows, batch_size=batch_size, progress=False)

    return ablated_ppl


def negative_ablation_window_nll(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """Summed NLL per window with ``mask``'s negative pre-activations zeroed (``None``: clean)."""
    if mask is None:
        with torch.inference_mode():
            return window_nll(model, windows, batch_size=batch_size, progress=False)
    with ablate(model, mask, mode="negative"), torch.inference_mode():
        return window_nll(model, windows, batch_size=batch_size, progress=False)


def paired_increase(
    clean_nll: torch.Tensor, ablated_nll: torch.Tensor, predicted_per_window: int
) -> tuple[float, float]:
    """(relative perplexity increase, its standard error) of an ablation, from per-window NLL on the same windows.

    The increase is ``exp(mean d) - 1`` with ``d`` the per-window change of the mean NLL per
    predicted token; its standard error ``exp(mean d) * std(d) / sqrt(n)`` (the delta method;
    NaN with one window). Paired windows cancel the text's own variation.
    """
    d = (ablated_nll.double() - clean_nll.double()).numpy() / predicted_per_window
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(np.expm1(mean)), float(np.exp(mean) * se)


def match_bottom_percent(
    wd: np.ndarray,
    ablated_ppl: Callable[[torch.Tensor], float],
    target: float,
    low: float,
    high: float,
    tolerance: float,
    max_iterations: int,
    clean: float | None = None,
) -> tuple[np.ndarray, BisectionResult]:
    """The bottom-``m``% WD mask whose negative ablation matches ``target`` perplexity.

    With ``clean`` (the clean perplexity) the tolerance is relative to the target's increase
    over it and a trial below clean never matches (:func:`bisect_to_target`).
    """
    scores = wd_scores(wd)
    bar = progress_bar(total=max_iterations + 2, desc="matched control", unit="trial")

    def perplexity_at(m: float) -> float:
        value = ablated_ppl(bottom_percent_mask(scores, m))
        log.info("matched control: bottom %.4g%% -> perplexity %.4f (target %.4f)", m, value, target)
        bar.set_postfix_str(f"m {m:.3g}% ppl {value:.4g} target {target:.4g}")
        bar.update()
        return value

    with bar:
        result = bisect_to_target(perplexity_at, target, low, high, tolerance, max_iterations, baseline=clean)
    if not result.converged:
        log.warning("matched control not found: %s; keeping the closest, m = %.4g%%", result.reason, result.argument)
    return bottom_percent_mask(scores, result.argument).numpy(), result


def noise_warning(increase: float, standard_error: float) -> str:
    """A warning when the top set's own perplexity increase is within two standard errors of zero ("" otherwise)."""
    if np.isfinite(standard_error) and abs(increase) <= 2 * standard_error:
        return (
            f"the top set's own perplexity increase ({100 * increase:+.2f}%) is within the noise of the estimate "
            f"(2 standard errors = {200 * standard_error:.2f}%); the match means little: use more --ppl-tokens"
        )
    return ""


@dataclass(frozen=True)
class MatchedControl:
    """A perplexity-matched control (:func:`matched_control`) and what it was matched against."""

    mask: np.ndarray  # [layer, neuron] bool, the bottom-m% WD neurons
    match: BisectionResult  # m (``argument``), its perplexity (``value``), convergence, trials
    clean: float  # clean perplexity
    target: float  # perplexity with the reference set's negative pre-activations zeroed
    increase: float  # the reference set's relative perplexity increase over clean
    increase_se: float  # its standard error over the paired windows
    noise: str  # :func:`noise_warning` of the increase ("" when it stands out of the noise)


def matched_control(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    wd: np.ndarray,
    reference: torch.Tensor,
    low: float,
    high: float,
    tolerance: float,
    max_iterations: int,
) -> MatchedControl:
    """The bottom-m% WD neurons whose negative ablation's perplexity increase over clean matches
    that of ``reference`` (a ``[layer, neuron]`` mask) on ``windows``: the clean and reference
    perplexities, the reference's paired increase and noise warning, then
    :func:`match_bottom_percent` between ``low`` and ``high`` percent."""
    predicted = windows.shape[0] * (windows.shape[1] - 1)
    clean_nll = negative_ablation_window_nll(model, windows, batch_size, None)
    reference_nll = negative_ablation_window_nll(model, windows, batch_size, reference)
    clean = float(np.exp(float(clean_nll.sum()) / predicted))
    target = float(np.exp(float(reference_nll.sum()) / predicted))
    increase, increase_se = paired_increase(clean_nll, reference_nll, windows.shape[1] - 1)
    noise = noise_warning(increase, increase_se)
    if noise:
        log.warning("matched control: %s", noise)
    ablated_ppl = negative_ablation_perplexity(model, windows, batch_size)
    mask, match = match_bottom_percent(wd, ablated_ppl, target, low, high, tolerance, max_iterations, clean=clean)
    return MatchedControl(mask, match, clean, target, increase, increase_se, noise)
