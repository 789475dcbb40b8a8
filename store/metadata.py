"""The root metadata of a cube (its ``zarr.json``), read and checked.

A damaged file (not JSON, not UTF-8, no step records, a step record that is not a record,
a status other than done/failed/pending, a ``cube_format`` this version does not know) is one
line naming the cube (:class:`dynamics.errors.DamagedCubeError`, exit code 2), never a
traceback from deep inside a reader or numbers read the wrong way, and nothing in the cube is
changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zarr

from dynamics.errors import DamagedCubeError

PENDING = "pending"
#: The dimension along which a cube stores its units when its attributes do not say (scans, older studies).
DEFAULT_UNIT_DIM = "step"


def unit_dimension(path: Path) -> str:
    """The dimension a cube stores its units along: ``step`` for a scan (and a study made before the
    name was recorded), ``condition`` for a study (``attrs["unit_dim"]``)."""
    try:
        with open(Path(path) / "zarr.json", encoding="utf-8") as f:
            attrs = json.load(f).get("attributes", {})
    except (OSError, ValueError):
        return DEFAULT_UNIT_DIM
    dim = attrs.get("unit_dim", DEFAULT_UNIT_DIM) if isinstance(attrs, dict) else DEFAULT_UNIT_DIM
    return dim if isinstance(dim, str) and dim else DEFAULT_UNIT_DIM


STATUSES = ("done", "failed", PENDING)
#: The layout this version writes and reads (``attrs["cube_format"]``).
CUBE_FORMAT = 1
_RESTORE = "nothing was changed: restore the cube from a copy or choose another one"


def read_root_attrs(path: Path) -> dict[str, Any]:
    """The root attributes; damaged metadata or step records are one line (DamagedCubeError), never a traceback."""
    try:
        with open(path / "zarr.json", encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise DamagedCubeError(
            f"cube {str(path)!r} is damaged: its zarr.json is not valid JSON ({exc}); nothing was "
            "changed: restore the cube from a copy or choose another one"
        ) from None
    attrs: Any = meta.get("attributes", {}) if isinstance(meta, dict) else None
    steps = attrs.get("steps") if isinstance(attrs, dict) else None
    if not isinstance(steps, dict) or not isinstance(attrs.get("identity", {}), dict):
        raise DamagedCubeError(
            f"cube {str(path)!r} is damaged: the attributes of its zarr.json are not a cube's "
            "(no step records); nothing was changed: restore it from a copy or choose another one"
        )
    _check_format(path, attrs.get("cube_format"))
    for key, record in steps.items():
        if not isinstance(record, dict) or not isinstance(record.get("status", PENDING), str):
            raise DamagedCubeError(
                f"cube {str(path)!r} is damaged: the record of step {key} in its zarr.json is "
                f"{json.dumps(record)[:60]}, not a step record; {_RESTORE}"
            )
        if record.get("status", PENDING) not in STATUSES:
            raise DamagedCubeError(
                f"cube {str(path)!r} is damaged: step {key} has status {json.dumps(record['status'])[:40]} in its "
                f"zarr.json, expected one of {', '.join(STATUSES)}; {_RESTORE}"
            )
    return dict(attrs)


def _check_format(path: Path, found: Any) -> None:
    if found == CUBE_FORMAT and not isinstance(found, bool):
        return
    what = "has no cube_format" if found is None else f"has cube_format {json.dumps(found)[:40]}"
    raise DamagedCubeError(
        f"cube {str(path)!r} {what}; this version of dynamics reads cube_format {CUBE_FORMAT}: open it with "
        f"the version that wrote it, or restore the cube from a copy (nothing was changed)"
    )


def check_arrays_readable(path: Path) -> None:
    """Every variable's metadata parses and the ``step`` coordinate decodes, else DamagedCubeError.

    Cheap (one small file per variable, one chunk per step): run on every open and resume, so
    a damaged store is one line here and not an exception from deep inside zarr later.
    """
    for child in sorted(path.iterdir()):
        if child.is_dir() and (child / "zarr.json").is_file():
            try:
                json.loads((child / "zarr.json").read_text(encoding="utf-8"))
            except ValueError as exc:
                raise DamagedCubeError(
                    f"cube {str(path)!r} is damaged: the metadata of its variable {child.name} "
                    f"({child.name}/zarr.json) is not valid JSON ({exc}); nothing was changed: "
                    "restore the cube from a copy or choose another one"
                ) from None
    dim = unit_dimension(path)
    try:
        zarr.open_array(path / dim, mode="r")[:]
    except Exception as exc:  # noqa: BLE001 - zarr and its codecs raise many kinds for a damaged chunk
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DamagedCubeError(
            f"cube {str(path)!r} is damaged: its {dim} coordinate cannot be read ({reason}); "
            "nothing was changed: restore the cube from a copy or choose another one"
        ) from None
