"""Steps whose weights equal another step's: found from the weight fingerprints, measured once.

Checkpoint suites sometimes serve the same weights under two revisions (EleutherAI/pythia
issues #195, #205, #206). Before any step is measured, every step to do is fingerprinted
(the sha256 of its weight files: from the Hugging Face cache's blob names, the Hub's file
metadata or the files themselves, :meth:`checkpoints.source.CheckpointSource.weight_fingerprint`),
and so are the done steps of the cube (from their records). A step whose weights equal an
earlier step's is a duplicate: unless ``--recompute-duplicates``, it is not measured, its
numbers are copied from the earlier step (the original) and the copy says so:
``duplicate_of`` (a coordinate along ``step``, -1 for a measured step) and the record's
``duplicate_of`` / ``copied_from``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from checkpoints.fingerprints import weights_identity

log = logging.getLogger(__name__)


def find_duplicates(fingerprints: Mapping[int, Mapping[str, str] | None]) -> dict[int, int]:
    """``{step: original step}`` for every step whose weight fingerprints equal an earlier step's.

    The original of a group is its earliest step; steps without a fingerprint are never duplicates.
    """
    first: dict[str, int] = {}
    duplicates: dict[int, int] = {}
    for step in sorted(fingerprints):
        identity = weights_identity(fingerprints[step])
        if identity is None:
            continue
        if identity in first:
            duplicates[step] = first[identity]
        else:
            first[identity] = step
    return duplicates


def plan_duplicates(
    todo: Iterable[int], records: Mapping[int, Mapping[str, Any]], fingerprint: Any
) -> tuple[dict[int, int], dict[int, dict[str, str] | None]]:
    """The duplicates among ``todo`` (originals may be done steps), and each todo step's fingerprints.

    ``fingerprint(step)`` gives a step's ``{file: sha256}`` (or None); done steps are read from
    ``records`` (their ``weights_sha256``).
    """
    todo = list(todo)
    prints: dict[int, dict[str, str] | None] = {step: fingerprint(step) for step in todo}
    known: dict[int, Mapping[str, str] | None] = {
        step: record.get("weights_sha256")
        for step, record in records.items()
        if record.get("status") == "done" and step not in prints and not record.get("duplicate_of")
    }
    duplicates = find_duplicates({**known, **prints})
    return {step: original for step, original in duplicates.items() if step in prints}, prints


def copied_result(original: xr.Dataset, step: int, of: int) -> xr.Dataset:
    """The stored result of step ``of`` relabelled as ``step`` and marked as its copy (no time spent)."""
    copy = original.assign_coords(step=[step])
    copy["duplicate_of"] = xr.DataArray(
        np.array([of], dtype="int64"),
        dims="step",
        coords={"step": [step]},
        attrs={"long_name": "the step whose numbers this step's are a copy of (-1: measured)"},
    )
    if "seconds" in copy:
        copy["seconds"] = copy["seconds"] * 0.0
    return copy
