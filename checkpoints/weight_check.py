"""Whether a stored result's weights are still the weights its source serves: checked on every resume.

A cube records, per done step, the sha256 of every weight file it was measured on (and the
commit, and the size and mtime of local files). Before a run adds to such a cube, each
stored record is compared with what the source serves now, by the cheapest way there is
(:meth:`checkpoints.source.CheckpointSource.weights_record`): a Hub revision that still
names the recorded commit is unchanged without any request; a cached snapshot gives its
blob names; the Hub's file metadata costs one request; a local file whose size and mtime
are the recorded ones keeps its recorded hash. Where the weights cannot be had without a
download, the step is not checked (said at debug level). Nothing here knows what a cube is:
callers pass the records and word the refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynamics.errors import UserInputError

__all__ = ["WeightChange", "WeightsChangedError", "differing_file", "weight_change"]

log = logging.getLogger(__name__)


class WeightsChangedError(UserInputError):
    """Stored results were measured on other weights than the source serves now (exit code 2, nothing written)."""


@dataclass(frozen=True)
class WeightChange:
    """One weight file of ``step`` whose sha256 differs from the stored one (None: no such file)."""

    step: int
    file: str
    stored: str | None
    now: str | None

    def hashes(self) -> str:
        """``model.safetensors: stored sha256 <a>, now <b>``."""
        return f"{self.file}: stored sha256 {self.stored or '(no such file)'}, now {self.now or '(no such file)'}"


def weight_change(source: Any, step: int, stored: Mapping[str, Any] | None) -> WeightChange | None:
    """The first weight file of ``step`` that ``source`` serves with another sha256 than ``stored`` records,
    or None when they are equal, or when either side is unknown (nothing recorded, or not to be had cheaply)."""
    if not (stored or {}).get("weights_sha256"):
        return None
    return differing_file(step, stored, source.weights_record(step, stored))


def differing_file(
    step: int, stored: Mapping[str, Any] | None, current: Mapping[str, Any] | None
) -> WeightChange | None:
    """The first weight file whose sha256 differs between two records of ``step``'s weights (None: equal,
    or either unknown)."""
    recorded = (stored or {}).get("weights_sha256")
    prints = (current or {}).get("weights_sha256")
    if not recorded:
        return None
    if not prints:
        log.debug("step %d: its weights cannot be had without a download; not compared with the stored ones", step)
        return None
    for name in sorted(set(recorded) | set(prints)):
        if recorded.get(name) != prints.get(name):
            return WeightChange(step, name, recorded.get(name), prints.get(name))
    return None
