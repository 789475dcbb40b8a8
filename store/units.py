"""Cubes of labelled *units* instead of training steps (e.g. the conditions of a study).

The writer (:class:`store.cube.CubeWriter`) knows one unit dimension, ``step``: one region
write per unit, then its done marker. A units cube numbers its units ``0..n-1`` along that
dimension and records in ``attrs["units"]`` what each number means: a *block* name and
labels, e.g. ``{"block": "main", "labels": {"condition": "neg_top", "percent": 1.0}}``.
``attrs["blocks"]`` gives each block's label dimensions, the prefix of its variables and
the variables its units carry.

:func:`assemble_units` (called by :func:`store.open_cube`) turns that into labelled arrays:
each block becomes arrays over its label dimensions (``tse_acc[condition, percent,
tse_case]``), NaN where a unit is not done or does not exist. A unit without a label for one
of its block's dimensions applies to every value of that dimension (a ``clean`` run that
does not depend on ``percent``). A ``<prefix>done`` array says which cells hold results.

Like the rest of the store, this module knows nothing about neurons or conditions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dynamics.errors import CubeError

CUBE_KIND = "units"


def unit_attrs(blocks: Mapping[str, Mapping[str, Any]], units: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The attrs that make a cube a units cube (``blocks``: dims, prefix, variables per block)."""
    for i, unit in enumerate(units):
        block = blocks.get(unit.get("block", ""))
        if block is None:
            raise CubeError(f"unit {i} names block {unit.get('block')!r}, not one of {', '.join(blocks)}")
        extra = set(unit.get("labels", {})) - set(block["dims"])
        if extra:
            raise CubeError(f"unit {i} has labels {sorted(extra)} outside its block's dims {block['dims']}")
    return {
        "cube_kind": CUBE_KIND,
        "blocks": {k: dict(v) for k, v in blocks.items()},
        "units": [dict(u) for u in units],
    }


def write_unit_attrs(path: str | Path, attrs: Mapping[str, Any]) -> None:
    """Record the unit table in a cube the caller holds the writer lock of (idempotent)."""
    zarr.open_group(Path(path), mode="r+", zarr_format=3).attrs.update(dict(attrs))
    zarr.consolidate_metadata(Path(path))


def is_units_cube(ds: xr.Dataset) -> bool:
    return ds.attrs.get("cube_kind") == CUBE_KIND


def assemble_units(ds: xr.Dataset, status: np.ndarray, dim: str = "condition") -> xr.Dataset:
    """The labelled view of a units cube opened along its unit dimension ``dim`` (every unit, done or not).

    Args:
        ds: the cube as stored, with every unit along ``dim`` (``condition``; ``step`` in studies made
            before the dimension was named).
        status: each unit's status (``done`` / ``pending`` / ``failed``), aligned with ``dim``.
        dim: the unit dimension.
    """
    units = ds.attrs["units"]
    blocks = ds.attrs["blocks"]
    static = ds[[n for n, v in ds.data_vars.items() if dim not in v.dims]]
    parts = [static.drop_vars([c for c in static.coords if dim in static[c].dims or c == dim], errors="ignore")]
    for name, block in blocks.items():
        members = [(int(s), units[int(s)]) for s in ds[dim].values if units[int(s)]["block"] == name]
        if not members:  # e.g. a study without layer groups: no empty arrays
            continue
        parts.append(_assemble_block(ds, block, members, status, list(ds[dim].values), dim))
    out = xr.merge(parts, compat="no_conflicts", join="outer", combine_attrs="drop")
    out.attrs = dict(ds.attrs)
    return out


def _block_coords(block: Mapping[str, Any], members: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, list]:
    coords: dict[str, list] = {dim: [] for dim in block["dims"]}
    for _, unit in members:
        for dim, value in unit.get("labels", {}).items():
            if value not in coords[dim]:
                coords[dim].append(value)
    return coords


def _cells(unit: Mapping[str, Any], coords: Mapping[str, list]) -> list[tuple[int, ...]]:
    """Every index tuple a unit fills (all values of a dimension it has no label for)."""
    axes = [
        [coords[d].index(unit["labels"][d])] if d in unit.get("labels", {}) else list(range(len(coords[d])))
        for d in coords
    ]
    grid = np.meshgrid(*axes, indexing="ij") if axes else []
    return list(zip(*(g.reshape(-1) for g in grid))) if axes else [()]


def _assemble_block(
    ds: xr.Dataset,
    block: Mapping[str, Any],
    members: Sequence[tuple[int, Mapping[str, Any]]],
    status: np.ndarray,
    steps: list[int],
    dim: str,
) -> xr.Dataset:
    coords = _block_coords(block, members)
    dims = list(block["dims"])
    shape = tuple(len(coords[d]) for d in dims)
    prefix = block.get("prefix", "")
    done = np.zeros(shape, dtype=bool)
    labelled_first = sorted(members, key=lambda m: len(m[1].get("labels", {})))  # specific units win over broadcasts
    out: dict[str, Any] = {}
    for name in block["variables"]:
        if name not in ds:
            continue
        var = ds[name]
        rest = var.dims[1:]
        values = np.full(shape + var.shape[1:], np.nan if var.dtype.kind == "f" else _fill(var.dtype), dtype=var.dtype)
        for step, unit in labelled_first:
            position = steps.index(step)
            if status[position] != "done":
                continue
            row = var.isel({dim: position}).values
            for cell in _cells(unit, coords):
                values[cell] = row
                done[cell] = True
        out[prefix + name] = (tuple(dims) + rest, values, var.attrs)
    out[prefix + "done"] = (tuple(dims), done, {"long_name": "the cell holds a done unit's results"})
    coord_values = {d: _coord_array(v) for d, v in coords.items()}
    extra = {
        c: ds[c]
        for name in block["variables"]
        if name in ds
        for c, coord in ds.coords.items()
        if coord.dims and dim not in coord.dims and set(coord.dims) <= set(ds[name].dims[1:])
    }
    return xr.Dataset(out, coords={**coord_values, **extra})


def _coord_array(values: list) -> np.ndarray:
    numbers = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numbers:
        return np.asarray(values, dtype=np.int64 if all(isinstance(v, int) for v in values) else float)
    return np.asarray([str(v) for v in values], dtype=object)


def _fill(dtype: np.dtype) -> Any:
    kind = np.dtype(dtype).kind
    return -1 if kind == "i" else 0 if kind == "u" else False if kind == "b" else ""
