"""Several scan cubes as one dataset: training seeds (or any other runs) along a new dimension.

:func:`open_cubes` opens each cube with :func:`store.opening.open_cube` and stacks them along
``dim`` (``seed`` by default) when they are comparable: the same done steps, the same cohort
rule (percent, scope, reference step) and the same analysis settings. Anything else is one
:class:`~dynamics.errors.CubeError` line naming the cube and the difference. Variables that
differ between runs (each run's own cohort, the member labels of its stored weight rows) get
the new dimension; those that agree (``tokens``, ``status``) keep their own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dynamics.errors import CubeError
from store.opening import open_cube

log = logging.getLogger(__name__)

#: The analysis settings that must agree for cubes to be read together (the cohort rule first).
ALIGNED_SETTINGS = ("cohort_percent", "cohort_scope")


def open_cubes(paths: Sequence[str | Path], dim: str = "seed", labels: Sequence[Any] | None = None) -> xr.Dataset:
    """Open scan cubes as one dataset with a new dimension ``dim``, one entry per cube.

    Args:
        paths: the cubes (at least one).
        dim: the new dimension's name.
        labels: its coordinate; default the training seed each cube recorded
            (``attrs["provenance"]["model_seed"]``: a PolyPythia ``-seed<N>`` or a toy suite's
            seed) when every cube has a distinct one, else 0, 1, 2, ...

    Raises:
        CubeError: a study cube, different steps, cohort rule or analysis settings (one line).
    """
    if not paths:
        raise CubeError("open_cubes needs at least one cube")
    cubes = [open_cube(p) for p in paths]
    first, first_path = cubes[0], str(paths[0])
    for ds, path in zip(cubes, map(str, paths)):
        if ds.attrs.get("cube_kind") == "units":
            raise CubeError(f"{path!r} is a study cube (`dynamics ablate`); open_cubes stacks scan cubes")
        _check_aligned(first, first_path, ds, path)
    if labels is None:
        labels = _default_labels(cubes)
    if len(labels) != len(cubes):
        raise CubeError(f"{len(labels)} labels for {len(cubes)} cubes; give one per cube")
    try:
        stacked = xr.concat(
            [ds.drop_attrs() for ds in cubes],
            dim=dim,
            data_vars="all",
            coords="different",
            compat="equals",
            join="exact",
        )
    except ValueError as exc:
        raise CubeError(f"the cubes cannot be stacked along {dim!r}: {' '.join(str(exc).split())[:200]}") from None
    stacked = stacked.assign_coords({dim: list(labels)})
    stacked.attrs = {
        "cubes": [str(p) for p in paths],
        "stacked_along": dim,
        "models": [ds.attrs.get("identity", {}).get("model") for ds in cubes],
        "identity": {k: v for k, v in first.attrs.get("identity", {}).items() if k != "model"},
    }
    return stacked


def _check_aligned(first: xr.Dataset, first_path: str, ds: xr.Dataset, path: str) -> None:
    steps, expected = ds["step"].values.tolist(), first["step"].values.tolist()
    if steps != expected:
        only = sorted(set(steps) ^ set(expected))
        raise CubeError(
            f"{path!r} has done steps {_short(steps)}, {first_path!r} has {_short(expected)} (they differ at "
            f"{_short(only)}); scan the same --steps, or select them with ds.sel(step=...) first"
        )
    mine, theirs = ds.attrs.get("identity", {}), first.attrs.get("identity", {})
    checks = [("reference_step", mine.get("reference_step"), theirs.get("reference_step"))]
    checks += [
        (key, mine.get("analysis", {}).get(key), theirs.get("analysis", {}).get(key)) for key in ALIGNED_SETTINGS
    ]
    others = sorted(set(mine.get("analysis", {})) | set(theirs.get("analysis", {})))
    checks += [(key, mine.get("analysis", {}).get(key), theirs.get("analysis", {}).get(key)) for key in others]
    for key, value, reference in checks:
        if value != reference:
            raise CubeError(
                f"{path!r} was made with {key}={value!r}, {first_path!r} with {key}={reference!r}: "
                "only cubes of the same cohort rule and settings can be read together"
            )


def _default_labels(cubes: list[xr.Dataset]) -> list[Any]:
    seeds = [ds.attrs.get("provenance", {}).get("model_seed") for ds in cubes]
    if all(isinstance(s, int) for s in seeds) and len(set(seeds)) == len(seeds):
        return seeds
    log.info("the cubes do not all record distinct training seeds: numbering them 0 to %d", len(cubes) - 1)
    return list(np.arange(len(cubes)))


def _short(steps: Sequence[int]) -> str:
    steps = list(steps)
    return ", ".join(map(str, steps)) if len(steps) <= 6 else ", ".join(map(str, steps[:5])) + f", ... ({len(steps)})"
