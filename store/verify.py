"""Checks that a cube still holds what its done markers promise.

- **Lost data**: a done step whose chunk (or whole variable folder) was deleted, or whose
  chunk no longer decodes: every variable its record lists (``record["variables"]``) must
  have the step's chunk file, and it must read.
- **Changed data**: a done step whose rows read but are not the values that were written
  there: each done record holds a digest per variable (:mod:`store.digests`), recomputed
  here from the stored chunks, one step at a time. A static variable (a cohort mask) is
  checked against ``attrs["static_digests"]`` the same way.
- **Step order**: the writer stores each block of steps in increasing order and records where
  each block begins (``attrs["appended_at"]``); a step coordinate that is not strictly
  increasing within a block (reversed, shuffled) no longer labels its rows truly.

The writer turns lost and changed steps back to pending (the next run redoes them);
``dynamics report --check`` lists them (:func:`check_report`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dynamics.errors import DamagedCubeError
from store.digests import row_digest
from store.integrity import (
    APPENDED_AT,
    MISSING,
    declared_step_variables,
    duplicated_steps,
    expected_variables,
    stored_row,
    unique_positions,
)
from store.metadata import unit_dimension

DONE = "done"


@dataclass
class CubeCheck:
    """What :func:`check_cube` found: steps by problem, each with the variables concerned."""

    done: int = 0
    lost: dict[int, list[str]] = field(default_factory=dict)  # missing or unreadable
    changed: dict[int, list[str]] = field(default_factory=dict)  # readable, not the values written
    unverified: list[int] = field(default_factory=list)  # done steps written before digests were recorded
    static_changed: list[str] = field(default_factory=list)
    static_verified: bool = False


def check_cube(path: str | Path, units_cube: bool = False, read: bool = True, verify: bool = True) -> CubeCheck:
    """Every done step's stored rows against its record, streamed step by step.

    Args:
        path: the cube.
        units_cube: a study cube, whose units carry different variables; without a per-unit
            list (cubes written before it was recorded) nothing can be expected of them.
        read: decode each row (else only look for its chunk files).
        verify: recompute the digests of what was read (implies ``read``).
    """
    path = Path(path)
    with open(path / "zarr.json", encoding="utf-8") as f:
        attrs = json.load(f).get("attributes", {})
    records = attrs.get("steps", {})
    fallback = [] if units_cube else declared_step_variables(path)
    steps = [int(s) for s in zarr.open_array(path / unit_dimension(path), mode="r")[:]]
    positions = unique_positions(path, steps, records, units_cube) if duplicated_steps(steps) else range(len(steps))
    found = CubeCheck()
    opened: dict[str, Any] = {}
    for position in positions:
        step, record = steps[position], records.get(str(steps[position]), {})
        if record.get("status") != DONE:
            continue
        found.done += 1
        digests = record.get("digests") if verify else None
        if verify and not isinstance(digests, Mapping):
            found.unverified.append(step)
        lost, changed = [], []
        for name in expected_variables(record, fallback):
            row = stored_row(path, name, position, read or verify, opened)
            if row is MISSING:
                lost.append(name)
            elif isinstance(digests, Mapping) and name in digests and row_digest(row) != digests[name]:
                changed.append(name)
        if lost:
            found.lost[step] = lost
        if changed:
            found.changed[step] = changed
    if verify:
        found.static_verified, found.static_changed = _check_static(path, attrs.get("static_digests"))
    return found


def _check_static(path: Path, digests: Any) -> tuple[bool, list[str]]:
    if not isinstance(digests, Mapping):
        return False, []
    changed = []
    for name, digest in sorted(digests.items()):
        try:
            values = zarr.open_array(path / name, mode="r")[...]
        except Exception:  # noqa: BLE001 - a folder or chunk gone or damaged: not what was written
            changed.append(name)
            continue
        if row_digest(values) != digest:
            changed.append(name)
    return True, changed


def lost_data(path: str | Path, units_cube: bool = False, read: bool = True) -> dict[int, list[str]]:
    """Done steps whose stored variables are missing or unreadable: ``{step: [variable, ...]}``."""
    return check_cube(path, units_cube=units_cube, read=read, verify=False).lost


def check_report(path: str | Path, attrs: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """``dynamics report --check``: the lines to print, and the error to end with (None when all is well)."""
    unit = "condition" if attrs.get("cube_kind") == "units" else "step"
    found = check_cube(path, units_cube=unit == "condition")
    lines = [f"{unit} {step}: {', '.join(names)} missing or unreadable" for step, names in found.lost.items()]
    lines += [
        f"{unit} {step}: {', '.join(names)} changed since {'it was' if len(names) == 1 else 'they were'} written "
        "(the stored values do not match the digest recorded when the step was done)"
        for step, names in found.changed.items()
    ]
    lines += [f"static variable {name}: changed since the cube was made" for name in found.static_changed]
    bad = sorted(set(found.lost) | set(found.changed))
    if not bad and not found.static_changed:
        verified = found.done - len(found.unverified)
        summary = f"{path}: {found.done} done {unit}s: every stored variable is present and readable"
        if verified:
            summary += f"; the values of {verified} match the digests recorded when they were written"
        lines = [summary]
        if found.unverified:
            lines.append(
                f"{len(found.unverified)} done {unit}s ({_short(found.unverified)}) were written before digests "
                "were recorded: their values cannot be verified"
            )
        return lines, None
    if bad:
        return lines, (
            f"{len(bad)} of {found.done} done {unit}s of {path} lost or changed data; re-run the command that "
            "made the cube to compute them again"
        )
    return lines, (
        f"the static variables {', '.join(found.static_changed)} of {path} changed since the cube was made; "
        "restore the cube from a copy"
    )


def check_step_order(
    path: Path, steps: Sequence[int] | np.ndarray, positions: Sequence[int] | np.ndarray, attrs: Mapping
) -> None:
    """Refuse (one line) a step coordinate that is not strictly increasing within a block the writer appended.

    ``positions``: the rows read (one per step value; see :func:`store.integrity.unique_positions`).
    A cube written before the blocks were recorded is not checked.
    """
    starts = attrs.get(APPENDED_AT)
    if starts is None:
        return
    if not isinstance(starts, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in starts):
        raise DamagedCubeError(
            f"cube {str(path)!r} is damaged: its {APPENDED_AT} attribute is {json.dumps(starts)[:60]}, not a "
            "list of row numbers; nothing was changed: restore the cube from a copy or choose another one"
        )
    block = np.searchsorted(np.asarray(sorted(starts)), np.asarray(positions), side="right")
    values = np.asarray(steps, dtype="int64")[np.asarray(positions, dtype="int64")]
    for i in range(1, len(values)):
        if block[i] == block[i - 1] and values[i] <= values[i - 1]:
            raise DamagedCubeError(
                f"cube {str(path)!r} is damaged: its step coordinate is not strictly increasing (step "
                f"{int(values[i])} follows step {int(values[i - 1])} at row {int(positions[i])}), so its "
                "labels no longer match the stored rows; nothing was changed: restore the cube from a copy "
                "or choose another one"
            )


def _short(steps: Sequence[int]) -> str:
    steps = list(steps)
    return ", ".join(map(str, steps)) if len(steps) <= 6 else ", ".join(map(str, steps[:5])) + f", ... ({len(steps)})"
