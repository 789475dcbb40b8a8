"""The mechanism figure of a study cube: by layer, the share of the differentiated pairs whose two
pre-activations are both negative (the top set against its random control, with the base rate of
all candidate pairs), and the POS enrichment of the pairs' tokens with bootstrap CIs over neurons."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from dynamics.report.differentiation_text import enrichment_rows
from dynamics.report.figures import legend_below
from dynamics.stats.differentiation import REGIONS

#: One colour per neuron set, the same in every figure.
SET_COLOURS = {"top": "#b2182b", "random": "#2166ac", "base rate": "0.6"}


def region_by_layer(ds: xr.Dataset, region: str = "negative") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per set (``top``, ``random``) and for the base rate: (layers, mean share, its bootstrap-free
    standard error over neurons) of the pairs in ``region``."""
    r = REGIONS.index(region)
    layers = ds["diff_member_layer"].values
    shown = sorted(set(layers.tolist()))
    out = {}
    for name in ("top", "random"):
        member = np.asarray(ds[f"diff_member_in_{name}"].values, dtype=bool)
        means, errors = [], []
        for layer in shown:
            values = ds["diff_region_frac"].values[member & (layers == layer), r]
            values = values[np.isfinite(values)]
            means.append(values.mean() if values.size else np.nan)
            errors.append(values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else np.nan)
        out[name] = (np.asarray(shown), np.asarray(means), np.asarray(errors))
    member = np.asarray(ds["diff_member_in_top"].values, dtype=bool)
    base = [np.nanmean(ds["diff_region_base"].values[member & (layers == layer), r]) for layer in shown]
    out["base rate"] = (np.asarray(shown), np.asarray(base), np.full(len(shown), np.nan))
    return out


def differentiation_figure(ds: xr.Dataset, plt: Any) -> object:
    """Left: share of differentiated pairs with both pre-activations negative, by layer (+/- 1.96 SE over
    neurons); right (when POS was tagged): top-minus-random POS share of the pairs' tokens with 95% CIs."""
    rows = enrichment_rows(ds)
    fig, axes = plt.subplots(1, 2 if rows else 1, figsize=(11 if rows else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for name, (layers, means, errors) in region_by_layer(ds).items():
        ax.errorbar(
            layers, means, yerr=1.96 * errors, label=name, color=SET_COLOURS[name], marker="o", capsize=2, lw=1.2
        )
    ax.set_xlabel("layer")
    ax.set_ylabel("share of differentiated pairs, both negative")
    ax.set_ylim(0, 1)
    ax.set_title("Where similar inputs are pushed apart")
    if rows:
        header, cells = rows
        tags = [row[0] for row in cells]
        difference = np.asarray([float(row[4]) for row in cells])
        bounds = [row[5].strip("[]").split(",") for row in cells]
        low = np.asarray([float(b[0]) for b in bounds])
        high = np.asarray([float(b[1]) for b in bounds])
        right = axes[0, 1]
        y = np.arange(len(tags))
        right.errorbar(difference, y, xerr=[difference - low, high - difference], fmt="o", color=SET_COLOURS["top"])
        right.axvline(0, color="0.3", ls=":", lw=1)
        right.set_yticks(y)
        right.set_yticklabels(tags)
        right.set_xlabel("share of pair tokens: top set - random control (95% CI)")
        right.set_title("Parts of speech of the differentiated pairs")
    legend_below(ax, fig, columns=3)
    return fig
