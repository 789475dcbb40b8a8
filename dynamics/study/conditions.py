"""The study's neuron sets and its list of units (one condition evaluated on one set).

Neuron sets, fixed once per study and stored as static variables of the cube:

- ``top_mask[percent]``: the top ``percent``% of each layer's neurons by WD;
- ``random_mask[percent]``: as many random neurons per layer (seeded per percent), drawn from
  all of the layer's neurons (``--random-control all``, the paper's) or the non-top ones;
- ``matched_mask``: the bottom ``m``% by WD, ``m`` found by bisection so that perplexity with
  their negative pre-activations zeroed matches the top ``--match-percent`` ablation's;
- layer groups: ``--layer-groups`` runs of consecutive layers (``numpy.array_split``).

Units, in the order they are computed (blocks as in :mod:`store.units`):

- block ``main`` (``condition x percent``): ``clean`` (every percent), ``neg_top``,
  ``pos_top``, ``both_top`` (modes negative, positive, both on the top set), ``neg_random``
  per percent, ``neg_matched`` at the match percent;
- block ``groups`` (``group_scope x layer_group``): the negative ablation of the top
  ``--group-percent`` restricted to one group (``alone``) or to groups ``0..g``
  (``cumulative``), on TSE and BLiMP only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from dynamics.stats.cohort import BisectionResult, random_control_mask, top_percent_mask, wd_scores

log = logging.getLogger(__name__)

MAIN, GROUPS = "main", "groups"
FULL_MEASURES = ("tse", "blimp", "ppl", "lmeval", "pos")
GROUP_MEASURES = ("tse", "blimp")
#: The variables of each block's units (the engine's, dynamics/evaluate/variables.py, and each unit's seconds).
GROUP_VARIABLES = (
    "tse_acc",
    "tse_margin",
    "tse_acc_all",
    "tse_item_margin",
    "blimp_acc",
    "blimp_term_acc",
    "blimp_acc_all",
    "blimp_item_margin",
    "seconds",
)
MAIN_VARIABLES = GROUP_VARIABLES + (
    "ppl",
    "ppl_window_nll",
    "lmeval_acc",
    "lmeval_acc_norm",
    "lmeval_item_correct",
    "pos_surprisal",
    "pos_excess",
    "pos_window_excess",
    "pos_window_count",
)
BLOCKS = {
    MAIN: {"dims": ["condition", "percent"], "prefix": "", "variables": list(MAIN_VARIABLES)},
    GROUPS: {"dims": ["group_scope", "layer_group"], "prefix": "group_", "variables": list(GROUP_VARIABLES)},
}


@dataclass(frozen=True)
class Unit:
    """One evaluation: which neurons (a set name), which ablation mode, which measures."""

    block: str
    labels: dict[str, Any]
    neurons: str | None  # a key of NeuronSets.masks; None for the clean model
    mode: str = "negative"  # a name of dynamics.ablation.modes.MODES
    measures: tuple[str, ...] = FULL_MEASURES

    def record(self) -> dict[str, Any]:
        return {"block": self.block, "labels": dict(self.labels), "neurons": self.neurons, "mode": self.mode}

    @property
    def name(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.labels.items())


def layer_groups(n_layers: int, n_groups: int) -> list[list[int]]:
    """``n_groups`` runs of consecutive layers (at most one per layer), sizes differing by at most one."""
    n_groups = max(1, min(n_groups, n_layers))
    return [chunk.tolist() for chunk in np.array_split(np.arange(n_layers), n_groups)]


def short_name(mode: str) -> str:
    """The mode's name in condition names: ``neg_top``, ``pos_top``, ``signflip_top``, ..."""
    return {"negative": "neg", "positive": "pos"}.get(mode, mode)


def study_units(
    percents: Sequence[float],
    match_percent: float,
    n_groups: int,
    with_groups: bool,
    modes: Sequence[str] = ("negative", "positive", "both"),
) -> list[Unit]:
    units = [Unit(MAIN, {"condition": "clean"}, None)]
    for p in percents:
        units += [
            Unit(MAIN, {"condition": f"{short_name(mode)}_top", "percent": p}, f"top:{p}", mode) for mode in modes
        ]
        units.append(Unit(MAIN, {"condition": "neg_random", "percent": p}, f"random:{p}"))
    units.append(Unit(MAIN, {"condition": "neg_matched", "percent": match_percent}, "matched"))
    if with_groups:
        for scope in ("alone", "cumulative"):
            units += [
                Unit(GROUPS, {"group_scope": scope, "layer_group": g}, f"group_{scope}:{g}", measures=GROUP_MEASURES)
                for g in range(n_groups)
            ]
    return units


@dataclass
class NeuronSets:
    """Every mask a unit may name, from the study's static variables."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def mask(self, name: str | None) -> torch.Tensor | None:
        return None if name is None else self.masks[name]


def neuron_sets(static: xr.Dataset, group_percent: float, groups: list[list[int]], rank_by: str = "wd") -> NeuronSets:
    """Masks by name from the stored static variables (top, random, matched, layer groups by ``rank_by``)."""
    sets = NeuronSets()
    for p in static["percent"].values.tolist():
        sets.masks[f"top:{p}"] = torch.from_numpy(static["top_mask"].sel(percent=p).values.copy())
        sets.masks[f"random:{p}"] = torch.from_numpy(static["random_mask"].sel(percent=p).values.copy())
    sets.masks["matched"] = torch.from_numpy(static["matched_mask"].values.copy())
    top = top_percent_mask(wd_scores(static[rank_by].values), group_percent)
    for g in range(len(groups)):
        alone, upto = torch.zeros_like(top), torch.zeros_like(top)
        alone[groups[g]] = top[groups[g]]
        cumulative = [layer for group in groups[: g + 1] for layer in group]
        upto[cumulative] = top[cumulative]
        sets.masks[f"group_alone:{g}"], sets.masks[f"group_cumulative:{g}"] = alone, upto
    return sets


def top_and_random_masks(
    wd: np.ndarray, percents: Sequence[float], seed: int, pool: str = "non-top"
) -> tuple[np.ndarray, np.ndarray]:
    """``[percent, layer, neuron]`` masks: the top WD per layer, and a random control per percent
    (drawn from ``pool``: ``all`` neurons of the layer or the ``non-top`` ones)."""
    tops, randoms = [], []
    for i, p in enumerate(percents):
        top = top_percent_mask(wd_scores(wd), p)
        tops.append(top.numpy())
        randoms.append(random_control_mask(top, seed=seed + i, pool=pool).numpy())
    return np.stack(tops), np.stack(randoms)


def static_dataset(
    wd: xr.Dataset,
    percents: Sequence[float],
    top: np.ndarray,
    random: np.ndarray,
    matched: np.ndarray,
    match: BisectionResult,
    clean_ppl: float,
    groups: list[list[int]],
) -> xr.Dataset:
    """The study's static variables: WD, the neuron sets, the matching result, the layer groups."""
    dims = ("percent", "layer", "neuron")
    group_of = np.zeros(wd.sizes["layer"], dtype=np.int64)
    for g, layers in enumerate(groups):
        group_of[layers] = g
    return xr.Dataset(
        {
            **{name: wd[name].astype("float32") for name in ("wd", "wd_neg", "wd_pos", "md") if name in wd},
            "top_mask": (dims, top, {"long_name": "top percent of each layer's neurons by WD"}),
            "random_mask": (dims, random, {"long_name": "random neurons, as many per layer as the top set"}),
            "matched_mask": (("layer", "neuron"), matched, {"long_name": "bottom matched_percent by WD"}),
            "matched_percent": ((), float(match.argument), {"long_name": "m: percent of lowest-WD neurons per layer"}),
            "matched_ppl": ((), float(match.value), {"long_name": "perplexity with the matched set ablated"}),
            "matched_target_ppl": ((), float(match.target), {"long_name": "perplexity with the top set ablated"}),
            "matched_clean_ppl": ((), float(clean_ppl), {"long_name": "clean perplexity on the same windows"}),
            "matched_converged": ((), bool(match.converged), {"long_name": "matched within the tolerance"}),
            "layer_group_of": (("layer",), group_of, {"long_name": "the layer group of each layer"}),
        },
        coords={
            "percent": np.asarray(percents, dtype=float),
            "layer": wd["layer"].values,
            "neuron": wd["neuron"].values,
        },
    )
