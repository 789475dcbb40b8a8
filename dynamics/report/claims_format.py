"""The claims table as text, markdown or JSON (the JSON schema: docs/statistics.md and
docs/claims.schema.json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dynamics.report.claim_rows import Claim

#: The version of the JSON document's layout (docs/claims.schema.json).
SCHEMA_VERSION = 1
FORMATS = ("text", "markdown", "json")


def _number(claim: Claim, value: float) -> str:
    """A ratio plainly (1.012), a difference with its sign (+0.85)."""
    if claim.unit == "ratio":
        return f"{value:.4f}"
    digits = 2 if claim.unit in ("points", "points per group") else 3
    return f"{value * claim.scale:+.{digits}f}"


def _effect(claim: Claim) -> str:
    return "-" if claim.effect is None else _number(claim, claim.effect)


def _interval(claim: Claim) -> str:
    if claim.low is None or claim.high is None:
        return "-"
    return f"[{_number(claim, claim.low)}, {_number(claim, claim.high)}]"


def _row(claim: Claim) -> list[str]:
    unit = f" {claim.unit}" if claim.effect is not None and claim.unit not in ("ratio", "rho") else ""
    return [
        claim.id,
        claim.claim,
        claim.comparison,
        _effect(claim) + unit,
        _interval(claim),
        claim.verdict,
        "-" if claim.n is None else f"{claim.n:,}",
        claim.note,
    ]


HEADER = ["id", "claim", "comparison", "effect", "95% CI", "verdict", "n", "note"]


def claims_text(claims: Sequence[Claim]) -> str:
    """A plain-text table: one line per claim (the comparison and the note on their own indented lines)."""
    lines = [
        "claims (95% CI by bootstrap; paired over the same items where two conditions are compared; docs/statistics.md):"
    ]
    width = max((len(c.claim) for c in claims), default=10)
    for claim in claims:
        row = _row(claim)
        lines.append(
            f"  {claim.id:<4} {claim.claim:<{width}}  {row[3]:>16} {row[4]:>22}  {claim.verdict:<12} n={row[6]}"
        )
        lines.append(f"       {claim.comparison}")
        if claim.note:
            lines.append(f"       {claim.note}")
    return "\n".join(lines)


def claims_markdown(claims: Sequence[Claim]) -> str:
    """A markdown table of the claims."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for claim in claims:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in _row(claim)) + " |")
    return "\n".join(lines)


def claims_json(claims: Sequence[Claim], cube: str, kind: str, settings: dict[str, Any]) -> str:
    """The claims and every comparison behind them as one JSON document."""
    document = {
        "schema_version": SCHEMA_VERSION,
        "cube": cube,
        "kind": kind,
        "settings": settings,
        "claims": [claim.to_dict() for claim in claims],
    }
    return json.dumps(document, indent=2, allow_nan=False)
