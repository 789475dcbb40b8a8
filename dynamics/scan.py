"""`dynamics scan`: stream a model's checkpoints and store one step result per step.

Data flow: step spec -> checkpoint source (prefetch, eviction) -> analysis of one loaded
checkpoint -> one step result (an ``xarray.Dataset`` with a length-1 ``step`` dimension)
-> the cube, which writes it and then marks the step done.
"""

from __future__ import annotations

import errno
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from checkpoints.models import resolve_model
from checkpoints.source import Checkpoint, CheckpointSource, RetryPolicy, open_source
from checkpoints.steps import parse_steps
from checkpoints.stream import stream_checkpoints
from dynamics import __version__
from dynamics.config import config_dict, option
from dynamics.errors import CheckpointError, DynamicsError, UserInputError
from store.cube import CubeWriter

log = logging.getLogger(__name__)

PHASES = ("download", "load", "statistics", "evaluation")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ScanConfig:
    """Everything `dynamics scan` needs; the CLI is generated from these fields."""

    model: str = option(help="Pythia alias (pythia-1.4b), Hub id, local suite directory or .gguf file", flag="-m")
    out: str = option(help="the cube to create or resume (a .zarr directory)", flag="-o")
    steps: str = option("final", help="step spec: START:STOP:STEP (STOP inclusive), N, a,b,c, pythia, log, final, all")
    on_error: Literal["skip", "stop"] = option("skip", help="a checkpoint that fails after retries: record it and go on, or stop")
    keep_checkpoints: bool = option(False, help="keep downloaded revisions in the Hugging Face cache")
    overwrite: bool = option(False, help="recompute steps that are already done in the cube")
    retries: int = option(4, help="attempts per checkpoint download (transient errors back off exponentially)")
    cache_dir: str | None = option(None, help="Hugging Face cache directory (default: the hub's own)")
    device: str = option("auto", help="cuda, cuda:N, cpu or auto (CUDA when present)")
    dtype: str = option("float32", help="model weights dtype", choices=list(DTYPES))
    prefetch: bool = option(True, help="download step t+1 while step t is analysed")


@dataclass
class ScanSummary:
    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already done before this run


Analysis = Callable[[Any, Checkpoint, dict[str, float]], dict[str, xr.DataArray]]


def weight_summary(model: Any, checkpoint: Checkpoint, timings: dict[str, float]) -> dict[str, xr.DataArray]:
    """The always-available part of a step result: the parameter count and its L2 norm."""
    start = time.perf_counter()
    n = sum(p.numel() for p in model.parameters())
    norm = float(np.sqrt(sum(float(p.detach().float().pow(2).sum()) for p in model.parameters())))
    timings["statistics"] = timings.get("statistics", 0.0) + time.perf_counter() - start
    return {
        "n_parameters": xr.DataArray([n], dims="step"),
        "weight_norm": xr.DataArray([norm], dims="step", attrs={"units": "L2 norm of all parameters"}),
    }


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserInputError(f"--device {device}: CUDA is not available here; use cpu or auto")
        return device
    raise UserInputError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N")


def plan_scan(config: ScanConfig, source: CheckpointSource | None = None) -> tuple[CheckpointSource, list[int]]:
    """Validate the request (before any download): the source and the steps it asks for."""
    ref = resolve_model(config.model)
    if config.retries < 1:
        raise UserInputError(f"--retries {config.retries}: must be at least 1")
    if config.dtype not in DTYPES:
        raise UserInputError(f"--dtype {config.dtype!r} is not one of {', '.join(DTYPES)}")
    if not config.out.endswith(".zarr"):
        raise UserInputError(f"--out {config.out!r}: a cube is a directory whose name ends in .zarr")
    resolve_device(config.device)
    if source is None:
        source = open_source(
            ref, cache_dir=config.cache_dir, retry=RetryPolicy(attempts=config.retries), keep=config.keep_checkpoints
        )
    steps = parse_steps(config.steps, source.available_steps(), source=source.model_id)
    return source, steps


def run_scan(
    config: ScanConfig,
    source: CheckpointSource | None = None,
    analyses: list[Analysis] | None = None,
) -> ScanSummary:
    """Scan the steps of ``config`` into its cube; resumable, one region write per step."""
    source, steps = plan_scan(config, source)
    analyses = analyses if analyses is not None else [weight_summary]
    device = resolve_device(config.device)
    identity = {"model": source.model_id, "analysis": "weights-v1"}
    provenance = {
        "model": config.model,
        "model_id": source.model_id,
        "package_version": __version__,
        "config": config_dict(config),
        "host": platform.node(),
    }
    summary = ScanSummary()
    with CubeWriter(config.out, steps, identity, provenance, overwrite=config.overwrite) as cube:
        todo = cube.todo()
        summary.skipped = [s for s in steps if s not in todo]
        if summary.skipped:
            log.info("%d of %d steps already done in %s; computing %d", len(summary.skipped), len(steps), config.out, len(todo))
        bar = tqdm(total=len(todo), desc=f"scan {config.model}", unit="step", dynamic_ncols=True)
        try:
            for checkpoint in stream_checkpoints(source, todo, prefetch=config.prefetch):
                bar.set_postfix_str(f"step {checkpoint.step}")
                if not checkpoint.ok:
                    cube.mark_failed(checkpoint.step, checkpoint.error or "unknown error", checkpoint.record())
                    summary.failed.append(checkpoint.step)
                    if config.on_error == "stop":
                        raise CheckpointError(f"{checkpoint.error} (stopping: --on-error stop)")
                    log.warning("step %d failed, recorded and skipped: %s", checkpoint.step, checkpoint.error)
                    bar.update()
                    continue
                result = analyse_step(checkpoint, analyses, device, config.dtype)
                _write(cube, result, checkpoint)
                phases = result["seconds"].values[0]
                bar.set_postfix_str(f"step {checkpoint.step} " + " ".join(f"{p} {t:.1f}s" for p, t in zip(PHASES, phases)))
                summary.done.append(checkpoint.step)
                bar.update()
        finally:
            bar.close()
    return summary


def analyse_step(checkpoint: Checkpoint, analyses: list[Analysis], device: str, dtype: str) -> xr.Dataset:
    """Load one checkpoint and turn it into a step result."""
    import torch

    timings = {"download": checkpoint.seconds}
    start = time.perf_counter()
    model = checkpoint.load_model(device=device, dtype=getattr(torch, dtype))
    timings["load"] = time.perf_counter() - start
    variables: dict[str, xr.DataArray] = {}
    with torch.inference_mode():
        for analysis in analyses:
            variables.update(analysis(model, checkpoint, timings))
    del model
    seconds = [[timings.get(p, 0.0) for p in PHASES]]
    variables["seconds"] = xr.DataArray(seconds, dims=("step", "phase"), attrs={"units": "s"})
    log.info("step %d: %s", checkpoint.step, ", ".join(f"{p} {timings.get(p, 0.0):.1f}s" for p in PHASES))
    return xr.Dataset(variables, coords={"step": [checkpoint.step], "phase": list(PHASES)})


def _write(cube: CubeWriter, result: xr.Dataset, checkpoint: Checkpoint) -> None:
    try:
        cube.write_step(result, {**checkpoint.record(), "attempts": checkpoint.attempts})
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DynamicsError(
                f"disk full while writing step {checkpoint.step} to {cube.path}; free space and re-run "
                "the same command (done steps are kept)"
            ) from exc
        raise
