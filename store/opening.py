"""Opening a cube for analysis: its done steps as one ``xarray.Dataset`` (:func:`open_cube`).

Before anything is read, the cube's metadata is checked (:mod:`store.metadata`: a format
this version knows, step records with known statuses) and its step coordinate must be
strictly increasing within each block of steps the writer stored together
(:func:`store.verify.check_step_order`); a damaged cube is one line, never numbers put
under the wrong labels. Interrupted extensions and compactions are finished first.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from dynamics.errors import CubeInputError
from store.derived import add_derived
from store.integrity import readable_positions, repair_interrupted_write
from store.metadata import check_arrays_readable, unit_dimension
from store.metadata import read_root_attrs as _read_attrs
from store.verify import check_step_order

#: Per-step variables that label steps rather than measure them: coordinates along ``step`` when opened.
STEP_COORDINATES = ("tokens", "duplicate_of")
DONE, PENDING = "done", "pending"

warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)


log = logging.getLogger(__name__)


def open_cube(path: str | Path, include_pending: bool = False) -> xr.Dataset:
    """Open a cube for analysis: an ``xarray.Dataset`` of its done steps, sorted by step.

    Args:
        path: the cube directory (``runs/p14.zarr``).
        include_pending: keep steps that are not done (pending or failed) too; their values
            are fill values (NaN for floats).

    The dataset has a ``status`` coordinate along ``step`` (``done``/``failed``/``pending``)
    and the cube's provenance in ``attrs``. Arrays are read lazily as NumPy, whether or not
    dask is installed (``ds.chunk()`` turns them into dask arrays when wanted). Variables the
    cube declares as derived (:mod:`store.derived`) are computed from the done steps, lazily
    (as dask arrays). A study cube (``dynamics ablate``) comes back as labelled arrays instead
    (``tse_acc[condition, percent, tse_case]``...; see :mod:`store.units`), NaN where a
    condition is not done; ``include_pending`` is ignored.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise CubeInputError(
            f"no cube at {str(path)!r}: expected a directory written by `dynamics scan` or `dynamics ablate`"
        )
    attrs = _read_attrs(path)
    check_arrays_readable(path)
    if "extending" in attrs or "compacting" in attrs:
        repair_interrupted_write(path)
        attrs = _read_attrs(path)
    ds = _open_lazily(path, chunks=None)  # numpy-backed, loaded on access (whole-array reductions work)
    records = ds.attrs.get("steps", {})
    dim = unit_dimension(path)  # step; a study's conditions (those made before it was named: step)
    unique = readable_positions(path, ds[dim].values, records, attrs.get("cube_kind") == "units")
    check_step_order(path, ds[dim].values, unique, attrs)
    ds = ds.isel({dim: unique})
    status = np.array([records.get(str(int(s)), {}).get("status", PENDING) for s in ds[dim].values])
    if attrs.get("cube_kind") == "units":  # a study: units become labelled arrays (store/units.py)
        from store.units import assemble_units

        if dim == "step":
            log.warning(
                "%s: a study cube of the earlier layout (conditions stored along step); opened as any other", path
            )
        return assemble_units(ds, status, dim)
    ds = ds.assign_coords(status=("step", status)).sortby("step")
    ds = ds.set_coords([name for name in STEP_COORDINATES if name in ds.data_vars])
    declared = attrs.get("identity", {}).get("derived", {})
    done = ds.isel(step=np.flatnonzero(ds["status"].values == DONE))
    if declared:  # derived from dask-backed sources, so a big cube opens without reading them
        sources = _open_lazily(path, chunks={}).isel(step=unique).assign_coords(status=ds["status"]).sortby("step")
        derived = add_derived(sources.isel(step=np.flatnonzero(sources["status"].values == DONE)), declared)
        done = done.assign({name: derived[name] for name in derived.data_vars if name not in done.data_vars})
    if not include_pending:
        return done
    derived_names = [name for name in done.data_vars if name not in ds.data_vars]
    fill = {name: -1 if done[name].dtype.kind == "i" else np.nan for name in derived_names}
    return ds.assign({name: done[name].reindex(step=ds["step"], fill_value=fill[name]) for name in derived_names})


def _open_lazily(path: Path, chunks: dict | None) -> xr.Dataset:
    try:
        return xr.open_zarr(path, consolidated=True, chunks=chunks)
    except (ValueError, KeyError):  # consolidated metadata absent: fall back to listing the store
        return xr.open_zarr(path, consolidated=False, chunks=chunks)
