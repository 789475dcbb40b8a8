"""Where a step's stored rows are, and repairs of two faults.

- **Rows**: each done record lists the variables its region write stored
  (``record["variables"]``); :func:`stored_row` finds a step's row of one of them (its chunk
  files, decoded), which :mod:`store.verify` uses to find lost and changed data.
- **Duplicated steps**: two writers that extended one cube at once (before the lock was
  keyed on the real directory) appended the same steps twice. :func:`unique_positions`
  picks one copy of each step, the one that holds the data; :func:`open_cube` reads
  through it, and the writer compacts the store with :func:`compact_steps`, journaled in
  ``attrs["compacting"]`` so a crash in the middle is finished by the next writer.

Chunks are one file per step along ``step`` (the writer's chunking), addressed as zarr v3
names them (``<var>/c/<i>/<j>...``).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dynamics.errors import CubeError, CubeLockedError
from store.lock import WriterLock
from store.metadata import unit_dimension
from store.safe_files import atomic_copy

log = logging.getLogger(__name__)

DONE = "done"
#: Root attribute: the first row of each block of steps the writer stored together (the
#: creation's at 0, then each extension's); steps increase strictly within a block.
APPENDED_AT = "appended_at"


def _array_meta(path: Path, name: str) -> dict[str, Any] | None:
    try:
        with open(path / name / "zarr.json", encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if meta.get("node_type") == "array" else None


def chunk_files(path: Path, name: str, meta: Mapping[str, Any], position: int) -> list[Path]:
    """The files holding row ``position`` (along the first dimension) of array ``name``."""
    shape = list(meta["shape"])
    chunks = list(meta["chunk_grid"]["configuration"]["chunk_shape"])
    encoding = meta.get("chunk_key_encoding", {"name": "default"})
    separator = encoding.get("configuration", {}).get("separator", "/" if encoding["name"] == "default" else ".")
    if not shape:
        return [path / name / ("c" if encoding["name"] == "default" else "0")]
    ranges = [[position // chunks[0]]] + [range(math.ceil(n / c)) for n, c in zip(shape[1:], chunks[1:])]
    files = []
    for index in itertools.product(*ranges):
        key = separator.join(str(i) for i in index)
        if encoding["name"] == "default":
            key = "c" + separator + key
        files.append(path / name / Path(*key.split("/")))
    return files


def step_arrays(path: Path) -> list[str]:
    """Names of the arrays stored along the unit dimension (its coordinate included)."""
    dim = unit_dimension(path)
    names = []
    for child in sorted(Path(path).iterdir()):
        meta = _array_meta(path, child.name) if child.is_dir() else None
        if meta and (meta.get("dimension_names") or [None])[0] == dim:
            names.append(child.name)
    return names


def declared_step_variables(path: Path) -> list[str]:
    """Variables along ``step`` that the consolidated metadata lists (even if their folder is gone)."""
    with open(Path(path) / "zarr.json", encoding="utf-8") as f:
        root = json.load(f)
    listed = (root.get("consolidated_metadata") or {}).get("metadata") or {}
    dim = unit_dimension(path)
    return sorted(
        name
        for name, meta in listed.items()
        if "/" not in name
        and meta.get("node_type") == "array"
        and (meta.get("dimension_names") or [None])[0] == dim
        and name != dim
    )


def missing_variables(
    path: Path, position: int, variables: Iterable[str], read: bool = True, opened: dict[str, Any] | None = None
) -> list[str]:
    """The ``variables`` whose row ``position`` has no chunk file (or, with ``read``, does not decode).

    ``opened`` caches metadata and open arrays across calls (one cube, many steps).
    """
    opened = {} if opened is None else opened
    return [name for name in variables if stored_row(path, name, position, read, opened) is MISSING]


MISSING = object()


def stored_row(path: Path, name: str, position: int, read: bool, opened: dict[str, Any]) -> Any:
    """Row ``position`` of ``name`` as stored (decoded when ``read``, else True), or ``MISSING``."""
    if name not in opened:
        opened[name] = _array_meta(path, name)
    meta = opened[name]
    if meta is None or position >= meta["shape"][0]:
        return MISSING
    if not all(f.is_file() for f in chunk_files(path, name, meta, position)):
        return MISSING
    if not read:
        return True
    try:
        if f"{name}/array" not in opened:
            opened[f"{name}/array"] = zarr.open_array(Path(path) / name, mode="r")
        return np.asarray(opened[f"{name}/array"][position])
    except Exception:  # noqa: BLE001 - any decode failure means the row is not there any more
        return MISSING


def expected_variables(record: Mapping[str, Any], fallback: Sequence[str]) -> list[str]:
    """What a done step's region write stored: its record's list, else (older cubes) ``fallback``."""
    listed = record.get("variables")
    return list(listed) if listed is not None else list(fallback)


def unique_positions(
    path: str | Path, steps: Sequence[int] | np.ndarray, records: Mapping[str, Any], units_cube: bool = False
) -> list[int]:
    """One position per step value, in stored order: of a step stored twice, the copy that
    holds its variables (the first copy when none or both do)."""
    path = Path(path)
    fallback = [] if units_cube else declared_step_variables(path)
    positions: dict[int, list[int]] = {}
    for position, step in enumerate(int(s) for s in steps):
        positions.setdefault(step, []).append(position)
    chosen = []
    for step, where in positions.items():
        record = records.get(str(step), {})
        pick = where[0]
        if len(where) > 1 and record.get("status") == DONE:
            expected = expected_variables(record, fallback)
            pick = next((p for p in where if not missing_variables(path, p, expected, read=False)), where[0])
        chosen.append(pick)
    return sorted(chosen)


def readable_positions(
    path: Path, steps: Sequence[int] | np.ndarray, records: Mapping[str, Any], units_cube: bool
) -> np.ndarray:
    """Every position of ``step``, or one per step when two writers appended a step twice (said once)."""
    twice = duplicated_steps(steps)
    if not twice:
        return np.arange(len(steps))
    log.warning(
        "cube %s holds steps %s twice (two writers extended it at once); reading the copy that holds "
        "the data; the next scan on it repairs the store",
        path,
        ", ".join(map(str, twice)),
    )
    return np.asarray(unique_positions(path, steps, records, units_cube))


def duplicated_steps(steps: Sequence[int] | np.ndarray) -> list[int]:
    values, counts = np.unique(np.asarray(steps, dtype="int64"), return_counts=True)
    return [int(v) for v in values[counts > 1]]


def compact_steps(path: str | Path, keep: Sequence[int] | None = None) -> None:
    """Keep only rows ``keep`` (sorted positions) of every array along ``step``, in place.

    Rows move chunk file by chunk file (one file per row), and the progress is journaled in
    ``attrs["compacting"]`` after every row: ``keep[j] >= j``, so a row is read before any
    later move can overwrite it, and a crashed compaction resumes where it stopped
    (call with ``keep=None`` to resume from the journal).
    """
    path = Path(path)
    group = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
    journal: dict[str, Any] = dict(
        _root_attrs(path).get("compacting") or {"keep": [int(p) for p in (keep or [])], "next": 0}
    )
    group.attrs["compacting"] = journal
    rows = list(journal["keep"])
    names = step_arrays(path)
    for target in range(int(journal["next"]), len(rows)):
        if rows[target] != target:
            for name in names:
                _move_row(path, name, rows[target], target)
        group.attrs["compacting"] = {"keep": rows, "next": target + 1}
    for name in names:
        array = zarr.open_array(path / name, mode="r+")
        if array.shape[0] != len(rows):
            array.resize((len(rows), *array.shape[1:]))
    group = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
    attrs = group.attrs.asdict()
    starts = attrs.get(APPENDED_AT)
    if isinstance(starts, list):  # the blocks' first rows, counted among the rows kept
        attrs[APPENDED_AT] = sorted({sum(1 for p in rows if p < int(b)) for b in starts} - {len(rows)})
    attrs.pop("compacting", None)
    group.attrs.put(attrs)  # one write: the journal goes with the remapped blocks
    zarr.consolidate_metadata(path)


def _move_row(path: Path, name: str, source: int, target: int) -> None:
    meta = _array_meta(path, name)
    if meta is None:
        return
    if meta["chunk_grid"]["configuration"]["chunk_shape"][0] != 1:  # not the writer's layout: copy values
        array = zarr.open_array(path / name, mode="r+")
        array[target] = array[source]
        return
    for src, dst in zip(chunk_files(path, name, meta, source), chunk_files(path, name, meta, target)):
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_copy(src, dst)
        else:
            dst.unlink(missing_ok=True)


def repair_interrupted_write(path: Path) -> None:
    """Roll back an interrupted extension, finish an interrupted compaction (taking the lock)."""
    lock = WriterLock(path)
    try:
        lock.acquire()
    except CubeLockedError:
        raise CubeError(
            f"cube {str(path)!r} is being extended by a running writer; open it again when it finishes"
        ) from None
    try:
        if "extending" in _root_attrs(path):
            rollback_extension(path)
        if "compacting" in _root_attrs(path):
            compact_steps(path)
    finally:
        lock.release()


def rollback_extension(path: Path) -> None:
    """Undo an append that was interrupted: cut every step-dimension array back."""
    n_old = int(_root_attrs(path)["extending"]["from"])
    dim = unit_dimension(path)
    group = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)  # the real shapes
    for _, array in group.arrays():
        dims = array.metadata.dimension_names or ()
        if dims and dims[0] == dim and array.shape[0] != n_old:
            array.resize((n_old, *array.shape[1:]))
    kept = {int(s) for s in group[dim][:]}
    group.attrs["steps"] = {k: v for k, v in group.attrs["steps"].items() if int(k) in kept}
    starts = group.attrs.get(APPENDED_AT)
    if isinstance(starts, list):
        group.attrs[APPENDED_AT] = [b for b in starts if int(b) < n_old]
    group.attrs.pop("extending", None)
    zarr.consolidate_metadata(path)


def _root_attrs(path: Path) -> dict[str, Any]:
    with open(Path(path) / "zarr.json", encoding="utf-8") as f:
        return dict(json.load(f).get("attributes", {}))
