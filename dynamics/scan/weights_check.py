"""A resumed or extended scan checks that its cube's done steps and reference step still have their weights.

Every done step records the sha256 of its weight files, and every run the weights of the
reference step its cohort was fixed on (``runs[i]["reference_weights"]``). Before a run
writes anything, :func:`refuse_changed_weights` compares them with what the source serves
now (:func:`checkpoints.weight_check.weight_change`, cheapest source first, never a
download) and refuses a change in one line naming the step and both hashes:

- a changed reference step always (the cohort and every ``drift_ref`` rest on its old
  weights, and ``--overwrite`` recomputes steps but keeps the cohort);
- a changed done step unless ``--overwrite`` recomputes it (it is among the requested steps).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from checkpoints.weight_check import WeightChange, WeightsChangedError, weight_change
from store.metadata import read_root_attrs

log = logging.getLogger(__name__)


def refuse_changed_weights(
    out: str, identity: Mapping[str, Any], source: Any, reference: int, requested: Iterable[int], overwrite: bool
) -> None:
    """Raise WeightsChangedError (exit code 2) when the cube at ``out`` holds results of other weights."""
    path = Path(out)
    if not (path / "zarr.json").is_file():
        return
    attrs = read_root_attrs(path)
    if attrs.get("identity") != _as_stored(identity):
        return  # another analysis: the cube writer refuses it (or re-initialises one nothing was done in)
    records = {int(step): record for step, record in attrs["steps"].items()}
    changed = weight_change(source, reference, stored_reference(records, attrs.get("runs"), reference))
    if changed is not None:
        raise WeightsChangedError(
            f"--out {out}: the reference step {reference}, on which this cube's cohort was fixed, has other "
            f"weights now ({changed.hashes()}); the cohort and every step's drift_ref rest on the stored weights, "
            "and --overwrite recomputes steps but keeps the cohort: scan into another --out"
        )
    changes = [
        change
        for step, record in sorted(records.items())
        if step != reference and record.get("status") == "done" and (change := weight_change(source, step, record))
    ]
    wanted = set(requested)
    kept = [c for c in changes if not (overwrite and c.step in wanted)]
    if kept:
        raise WeightsChangedError(_done_steps_message(out, source.model_id, kept, overwrite))
    for change in changes:
        log.info("step %d has other weights now (%s): recomputed (--overwrite)", change.step, change.hashes())


def stored_reference(records: Mapping[int, Mapping[str, Any]], runs: Any, reference: int) -> Mapping[str, Any] | None:
    """The reference step's stored weights: its done record, else the last run's record of them."""
    record = records.get(reference, {})
    if record.get("status") == "done" and record.get("weights_sha256"):
        return record
    recorded = [run.get("reference_weights") for run in runs or [] if isinstance(run, Mapping)]
    return next((r for r in reversed(recorded) if isinstance(r, Mapping) and r.get("weights_sha256")), None)


def _done_steps_message(out: str, model: str, changes: list[WeightChange], overwrite: bool) -> str:
    first, others = changes[0], [c.step for c in changes[1:]]
    more = f"; {len(others)} more done step(s) changed too: {', '.join(map(str, others))}" if others else ""
    remedy = (
        "--overwrite recomputes only requested steps: add them to --steps, or scan into another --out"
        if overwrite
        else "--overwrite recomputes every requested step (done ones included) on the weights served now; "
        "or scan into another --out"
    )
    return (
        f"--out {out}: step {first.step} was measured on other weights than {model} serves now "
        f"({first.hashes()}){more}; {remedy}"
    )


def _as_stored(value: Any) -> Any:
    """``value`` as the cube's attributes hold it (through JSON), to compare with a stored identity."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
