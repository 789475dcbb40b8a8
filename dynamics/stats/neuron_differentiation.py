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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from dynamics.stats.activations import CaptureSettings, iter_layer_captures
from dynamics.stats.differentiation import REGIONS, base_region_fractions, differentiated_pairs, region_fractions


def analysed_windows(windows: torch.Tensor, tokens: int) -> torch.Tensor:
    """The first WD windows that hold at least ``tokens`` tokens (all windows when they hold fewer)."""
    count = max(1, min(int(windows.shape[0]), -(-int(tokens) // int(windows.shape[1]))))
    return windows[:count]


@dataclass(frozen=True)
class _MemberResults:
    """Per chosen neuron (``diff_member``): its differentiated pairs (analysed-token indexes, -1 padding),
    their ratios and pre-activations, the pairs' region fractions and the base rate."""

    pairs: np.ndarray  # [member, rank, 2]
    ratio: np.ndarray  # [member, rank]
    pre: np.ndarray  # [member, rank, 2]
    regions: np.ndarray  # [member, region]
    base: np.ndarray  # [member, region]

    @classmethod
    def empty(cls, members: int, top: int) -> _MemberResults:
        return cls(
            pairs=np.full((members, top, 2), -1, dtype=np.int64),
            ratio=np.full((members, top), np.nan),
            pre=np.full((members, top, 2), np.nan, dtype=np.float32),
            regions=np.full((members, len(REGIONS)), np.nan),
            base=np.full((members, len(REGIONS)), np.nan),
        )


def set_differentiation(
    model: torch.nn.Module,
    windows: torch.Tensor,
    sets: Mapping[str, np.ndarray],
    tokenizer: Any,
    k: int = 10,
    top: int = 20,
    capture: CaptureSettings = CaptureSettings(memory_budget=1 << 30, progress=False),
) -> xr.Dataset:
    """The differentiated pairs of every neuron of ``sets`` (name -> boolean mask [layer, neuron]) on ``windows``.

    The MLP inputs and pre-activations of the layers holding a chosen neuron are captured once, as
    ``capture`` says (memory budget, windows per pass, progress bar). Returns a dataset over
    ``diff_member`` (one per chosen neuron, in (layer, neuron) order),
    ``diff_rank`` (``top``), ``diff_side`` (the pair's two tokens), ``region`` and
    ``diff_token`` (every analysed token), with coordinates saying which layer, neuron and sets
    each member is.
    """
    union = np.zeros_like(next(iter(sets.values())), dtype=bool)
    for mask in sets.values():
        union |= np.asarray(mask, dtype=bool)
    members = [(int(layer), int(neuron)) for layer, neuron in zip(*np.nonzero(union))]
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in members:
        by_layer.setdefault(layer, []).append(neuron)
    results = _MemberResults.empty(len(members), top)
    row = 0
    captures = iter_layer_captures(
        model, windows, capture, layers=sorted(by_layer), sites=("pre_activation", "mlp_input")
    )
    for layer, captured in captures:
        chosen = by_layer[layer]
        found = differentiated_pairs(captured["mlp_input"], captured["pre_activation"], chosen, k=k, top=top)
        rows = slice(row, row + len(chosen))
        results.pairs[rows] = found.pairs.cpu().numpy()
        results.ratio[rows] = found.ratio.cpu().numpy()
        results.pre[rows] = found.pre.float().cpu().numpy()
        results.regions[rows] = region_fractions(found.pre).cpu().numpy()
        base = base_region_fractions(captured["pre_activation"], found.first, found.second, chosen)
        results.base[rows] = base.cpu().numpy()
        row += len(chosen)
        del captured, found
    return _dataset(members, sets, results, windows, tokenizer, k)


def _dataset(
    members: Sequence[tuple[int, int]],
    sets: Mapping[str, np.ndarray],
    results: _MemberResults,
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
        f"diff_member_in_{name}": ("diff_member", np.asarray([bool(sets[name][m]) for m in members])) for name in sets
    }
    return xr.Dataset(
        {
            "diff_pair_token": (
                ("diff_member", "diff_rank", "diff_side"),
                results.pairs,
                {"long_name": "the two analysed tokens (diff_token index) of each differentiated pair; -1 padding"},
            ),
            "diff_pair_ratio": (
                ("diff_member", "diff_rank"),
                results.ratio,
                {"long_name": "|pre_i - pre_j| / ||x_i - x_j|| of each differentiated pair", "k": k},
            ),
            "diff_pair_pre": (
                ("diff_member", "diff_rank", "diff_side"),
                results.pre,
                {"long_name": "the pre-activations of the pair's two tokens"},
            ),
            "diff_region_frac": (
                ("diff_member", "region"),
                results.regions,
                {"long_name": "share of the neuron's differentiated pairs in each pre-activation region"},
            ),
            "diff_region_base": (
                ("diff_member", "region"),
                results.base,
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
