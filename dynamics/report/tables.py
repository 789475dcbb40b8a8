"""Plain-text table pieces shared by the scan's and the study's reports."""

from __future__ import annotations

import numpy as np


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns under a dashed rule."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "-" where there is none (NaN: not measured)."""
    return "-" if not np.isfinite(value) else f"{value:.{digits}f}"
