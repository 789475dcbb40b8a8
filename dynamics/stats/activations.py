"""Capture of MLP pre-activations (and MLP inputs) for many layers per forward pass.

Layers are split into groups whose captures fit a memory budget
(tokens x group layers x width x 4 bytes); each group costs one pass over the corpus, and
each pass stops right after its last hooked layer (a private exception raised by the last
hook), so later blocks and the LM head are never run. A pass also keeps the residual stream
entering the block where it stops, and the next pass resumes there: the blocks before it
are swapped for a lookup of that stored stream, so a block runs at most twice over all
passes (the block a pass stops in is re-run by the next) instead of once per pass that
reaches it: with one layer per pass, 2L - 1 block runs instead of L(L + 1) / 2. Captures are float32 whatever the model dtype. A caller consumes one layer at a time::

    for layer, pre in iter_pre_activations(model, windows):
        wd[layer] = wasserstein_to_gaussian(pre)   # pre: [tokens, neurons] float32
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from checkpoints.adapters import mlp_shape, pre_activation_modules, transformer_layers
from dynamics.errors import DynamicsError, UserInputError
from dynamics.execution.progress import progress_bar
from dynamics.models.cpu_threads import map_batches
from dynamics.models.modelcalls import model_device, run_for_hooks

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of captured float32 values held at once
Site = Literal["pre_activation", "mlp_input"]
SITES: tuple[str, ...] = ("pre_activation", "mlp_input")


class _StopForward(Exception):
    """Raised by the last hook of a pass: the rest of the model is not needed."""


@dataclass(frozen=True)
class CaptureSettings:
    """How captures are taken; none of it changes a captured value.

    Attributes:
        memory_budget: Bytes of captures held at once; decides the layers per pass.
        batch_size: Windows per forward pass.
        out_device: Where captures are stored (default: the model's device).
        progress: Show a tqdm bar over passes x batches.
        resume_passes: Start each pass from the residual stream stored by the previous one
            (costs tokens x d_model in the model's dtype on its device); False re-runs the
            earlier blocks in every pass (the slow baseline the benchmark compares with).
    """

    memory_budget: int = DEFAULT_MEMORY_BUDGET
    batch_size: int = 1
    out_device: torch.device | str | None = None
    progress: bool = True
    resume_passes: bool = True


def plan_layer_groups(layers: Sequence[int], bytes_per_layer: int, memory_budget: int) -> list[list[int]]:
    """Split ``layers`` (in order) into the fewest groups whose captures fit ``memory_budget``.

    Passes stop after their last layer, so with the number of passes fixed the cheapest
    split puts the short group first (e.g. 12 layers, 5 per group -> 2, 5, 5). A layer that
    alone exceeds the budget still gets its own group (it must be held whole), with a warning.
    """
    if memory_budget < 1:
        raise UserInputError(f"memory budget {memory_budget!r} must be a positive number of bytes, e.g. 2147483648")
    layers = list(layers)
    if not layers:
        return []
    per_group = memory_budget // max(1, bytes_per_layer)
    if per_group < 1:
        log.warning(
            "one layer's capture (%.2f GiB) exceeds the memory budget (%.2f GiB); capturing one layer per pass",
            bytes_per_layer / 2**30,
            memory_budget / 2**30,
        )
        per_group = 1
    n_groups = math.ceil(len(layers) / per_group)
    first = len(layers) - (n_groups - 1) * per_group
    bounds = [0, first] + [first + per_group * i for i in range(1, n_groups)]
    return [layers[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    chosen = sorted(set(int(layer) for layer in layers))
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad or not chosen:
        raise UserInputError(f"layers {list(layers)!r} are not valid: the model has layers 0..{n_layers - 1}")
    return chosen


def iter_layer_captures(
    model: torch.nn.Module,
    windows: torch.Tensor,
    settings: CaptureSettings = CaptureSettings(),
    *,
    layers: Sequence[int] | None = None,
    sites: Sequence[Site] = ("pre_activation",),
) -> Iterator[tuple[int, dict[Site, torch.Tensor]]]:
    """Yield ``(layer, {site: float32 tensor [tokens, width]})`` for each layer, in order.

    Args:
        model: a causal LM of a supported family (see ``checkpoints.adapters``).
        windows: token ids [n_windows, window] (``dynamics.syntax.corpus.load_token_windows``).
        settings: the memory budget, windows per pass, where captures go, the progress bar and
            whether passes resume (:class:`CaptureSettings`).
        layers: which layers (default all).
        sites: ``"pre_activation"`` (the adapter module's output, width n_neurons) and/or
            ``"mlp_input"`` (that module's input, width d_model).

    Row ``w * window + t`` of every tensor is token ``t`` of window ``w``. Only the yielded
    layer's tensors and those of the rest of its group are alive; drop each after use.
    """
    _check_capture(windows, settings, sites)
    n_layers, n_neurons = mlp_shape(model)
    modules = pre_activation_modules(model)
    d_model = _input_width(modules[0])
    widths = {"pre_activation": n_neurons, "mlp_input": d_model}
    n_windows, window = windows.shape
    n_tokens = n_windows * window
    bytes_per_layer = n_tokens * 4 * sum(widths[site] for site in sites)
    groups = plan_layer_groups(_check_layers(layers, n_layers), bytes_per_layer, settings.memory_budget)
    device = model_device(model)
    out_device = torch.device(settings.out_device) if settings.out_device is not None else device
    n_batches = math.ceil(n_windows / settings.batch_size)
    log.info(
        "capturing %s of %d layers: %d tokens, %d pass(es), %.2f GiB per layer",
        "+".join(sites),
        sum(map(len, groups)),
        n_tokens,
        len(groups),
        bytes_per_layer / 2**30,
    )
    was_training = model.training
    model.eval()
    bar = progress_bar(total=len(groups) * n_batches, desc="capture", unit="batch", disable=not settings.progress)
    inputs = _PassInputs(model, modules, transformer_layers(model), windows, settings.batch_size, device, bar)
    resume: _ResumePoint | None = None
    try:
        for index, group in enumerate(groups):
            bar.set_postfix(passes=f"{index + 1}/{len(groups)}", layers=f"{group[0]}-{group[-1]}")
            buffers = {
                layer: {
                    site: torch.empty(n_tokens, widths[site], dtype=torch.float32, device=out_device) for site in sites
                }
                for layer in group
            }
            keep_next = settings.resume_passes and index + 1 < len(groups) and group[-1] > 0
            resume = _capture_group(
                inputs, buffers, group, resume_from=resume, keep_stream_before=group[-1] if keep_next else None
            )
            for layer in group:
                yield layer, buffers.pop(layer)
    finally:
        bar.close()
        model.train(was_training)


def iter_pre_activations(
    model: torch.nn.Module,
    windows: torch.Tensor,
    settings: CaptureSettings = CaptureSettings(),
    *,
    layers: Sequence[int] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(layer, pre-activations [tokens, n_neurons] float32)`` for each layer, in order.

    See :func:`iter_layer_captures` for the arguments and the memory behaviour.
    """
    for layer, captured in iter_layer_captures(model, windows, settings, layers=layers, sites=("pre_activation",)):
        yield layer, captured["pre_activation"]


def _check_capture(windows: torch.Tensor, settings: CaptureSettings, sites: Sequence[Site]) -> None:
    """Refuse windows that are not token ids, no windows per pass, or an unknown capture site."""
    if windows.ndim != 2 or windows.dtype != torch.long:
        raise UserInputError(
            f"token windows must be a LongTensor [n_windows, window], got {windows.dtype} {tuple(windows.shape)}"
        )
    if settings.batch_size < 1:
        raise UserInputError(f"batch size {settings.batch_size!r} must be a positive number of windows")
    unknown = [site for site in sites if site not in SITES]
    if unknown or not sites:
        raise UserInputError(f"capture sites {list(sites)!r} are not valid; use {' and/or '.join(SITES)}")


def _input_width(module: torch.nn.Module) -> int:
    width = getattr(module, "in_features", None) or getattr(module, "nx", None)  # Linear / GPT-2 Conv1D
    if width is None:
        raise DynamicsError(f"cannot tell the input width of a {type(module).__name__} pre-activation module")
    return int(width)


class _ResumePoint:
    """The output of block ``block - 1`` for every batch of a pass: where the next pass starts.

    The object each block returned (a tensor or a tuple, depending on the family and the
    transformers version) is kept as it is, so the model's own loop unpacks it as usual.
    """

    def __init__(self, block: int) -> None:
        self.block = block
        self.outputs: list[object] = []


def _skip_blocks(blocks: torch.nn.ModuleList, resume: _ResumePoint, current: threading.local) -> list[object]:
    """Swap the forward of blocks ``0 .. resume.block - 1`` for a lookup of the stored stream.

    The model's forward still builds its embeddings, masks and rotary tables for every
    block (cheap); only the skipped blocks' computation is replaced. ``current.index`` names
    the batch (of the calling thread) whose stored output the swapped blocks return. Returns
    the original forwards.
    """
    originals = []
    for block in blocks[: resume.block]:
        originals.append(block.__dict__.get("forward"))
        block.forward = lambda *args, **kwargs: resume.outputs[current.index]
    return originals


def _restore_blocks(blocks: torch.nn.ModuleList, originals: list[object]) -> None:
    for block, original in zip(blocks, originals):
        if original is None:
            del block.forward
        else:
            block.forward = original  # type: ignore[assignment]


@dataclass(frozen=True)
class _PassInputs:
    """What every pass of one capture shares: the model, its pre-activation modules and blocks, the
    windows, windows per batch, the device the batches go to and the progress bar."""

    model: torch.nn.Module
    modules: list[torch.nn.Module]
    blocks: torch.nn.ModuleList
    windows: torch.Tensor
    batch_size: int
    device: torch.device
    bar: Any  # a progress_bar


def _capture_group(
    inputs: _PassInputs,
    buffers: dict[int, dict[Site, torch.Tensor]],
    group: list[int],
    resume_from: _ResumePoint | None = None,
    keep_stream_before: int | None = None,
) -> _ResumePoint | None:
    """One pass over all windows with hooks on ``group`` only; fills ``buffers`` in place.

    ``resume_from`` skips the blocks before its block (their output is looked up);
    ``keep_stream_before`` stores, for the next pass, the output of the block before it.
    """
    last = group[-1]
    current = threading.local()  # the batch (index, rows) each thread is running
    kept = _ResumePoint(keep_stream_before) if keep_stream_before is not None else None
    kept_by_batch: dict[int, object] = {}
    window = inputs.windows.shape[1]

    def run(index: int) -> None:
        """Batch ``index`` through the hooked layers; its rows land in ``buffers``."""
        start = index * inputs.batch_size
        batch = inputs.windows[start : start + inputs.batch_size]
        current.index, current.rows = index, slice(start * window, (start + batch.shape[0]) * window)
        try:
            run_for_hooks(inputs.model, batch.to(inputs.device))
        except _StopForward:
            return
        raise DynamicsError(f"the forward pass ended without reaching layer {last}'s MLP")

    handles = [
        inputs.modules[layer].register_forward_hook(_capture_hook(buffers[layer], layer == last, current))
        for layer in group
    ]
    if kept is not None:
        handles.append(
            inputs.blocks[kept.block - 1].register_forward_hook(
                lambda m, a, output: kept_by_batch.__setitem__(current.index, output)
            )
        )
    originals = _skip_blocks(inputs.blocks, resume_from, current) if resume_from is not None else []
    try:
        with torch.inference_mode():
            # On the CPU batches may run side by side, each exactly as alone (map_batches).
            for _ in map_batches(inputs.device, run, range(math.ceil(inputs.windows.shape[0] / inputs.batch_size))):
                inputs.bar.update(1)
    finally:
        for handle in handles:
            handle.remove()
        _restore_blocks(inputs.blocks, originals)
    if kept is not None:
        kept.outputs = [kept_by_batch[index] for index in sorted(kept_by_batch)]
    return kept


def _capture_hook(
    targets: dict[Site, torch.Tensor], last: bool, current: threading.local
) -> Callable[[torch.nn.Module, tuple, torch.Tensor], None]:
    """A forward hook on a pre-activation module copying its output and/or input into the rows
    ``current.rows`` of ``targets``; the pass's ``last`` hook then stops the forward."""

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        if "pre_activation" in targets:
            targets["pre_activation"][current.rows].copy_(output.reshape(-1, output.shape[-1]))
        if "mlp_input" in targets:
            targets["mlp_input"][current.rows].copy_(args[0].reshape(-1, args[0].shape[-1]))
        if last:
            raise _StopForward

    return hook
