"""`dynamics plot` on a study cube: conditions side by side, and the layer-group curves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from dynamics.report.claim_figures import claims_figure
from dynamics.report.claims import cube_claim_settings, study_claims
from dynamics.report.differentiation_figures import differentiation_figure
from dynamics.report.differentiation_text import has_differentiation
from dynamics.report.figures import AxisLabels, accuracy_bars_figure, legend_below

CONDITION_LABELS = {
    "clean": "clean",
    "neg_top": "negative, top WD",
    "pos_top": "positive, top WD",
    "both_top": "both signs, top WD",
    "neg_random": "negative, random control",
    "neg_matched": "negative, perplexity-matched control",
}
PANELS = (("tse_acc_all", "TSE accuracy"), ("blimp_acc_all", "BLiMP accuracy"), ("ppl", "perplexity"))


def _frame(ds: xr.Dataset, name: str) -> Any:
    frame = ds[name].where(ds["done"]).to_dataframe(name="value").reset_index().dropna(subset=["value"])
    frame["condition"] = frame["condition"].astype(str).map(lambda c: CONDITION_LABELS.get(c, c))
    return frame


def conditions_figure(ds: xr.Dataset, plt, sns) -> object:
    """Bars per percent and condition: TSE, BLiMP and perplexity (a linear axis from 0, each bar's value on it)."""
    from matplotlib.ticker import ScalarFormatter

    panels = [(n, label) for n, label in PANELS if n in ds]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    order = [CONDITION_LABELS.get(str(c), str(c)) for c in ds["condition"].values]
    for ax, (name, label) in zip(axes[0], panels):
        sns.barplot(_frame(ds, name), x="percent", y="value", hue="condition", hue_order=order, ax=ax)
        ax.set_xlabel("percent of neurons per layer")
        ax.set_ylabel(label)
        if name != "ppl":
            ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance")
            ax.set_ylim(0, 1.02)
        else:  # linear from 0: the bars' lengths are the perplexities; the labels tell close values apart
            formatter = ScalarFormatter(useOffset=False)
            formatter.set_scientific(False)
            ax.yaxis.set_major_formatter(formatter)
            for bars in ax.containers:
                ax.bar_label(bars, fmt="%.4g", rotation=90, fontsize=6.5, padding=2)
            ax.set_ylim(0, float(np.nanmax(_frame(ds, name)["value"])) * 1.25)
    fig.suptitle("Ablation of the top-WD neurons and its controls")
    legend_below(axes[0][0], fig, columns=3)
    return fig


def phenomena_figure(ds: xr.Dataset, plt, sns) -> object:
    """BLiMP per phenomenon at the match percent: clean, top, random, matched."""
    percent = float(ds.attrs["identity"]["analysis"]["match_percent"])
    chosen = ds.sel(percent=percent, condition=["clean", "neg_top", "neg_random", "neg_matched"])
    return accuracy_bars_figure(
        _frame(chosen, "blimp_term_acc"),
        plt,
        sns,
        y="blimp_phenomenon",
        x="value",
        labels=AxisLabels("BLiMP accuracy", "phenomenon", f"BLiMP per phenomenon, {percent:g}% of neurons per layer"),
        size=(8, 6.5),
    )


def layer_group_figure(ds: xr.Dataset, plt) -> object:
    """TSE and BLiMP when only one group of layers (or groups 0..g) is ablated; a panel without data says why."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    groups = ds["layer_group"].values
    for ax, (name, label) in zip(axes, (("tse_acc_all", "TSE accuracy"), ("blimp_acc_all", "BLiMP accuracy"))):
        ax.set_xlabel("layer group (layers)")
        ax.set_ylabel(label)
        ax.set_xticks(groups, [_group_label(ds, g) for g in groups])
        values = ds.get(f"group_{name}")
        if values is None or not bool(np.isfinite(np.asarray(values, dtype=float)).any()):
            what = "BLiMP" if name.startswith("blimp") else "TSE"
            ax.text(
                0.5,
                0.5,
                f"no {what} in this study\n(--{'blimp-per-paradigm' if what == 'BLiMP' else 'tse-per-case'} 0,"
                " or its data could not be loaded)",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=10,
                color="0.35",
            )
            ax.set_yticks([])
            continue
        for scope, style in (("alone", "-o"), ("cumulative", "--s")):
            ax.plot(groups, values.sel(group_scope=scope).values, style, label=f"{scope}")
        if name in ds:
            clean = float(ds[name].sel(condition="clean").max())
            ax.axhline(clean, color="0.4", ls=":", lw=1, label="clean")
    fig.suptitle("Negative ablation of the top-WD neurons by layer group")
    legend_below(axes[0], fig, columns=3)
    return fig


def _group_label(ds: xr.Dataset, group: int) -> str:
    if "layer_group_of" not in ds:
        return str(group)
    layers = np.flatnonzero(ds["layer_group_of"].values == group)
    return f"{group}\n({layers[0]}-{layers[-1]})" if len(layers) else str(group)


def study_figures(ds: xr.Dataset, plt, sns) -> list[tuple[str, list[str], Callable[[], object]]]:
    """(name, variables needed, maker) of every study figure, for :func:`dynamics.report.scan_figures.plot_cube`."""
    figures = [
        ("study_conditions", ["done"], lambda: conditions_figure(ds, plt, sns)),
        ("study_blimp_phenomena", ["blimp_term_acc"], lambda: phenomena_figure(ds, plt, sns)),
    ]
    if "group_done" in ds and bool(np.asarray(ds["group_done"]).any()):
        figures.append(("study_layer_groups", ["group_done"], lambda: layer_group_figure(ds, plt)))
    figures.append(("study_claims", ["done"], lambda: claims_figure(study_claims(ds, cube_claim_settings(ds)), plt)))
    if has_differentiation(ds):
        figures.append(("study_differentiation", ["diff_region_frac"], lambda: differentiation_figure(ds, plt)))
    return figures
