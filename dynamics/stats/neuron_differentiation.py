"""Differentiated pairs of a model's neuron sets, layer by layer, as one labelled dataset.

On a sample of the WD tokens (the first WD windows holding ``tokens`` tokens), each layer's MLP
inputs and pre-activations are captured once, and for each chosen neuron (the union of the sets
asked for, e.g. the top-1% WD neurons and their random control) the differentiated pairs, their
pre-activation regions and the base rate are found (:mod:`dynamics.stats.differentiation`; its
docstring defines k, the ratio and the regions). The result names every analysed token (id,
text, window and position) so that pairs can be read as text and tagged, and every member
(layer, neuron, the sets it belongs to) so that sets can be compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from dynamics.stats.activations import iter_layer_captures
from dynamics.stats.differentiation import REGIONS, base_region_fractions, differentiated_pairs, region_fractions


def analysed_windows(windows: torch.Tensor, tokens: int) -> torch.Tensor:
    """The first WD windows that hold at least ``tokens`` tokens (all windows when they hold fewer)."""
    count = max(1, min(int(windows.shape[0]), -(-int(tokens) // int(windows.shape[1]))))
    return windows[:count]


def set_differentiation(
    model: torch.nn.Module,
    windows: torch.Tensor,
    sets: Mapping[str, np.ndarray],
    tokenizer: Any,
    k: int = 10,
    top: int = 20,
    memory_budget: int = 1 << 30,
    batch_size: int = 1,
    progress: bool = False,
) -> xr.Dataset:
    """The differentiated pairs of every neuron of ``sets`` (name -> boolean mask [layer, neuron]) on ``windows``.

    Returns a dataset over ``diff_member`` (one per chosen neuron, in (layer, neuron) order),
    ``diff_rank`` (``top``), ``diff_side`` (the pair's two tokens), ``region`` and
    ``diff_token`` (every analysed token), with coordinates saying which layer, neuron and sets
    each member is.
    """
    names = list(sets)
    union = np.zeros_like(next(iter(sets.values())), dtype=bool)
    for mask in sets.values():
        union |= np.asarray(mask, dtype=bool)
    members = [(int(layer), int(neuron)) for layer, neuron in zip(*np.nonzero(union))]
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in members:
        by_layer.setdefault(layer, []).append(neuron)
    n = len(members)
    pairs = np.full((n, top, 2), -1, dtype=np.int64)
    ratio = np.full((n, top), np.nan)
    pre = np.full((n, top, 2), np.nan, dtype=np.float32)
    regions = np.full((n, len(REGIONS)), np.nan)
    base = np.full((n, len(REGIONS)), np.nan)
    row = 0
    captures = iter_layer_captures(
        model,
        windows,
        layers=sorted(by_layer),
        sites=("pre_activation", "mlp_input"),
        memory_budget=memory_budget,
        batch_size=batch_size,
        progress=progress,
    )
    for layer, captured in captures:
        chosen = by_layer[layer]
        found = differentiated_pairs(captured["mlp_input"], captured["pre_activation"], chosen, k=k, top=top)
        rows = slice(row, row + len(chosen))
        pairs[rows] = found.pairs.cpu().numpy()
        ratio[rows] = found.ratio.cpu().numpy()
        pre[rows] = found.pre.float().cpu().numpy()
        regions[rows] = region_fractions(found.pre).cpu().numpy()
        base[rows] = base_region_fractions(captured["pre_activation"], found.first, found.second, chosen).cpu().numpy()
        row += len(chosen)
        del captured, found
    return _dataset(members, names, sets, pairs, ratio, pre, regions, base, windows, tokenizer, k)


def _dataset(
    members: Sequence[tuple[int, int]],
    names: Sequence[str],
    sets: Mapping[str, np.ndarray],
    pairs: np.ndarray,
    ratio: np.ndarray,
    pre: np.ndarray,
    regions: np.ndarray,
    base: np.ndarray,
    windows: torch.Tensor,
    tokenizer: Any,
    k: int,
) -> xr.Dataset:
    ids = windows.reshape(-1).cpu().numpy().astype(np.int64)
    window_length = int(windows.shape[1])
    texts = np.asarray([tokenizer.decode([int(t)]) for t in ids], dtype=object)
    layers = np.asarray([m[0] for m in members], dtype=np.int64)
    neurons = np.asarray([m[1] for m in members], dtype=np.int64)
    membership = {
        f"diff_member_in_{name}": ("diff_member", np.asarray([bool(sets[name][m]) for m in members])) for name in names
    }
    return xr.Dataset(
        {
            "diff_pair_token": (
                ("diff_member", "diff_rank", "diff_side"),
                pairs,
                {"long_name": "the two analysed tokens (diff_token index) of each differentiated pair; -1 padding"},
            ),
            "diff_pair_ratio": (
                ("diff_member", "diff_rank"),
                ratio,
                {"long_name": "|pre_i - pre_j| / ||x_i - x_j|| of each differentiated pair", "k": k},
            ),
            "diff_pair_pre": (
                ("diff_member", "diff_rank", "diff_side"),
                pre,
                {"long_name": "the pre-activations of the pair's two tokens"},
            ),
            "diff_region_frac": (
                ("diff_member", "region"),
                regions,
                {"long_name": "share of the neuron's differentiated pairs in each pre-activation region"},
            ),
            "diff_region_base": (
                ("diff_member", "region"),
                base,
                {"long_name": "share of all its candidate (kNN) pairs in each region: the base rate"},
            ),
            "diff_token_id": ("diff_token", ids, {"long_name": "token id of each analysed WD token"}),
            "diff_token_text": ("diff_token", texts, {"long_name": "the token as text"}),
        },
        coords={
            "diff_member_layer": ("diff_member", layers),
            "diff_member_neuron": ("diff_member", neurons),
            **membership,
            "region": list(REGIONS),
            "diff_token_window": ("diff_token", np.arange(ids.size) // window_length),
            "diff_token_position": ("diff_token", np.arange(ids.size) % window_length),
        },
    )
