"""`dynamics scan`: stream a model's checkpoints and store one step result per step.

Data flow: step spec -> checkpoint source (prefetch, eviction) -> measurements on one
loaded checkpoint (:mod:`dynamics.measures`) -> one step result (an ``xarray.Dataset`` with
a length-1 ``step`` dimension) -> the cube, which writes it and then marks the step done.

The neuron cohort is fixed once, at the reference step (default: the last step asked
for): the top ``--cohort-percent`` by WD, and a random control set of equal size per layer.
Both are static variables of the cube, so every step is measured on the same neurons.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import xarray as xr
from tqdm.auto import tqdm

from checkpoints.models import resolve_model
from checkpoints.source import CheckpointSource, RetryPolicy, open_source
from checkpoints.steps import parse_steps
from dynamics import __version__
from dynamics.config import config_dict, option
from dynamics.errors import CheckpointError, UserInputError, tag_phase
from dynamics.executor import HELP as EXECUTOR_HELP
from dynamics.executor import (
    Completed,
    ExecutorSettings,
    check_settings,
    free_worker_caches,
    open_executor,
    stop_on_unrecoverable,
)
from store.cube import CubeWriter, read_identity

log = logging.getLogger(__name__)

PHASES = ("download", "load", "statistics", "evaluation")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ScanConfig:
    """Everything `dynamics scan` needs; the CLI is generated from these fields."""

    model: str = option(help="Pythia alias (pythia-1.4b), Hub id, local suite directory or .gguf file", flag="-m")
    out: str = option(help="the cube to create or resume (a .zarr directory)", flag="-o")
    steps: str = option("final", help="step spec: START:STOP:STEP (STOP inclusive), N, a,b,c, pythia, log, final, all")
    reference_step: int | None = option(None, help="step whose top neurons form the cohort (default: the cube's own, else the last step asked for)")
    corpus: str = option("auto", help="wikitext2, a text file, or auto (a local suite's heldout.txt, else wikitext2)")
    corpus_split: str = option("test", help="WikiText-2 split (ignored for a file)")
    window: int | None = option(None, help="tokens per corpus window (default: min(2048, the model's context))")
    wd_tokens: int = option(65536, help="corpus tokens whose pre-activations give each neuron's WD")
    ppl_tokens: int = option(16384, help="corpus tokens for perplexity under each condition (0: skip)")
    tse_per_case: int = option(100, help="TSE pairs per case (stratified over sub-cases; 0: skip TSE)")
    cohort_percent: float = option(1.0, help="percent of neurons in the cohort (top WD at the reference step)")
    cohort_scope: Literal["layer", "global"] = option("layer", help="top percent per layer or over all layers")
    stepwise: bool = option(False, help="also ablate each step's own top neurons (condition neg_stepwise)")
    matched: bool = option(False, help="also ablate a perplexity-matched control (condition neg_matched): the bottom "
                           "m%% WD neurons per layer at the reference step, m bisected so that perplexity there "
                           "matches neg_cohort's within 2%%")
    seed: int = option(0, help="seed of the random control set and the TSE sample")
    reduction: Literal["sum", "mean"] = option("sum", help="sentence score: sum or mean of token log-probabilities")
    prefix: bool = option(True, help="score every token, conditioning on BOS/EOS (--no-prefix: leave the first unscored)")
    memory_budget_gib: float = option(2.0, help="GiB of pre-activations held at once (decides layers per pass)")
    batch_size: int = option(4, help="corpus windows per forward pass")
    on_error: Literal["skip", "stop"] = option("skip", help="a checkpoint that fails after retries: record it and go on, or stop")
    keep_checkpoints: bool = option(False, help="keep downloaded revisions in the Hugging Face cache")
    overwrite: bool = option(False, help="recompute steps that are already done in the cube")
    retries: int = option(4, help="attempts per checkpoint download (transient errors back off exponentially)")
    cache_dir: str | None = option(None, help="Hugging Face cache directory (default: the hub's own, ~/.cache/huggingface/hub)")
    device: str = option("auto", help="cuda, cuda:N, cpu or auto (CUDA when present)")
    dtype: str = option("float32", help="model weights dtype", choices=list(DTYPES))
    prefetch: bool = option(True, help="download step t+1 while step t is analysed")
    threads: int = option(0, help="torch CPU threads; 0: auto (1 for models under 50M parameters, whose small "
                          "ops stall on thread barriers, else torch's default)")
    executor: Literal["serial", "dask"] = option("serial", help=EXECUTOR_HELP["executor"])
    scheduler: str = option("local", help=EXECUTOR_HELP["scheduler"])
    workers: int = option(0, help=EXECUTOR_HELP["workers"])
    task_retries: int = option(1, help=EXECUTOR_HELP["task_retries"])
    resources: str = option("", help=EXECUTOR_HELP["resources"])

    def analysis(self) -> dict[str, Any]:
        """The settings that make two cubes' numbers comparable (the cube's identity)."""
        keys = ("corpus_split", "window", "wd_tokens", "ppl_tokens", "tse_per_case", "cohort_percent",
                "cohort_scope", "stepwise", "seed", "reduction", "prefix", "dtype")
        extra = ("matched",) if self.matched else ()  # absent when off: cubes made before --matched still resume
        return {k: getattr(self, k) for k in keys + extra}


# Cubes store each step's cohort weight rows and derive drift_prev from them when opened;
# cubes of the earlier layout stored drift_prev itself and cannot be extended by this one.
DRIFT_PREV = {"drift_prev": {"cosine_to_previous_step": "cohort_weights", "over": "d_model",
                             "attrs": {"long_name": "1 - cos of the member's input weights vs the previous done step"}}}


@dataclass
class ScanSummary:
    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already done before this run


@dataclass
class ScanPlan:
    source: CheckpointSource
    steps: list[int]
    reference_step: int
    corpus: str
    device: str


def resolve_device(device: str, here: bool = True) -> str:
    """The torch device for ``device``; ``here=False`` only checks the spelling (workers resolve it)."""
    if device == "auto":
        return ("cuda" if torch.cuda.is_available() else "cpu") if here else device
    if device == "cpu" or device.startswith("cuda"):
        if here and device.startswith("cuda") and not torch.cuda.is_available():
            raise UserInputError(f"--device {device}: CUDA is not available here; use cpu or auto")
        return device
    raise UserInputError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N")


def plan_scan(config: ScanConfig, source: CheckpointSource | None = None) -> ScanPlan:
    """Validate the whole request before anything is downloaded or written."""
    ref = resolve_model(config.model)
    _check_numbers(config)
    if not config.out.endswith(".zarr"):
        raise UserInputError(f"--out {config.out!r}: a cube is a directory whose name ends in .zarr")
    check_settings(ExecutorSettings.of(config))
    device = resolve_device(config.device, here=config.executor == "serial")
    corpus = _resolve_corpus(config.corpus, ref.location if ref.kind == "local_suite" else None)
    if source is None:
        source = open_source(
            ref, cache_dir=config.cache_dir, retry=RetryPolicy(attempts=config.retries), keep=config.keep_checkpoints
        )
    available = source.available_steps()
    steps = parse_steps(config.steps, available, source=source.model_id)
    stored = read_identity(config.out).get("reference_step")  # a resumed or extended cube keeps its cohort
    reference = config.reference_step if config.reference_step is not None else stored if stored is not None else steps[-1]
    if config.reference_step is not None:
        parse_steps(str(reference), available, source=source.model_id)  # same check, same message
    source.check_available()  # a model missing from an offline cache: one line now, not one per step
    return ScanPlan(source, steps, reference, corpus, device)


def _check_numbers(config: ScanConfig) -> None:
    checks = [
        ("retries", config.retries >= 1, "at least 1"),
        ("wd-tokens", config.wd_tokens >= 2, "at least 2 tokens"),
        ("ppl-tokens", config.ppl_tokens >= 0, "0 or more tokens"),
        ("tse-per-case", config.tse_per_case >= 0, "0 or more pairs"),
        ("cohort-percent", 0 < config.cohort_percent <= 100, "a percent in (0, 100]"),
        ("memory-budget-gib", config.memory_budget_gib > 0, "a positive number of GiB"),
        ("batch-size", config.batch_size >= 1, "at least 1"),
        ("window", config.window is None or config.window >= 2, "at least 2 tokens"),
        ("threads", config.threads >= 0, "0 (auto) or a positive number"),
        ("ppl-tokens", not config.matched or config.ppl_tokens > 0, "more than 0 with --matched (the match is on perplexity)"),
    ]
    for name, ok, accepted in checks:
        if not ok:
            raise UserInputError(f"--{name} {getattr(config, name.replace('-', '_'))!r}: expected {accepted}")
    if config.dtype not in DTYPES:
        raise UserInputError(f"--dtype {config.dtype!r} is not one of {', '.join(DTYPES)}")


def _resolve_corpus(corpus: str, suite: str | None) -> str:
    if corpus == "auto":
        heldout = Path(suite) / "heldout.txt" if suite else None
        return str(heldout) if heldout is not None and heldout.is_file() else "wikitext2"
    if corpus != "wikitext2" and not Path(corpus).expanduser().is_file():
        raise UserInputError(f"--corpus {corpus!r} is neither wikitext2, auto nor an existing text file")
    return corpus


def run_scan(config: ScanConfig) -> ScanSummary:
    """Scan the steps of ``config`` into its cube; resumable, one region write per step.

    The driver (this process) validates, pre-allocates the cube, holds its writer lock and
    writes every result and done marker; the steps themselves run on the executor
    (:mod:`dynamics.executor`), each as :func:`dynamics.scan_context.measure_step`.
    """
    plan = plan_scan(config)
    identity = {"model": plan.source.model_id, "reference_step": plan.reference_step, "corpus": plan.corpus,
                "analysis": config.analysis(), "derived": DRIFT_PREV}
    provenance = {"model": config.model, "model_id": plan.source.model_id, "package_version": __version__,
                  "torch_version": torch.__version__, "config": config_dict(config), "host": platform.node()}
    summary = ScanSummary()
    with open_executor(ExecutorSettings.of(config)) as pool, \
            CubeWriter(config.out, plan.steps, identity, provenance, overwrite=config.overwrite) as cube:
        todo = cube.todo()
        summary.skipped = [s for s in plan.steps if s not in todo]
        if not todo:
            return summary
        try:
            _measure_all(pool, _prepare(pool, config, plan, cube), todo, cube, summary)
        finally:
            if config.executor == "serial":
                _forget(pool)
        if config.executor == "dask" and config.scheduler != "local":  # a local cluster stops anyway
            _forget(pool)
    return summary


def _forget(pool: Any) -> None:
    """Free the workers' per-run caches (the reference weights)."""
    from dynamics.scan_context import forget_contexts

    free_worker_caches(pool, forget_contexts)


def _prepare(pool: Any, config: ScanConfig, plan: ScanPlan, cube: CubeWriter) -> Any:
    """Fix (or read) the cohort and record the corpus provenance: one unit on the executor."""
    from dynamics.scan_context import RunSpec, prepare_reference

    static = cube.read_static()
    spec = RunSpec(config, plan.reference_step, plan.corpus)
    if static is not None:
        spec = replace(spec, cohort=static["cohort"].values, control=static["random_control"].values,
                       matched=_matched_mask(static))
    outcome = next(iter(pool.map(prepare_reference, [spec], name="reference")))
    if not outcome.ok:
        raise CheckpointError(outcome.error)
    if static is None:
        static = outcome.result["static"]
        cube.write_static(static)
    cube.record_provenance(outcome.result["provenance"])
    return replace(spec, cohort=static["cohort"].values, control=static["random_control"].values,
                   matched=_matched_mask(static))


def _matched_mask(static: Any) -> Any:
    return static["matched_control"].values if "matched_control" in static else None


def _measure_all(pool: Any, spec: Any, todo: list[int], cube: CubeWriter, summary: ScanSummary) -> None:
    """Fan the steps out; write each result as it completes, in any order."""
    from dynamics.scan_context import StepTask, measure_step

    # Serially one worker takes the steps in order, so it can fetch the next one while measuring this one.
    ahead = spec.config.executor == "serial" and spec.config.prefetch
    tasks = [StepTask(step, todo[i + 1] if ahead and i + 1 < len(todo) else None) for i, step in enumerate(todo)]
    bar = tqdm(total=len(todo), desc=f"scan {spec.config.model}", unit="step", dynamic_ncols=True)
    results = pool.map(partial(measure_step, spec), tasks, name="step")
    try:
        for done in results:
            if done.ok:
                _write(cube, done)
                summary.done.append(done.unit.step)
                phases = done.result["seconds"].values[0]
                bar.set_postfix_str(f"step {done.unit.step} " + " ".join(f"{p} {t:.1f}s" for p, t in zip(PHASES, phases)))
            else:
                _record_failure(cube, done, spec.config, summary)
            bar.update()
    finally:
        results.close()  # Ctrl-C or --on-error stop: cancel what is still queued
        bar.close()
    summary.done.sort()
    summary.failed.sort()


def _record_failure(cube: CubeWriter, done: Completed, config: ScanConfig, summary: ScanSummary) -> None:
    step = done.unit.step
    cube.mark_failed(step, done.error or "unknown error", done.failure_record())
    summary.failed.append(step)
    stop_on_unrecoverable(done, f"step {step}")
    if config.on_error == "stop":
        raise CheckpointError(f"{done.error} (stopping: --on-error stop)")
    log.warning("step %d failed after %d attempt(s), recorded and skipped: %s", step, done.attempts, done.error)


def step_result(step: int, parts: list[xr.Dataset], timings: dict[str, float]) -> xr.Dataset:
    """Merge measurement datasets into one step result with a length-1 step dimension."""
    merged = xr.merge(parts, compat="no_conflicts", join="exact") if parts else xr.Dataset()
    merged = merged.expand_dims(step=[step])
    merged["seconds"] = xr.DataArray([[timings.get(p, 0.0) for p in PHASES]], dims=("step", "phase"),
                                     coords={"step": [step], "phase": list(PHASES)}, attrs={"units": "s"})
    log.info("step %d: %s", step, ", ".join(f"{p} {timings.get(p, 0.0):.1f}s" for p in PHASES))
    return merged


def _write(cube: CubeWriter, done: Completed) -> None:
    result = done.result
    record = {**result.attrs.pop("checkpoint", {}), "task_attempts": done.attempts}
    cube.write_step(result, record)  # a full disk is one line (CubeError), done steps kept


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
