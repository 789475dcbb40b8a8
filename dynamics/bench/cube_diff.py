"""Two cubes compared variable by variable: identical, within a tolerance (the largest differences),
different, or present in one only. For checking a change against the code before it on the same run.

    python scripts/compare_cubes.py OLD.zarr NEW.zarr [--skip seconds,eval_seconds]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VariableDiff:
    name: str
    verdict: str  # identical | within float32 | different | only in old | only in new | shape differs
    max_abs: float = 0.0
    max_rel: float = 0.0
    cells: int = 0


def compare_values(name: str, old: np.ndarray, new: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6) -> VariableDiff:
    """How ``new`` differs from ``old`` (NaN equal to NaN)."""
    if old.shape != new.shape:
        return VariableDiff(name, "shape differs")
    if old.dtype.kind not in "fc" or new.dtype.kind not in "fc":
        same = np.array_equal(old, new)
        return VariableDiff(name, "identical" if same else "different", cells=old.size)
    if np.array_equal(old, new, equal_nan=True):
        return VariableDiff(name, "identical", cells=old.size)
    a, b = old.astype(np.float64), new.astype(np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return VariableDiff(name, "different", cells=old.size)
    diff = np.abs(a[both] - b[both])
    rel = diff / np.maximum(np.abs(a[both]), 1e-12)
    close = np.allclose(a[both], b[both], rtol=rtol, atol=atol)
    return VariableDiff(name, "within float32" if close else "different", float(diff.max()), float(rel.max()), old.size)


def compare_cubes(old_path: str, new_path: str, skip: tuple[str, ...] = ()) -> list[VariableDiff]:
    """Every variable of two cubes (opened with :func:`store.open_cube`) compared."""
    from store import open_cube

    old, new = open_cube(old_path), open_cube(new_path)
    names = sorted(({str(n) for n in old.data_vars} | {str(n) for n in new.data_vars}) - set(skip))
    out = []
    for name in names:
        if name not in new:
            out.append(VariableDiff(name, "only in old"))
        elif name not in old:
            out.append(VariableDiff(name, "only in new"))
        else:
            out.append(compare_values(name, np.asarray(old[name].values), np.asarray(new[name].values)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compare_cubes.py", description=__doc__)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--skip", default="seconds,eval_seconds,group_seconds,group_eval_seconds")
    args = parser.parse_args(argv)
    diffs = compare_cubes(args.old, args.new, tuple(s for s in args.skip.split(",") if s))
    print("| variable | verdict | max abs | max rel |")
    print("|---|---|---:|---:|")
    for d in diffs:
        print(f"| {d.name} | {d.verdict} | {d.max_abs:.3g} | {d.max_rel:.3g} |")
    return 1 if any(d.verdict in ("different", "shape differs", "only in old") for d in diffs) else 0


if __name__ == "__main__":
    sys.exit(main())
