"""The root metadata of a cube (its ``zarr.json``), read and checked.

A damaged file (not JSON, not UTF-8, no step records, a step record that is not a record)
is one line naming the cube (:class:`dynamics.errors.DamagedCubeError`, exit code 2), never a
traceback from deep inside a reader, and nothing in the cube is changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zarr

from dynamics.errors import DamagedCubeError

PENDING = "pending"


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
    for key, record in steps.items():
        if not isinstance(record, dict) or not isinstance(record.get("status", PENDING), str):
            raise DamagedCubeError(
                f"cube {str(path)!r} is damaged: the record of step {key} in its zarr.json is "
                f"{json.dumps(record)[:60]}, not a step record; nothing was changed: restore the "
                "cube from a copy or choose another one"
            )
    return dict(attrs)


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
    try:
        zarr.open_array(path / "step", mode="r")[:]
    except Exception as exc:  # noqa: BLE001 - zarr and its codecs raise many kinds for a damaged chunk
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DamagedCubeError(
            f"cube {str(path)!r} is damaged: its step coordinate cannot be read ({reason}); "
            "nothing was changed: restore the cube from a copy or choose another one"
        ) from None
