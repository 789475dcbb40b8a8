"""Figure pieces shared by the scan's and the study's figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AxisLabels:
    """What a figure's axes and the figure itself are called."""

    x: str
    y: str
    title: str


def accuracy_bars_figure(
    frame: Any,
    plt: Any,
    sns: Any,
    *,
    y: str,
    x: str,
    labels: AxisLabels,
    size: tuple[float, float],
    palette: Any = None,
) -> object:
    """Horizontal bars of an accuracy per label (``y``) and condition, against chance (0.5).

    The legend sits below the axes, never over the bars; with a ``seed`` column the bars are
    the mean over seeds and the whiskers their 95% interval (seaborn's default), else no whiskers.
    """
    fig, ax = plt.subplots(figsize=size)
    errorbar = ("ci", 95) if "seed" in frame.columns else None
    sns.barplot(frame, y=y, x=x, hue="condition", ax=ax, orient="h", errorbar=errorbar, palette=palette)
    ax.axvline(0.5, color="0.5", ls=":", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_xlabel(labels.x)
    ax.set_ylabel(labels.y)
    ax.set_title(labels.title)
    legend_below(ax, fig)
    return fig


@dataclass(frozen=True)
class BarSeries:
    """One condition's bars across the groups of a grouped bar chart: NaN values draw no bar, NaN
    bounds no whisker (``low``/``high`` None: no whiskers at all)."""

    label: str
    colour: str
    values: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None


#: The whiskers' look: dark and thin, capped, drawn over the bars.
WHISKER_STYLE = {"fmt": "none", "ecolor": "0.1", "elinewidth": 1.0, "capsize": 2.0, "zorder": 3}


def grouped_bars(ax: Any, series: Sequence[BarSeries], groups: Sequence[str], horizontal: bool = False) -> list[Any]:
    """Side-by-side bars per group (one colour per series, its label in the legend), each series' whiskers
    from its own ``low``/``high`` (e.g. a Wilson interval, which is not symmetric). Returns the bar
    containers, one per series, in order."""
    width = 0.8 / max(1, len(series))
    centres = np.arange(len(groups), dtype=float)
    containers = []
    for i, one in enumerate(series):
        values = np.asarray(one.values, dtype=float)
        shown = np.isfinite(values)
        positions = centres[shown] - 0.4 + width * (i + 0.5)
        draw = ax.barh if horizontal else ax.bar
        containers.append(draw(positions, values[shown], width, color=one.colour, label=one.label))
        if one.low is None or one.high is None:
            continue
        low, high = np.asarray(one.low, dtype=float)[shown], np.asarray(one.high, dtype=float)[shown]
        whiskered = np.isfinite(low) & np.isfinite(high)
        if whiskered.any():
            at, value = positions[whiskered], values[shown][whiskered]
            error = np.vstack([value - low[whiskered], high[whiskered] - value])
            xy = (value, at) if horizontal else (at, value)
            ax.errorbar(*xy, **{"xerr" if horizontal else "yerr": error}, **WHISKER_STYLE)
    (ax.set_yticks if horizontal else ax.set_xticks)(centres, list(groups))
    return containers


def legend_below(ax: Any, fig: Any, columns: int = 2, top: float | None = None) -> Any:
    """One legend for the whole figure, under every axes (outside the data, below the x labels):
    the series of all its axes, each label once, in the order first drawn; ``top``: the share of the
    figure's height the axes may use (default: room for a suptitle when there is one)."""
    handles: list[Any] = []
    labels: list[str] = []
    for axes in fig.axes:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            if label not in labels and not label.startswith("_"):
                handles.append(handle)
                labels.append(label)
        if axes.get_legend() is not None:
            axes.get_legend().remove()
    for old in list(fig.legends):
        old.remove()
    if not handles:
        return None
    if top is None:
        top = 0.95 if fig.get_suptitle() else 1.0  # room for a suptitle set before
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig.legend(
        handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=columns, frameon=False
    )
