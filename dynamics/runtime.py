"""Where and how a model runs: device, dtype, CPU threads, loading, timing, memory budgets.

Shared by the scan (:mod:`dynamics.scan`) and the study (:mod:`dynamics.study`), so both
resolve ``--device auto``, load a checkpoint and pick their thread count the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from checkpoints.source import Checkpoint
from dynamics.errors import UserInputError, tag_phase

SMALL_MODEL_PARAMETERS = 50_000_000
DEFAULT_WINDOW = 2048


def resolve_device(device: str, here: bool = True) -> str:
    """The torch device for ``device``; ``here=False`` only checks the spelling (workers resolve it)."""
    if device == "auto":
        return ("cuda" if torch.cuda.is_available() else "cpu") if here else device
    if device == "cpu" or device.startswith("cuda"):
        if here and device.startswith("cuda") and not torch.cuda.is_available():
            raise UserInputError(f"--device {device}: CUDA is not available here; use cpu or auto")
        return device
    raise UserInputError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N")


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on CUDA, float32 on the CPU; any other name is kept."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def set_threads(threads: int, model: Any) -> None:
    """Measured on the toy organism on 2 loaded cores: 1 thread scored TSE 17x faster than 2."""
    if threads == 0:
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
        threads = 1 if small else torch.get_num_threads()
    torch.set_num_threads(threads)


def load_checkpoint_model(checkpoint: Checkpoint, device: str, dtype: str) -> Any:
    """The checkpoint's model on ``device`` in the dtype named ``dtype`` (e.g. ``"float32"``)."""
    return checkpoint.load_model(device=device, dtype=getattr(torch, dtype))


def default_window(model: Any, window: int | None) -> int:
    """``window`` if given, else the model's context length capped at 2048 tokens."""
    if window:
        return window
    context = getattr(model.config, "max_position_embeddings", DEFAULT_WINDOW) or DEFAULT_WINDOW
    return min(DEFAULT_WINDOW, int(context))


def gib_to_bytes(gib: float) -> int:
    """A memory budget given in GiB, in bytes."""
    return int(gib * 2**30)


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall time of the body to ``timings[phase]``."""
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        tag_phase(exc, phase)
        raise
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start
