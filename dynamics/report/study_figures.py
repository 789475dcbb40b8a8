"""`dynamics plot` on a study cube: conditions side by side, and the layer-group curves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from dynamics.report.claim_figures import claims_figure
from dynamics.report.claims import cube_claim_settings, study_claims
from dynamics.report.condition_style import condition_styles, ranking
from dynamics.report.differentiation_figures import differentiation_figure
from dynamics.report.differentiation_text import has_differentiation
from dynamics.report.figures import BarSeries, grouped_bars, legend_below
from dynamics.report.study_text import match_percent, wilson_interval
from dynamics.stats.intervals import perplexity_interval

PANELS = (("tse", "TSE accuracy"), ("blimp", "BLiMP accuracy"), ("ppl", "perplexity"))
#: Each panel's plotted variable and the per-item variable behind its intervals.
PANEL_VALUES = {"tse": "tse_acc_all", "blimp": "blimp_acc_all", "ppl": "ppl"}
PANEL_ITEMS = {"tse": "tse_item_margin", "blimp": "blimp_item_margin", "ppl": "ppl_window_nll"}
#: What the whiskers are: each condition's own interval (the paired comparisons are the claims').
INTERVAL_NOTE = (
    "whiskers: 95% Wilson interval over each accuracy's pairs; perplexity: 95% bootstrap interval over its windows; "
    "each condition alone (paired comparisons, far tighter: study_claims)"
)
#: Resamples of a perplexity bar's interval (seeded: a figure is drawn the same every time).
PPL_BOOT = 2_000
NO_ITEMS_NOTE = "no per-item data: no intervals"
NO_PHENOMENON_NOTE = "no per-item phenomenon (a cube made before it was stored): no intervals"
#: The phenomenon figure's conditions: the paper's ablation and its controls.
PHENOMENON_CONDITIONS = ("clean", "neg_top", "neg_random", "neg_matched")


def accuracy_with_interval(margins: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, low, high) of the pairs behind an accuracy: a pair is correct when its margin is above
    0 (as scored), the interval the report's 95% Wilson interval; NaNs when there is no pair."""
    finite = margins[np.isfinite(margins)]
    if not finite.size:
        return np.nan, np.nan, np.nan
    correct = int((finite > 0).sum())
    return (correct / finite.size, *wilson_interval(correct, finite.size))


def _done(ds: xr.Dataset, name: str) -> xr.DataArray:
    return ds[name].where(ds["done"])


def _panel_series(ds: xr.Dataset, bench: str, percents: np.ndarray) -> list[BarSeries]:
    """One series per condition: the accuracy (or perplexity) per percent, done units only, with the
    Wilson interval of each accuracy when the cube has its per-pair margins."""
    name, items = PANEL_VALUES[bench], PANEL_ITEMS[bench]
    series = []
    for condition, style in condition_styles(ds).items():
        values = _done(ds, name).sel(condition=condition, percent=percents).values.astype(float)
        low = high = None
        if items in ds:
            per_item = ds[items].sel(condition=condition, percent=percents).values
            if bench == "ppl":
                tokens = ds["window_tokens"].values
                bounds = np.asarray([perplexity_interval(nll, tokens, PPL_BOOT)[1:] for nll in per_item])
            else:
                bounds = np.asarray([accuracy_with_interval(m)[1:] for m in per_item])
            bounds = bounds.reshape(-1, 2)
            bounds[~np.isfinite(values)] = np.nan
            low, high = bounds[:, 0], bounds[:, 1]
        series.append(BarSeries(style.label, style.colour, values, low, high))
    return series


def _interval_note(ds: xr.Dataset, benches: tuple[str, ...]) -> str:
    missing = [{"tse": "TSE", "blimp": "BLiMP"}.get(b, b) for b in benches if PANEL_ITEMS[b] not in ds]
    if len(missing) == len(benches):
        return NO_ITEMS_NOTE
    if missing:
        return f"{INTERVAL_NOTE}; {' and '.join(missing)}: {NO_ITEMS_NOTE}"
    return INTERVAL_NOTE


def _tops(one: BarSeries) -> np.ndarray:
    """Where each bar of ``one`` ends, its whisker included."""
    values = np.asarray(one.values, dtype=float)
    return values if one.high is None else np.fmax(values, np.asarray(one.high, dtype=float))


def _label_bars(ax: Any, containers: list, series: list[BarSeries]) -> None:
    """Each bar's value above it, and above its whisker where it has one (no label under a whisker)."""
    for bars, one in zip(containers, series):
        values = np.asarray(one.values, dtype=float)
        shown = np.isfinite(values)
        for bar, value, top in zip(bars.patches, values[shown], _tops(one)[shown]):
            ax.annotate(
                f"{value:.4g}",
                (bar.get_x() + bar.get_width() / 2, top),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                rotation=90,
                fontsize=6.5,
            )


def conditions_figure(ds: xr.Dataset, plt, sns) -> object:
    """Bars per percent and condition: TSE and BLiMP accuracy with their 95% Wilson intervals, and
    perplexity (a linear axis from 0, each bar's value on it); one colour per condition in every figure."""
    from matplotlib.ticker import ScalarFormatter

    panels = [(bench, label) for bench, label in PANELS if PANEL_VALUES[bench] in ds]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    percents = ds["percent"].values[np.asarray(ds["done"].any("condition"))]
    for ax, (bench, label) in zip(axes[0], panels):
        series = _panel_series(ds, bench, percents)
        containers = grouped_bars(ax, series, [f"{p:g}" for p in percents])
        ax.set_xlabel("percent of neurons per layer")
        ax.set_ylabel(label)
        if bench != "ppl":
            ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance")
            ax.set_ylim(0, 1.02)
        else:  # linear from 0: the bars' lengths are the perplexities; the labels tell close values apart
            formatter = ScalarFormatter(useOffset=False)
            formatter.set_scientific(False)
            ax.yaxis.set_major_formatter(formatter)
            _label_bars(ax, containers, series)
            ax.set_ylim(0, float(np.nanmax([np.nanmax(_tops(one)) for one in series])) * 1.25)
    fig.suptitle(f"Ablation of the top-{ranking(ds)} neurons and its controls")
    benches = tuple(bench for bench, _ in panels)
    fig.text(0.5, 0.915, _interval_note(ds, benches), ha="center", va="center", fontsize=8, color="0.3")
    legend_below(axes[0][0], fig, columns=3, top=0.9)
    return fig


def phenomenon_intervals(ds: xr.Dataset, condition: str, percent: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the 95% Wilson interval of each phenomenon's BLiMP accuracy, from the per-pair
    margins pooled by each pair's stored phenomenon (``blimp_item_phenomenon``); NaN where a
    phenomenon has no pair or its pooled accuracy is not the stored one (a check of the pooling)."""
    margins = ds["blimp_item_margin"].sel(condition=condition, percent=percent).values
    phenomena = np.asarray([str(t) for t in ds["blimp_item_phenomenon"].values])
    stored = ds["blimp_term_acc"].sel(condition=condition, percent=percent)
    bounds = np.full((ds.sizes["blimp_phenomenon"], 2), np.nan)
    for i, phenomenon in enumerate(str(t) for t in ds["blimp_phenomenon"].values):
        accuracy, low, high = accuracy_with_interval(margins[phenomena == phenomenon])
        if np.isclose(accuracy, float(stored.sel(blimp_phenomenon=phenomenon)), rtol=0, atol=1e-6):
            bounds[i] = low, high
    return bounds[:, 0], bounds[:, 1]


def phenomena_figure(ds: xr.Dataset, plt, sns) -> object:
    """BLiMP per phenomenon at the match percent: clean, top, random and matched, with 95% Wilson intervals."""
    percent = match_percent(ds)
    styles = condition_styles(ds)
    with_items = "blimp_item_margin" in ds and "blimp_item_phenomenon" in ds.coords
    phenomena = [str(t) for t in ds["blimp_phenomenon"].values]
    series = []
    for condition in (c for c in PHENOMENON_CONDITIONS if c in styles):
        values = _done(ds, "blimp_term_acc").sel(condition=condition, percent=percent).values.astype(float)
        low = high = None
        if with_items and np.isfinite(values).any():
            low, high = phenomenon_intervals(ds, condition, percent)
        style = styles[condition]
        series.append(BarSeries(style.label, style.colour, values, low, high))
    fig, ax = plt.subplots(figsize=(8, 1.8 + len(phenomena) * (0.2 + 0.09 * len(series))))
    grouped_bars(ax, series, phenomena, horizontal=True)
    ax.invert_yaxis()  # the first phenomenon on top, as read
    ax.axvline(0.5, color="0.5", ls=":", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_xlabel("BLiMP accuracy")
    ax.set_ylabel("phenomenon")
    ax.set_title(f"BLiMP per phenomenon, {percent:g}% of neurons per layer")
    note = (
        INTERVAL_NOTE.split(";")[0]
        if with_items
        else NO_PHENOMENON_NOTE
        if "blimp_item_margin" in ds
        else NO_ITEMS_NOTE
    )
    fig.text(0.5, 0.995, note, ha="center", va="top", fontsize=8, color="0.3")
    legend_below(ax, fig, top=0.97)
    return fig


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
    fig.suptitle(f"Negative ablation of the top-{ranking(ds)} neurons by layer group")
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
