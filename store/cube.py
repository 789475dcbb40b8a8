"""The results cube: a zarr v3 store written through xarray, one region per training step.

Layout and guarantees:

- The ``step`` dimension is pre-allocated for every requested step, chunk 1 along ``step``.
  A step's result is one region write; *then*, last, its done marker is written. Markers
  live in the root attributes (``attrs["steps"][str(step)]``: status, revision, commit,
  timings) so a marker is one atomic file replacement (zarr's local store writes through a
  temporary file and a rename).
- A step counts only once its marker says ``done``: a crash in the middle of a step leaves
  the cube openable, that step pending, and the next run redoes it.
- Variables appear the first time a step result carries them (pre-allocated for every
  step, nothing written for pending steps); static variables (no ``step``) are written
  once, at creation.
- Asking for more steps appends them (``attrs["extending"]`` journals the append, so an
  interrupted extension is rolled back instead of leaving arrays of unequal length).
- One writer at a time (:class:`store.lock.WriterLock`); readers never need the lock.
- Each done record holds a digest of every variable's stored row (:mod:`store.digests`),
  static variables theirs in ``attrs["static_digests"]``; a resume recomputes them, and a
  step whose values changed is computed again (:mod:`store.verify`).
- A full disk is the user's to fix: one line naming the cube (exit code 2); the rows of the
  step being written are removed again, done steps are kept.

The cube is opened for analysis by :func:`store.opening.open_cube`.

The store knows nothing about neurons: it stores whatever ``xarray.Dataset`` the scan gives.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dynamics.errors import CubeError, CubeInputError, DamagedCubeError, PathError
from store.digests import static_digests, step_digests
from store.integrity import (
    APPENDED_AT,
    chunk_files,
    compact_steps,
    duplicated_steps,
    rollback_extension,
    unique_positions,
)
from store.leftovers import (
    discard_new_cube,
    has_done_steps,
    reinitialisable,
    remove_abandoned_cube,
)
from store.lock import WriterLock
from store.metadata import CUBE_FORMAT, check_arrays_readable, unit_dimension
from store.metadata import read_root_attrs as _read_attrs
from store.safe_files import fresh_directory, is_disk_full, missing_ancestors, remove_directories
from store.verify import check_cube, check_step_order

log = logging.getLogger(__name__)

DONE, FAILED, PENDING = "done", "failed", "pending"


class CubeWriter:
    """The one writer of a cube for one run. Use as a context manager.

    Args:
        path: the cube directory.
        steps: the steps this run asks for (the cube is created or extended to hold them).
        identity: what makes results comparable (model, analysis settings). A cube made with
            a different identity is refused, so one cube never mixes incomparable steps.
        provenance: everything else worth recording about this run (package version, the
            full config, seeds, corpus hash); appended to ``attrs["runs"]``.
        static: variables without a ``step`` dimension, written once at creation.
        overwrite: redo steps that are already done.
        unit: what one entry of the ``step`` dimension is to the user ("step"; a study's
            "condition"), for the messages.
    """

    def __init__(
        self,
        path: str | Path,
        steps: Sequence[int],
        identity: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
        static: xr.Dataset | None = None,
        overwrite: bool = False,
        unit: str = "step",
    ) -> None:
        self.path = Path(path)
        self.unit = unit
        self.dim = unit  # the dimension a new cube stores its units along; an existing cube's own, once open
        self.steps = sorted({int(s) for s in steps})
        self.identity = _jsonable(dict(identity))
        self.provenance = _jsonable(dict(provenance or {}))
        self.static = static
        self.overwrite = overwrite
        self._lock = WriterLock(self.path)
        self._index: dict[int, int] = {}
        self._created = False  # this run made the cube: bad input found before its first done step removes it
        self._made_dirs: list[Path] = []  # and the parent directories made for it

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> CubeWriter:
        self._made_dirs = missing_ancestors(Path(os.path.realpath(self.path)).parent)
        self._lock.acquire()
        try:
            with self._disk_full_is_one_line("preparing"):
                self._prepare()
        except BaseException as exc:
            self._close(exc)
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, *rest: object) -> None:
        self._close(exc)

    def _close(self, exc: BaseException | None) -> None:
        """Release the lock. A run stopped by the user's input (exit code 2) before its first done step
        leaves nothing behind; other failures keep the cube (its records, and a re-run resumes it)."""
        discard, users_input = False, getattr(exc, "exit_code", None) == 2
        try:
            if exc is None:  # a cube a run ended normally on is never re-initialised (store/leftovers.py)
                runs = list(_read_attrs(self.path).get("runs", []))
                if runs and isinstance(runs[-1], dict):
                    self._update_attrs(runs=[*runs[:-1], {**runs[-1], "ended": _now()}])
            elif users_input and self._created:
                discard = not has_done_steps(_read_attrs(self.path))
        except (OSError, CubeError) as problem:  # changed under us: leave it as it is to be looked at
            log.warning("could not close cube %s cleanly: %s", self.path, problem)
        if discard:
            discard_new_cube(self.path)
        self._lock.release()
        if users_input and not self.path.exists():  # nothing made, or made and removed: its new parents go too
            remove_directories(self._made_dirs)

    def _prepare(self) -> None:
        if self.path.exists() and not (self.path / "zarr.json").is_file():
            raise CubeInputError(f"{str(self.path)!r} exists but is not a cube; choose another --out")
        if self.path.exists() and self._reinitialise():
            return self._prepare()
        if not self.path.exists():
            self._create()
            self._created = True
        else:
            self.dim = unit_dimension(self.path)  # a study made before its dimension was named: step
            check_arrays_readable(self.path)
            self._check_identity()
            if "extending" in _read_attrs(self.path):
                rollback_extension(self.path)
            self._repair_duplicated_steps()
            steps = self.stored_steps()
            check_step_order(self.path, steps, range(len(steps)), _read_attrs(self.path))
            stored = set(steps)  # once: each call reads every step's chunk
            self._extend([s for s in self.steps if s not in stored])
            self._forget_lost_steps()
        attrs = _read_attrs(self.path)
        runs = list(attrs.get("runs", []))
        runs.append({"started": _now(), "steps_requested": len(self.steps), **self.provenance})
        # merged, not replaced: what earlier runs recorded (corpus hashes, budgets, the matched control) stays
        # when this run has nothing to do and records nothing new
        provenance = {**attrs.get("provenance", {}), **self.provenance}
        self._update_attrs(runs=runs, provenance=provenance)
        self._index = {s: i for i, s in enumerate(self.stored_steps())}

    def _repair_duplicated_steps(self) -> None:
        """Compact a cube two writers appended the same steps to (or finish such a repair)."""
        attrs = _read_attrs(self.path)
        if "compacting" in attrs:
            compact_steps(self.path)
        steps = self.stored_steps()
        twice = duplicated_steps(steps)
        if twice:
            keep = unique_positions(self.path, steps, attrs["steps"], attrs.get("cube_kind") == "units")
            compact_steps(self.path, keep)
            log.warning(
                "repaired cube %s: %ss %s were stored twice; kept the copy holding the data",
                self.path,
                self.unit,
                ", ".join(map(str, twice)),
            )

    def _forget_lost_steps(self) -> None:
        """Done steps whose data is gone (a deleted chunk or variable) or changed (its digest
        differs) become pending again; a changed static variable stops the run."""
        found = check_cube(self.path, units_cube=_read_attrs(self.path).get("cube_kind") == "units")
        if found.static_changed:
            raise DamagedCubeError(
                f"cube {str(self.path)!r} is damaged: its static variable(s) {', '.join(found.static_changed)} "
                "changed since the cube was made (the stored values do not match their digests); nothing was "
                "changed: restore the cube from a copy or choose another --out"
            )
        if not found.lost and not found.changed:
            return
        records = dict(_read_attrs(self.path)["steps"])
        for step, names in found.lost.items():
            records[str(step)] = {"status": PENDING, "lost": names}
            log.warning(
                "%s %d was done but its %s %s missing or unreadable: it will be computed again",
                self.unit,
                step,
                ", ".join(names),
                "is" if len(names) == 1 else "are",
            )
        for step, names in found.changed.items():
            records[str(step)] = {"status": PENDING, "changed": names}
            log.warning(
                "%s %d was done but its %s changed since it was written (digest differs): it will be computed again",
                self.unit,
                step,
                ", ".join(names),
            )
        self._update_attrs(steps=records)
        zarr.consolidate_metadata(self.path)  # forget variables whose folder is gone; the next write recreates them

    def _create(self) -> None:
        real = Path(os.path.realpath(self.path))  # a link to a cube yet to be made: make it where the link points
        try:
            self._write_new(real)
        except OSError as exc:  # a full disk, a directory made read-only meanwhile: the user's --out, one line
            reason = "no space left on the device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror
            raise PathError(
                f"cannot create cube {str(self.path)!r}: {reason or exc}; free space or choose another --out"
            ) from None

    def _write_new(self, real: Path) -> None:
        tmp = fresh_directory(real.parent, f".{real.name}.creating.")
        ds = xr.Dataset(coords={self.dim: np.asarray(self.steps, dtype="int64")})
        if self.static is not None:
            if self.dim in self.static.dims or "step" in self.static.dims:
                raise CubeError(f"static variables must not have a {self.dim} dimension")
            ds = ds.merge(self.static)
        ds.attrs = {
            "cube_format": CUBE_FORMAT,
            "identity": self.identity,
            "created": _now(),
            "steps": {str(s): {"status": PENDING} for s in self.steps},
            APPENDED_AT: [0],
            "unit_dim": self.dim,
        }
        if self.static is not None:
            ds.attrs["static_digests"] = static_digests(self.static)
        try:
            ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, encoding={self.dim: {"chunks": (1,)}})
            tmp.rename(real)  # atomic: the cube appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _reinitialise(self) -> bool:
        """Replace a cube made with other settings that no run finished and that has no done step (one line)."""
        attrs = _read_attrs(self.path)
        stored = attrs.get("identity", {})
        if stored == self.identity or not reinitialisable(attrs):
            return False  # the same settings, or a cube _check_identity protects
        key, was, now = _first_difference(stored, self.identity)
        log.warning(
            "cube %s has no done %s and was made with %s=%s: re-initialising it for this run's %s=%s",
            self.path,
            self.unit,
            key,
            json.dumps(was),
            key,
            json.dumps(now),
        )
        remove_abandoned_cube(self.path)
        return True

    def _check_identity(self) -> None:
        stored = _read_attrs(self.path).get("identity", {})
        if stored == self.identity:
            return
        key, was, now = _first_difference(stored, self.identity)
        raise CubeInputError(
            f"cube {str(self.path)!r} was made with {key}={json.dumps(was)}, "
            f"this run has {key}={json.dumps(now)}; use the same settings or another --out"
        )

    # -- queries ----------------------------------------------------------------------------
    def stored_steps(self) -> list[int]:
        return [int(s) for s in zarr.open_array(self.path / self.dim, mode="r")[:]]

    def status(self, step: int) -> str:
        return _read_attrs(self.path)["steps"].get(str(step), {}).get("status", PENDING)

    def todo(self) -> list[int]:
        """The requested steps this run must compute: not done yet, or all with overwrite."""
        records = _read_attrs(self.path)["steps"]
        if self.overwrite:
            return list(self.steps)
        return [s for s in self.steps if records.get(str(s), {}).get("status") != DONE]

    def records(self) -> dict[int, dict[str, Any]]:
        """Every stored step's record (status, revision, fingerprints, ...), by step."""
        return {int(s): dict(r) for s, r in _read_attrs(self.path)["steps"].items()}

    def read_step(self, step: int) -> xr.Dataset:
        """The stored variables of one step (a length-1 ``step`` dimension), loaded; e.g. to copy it."""
        with xr.open_zarr(self.path, consolidated=False, chunks=None) as stored:
            names = [n for n, v in stored.data_vars.items() if self.dim in v.dims]
            return stored[names].isel({self.dim: [self._index[step]]}).load()

    def read_static(self) -> xr.Dataset | None:
        """The static variables (no ``step`` dimension), or None before they are written."""
        with xr.open_zarr(self.path, consolidated=False, chunks=None) as stored:
            names = [n for n, v in stored.data_vars.items() if self.dim not in v.dims]
            return stored[names].load() if names else None

    # -- writes -----------------------------------------------------------------------------
    def write_static(self, static: xr.Dataset) -> None:
        """Write variables without a step dimension, once (before the first step result)."""
        if self.dim in static.dims or "step" in static.dims:
            raise CubeError("static variables must not have a step dimension")
        if self.read_static() is not None:
            raise CubeError(f"cube {str(self.path)!r} already has its static variables")
        static = static.assign_coords({n: _portable(c) for n, c in static.coords.items()})
        static = static.copy()
        attrs = _read_attrs(self.path)  # xarray rewrites the root attributes on append
        static.attrs = {**attrs, "static_digests": {**attrs.get("static_digests", {}), **static_digests(static)}}
        with self._disk_full_is_one_line("writing the static variables of"):
            static.to_zarr(self.path, mode="a", consolidated=False)
            zarr.consolidate_metadata(self.path)

    def check_content(self, hashes: Mapping[str, str | None], labels: Mapping[str, str] | None = None) -> None:
        """Compare this run's input content hashes (``name -> sha256``) with those the cube recorded, and
        record the ones it lacks; a stored hash is never overwritten.

        Raises:
            CubeInputError: an input whose content changed since the cube recorded it, naming the input
                and both hashes (one line, before anything of this run is written).
        """
        stored = dict(_read_attrs(self.path).get("content", {}))
        for name, value in hashes.items():
            if value is not None and name in stored and stored[name] != value:
                label = (labels or {}).get(name, name)
                raise CubeInputError(
                    f"cube {str(self.path)!r} was made with another {label} (sha256 {stored[name][:12]}, this run's "
                    f"{value[:12]}): its {self.unit}s would mix two inputs; restore the input or choose another --out"
                )
        missing = {name: value for name, value in hashes.items() if value is not None and name not in stored}
        if missing:
            with self._disk_full_is_one_line("recording the input content of"):
                self._update_attrs(content={**stored, **missing})

    def record_provenance(self, values: Mapping[str, Any]) -> None:
        """Merge ``values`` into ``attrs["provenance"]`` (e.g. a corpus hash known only later)."""
        provenance = {**_read_attrs(self.path).get("provenance", {}), **_jsonable(dict(values))}
        with self._disk_full_is_one_line("recording the provenance of"):
            self._update_attrs(provenance=provenance)

    def write_step(self, result: xr.Dataset, record: Mapping[str, Any] | None = None) -> None:
        """Write one step result (``step`` dimension of length 1) and then mark it done.

        The done record lists the variables written and holds the digest of each one's row.
        """
        if self.dim != "step" and "step" in result.dims:  # units come as length-1 "step" results
            result = result.rename({"step": self.dim})
        if result.sizes.get(self.dim) != 1:
            raise CubeError(
                f"a {self.unit} result must have a {self.dim} dimension of length 1, got {dict(result.sizes)}"
            )
        step = int(result[self.dim].values[0])
        if step not in self._index:
            raise CubeError(f"step {step} is not in this cube; requested steps are {self.steps[:5]}...")
        if self.status(step) == DONE and not self.overwrite:
            raise CubeError(f"step {step} is already done in {str(self.path)!r}; pass --overwrite to redo it")
        i = self._index[step]
        body = result.drop_vars([name for name in result.variables if self.dim not in result[name].dims])
        body = body.drop_vars(self.dim)
        body.attrs = {}
        with self._disk_full_is_one_line(f"writing {self.unit} {step} to"):
            self._set_record(step, {"status": PENDING})  # an overwrite in flight is not done
            try:
                self._ensure_variables(result)
                dtypes = {str(n): zarr.open_array(self.path / str(n), mode="r").dtype for n in body.variables}
                # Every chunk is written, fill values included, so a missing chunk always means lost data.
                body.to_zarr(
                    self.path,
                    region={self.dim: slice(i, i + 1)},
                    mode="r+",
                    consolidated=False,
                    write_empty_chunks=True,
                )
                done = {"status": DONE, "written": _now(), "variables": sorted(str(name) for name in body.variables)}
                self._set_record(step, {**(record or {}), **done, "digests": step_digests(body, dtypes)})
            except OSError:
                self._remove_row(i, [str(name) for name in body.variables])  # no partial step left behind
                raise

    def _remove_row(self, position: int, names: Sequence[str]) -> None:
        for name in names:
            meta_file = self.path / name / "zarr.json"
            if not meta_file.is_file():
                continue
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            for file in chunk_files(self.path, name, meta, position):
                file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _disk_full_is_one_line(self, doing: str) -> Iterator[None]:
        """A full disk (or quota) while ``doing`` the cube: the user's to fix, one line naming the cube."""
        try:
            yield
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise PathError(
                f"no space left on the device while {doing} cube {str(self.path)!r}; free space or choose "
                f"another --out, then re-run the same command (the {self.unit}s already done are kept)"
            ) from None

    def mark_failed(self, step: int, error: str, record: Mapping[str, Any] | None = None) -> None:
        """Record that ``step`` failed (it stays out of :func:`open_cube` and is retried next run)."""
        if self.status(step) == DONE and not self.overwrite:
            return
        with self._disk_full_is_one_line(f"recording the failure of {self.unit} {step} in"):
            self._set_record(step, {**(record or {}), "status": FAILED, "error": error, "written": _now()})

    def _set_record(self, step: int, record: Mapping[str, Any]) -> None:
        steps = dict(_read_attrs(self.path)["steps"])
        steps[str(step)] = _jsonable(dict(record))
        self._update_attrs(steps=steps)

    def _update_attrs(self, **values: Any) -> None:
        group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        group.attrs.update(values)

    def _ensure_variables(self, result: xr.Dataset) -> None:
        """Pre-allocate, for every step, the variables this result brings for the first time."""
        with xr.open_zarr(self.path, consolidated=False, chunks=None) as stored:
            missing = [v for v in result.data_vars if v not in stored.variables]
            for name, coord in result.coords.items():
                if name != self.dim and name in stored.coords and not np.array_equal(stored[name].values, coord.values):
                    raise CubeError(f"coordinate {name!r} of this step differs from the one stored in the cube")
            stored_coords = set(stored.variables)
            n_steps = stored.sizes[self.dim]
        if not missing:
            return
        variables, encoding = {}, {}
        for name in missing:
            var = result[name]
            if var.dims[0] != self.dim:
                raise CubeError(f"variable {name!r} must have step as its first dimension, has {var.dims}")
            shape = (n_steps, *var.shape[1:])
            variables[name] = (var.dims, np.broadcast_to(_fill_value(var.dtype), shape), var.attrs)
            encoding[name] = {"chunks": (1, *var.shape[1:])}
        coords = {
            name: _portable(coord)
            for name, coord in result.coords.items()
            if name != self.dim and name not in stored_coords
        }
        new = xr.Dataset(variables, coords=coords)
        new.attrs = _read_attrs(self.path)  # xarray rewrites the root attributes on append
        new.to_zarr(self.path, mode="a", consolidated=False, encoding=encoding)
        zarr.consolidate_metadata(self.path)

    def _extend(self, new_steps: list[int]) -> None:
        if not new_steps:
            return
        n_old = len(self.stored_steps())
        self._update_attrs(extending={"from": n_old})
        with xr.open_zarr(self.path, consolidated=False, chunks=None) as stored:
            stepped = {n: v for n, v in stored.data_vars.items() if self.dim in v.dims}
            variables = {
                n: (v.dims, np.broadcast_to(_fill_value(v.dtype), (len(new_steps), *v.shape[1:])))
                for n, v in stepped.items()
            }
        attrs = _read_attrs(self.path)
        attrs["steps"] = {**attrs["steps"], **{str(s): {"status": PENDING} for s in new_steps}}
        if isinstance(attrs.get(APPENDED_AT), list):  # a cube older than the record has none to extend
            attrs[APPENDED_AT] = [*attrs[APPENDED_AT], n_old]
        new = xr.Dataset(variables, coords={self.dim: np.asarray(new_steps, dtype="int64")}, attrs=attrs)
        new.to_zarr(self.path, mode="a", append_dim=self.dim, consolidated=False)
        group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        group.attrs.pop("extending", None)
        zarr.consolidate_metadata(self.path)


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> tuple[str, Any, Any]:
    """The first differing key, dotted into nested settings (``analysis.seed``), and both values."""
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x != y:
            if isinstance(x, Mapping) and isinstance(y, Mapping):
                return _first_difference(x, y, f"{prefix}{key}.")
            return f"{prefix}{key}", x, y
    return prefix.rstrip("."), a, b


def read_identity(path: str | Path) -> dict[str, Any]:
    """The identity a cube was made with ({} when there is no cube at ``path``)."""
    path = Path(path)
    return dict(_read_attrs(path).get("identity", {})) if (path / "zarr.json").is_file() else {}


def _fill_value(dtype: np.dtype) -> Any:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return dtype.type(np.nan)
    if dtype.kind in "iu":
        return dtype.type(-1 if dtype.kind == "i" else 0)
    if dtype.kind == "b":
        return np.False_
    raise CubeError(f"cannot pre-allocate a variable of dtype {dtype}; use numbers or booleans per step")


def _portable(coord: xr.DataArray) -> xr.DataArray:
    """Labels as variable-length strings: zarr v3 has no stable fixed-width string type."""
    return coord.astype(object) if coord.dtype.kind == "U" else coord


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so attrs never hold numpy scalars, paths or tuples."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
