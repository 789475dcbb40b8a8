"""Digests of stored values: what a done step (or a static variable) held when it was written.

A digest is the sha256 of one variable's row as stored, the decoded array and not its
compressed chunk (so a change of codec or compression level does not count as a change):
the row's dtype (little-endian ``numpy`` notation, ``<f4``), its shape and its C-order
bytes. The writer computes it from the values it writes (cast to the stored array's
dtype, as the region write casts them) and records it in the step's done record,
``attrs["steps"][step]["digests"] = {variable: hex}``; static variables get theirs in
``attrs["static_digests"]``. :func:`store.integrity.check_cube` recomputes them from
the stored chunks, one step at a time (a Pythia-1.4b step is a few MB per variable; a
cube is never loaded whole), and names each step and variable whose values changed.

Cubes written before digests existed have none: they open and resume as before, and a
check says in one line that their values cannot be verified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

#: Dtype kinds whose rows are hashed: numbers and booleans (what a cube stores per step and
#: in its masks); label coordinates (strings) are checked by xarray when a step is written.
HASHED_KINDS = "biuf"


def row_digest(values: Any, dtype: np.dtype | None = None) -> str:
    """The sha256 hex digest of one stored row: dtype, shape and bytes (little-endian, C order)."""
    row = np.asarray(values, dtype=dtype)
    little = row.dtype.newbyteorder("<") if row.dtype.byteorder == ">" else row.dtype
    row = np.ascontiguousarray(row, dtype=little)
    digest = hashlib.sha256(f"{row.dtype.str}{list(row.shape)}".encode())
    digest.update(row.reshape(-1).view(np.uint8).data)  # the bytes in place: a 32 MB row is not copied
    return digest.hexdigest()


def hashable(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in HASHED_KINDS


def step_digests(body: xr.Dataset, stored_dtypes: Mapping[str, np.dtype]) -> dict[str, str]:
    """The digest of each variable of a one-step region write (``step`` first, length 1).

    Args:
        body: what the writer writes into the step's region.
        stored_dtypes: each variable's dtype in the store (the write casts to it).
    """
    return {
        str(name): row_digest(var.values[0], stored_dtypes.get(str(name), var.dtype))
        for name, var in body.variables.items()
        if hashable(stored_dtypes.get(str(name), var.dtype))
    }


def static_digests(static: xr.Dataset) -> dict[str, str]:
    """The digest of each static data variable (numbers and booleans; labels are coordinates)."""
    return {str(name): row_digest(var.values) for name, var in static.data_vars.items() if hashable(var.dtype)}
