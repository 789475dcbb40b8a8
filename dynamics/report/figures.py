"""Figure pieces shared by the scan's and the study's figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def legend_below(ax: Any, fig: Any, columns: int = 2) -> Any:
    """One legend for the whole figure, under every axes (outside the data, below the x labels):
    the series of all its axes, each label once, in the order first drawn."""
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
    fig.tight_layout(rect=(0, 0, 1, 0.95) if fig.get_suptitle() else None)  # room for a suptitle set before
    return fig.legend(
        handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=columns, frameon=False
    )
