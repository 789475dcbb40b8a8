"""The forest plot of a cube's claims: each claim's effect with its 95% CI against no effect, coloured by
verdict, one panel per unit (accuracy points, perplexity ratios, correlations, nats)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynamics.report.claim_rows import Claim

#: One colour per verdict, the same in every figure.
VERDICT_COLOURS = {"supported": "#1b7837", "contradicted": "#b2182b", "inconclusive": "#7f7f7f"}
#: Where "no effect" lies for each unit (ratios: 1).
NULLS = {"ratio": 1.0}


def plotted_claims(claims: Sequence[Claim]) -> dict[str, list[Claim]]:
    """The claims with an effect, grouped by unit in first-seen order (one panel each)."""
    panels: dict[str, list[Claim]] = {}
    for claim in claims:
        if claim.effect is not None and claim.low is not None and claim.high is not None:
            panels.setdefault(claim.unit, []).append(claim)
    return panels


def claims_figure(claims: Sequence[Claim], plt: Any) -> object:
    """A forest plot: per panel (unit), one row per claim, the effect as a dot and its CI as a bar,
    a dotted line at no effect. Effects are shown in the unit's display scale (points: x 100)."""
    panels = plotted_claims(claims)
    rows = [len(group) for group in panels.values()] or [1]
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(8, 1.2 + 0.45 * sum(rows) + 0.6 * len(rows)), squeeze=False, height_ratios=rows
    )
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no claim could be tested on this cube", ha="center", va="center")
        axes[0, 0].set_axis_off()
        return fig
    for ax, (unit, group) in zip(axes[:, 0], panels.items()):
        null = NULLS.get(unit, 0.0)
        for y, claim in enumerate(reversed(group)):
            scale = claim.scale
            colour = VERDICT_COLOURS.get(claim.verdict, "black")
            effect, low, high = (value * scale for value in (claim.effect, claim.low, claim.high))  # type: ignore[operator]
            ax.errorbar(
                [effect],
                [y],
                xerr=[[max(0.0, effect - low)], [max(0.0, high - effect)]],  # a percentile CI may miss the estimate
                fmt="o",
                color=colour,
                capsize=3,
                label=claim.verdict,
            )
        ax.axvline(null * (group[0].scale if unit != "ratio" else 1.0), color="0.3", ls=":", lw=1)
        ax.set_yticks(range(len(group)))
        ax.set_yticklabels([f"{c.id}  {c.claim[:60]}" for c in reversed(group)], fontsize=8)
        ax.set_xlabel(
            {"points": "accuracy points", "points per group": "accuracy points per layer group"}.get(unit, unit)
        )
    handles, labels = [], []
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.suptitle("Claims: effect and 95% CI (paired bootstrap), dotted line: no effect")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=8)
    return fig
