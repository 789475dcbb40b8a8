"""Several ablation conditions in one forward pass: a per-row neuron mask.

A batch is replicated once per condition (``copies`` blocks of equal rows, block ``c``
being condition ``c``); the hook on each layer's pre-activation module rewrites, in block
``c`` only, the columns of the neurons condition ``c`` ablates, with the same elementwise
map as :func:`dynamics.ablation.hooks.ablate` (:func:`dynamics.ablation.hooks.ablation_function`).
The weights are then read once per batch for every condition, and each block's numbers
are those of the one-condition pass (the tests assert equality, family by family).

Example::

    masks = [None, cohort_mask, control_mask]          # clean, cohort, control
    with ablate_rows(model, masks, mode="negative") as copies:
        per_condition = perplexity_each(model, windows, copies)

Every forward pass inside the context must carry ``copies`` equal blocks of rows
(:func:`dynamics.syntax.logprobs.token_log_probs_each`,
:func:`dynamics.syntax.perplexity.window_nll_each` do); a batch whose rows are not a
multiple of ``copies`` is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from checkpoints.adapters import mlp_shape, pre_activation_modules
from dynamics.ablation.hooks import MODES, Mode, ablation_function, neuron_indices
from dynamics.errors import UserInputError
from dynamics.models.modelcalls import capabilities

#: Replicated tokens (rows x length) one pass may hold: conditions beyond it run in further passes.
CONDITION_TOKENS = 65536


def conditions_per_pass(n_conditions: int, tokens_per_batch: int, budget: int = CONDITION_TOKENS) -> int:
    """How many conditions share a pass so that ``conditions x tokens_per_batch`` stays under ``budget``
    (at least one)."""
    return max(1, min(n_conditions, budget // max(1, tokens_per_batch)))


def _block_hook(rewrite: Any, per_block: list[tuple[int, torch.Tensor]], copies: int):  # noqa: ANN202
    """A forward hook rewriting, in row block ``c``, the columns ``index`` of each ``(c, index)``."""
    cache: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        rows = output.shape[0]
        if rows % copies:
            raise ValueError(f"a batch of {rows} rows cannot carry {copies} conditions in equal blocks")
        chosen = cache.get(output.device)
        if chosen is None:
            chosen = cache.setdefault(output.device, [(c, index.to(output.device)) for c, index in per_block])
        if torch.is_grad_enabled() and output.requires_grad:
            output = output.clone()  # autograd: never rewrite a tensor it saved
        block = rows // copies
        for c, index in chosen:
            part = output[c * block : (c + 1) * block]  # a view: the rewrite lands in ``output``
            part.index_copy_(-1, index, rewrite(part.index_select(-1, index)))
        return output

    return hook


@contextmanager
def ablate_rows(model: torch.nn.Module, masks: Sequence[Any], mode: Mode = "negative") -> Iterator[int]:
    """Ablate condition ``c``'s neurons in row block ``c`` of every batch while the context is open.

    Args:
        model: a model of a supported family (see ``checkpoints.adapters``).
        masks: one neuron set per condition (a boolean mask [layer, neuron], ``{layer:
            indices}`` or index lists, as :func:`dynamics.ablation.hooks.neuron_indices` takes), or
            ``None`` for a clean condition; or one boolean tensor [condition, layer, neuron].
        mode: the ablation mode of every condition, one of the pre-activation modes of
            :data:`dynamics.ablation.hooks.MODES` whose map :func:`dynamics.ablation.hooks.ablation_function`
            gives.

    Yields:
        The number of conditions (the ``copies`` each batch must carry).

    Raises:
        UserInputError: an unknown mode, no condition, or a neuron set that does not fit the model.
    """
    if mode not in MODES:
        raise UserInputError(f"ablation mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    try:
        rewrite = ablation_function(mode)
    except UserInputError as exc:
        raise UserInputError(
            f"ablation mode {mode!r} cannot run as one of several conditions in a pass: {exc}"
        ) from exc
    masks = list(masks)
    if not masks:
        raise UserInputError("ablate_rows needs at least one condition")
    shape = mlp_shape(model)
    indices = [neuron_indices(mask, shape) if mask is not None else {} for mask in masks]
    capabilities(model)  # probed now: the probe's batch does not carry the conditions' blocks
    modules = pre_activation_modules(model)
    handles = []
    try:
        for layer, module in enumerate(modules):
            per_block = [(c, chosen[layer]) for c, chosen in enumerate(indices) if layer in chosen]
            if per_block:
                weight: Any = module.weight  # torch types module attributes loosely
                per_block = [(c, index.to(weight.device)) for c, index in per_block]
                handles.append(module.register_forward_hook(_block_hook(rewrite, per_block, len(masks))))
        yield len(masks)
    finally:
        for handle in handles:
            handle.remove()
