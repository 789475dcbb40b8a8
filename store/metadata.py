"""The root metadata of a cube (its ``zarr.json``), read and checked.

A damaged file (not JSON, not UTF-8, no step records, a step record that is not a record)
is one line naming the cube (:class:`dynamics.errors.DamagedCubeError`, exit code 2), never a
traceback from deep inside a reader, and nothing in the cube is changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynamics.errors import DamagedCubeError

PENDING = "pending"


def read_root_attrs(path: Path) -> dict[str, Any]:
    """The root attributes; damaged metadata or step records are one line (DamagedCubeError), never a traceback."""
    try:
        with open(path / "zarr.json", encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise DamagedCubeError(f"cube {str(path)!r} is damaged: its zarr.json is not valid JSON ({exc}); nothing was "
                               "changed: restore the cube from a copy or choose another one") from None
    attrs: Any = meta.get("attributes", {}) if isinstance(meta, dict) else None
    steps = attrs.get("steps") if isinstance(attrs, dict) else None
    if not isinstance(steps, dict) or not isinstance(attrs.get("identity", {}), dict):
        raise DamagedCubeError(f"cube {str(path)!r} is damaged: the attributes of its zarr.json are not a cube's "
                               "(no step records); nothing was changed: restore it from a copy or choose another one")
    for key, record in steps.items():
        if not isinstance(record, dict) or not isinstance(record.get("status", PENDING), str):
            raise DamagedCubeError(f"cube {str(path)!r} is damaged: the record of step {key} in its zarr.json is "
                                   f"{json.dumps(record)[:60]}, not a step record; nothing was changed: restore the "
                                   "cube from a copy or choose another one")
    return dict(attrs)
