"""Nothing left behind by a run that fails before its first step.

A cube this run created is removed again when the user's input stops the run (exit code
2) before any step is done, together with the parent directories the run made for it. A
cube that no run ever finished (each stopped by an error, Ctrl-C or ``kill``) and that has
no done step may be re-initialised by a run with other settings (:class:`store.cube.CubeWriter`).
Only cubes with no done step are ever removed: a done step is data, and data is never
deleted here.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from store.safe_files import fresh_directory

log = logging.getLogger(__name__)


def has_done_steps(attrs: Mapping[str, Any]) -> bool:
    """Whether any step record of a cube's root attributes says ``done``."""
    return any(isinstance(r, Mapping) and r.get("status") == "done" for r in attrs.get("steps", {}).values())


def reinitialisable(attrs: Mapping[str, Any]) -> bool:
    """No done step, and no run that used the cube ended normally (a cube someone made on purpose stays)."""
    runs = attrs.get("runs", [])
    ended = any(isinstance(run, Mapping) and "ended" in run for run in runs) if isinstance(runs, list) else True
    return not has_done_steps(attrs) and not ended


def discard_new_cube(path: Path) -> None:
    """Remove a cube this run created and left without a done step (the caller checked)."""
    shutil.rmtree(os.path.realpath(path), ignore_errors=True)
    log.info("removed %s: the run stopped before its first step was done", path)


def remove_abandoned_cube(path: Path) -> None:
    """Remove a cube that :func:`reinitialisable` allows to go: renamed aside first (one atomic step), then deleted."""
    real = Path(os.path.realpath(path))
    aside = fresh_directory(real.parent, f".{real.name}.replaced.")
    os.rename(real, aside / real.name)
    shutil.rmtree(aside, ignore_errors=True)
