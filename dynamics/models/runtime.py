"""Where and how a model runs: device, dtype, CPU threads, loading, timing, memory budgets.

Shared by the scan (:mod:`dynamics.scan`) and the study (:mod:`dynamics.study`), so both
resolve ``--device auto``, load a checkpoint and pick their thread count the same way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from checkpoints.checkpoint import Checkpoint
from dynamics.errors import UserInputError, tag_phase
from dynamics.models.cpu_threads import set_batch_workers, set_cpu_threads, usable_cores
from dynamics.models.modelcalls import logits_finite

log = logging.getLogger(__name__)

SMALL_MODEL_PARAMETERS = 50_000_000
#: Torch's own thread count, before any model set it (a small model sets one thread; a
#: larger one loaded later in the same process still gets these).
TORCH_DEFAULT_THREADS = torch.get_num_threads()
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


HALF_DTYPES = ("float16", "bfloat16")
#: The capture budget on the CPU when --memory-budget-gib is 0 (auto).
CPU_MEMORY_BUDGET_GIB = 2.0
#: The share of the device memory free after loading that an automatic capture budget takes.
CUDA_MEMORY_SHARE = 0.5


def checkpoint_dtype(checkpoint: Checkpoint) -> str | None:
    """The dtype the checkpoint's ``config.json`` declares (``torch_dtype`` or ``dtype``), if any."""
    if checkpoint.path is None or checkpoint.gguf_file:
        return None  # GGUF weights are dequantized to float32
    try:
        config = json.loads((Path(checkpoint.path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if isinstance(value, str) and value in ("float32", *HALF_DTYPES):
            return value
    return None


def auto_dtype(checkpoint: Checkpoint, device: str) -> str:
    """``--dtype auto``: on CUDA the checkpoint's own dtype (float32 if it declares none), on the CPU float32."""
    if not device.startswith("cuda"):
        return "float32"
    return checkpoint_dtype(checkpoint) or "float32"


def evaluation_flops(model: Any) -> tuple[float, float]:
    """FLOPs of one evaluated token: ``(body, head)``, the layers' matrix products and the
    unembedding of a scored position (``2 x d_model x vocabulary``); attention over the
    context is left out (short sentences dominate the evaluation's calls)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    d = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)
    inner = int(
        getattr(config, "intermediate_size", 0)
        or getattr(config, "ffn_dim", 0)
        or getattr(config, "n_inner", 0)
        or 4 * d
    )
    gated = getattr(config, "model_type", "") not in ("gpt_neox", "gpt2", "opt")
    body = 2.0 * layers * (4 * d * d + (3 if gated else 2) * d * inner)
    head = 2.0 * d * int(getattr(config, "vocab_size", 0) or 0)
    return body, head


def set_threads(threads: int, model: Any) -> None:
    """``--threads 0``: :func:`threads_for` the model; for a model run on one thread, the
    evaluation's batches run side by side on every usable core, each on one thread, and a
    lone batch's vocabulary projection on the thread count timed fastest per model
    (:mod:`dynamics.models.cpu_threads`); either way the numbers are those of one thread. Any
    other value as given, everywhere."""
    chosen = threads or threads_for(model)
    torch.set_num_threads(chosen)
    small = not threads and chosen == 1
    set_cpu_threads("timed" if small else None)
    set_batch_workers(usable_cores() if small else 1)


def threads_for(model: Any, available: int | None = None) -> int:
    """The automatic thread count: one for a model under :data:`SMALL_MODEL_PARAMETERS`, all otherwise.

    Measured, not guessed (``scripts/bench_threads.py``, 1 and 2 threads interleaved, 3 rounds
    each, on this project's 2-core machine shared with other jobs, load average 4.8-7.5),
    seconds per round, median:

    =====================================  ============  ==========  ==========  =========
    shape (head share of a token's FLOPs)  task          1 thread    2 threads   1/2
    =====================================  ============  ==========  ==========  =========
    Pythia-14m, vocabulary 50304 (85%)     220 TSE pairs 3.74        12.94       0.29
    Pythia-14m                             2 x 2048 ppl  5.75        12.61       0.46
    toy organism, vocabulary 285 (8%)      220 TSE pairs 0.50        3.95        0.13
    toy organism                           16 x 64 ppl   0.06        2.73        0.02
    =====================================  ============  ==========  ==========  =========

    So a large vocabulary (the head at 85% of the FLOPs, :func:`evaluation_flops`) narrows
    the gap but does not turn it: a second thread that competes with other jobs for two
    cores costs more than it brings. A small model therefore runs on one thread, and
    :func:`set_threads` lets :mod:`dynamics.models.cpu_threads` time its vocabulary projection on one
    thread against every core, per model: on the same machine idle, both cores won there
    (``docs/speed.md``).
    """
    available = available or TORCH_DEFAULT_THREADS
    return 1 if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS else available


def load_checkpoint_model(checkpoint: Checkpoint, device: str, dtype: str) -> Any:
    """The checkpoint's model on ``device`` in the dtype named ``dtype`` (e.g. ``"float32"``, or ``"auto"``).

    With ``auto`` a float16 model whose logits overflow (not finite on a probe) is loaded
    again in bfloat16, which has float32's range.
    """
    name = auto_dtype(checkpoint, device) if dtype == "auto" else dtype
    model = checkpoint.load_model(device=device, dtype=getattr(torch, name))
    if dtype == "auto" and name == "float16" and not logits_finite(model):
        log.info("step %s: float16 logits overflow; loading it in bfloat16 instead", checkpoint.step)
        del model
        model = checkpoint.load_model(device=device, dtype=torch.bfloat16)
    log.debug("step %s loaded in %s on %s", checkpoint.step, next(model.parameters()).dtype, device)
    return model


def capture_budget(memory_budget_gib: float, device: str) -> int:
    """Bytes of captures held at once: the given GiB, or for 0 (auto) on CUDA a share of the
    memory free now (call it after the model is loaded), on the CPU :data:`CPU_MEMORY_BUDGET_GIB`."""
    if memory_budget_gib > 0:
        return gib_to_bytes(memory_budget_gib)
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return max(gib_to_bytes(0.25), int(CUDA_MEMORY_SHARE * free))
    return gib_to_bytes(CPU_MEMORY_BUDGET_GIB)


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
