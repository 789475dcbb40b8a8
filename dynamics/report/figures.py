"""Figure pieces shared by the scan's and the study's figures."""

from __future__ import annotations

from typing import Any


def accuracy_bars_figure(frame: Any, plt: Any, sns: Any, *, y: str, x: str, xlabel: str, ylabel: str, title: str,
                         size: tuple[float, float]) -> object:
    """Horizontal bars of an accuracy per label (``y``) and condition, against chance (0.5)."""
    fig, ax = plt.subplots(figsize=size)
    sns.barplot(frame, y=y, x=x, hue="condition", ax=ax, orient="h")
    ax.axvline(0.5, color="0.5", ls=":", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return fig
