"""Checkpoint sources: what every source offers, and the source for a resolved model name.

A source turns a training step into a :class:`~checkpoints.checkpoint.Checkpoint` on local
disk (``fetch``) and forgets it again (``release``). :class:`checkpoints.stream.Prefetcher`
drives a source with steps fetched ahead (the scan's worker holds one), bounded on disk by
what each fetch is expected to take (``expected_bytes``); nothing here knows what is
computed from the weights. The sources: Hub revisions (:mod:`checkpoints.hub_source`),
local suites and single saved models (:mod:`checkpoints.local_sources`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from checkpoints.checkpoint import Checkpoint
from checkpoints.hub_source import HubSource
from checkpoints.local_sources import LocalSuiteSource, SingleModelSource
from checkpoints.names import ModelRef

__all__ = ["CheckpointSource", "open_source"]


class CheckpointSource(Protocol):
    """Where a model's checkpoints come from."""

    model_id: str

    def available_steps(self) -> list[int] | None:
        """The steps this source offers, or None when it cannot tell without the network."""

    def check_available(self) -> None:
        """Raise a UserInputError now when no step could be fetched at all (the model cannot be had)."""

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        """``{weight file: sha256}`` of ``step`` without downloading it, or None when it cannot be had."""

    def weights_record(self, step: int, known: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """``step``'s weights as the source serves them now (``commit``, ``weights_sha256``), had without a
        download, the cheapest way ``known`` (its stored record) allows; None when they cannot be had so."""

    def expected_bytes(self, step: int) -> int | None:
        """Bytes a fetch of ``step`` adds to local disk (0: nothing to download), or None when unknown."""

    def fetch(self, step: int) -> Checkpoint:
        """Make ``step`` available on local disk; raises on failure."""

    def release(self, checkpoint: Checkpoint) -> None:
        """Free what ``fetch`` took (disk space), if it is ours to free."""


def open_source(ref: ModelRef, **hub_options: Any) -> CheckpointSource:
    """The source for a resolved model name; ``hub_options`` go to :class:`HubSource`."""
    if ref.kind == "hub":
        return HubSource(ref, **hub_options)
    if ref.kind == "local_suite":
        return LocalSuiteSource(ref)
    return SingleModelSource(ref)
