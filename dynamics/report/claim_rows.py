"""One row of a claims table: the claim, the comparison behind it, effect, CI, verdict, n and a note,
built from a :class:`dynamics.stats.paired.Comparison` (or absent, saying what the cube lacks)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import xarray as xr

from dynamics.stats.paired import Comparison
from dynamics.stats.verdicts import equivalence_verdict, items_for, precision_sentence, verdict

VERDICTS = ("supported", "contradicted", "inconclusive", "absent")
#: Display scale of each unit: accuracy differences are stored as fractions and shown in points.
SCALES = {"points": 100.0, "points per group": 100.0, "ratio": 1.0, "nats": 1.0, "rho": 1.0}


@dataclass(frozen=True)
class Claim:
    """One claim: ``effect`` and its CI ``[low, high]`` in ``unit`` (shown times :data:`SCALES`)."""

    id: str
    claim: str
    comparison: str
    verdict: str
    unit: str = ""
    effect: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    p_value: float | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return SCALES.get(self.unit, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, NaN as None, plus the display scale."""
        out = {
            "id": self.id,
            "claim": self.claim,
            "comparison": self.comparison,
            "verdict": self.verdict,
            "unit": self.unit,
            "scale": self.scale,
            "effect": _finite(self.effect),
            "low": _finite(self.low),
            "high": _finite(self.high),
            "n": self.n,
            "p_value": _finite(self.p_value),
            "note": self.note,
            "details": self.details,
        }
        return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def absent(cid: str, claim: str, comparison: str, why: str) -> Claim:
    """A claim the cube cannot test, and why."""
    return Claim(cid, claim, comparison, "absent", note=why)


@dataclass(frozen=True)
class Criterion:
    """How a comparison is judged: an effect in the direction ``sign`` (+1 or -1) away from ``null``,
    in ``unit`` (a key of :data:`SCALES`); an inconclusive one says how many ``items`` (pairs,
    windows, ...) would give a CI half-width of ``target``."""

    sign: int
    unit: str
    target: float
    items: str
    null: float = 0.0


def comparison_row(
    cid: str, claim: str, comparison: str, result: Comparison, criterion: Criterion, note: str = ""
) -> Claim:
    """A claim tested by ``result``, judged by ``criterion``: its verdict against the null in the
    expected direction; an inconclusive one says how many items would give the target CI half-width."""
    unit, items, target = criterion.unit, criterion.items, criterion.target
    decided = (
        verdict(result, criterion.sign, null=criterion.null) if math.isfinite(result.half_width) else "inconclusive"
    )
    words = [note] if note else []
    if decided == "inconclusive" and math.isfinite(result.half_width) and result.half_width > 0:
        scale = SCALES.get(unit, 1.0)
        shown = "points" if unit.startswith("points") else ("%" if unit == "ratio" else unit)
        scale = 100.0 if unit == "ratio" else scale
        needed = items_for(result, target)
        words.append(precision_sentence(result.n, result.half_width, needed, target, shown, scale, items))
    elif decided == "inconclusive" and result.half_width == 0:
        words.append(f"no difference on any of the {result.n:,} {items}: nothing to estimate a CI from")
    return Claim(
        cid,
        claim,
        comparison,
        decided,
        unit,
        result.estimate,
        result.low,
        result.high,
        result.n,
        result.p_value,
        "; ".join(words),
        result.to_dict(),
    )


def equivalence_row(cid: str, claim: str, comparison: str, ratio: Comparison, margin: float, note: str = "") -> Claim:
    """A claim that a perplexity ratio is 1 within ``margin``: the CI of ``ratio - 1`` against the band."""
    decided = equivalence_verdict(ratio.low - 1, ratio.high - 1, margin)
    words = [f"band +/-{100 * margin:.2g}% of neg_top's perplexity"] + ([note] if note else [])
    return Claim(
        cid,
        claim,
        comparison,
        decided,
        "ratio",
        ratio.estimate,
        ratio.low,
        ratio.high,
        ratio.n,
        ratio.p_value,
        "; ".join(words),
        {**ratio.to_dict(), "margin": margin},
    )


def settings_of(ds: xr.Dataset) -> dict[str, Any]:
    """The run's configuration as recorded in the cube's provenance ({} when absent)."""
    provenance = ds.attrs.get("provenance", {})
    config = provenance.get("config", {}) if isinstance(provenance, dict) else {}
    return dict(config) if isinstance(config, dict) else {}
