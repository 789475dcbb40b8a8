"""Ablation of chosen MLP neurons while a context is open: one condition, or one condition per row block.

Both contexts install the same forward hook (:func:`_block_hook`), with each mode's rewrite
taken from the one table :data:`dynamics.ablation.modes.MODES`: a pre-activation mode hooks
the output of the family's pre-activation module (the nonlinearity's input; the gate of a
gated MLP), an activation mode hooks the activation module beside it (``act``, ``act_fn`` or
``activation_fn``) and rewrites its output. Only the chosen neurons' columns are touched.

- :func:`ablate` (one condition): every row of every batch.
- :func:`ablate_rows` (several conditions in one pass): a batch is replicated once per
  condition (``copies`` blocks of equal rows, block ``c`` being condition ``c``), and block
  ``c`` gets condition ``c``'s neurons and mode, so conditions of different modes share a
  pass. The weights are read once per batch for every condition, and each block's numbers are
  those of the one-condition pass (tests/test_row_ablation.py asserts it family by family).

Layers without a chosen neuron get no hook. Hooks are removed on exit, also after an
exception. Nested ablations compose: the inner one acts on the outer one's output.

Example::

    with ablate(model, cohort_mask, mode="negative"):
        loss = model(input_ids=ids, labels=ids).loss
    with ablate_rows(model, [None, cohort_mask, control_mask], ["negative"] * 3) as copies:
        per_condition = perplexity_each(model, windows, copies)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from checkpoints.adapters import adapter_for, mlp_shape, pre_activation_modules, transformer_layers
from dynamics.ablation.modes import ACTIVATION_MODES, AblationMode, ablation_mode
from dynamics.errors import UserInputError
from dynamics.models.modelcalls import capabilities

#: Names under which transformers' MLPs keep their activation module, beside the pre-activation module.
ACTIVATION_ATTRIBUTES: tuple[str, ...] = ("act", "act_fn", "activation_fn")


def neuron_indices(neurons: Any, shape: tuple[int, int]) -> dict[int, torch.Tensor]:
    """Normalise a neuron set to ``{layer: sorted unique int64 indices}`` (non-empty layers only).

    Accepts a boolean mask [layer, neuron] (torch, numpy, or anything ``np.asarray`` turns
    into one, e.g. an xarray ``DataArray``), a dict ``{layer: indices}``, or a list with one
    index list per layer.
    """
    indices: dict[int, torch.Tensor] = {}
    for layer, chosen in _per_layer(neurons, shape).items():
        values = _layer_indices(layer, chosen, shape)
        if values.numel():
            indices[int(layer)] = values
    return indices


def _per_layer(neurons: Any, shape: tuple[int, int]) -> dict[Any, Any]:
    """``{layer: that layer's chosen neurons}`` of a mapping, a list per layer or a boolean mask, as given."""
    n_layers, n_neurons = shape
    if isinstance(neurons, Mapping):
        return dict(neurons.items())
    if isinstance(neurons, (list, tuple)):
        if len(neurons) != n_layers:
            raise UserInputError(f"neuron list has {len(neurons)} per-layer entries; the model has {n_layers} layers")
        return dict(enumerate(neurons))
    mask = neurons.detach().cpu().numpy() if isinstance(neurons, torch.Tensor) else np.asarray(neurons)
    if mask.dtype != np.bool_:
        raise UserInputError(f"neuron mask has dtype {mask.dtype}; give a boolean mask [layer, neuron] or index lists")
    if mask.shape != (n_layers, n_neurons):
        raise UserInputError(
            f"neuron mask has shape {mask.shape}; the model needs ({n_layers}, {n_neurons}) [layer, neuron]"
        )
    return {layer: np.flatnonzero(row) for layer, row in enumerate(mask)}


def _layer_indices(layer: Any, chosen: Any, shape: tuple[int, int]) -> torch.Tensor:
    """One layer's chosen neurons as sorted unique int64 indices, the layer and every index checked."""
    n_layers, n_neurons = shape
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
        raise UserInputError(f"layer {layer} neuron indices must lie in 0..{n_neurons - 1}, got {values.tolist()[:8]}")
    return torch.unique(values)  # sorted, duplicates dropped


def _block_hook(per_block: list[tuple[int, AblationMode, torch.Tensor]], copies: int):  # noqa: ANN202
    """A forward hook rewriting, in row block ``c`` of the output, the columns ``index`` of each
    ``(c, mode, index)`` with ``mode``'s rewrite (one block spanning every row when ``copies`` is 1).

    Gathering the chosen columns (``index_select``), rewriting them and scattering them back
    (``index_copy_``) touches ~1% of the tensor; a full-width ``torch.where`` with a column
    mask reads and writes all of it (see ``scripts/bench_ablation.py``). In place when no
    gradient is recorded, on a copy otherwise so autograd never sees a tensor it saved change.
    For activation modes the module is the activation: ``args[0]`` is its input ``a``.
    """
    cache: dict[torch.device, list[tuple[int, AblationMode, torch.Tensor]]] = {}

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        rows = output.shape[0]
        if rows % copies:
            raise ValueError(f"a batch of {rows} rows cannot carry {copies} conditions in equal blocks")
        chosen = cache.get(output.device)
        if chosen is None:
            chosen = cache.setdefault(output.device, [(c, m, index.to(output.device)) for c, m, index in per_block])
        if torch.is_grad_enabled() and output.requires_grad:
            output = output.clone()
        block = rows // copies
        for c, mode, index in chosen:
            part = output[c * block : (c + 1) * block]  # a view: the rewrite lands in ``output``
            inputs = args[0][c * block : (c + 1) * block].index_select(-1, index) if mode.site == "activation" else None
            part.index_copy_(-1, index, mode.rewrite(part.index_select(-1, index), inputs))
        return output

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
def ablate_rows(model: torch.nn.Module, masks: Sequence[Any], modes: str | Sequence[str] = "negative") -> Iterator[int]:
    """Ablate condition ``c``'s neurons with its mode in row block ``c`` of every batch while the context is open.

    Args:
        model: a model of a supported family (see ``checkpoints.adapters``).
        masks: one neuron set per condition (a boolean mask [layer, neuron], ``{layer:
            indices}`` or index lists, as :func:`neuron_indices` takes), or ``None`` for a clean
            condition.
        modes: the mode of every condition, or one mode per condition (names of
            :data:`dynamics.ablation.modes.MODES`).

    Yields:
        The number of conditions (the ``copies`` each batch must carry).

    Raises:
        UserInputError: an unknown mode, no condition, a neuron set that does not fit the model,
            or an activation mode on a family whose MLP keeps its activation elsewhere.
    """
    masks = list(masks)
    if not masks:
        raise UserInputError("ablate_rows needs at least one condition")
    names = [modes] * len(masks) if isinstance(modes, str) else list(modes)
    if len(names) != len(masks):
        raise UserInputError(f"{len(masks)} conditions but {len(names)} ablation modes")
    chosen_modes = [ablation_mode(name) for name in names]
    shape = mlp_shape(model)
    indices = [neuron_indices(mask, shape) if mask is not None else {} for mask in masks]
    capabilities(model)  # probed now: the probe's batch does not carry the conditions' blocks
    with _hooks(model, chosen_modes, indices, len(masks)):
        yield len(masks)


@contextmanager
def ablate(model: torch.nn.Module, neurons: Any, mode: str = "negative") -> Iterator[dict[int, torch.Tensor]]:
    """Ablate the chosen neurons with ``mode`` in every row while the context is open.

    Args:
        model: a model of a supported family (see ``checkpoints.adapters``).
        neurons: boolean mask [layer, neuron] (torch or numpy), ``{layer: indices}``, or one
            index list per layer.
        mode: one of :data:`dynamics.ablation.modes.MODES`.

    Yields:
        ``{layer: indices}`` of the hooked layers (layers with no chosen neuron are absent).

    Raises:
        UserInputError: unknown mode, or a neuron set that does not fit the model.
    """
    chosen_mode = ablation_mode(mode)
    indices = neuron_indices(neurons, mlp_shape(model))
    with _hooks(model, [chosen_mode], [indices], 1):
        yield indices


@contextmanager
def _hooks(
    model: torch.nn.Module, modes: list[AblationMode], indices: list[dict[int, torch.Tensor]], copies: int
) -> Iterator[None]:
    """One block hook per layer and site that some condition ablates, removed on exit."""
    pre_modules = pre_activation_modules(model)
    sites = {mode.site for mode, chosen in zip(modes, indices) if chosen}
    act_modules = activation_modules(model) if "activation" in sites else []
    handles = []
    try:
        for layer, pre_module in enumerate(pre_modules):
            weight: Any = pre_module.weight  # torch types module attributes loosely
            for site, module in (
                ("pre_activation", pre_module),
                ("activation", act_modules[layer] if act_modules else None),
            ):
                per_block = [
                    (c, mode, chosen[layer].to(weight.device))
                    for c, (mode, chosen) in enumerate(zip(modes, indices))
                    if mode.site == site and layer in chosen
                ]
                if per_block and module is not None:
                    handles.append(module.register_forward_hook(_block_hook(per_block, copies)))
        yield
    finally:
        for handle in handles:
            handle.remove()
