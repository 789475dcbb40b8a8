"""One label and one colour per study condition, shared by every study figure.

Seaborn colours by order, so the same colour meant different conditions in two figures that draw
different subsets; here a condition's colour depends on its name only. The labels of the
``<mode>_top`` conditions come from the ablation modes' table, so a new mode is labelled without
an edit here; a condition this module does not know gets a colour derived from its name.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import xarray as xr

from dynamics.ablation.modes import MODES

#: How a mode's name is shortened in condition names (mirrors dynamics.study.conditions.short_name,
#: which the report may not import; a test keeps the two equal).
SHORT_MODE_NAMES = {"negative": "neg", "positive": "pos"}
_MODE_PHRASES = {"both": "both signs"}

CONDITION_LABELS: dict[str, str] = {
    "clean": "clean",
    **{f"{SHORT_MODE_NAMES.get(m, m)}_top": f"{_MODE_PHRASES.get(m, m)}, top WD" for m in MODES},
    "neg_random": "negative, random control",
    "neg_matched": "negative, perplexity-matched control",
}
#: Fixed colours: clean neutral, the paper's negative ablation red, its controls in greens/teals, the
#: other modes in distinct hues (colour-blind-safe where the count allows).
CONDITION_COLOURS: dict[str, str] = {
    "clean": "#4d4d4d",
    "neg_top": "#b2182b",
    "pos_top": "#2166ac",
    "both_top": "#762a83",
    "signflip_top": "#e08214",
    "posrelu_top": "#8c510a",
    "abs_pre_top": "#de77ae",
    "neg_random": "#1b9e77",
    "neg_matched": "#e6ab02",
}
#: Where an unknown condition's colour comes from (by a hash of its name, so it is the same in every run).
SPARE_COLOURS = ("#a6761d", "#e7298a", "#7570b3", "#d95f02", "#17becf", "#bcbd22", "#9467bd", "#8c564b")


@dataclass(frozen=True)
class ConditionStyle:
    """How one condition is drawn: its legend label and its colour."""

    label: str
    colour: str


def condition_colour(condition: str) -> str:
    """The condition's fixed colour; an unknown condition gets one from its name (deterministic)."""
    if condition in CONDITION_COLOURS:
        return CONDITION_COLOURS[condition]
    return SPARE_COLOURS[zlib.crc32(condition.encode()) % len(SPARE_COLOURS)]


def matched_caveat(ds: xr.Dataset) -> str | None:
    """``None`` when the matched control matched the top set's perplexity (or the cube does not say),
    else why its label must not claim a match: "NOT matched: ppl 25.39 vs 25.83"."""
    if "matched_converged" in ds:
        converged = bool(ds["matched_converged"])
    else:
        converged = bool(ds.attrs.get("provenance", {}).get("matched_control", {}).get("converged", True))
    if converged:
        return None
    record = ds.attrs.get("provenance", {}).get("matched_control", {})
    ppl = float(ds["matched_ppl"]) if "matched_ppl" in ds else record.get("ppl")
    target = float(ds["matched_target_ppl"]) if "matched_target_ppl" in ds else record.get("target_ppl")
    if ppl is None or target is None:
        return "NOT matched"
    return f"NOT matched: ppl {ppl:.2f} vs {target:.2f}"


def ranking(ds: xr.Dataset) -> str:
    """What the study ranked its neurons by, as the labels say it: "WD" (also for cubes that do not
    record it) or "MD" (``--rank-by md``)."""
    analysis = ds.attrs.get("identity", {}).get("analysis", {})
    config = ds.attrs.get("provenance", {}).get("config", {})
    return str(analysis.get("rank_by") or config.get("rank_by") or "wd").upper()


def condition_styles(ds: xr.Dataset) -> dict[str, ConditionStyle]:
    """Every condition of the study cube, in its order: label (with the matched control's caveat when
    it did not match; "top MD" in a study ranked by MD) and colour."""
    caveat = matched_caveat(ds)
    rank = ranking(ds)
    styles = {}
    for name in (str(c) for c in ds["condition"].values):
        label = CONDITION_LABELS.get(name, name).replace(", top WD", f", top {rank}")
        if name == "neg_matched" and caveat:
            label = f"negative, bottom-m control ({caveat})"
        styles[name] = ConditionStyle(label, condition_colour(name))
    return styles
