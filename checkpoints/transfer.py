"""How checkpoint downloads travel, and how many bytes one will take.

Since huggingface_hub 1.0 the Hub's fast transfer backend is ``hf_xet`` (the ``hf_transfer``
package and ``HF_HUB_ENABLE_HF_TRANSFER`` are no longer used; the hub warns when the variable
is set). The hub downloads Xet-stored files through ``hf_xet`` whenever the package imports
and ``HF_HUB_DISABLE_XET`` is not set, else over plain HTTP. ``hf_xet`` reads
``HF_XET_HIGH_PERFORMANCE`` itself, once, when its runtime starts: it then uses every CPU core
and larger buffers to fill the link. A scan on CUDA turns it on (the CPU is idle while the GPU
measures) unless the user set the variable either way; a scan on the CPU leaves it alone (the
download would compete with the measurement for the cores).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

XET_MODULE = "hf_xet"
HIGH_PERFORMANCE = "HF_XET_HIGH_PERFORMANCE"
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TransferBackend:
    """The backend the hub downloads through in this process."""

    name: str  # hf_xet | http
    high_performance: bool = False

    def __str__(self) -> str:
        return f"{self.name} (high performance)" if self.high_performance else self.name


def transfer_backend() -> TransferBackend:
    """``hf_xet`` when it imports and the hub may use it, else ``http``; detected by import, not by version."""
    from huggingface_hub import constants

    if getattr(constants, "HF_HUB_DISABLE_XET", False):
        return TransferBackend("http")
    try:
        importlib.import_module(XET_MODULE)
    except ImportError:
        return TransferBackend("http")
    return TransferBackend(XET_MODULE, os.environ.get(HIGH_PERFORMANCE, "").strip().lower() in _TRUE)


def use_fast_transfer(device: str) -> TransferBackend:
    """Turn on hf_xet's high-performance mode for a CUDA scan (unless the user chose), and say which backend is used."""
    backend = transfer_backend()
    chosen_by = "set by the user" if HIGH_PERFORMANCE in os.environ else None
    if backend.name == XET_MODULE and chosen_by is None and device.startswith("cuda"):
        os.environ[HIGH_PERFORMANCE] = "1"
        backend, chosen_by = transfer_backend(), "set for a CUDA scan"
    log.info(
        "checkpoint downloads use %s%s",
        backend,
        f" ({HIGH_PERFORMANCE}={os.environ.get(HIGH_PERFORMANCE, '')}, {chosen_by})" if chosen_by else "",
    )
    return backend


def hub_file_sizes(repo_id: str, revision: str) -> dict[str, int]:
    """``{file: bytes}`` of a revision's top-level files, from the Hub's file metadata (one request, no
    download; ``model_info``, which the client does not retry by itself: the run's retry budget does)."""
    from huggingface_hub import HfApi

    siblings = HfApi().model_info(repo_id, revision=revision, files_metadata=True).siblings or []
    return {s.rfilename: int(s.size) for s in siblings if "/" not in s.rfilename and s.size is not None}
