"""Checkpoints already on local disk: a suite of saved steps, or one saved model.

Both belong to the user: nothing is downloaded (``expected_bytes`` is 0) and nothing is
ever deleted (``release`` does nothing).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from checkpoints.checkpoint import Checkpoint
from checkpoints.fingerprints import weight_fingerprints
from checkpoints.names import ModelRef
from dynamics.errors import CheckpointError

__all__ = ["LocalSuiteSource", "SingleModelSource"]


class LocalSuiteSource:
    """A directory with one saved model per step: ``step0/``, ``step1000/``, ..."""

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.model_id = ref.location
        self.root = Path(ref.location)

    def available_steps(self) -> list[int]:
        return sorted(
            int(m.group(1))
            for child in self.root.iterdir()
            if child.is_dir() and (m := re.fullmatch(r"step(\d+)", child.name))
        )

    def fetch(self, step: int) -> Checkpoint:
        path = self.root / f"step{step}"
        if not path.is_dir():
            raise CheckpointError(f"{self.root} has no step{step}/ directory")
        return Checkpoint(step=step, revision=f"step{step}", path=path, commit=_suite_fingerprint(path))

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        return weight_fingerprints(self.root / f"step{step}") or None

    def weights_record(self, step: int, known: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The step's weights as they are on disk now (files unchanged since ``known`` are not read again)."""
        return self.fetch(step).weights_record(known) if (self.root / f"step{step}").is_dir() else None

    def expected_bytes(self, step: int) -> int:
        """Nothing is downloaded: the suite is on disk already."""
        return 0

    def check_available(self) -> None:
        """A local suite that resolved is there."""

    def release(self, checkpoint: Checkpoint) -> None:
        """Local suites belong to the user: nothing is ever deleted."""


class SingleModelSource:
    """One saved model (a directory or a ``.gguf`` file), offered as step 0."""

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.model_id = ref.location
        location = Path(ref.location)
        self.gguf_file: str | None
        if ref.kind == "gguf":
            self.path, self.gguf_file = location.parent, location.name
        else:
            ggufs = sorted(location.glob("*.gguf"))
            has_config = (location / "config.json").is_file()
            self.path, self.gguf_file = location, (ggufs[0].name if ggufs and not has_config else None)

    def available_steps(self) -> list[int]:
        return [0]

    def fetch(self, step: int) -> Checkpoint:
        if step != 0:
            raise CheckpointError(f"{self.model_id} is a single model: its only step is 0")
        return Checkpoint(step=0, revision=None, path=self.path, gguf_file=self.gguf_file)

    def weight_fingerprint(self, step: int) -> dict[str, str] | None:
        return weight_fingerprints(self.path, self.gguf_file) or None

    def weights_record(self, step: int, known: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The model's weights as they are on disk now (files unchanged since ``known`` are not read again)."""
        return self.fetch(step).weights_record(known) if step == 0 else None

    def expected_bytes(self, step: int) -> int:
        """Nothing is downloaded: the model is on disk already."""
        return 0

    def check_available(self) -> None:
        """A local model that resolved is there."""

    def release(self, checkpoint: Checkpoint) -> None:
        """A single local model belongs to the user: nothing is deleted."""


def _suite_fingerprint(path: Path) -> str:
    """A cheap identity of a local checkpoint: names, sizes and mtimes of its weight files."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return "local-" + h.hexdigest()[:16]
