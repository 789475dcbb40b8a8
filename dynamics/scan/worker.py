"""The worker side of a scan: the per-run context of a worker process, and one step measured with it.

The same entry points serve every executor (they run in this process for ``--executor
serial`` and on Dask workers otherwise):

- :func:`dynamics.scan.cohort_setup.prepare_reference` (once per run): fixes the cohort at
  the reference step when the cube has none yet, and returns the corpus provenance.
- :func:`measure_step` (once per step): fetches one checkpoint on the worker (its own
  Hugging Face cache), turns it into a step result and releases it. With ``--target-ci`` it
  scores the samples the pilot sized (:attr:`RunSpec.sized`), never the options' ones.

Both build the expensive per-run inputs (tokenizer, corpus windows, TSE sample, the
reference step's input weights for ``drift_ref``) once per worker process
(:func:`worker_context`), cached by the run's identity (:class:`RunSpec.key`), so a worker
loads the reference checkpoint once, not once per step. A step never needs another step's
weights: ``drift_prev`` is derived when the cube is opened, from each step's stored
``cohort_weights`` (:func:`store.derived.cosine_to_previous_step`), so step order and
resumes do not matter.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from checkpoints.checkpoint import Checkpoint
from checkpoints.hub_errors import RetryPolicy
from checkpoints.hub_source import HubSource
from checkpoints.names import resolve_model
from checkpoints.source import CheckpointSource, open_source
from checkpoints.stream import Prefetcher, disk_bound
from checkpoints.transfer import use_fast_transfer
from dynamics.config.preflight import check_loaded_model, context_length
from dynamics.config.protocol import Protocol, resolve_protocol
from dynamics.errors import CheckpointError
from dynamics.evaluate.benchmarks import Benchmarks, LmevalTasks, Scoring, check_benchmarks
from dynamics.evaluate.conditions import Condition
from dynamics.evaluate.engine import evaluate
from dynamics.evaluate.planning import PassBudget, pass_budget_for
from dynamics.evaluate.sizing import SampleSizes, resized
from dynamics.execution.progress import on_terminal
from dynamics.models.runtime import (
    capture_budget,
    default_window,
    load_checkpoint_model,
    resolve_device,
    set_threads,
    timed,
)
from dynamics.scan.benchmarks import ScanBenchmarks, SizedSamples, tse_sample
from dynamics.scan.config import ScanConfig
from dynamics.scan.measures import drift_measures, step_result
from dynamics.stats.cohort import top_percent_mask
from dynamics.stats.neurons import input_weights, neuron_wasserstein
from dynamics.syntax.corpus import CorpusSpec, load_token_windows, load_wd_and_ppl_windows, text_specs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to measure a step of this run (small, picklable)."""

    config: ScanConfig
    reference_step: int
    corpus: str
    cohort: np.ndarray | None = field(default=None, compare=False)  # [layer, neuron] bool, None before it is fixed
    control: np.ndarray | None = field(default=None, compare=False)
    matched: np.ndarray | None = field(default=None, compare=False)  # with --matched
    benchmarks: ScanBenchmarks = field(default_factory=ScanBenchmarks, compare=False)
    revisions: dict[int, str] | None = field(default=None, compare=False)  # step -> Hub revision, listed by the driver
    #: With ``--target-ci``: the samples every step is scored on, drawn by the driver once the sizes are fixed
    #: (not part of :attr:`key`: the worker that fixed the cohort keeps its context).
    sized: SizedSamples | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.config.model}@{self.reference_step}"

    @property
    def key(self) -> str:
        """The run's identity for the per-worker cache (the cohort is not part of it): the whole config."""
        return repr((self.config, self.reference_step, self.corpus, self.benchmarks.identity()))


@dataclass(frozen=True)
class StepTask:
    """One step to measure; ``ahead`` are the steps this worker will be asked for next, in order, if known."""

    step: int
    ahead: tuple[int, ...] = ()

    def __str__(self) -> str:
        return str(self.step)


@dataclass
class WorkerContext:
    """The per-run inputs of one worker process."""

    spec: RunSpec
    source: CheckpointSource
    device: str
    tokenizer: Any
    protocol: Protocol
    wd_corpus: CorpusSpec
    ppl_corpus: CorpusSpec | None
    wd_windows: torch.Tensor
    ppl_windows: torch.Tensor | None
    benchmarks: Benchmarks  # the options' TSE and BLiMP samples (the --target-ci pilot), perplexity, lm-eval
    budget: PassBudget  # conditions per evaluation pass
    context_length: int | None  # the model's, which every scored item must fit
    reference_weights: torch.Tensor  # [layer, neuron, d_model]
    reference_model: Any = None  # kept only until the cohort is fixed
    #: The reference step's statistics and the seconds they took, computed while fixing the
    #: cohort (:func:`dynamics.scan.cohort_setup.prepare_reference`): that step's measurement
    #: takes them instead of capturing the same windows again.
    reference_statistics: tuple[xr.Dataset, float] | None = None
    prefetcher: Prefetcher = field(init=False)
    _sized: dict[SampleSizes, Benchmarks] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        config = self.spec.config
        # A Dask worker is given steps without knowing which come next: it fetches only what it is given.
        depth = config.prefetch_depth if config.executor == "serial" else 0
        bound = disk_bound(config.max_disk_gib, getattr(self.source, "cache_dir", None)) if depth else None
        self.prefetcher = Prefetcher(self.source, depth, bound)
        if depth:
            log.info(
                "prefetch: up to %d step(s) ahead, %s",
                depth,
                f"at most {bound / 2**30:.1f} GiB of checkpoints on disk" if bound is not None else "no disk bound",
            )

    @property
    def memory_budget(self) -> int:
        return capture_budget(self.spec.config.memory_budget_gib, self.device)

    def wasserstein(self, model: torch.nn.Module, progress: bool = False) -> xr.Dataset:
        """A step's per-neuron statistics (:func:`dynamics.stats.neurons.neuron_wasserstein`
        on this run's WD windows), the same for the reference step and every other."""
        config = self.spec.config
        return neuron_wasserstein(
            model,
            self.wd_windows,
            self.memory_budget,
            config.batch_size,
            progress=progress,
            with_mapping_difficulty=config.mapping_difficulty or config.rank_by == "md",
            seed=config.seed,
        )

    def fetch(self, step: int) -> Checkpoint:
        """The checkpoint of ``step`` (prefetched when it was announced); raises on failure."""
        checkpoint = self.prefetcher.fetch(step)
        if not checkpoint.ok:
            raise CheckpointError(checkpoint.error)
        return checkpoint

    def prefetch(self, steps: Sequence[int]) -> None:
        """Start fetching ``steps`` in the background (as deep and as far as disk allows); anything else is let go."""
        self.prefetcher.prefetch(steps)

    def release(self, checkpoint: Checkpoint) -> None:
        """Free ``checkpoint`` (stored or given up), which may start the next download ahead."""
        self.prefetcher.release(checkpoint)

    def step_benchmarks(self, sized: SizedSamples | None) -> Benchmarks:
        """What every step is scored on: the options' samples, or those ``--target-ci`` sized (checked once)."""
        if sized is None:
            return self.benchmarks
        if sized.sizes not in self._sized:
            self._sized[sized.sizes] = resized(self.benchmarks, list(sized.tse), list(sized.blimp), self.context_length)
        return self._sized[sized.sizes]

    def measure(
        self,
        checkpoint: Checkpoint,
        cohort: np.ndarray,
        control: np.ndarray,
        matched: np.ndarray | None = None,
        sized: SizedSamples | None = None,
    ) -> xr.Dataset:
        """Load one checkpoint and turn it into a step result (scored on :meth:`step_benchmarks`)."""
        config = self.spec.config
        timings = {"download": checkpoint.seconds}
        with timed(timings, "load"):
            model = load_checkpoint_model(checkpoint, self.device, config.dtype)
        kept = self.reference_statistics if checkpoint.step == self.spec.reference_step else None
        with timed(timings, "statistics"), torch.inference_mode():
            wd = kept[0] if kept is not None else self.wasserstein(model)
            weights = input_weights(model)
            drift = drift_measures(weights, self.reference_weights, cohort, control)
        if kept is not None:
            timings["statistics"] += kept[1]  # what they cost, when the cohort was fixed
        conditions = [
            Condition("clean"),
            Condition("neg_cohort", torch.from_numpy(cohort)),
            Condition("neg_random", torch.from_numpy(control)),
        ]
        if matched is not None:
            conditions.append(Condition("neg_matched", torch.from_numpy(matched)))
        if config.stepwise:
            stepwise = top_percent_mask(torch.from_numpy(wd["wd"].values), config.cohort_percent, config.cohort_scope)
            conditions.append(Condition("neg_stepwise", stepwise))
        with timed(timings, "evaluation"):
            # the step bar is the scan's; a step's passes get bars of their own on a terminal only
            benchmarks = self.step_benchmarks(sized)
            evaluation = evaluate(model, conditions, benchmarks, self.budget, progress=on_terminal())
        evaluation = evaluation.drop_vars(["eval_seconds", "eval_phase"])  # the step's seconds count evaluation whole
        loaded = {
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "capture_budget_bytes": self.memory_budget,
        }
        del model
        result = step_result(checkpoint.step, [wd, drift, evaluation], timings)
        result.attrs["loaded"] = loaded
        return result


_CONTEXT: dict[str, WorkerContext] = {}  # one run per worker process at a time (the reference weights are big)


def worker_context(spec: RunSpec) -> WorkerContext:
    """This process's context for ``spec``'s run, built on first use."""
    context = _CONTEXT.get(spec.key)
    if context is None:
        forget_contexts()
        context = _CONTEXT[spec.key] = build_context(spec)
    return context


def forget_contexts() -> None:
    """Free this process's per-run inputs (the reference weights are as big as a checkpoint's MLPs)."""
    for old in _CONTEXT.values():
        old.prefetcher.close()
    _CONTEXT.clear()


def build_context(spec: RunSpec) -> WorkerContext:
    """Fetch the reference step once: tokenizer, corpus windows, reference input weights."""
    config = spec.config
    device = resolve_device(config.device)
    source = open_source(
        resolve_model(config.model),
        cache_dir=config.cache_dir,
        retry=RetryPolicy(attempts=config.retries),
        keep=config.keep_checkpoints,
        revision_template=config.revision_template,
        revisions=spec.revisions,
    )
    if isinstance(source, HubSource):
        use_fast_transfer(device)
    try:
        reference = source.fetch(spec.reference_step)
    except CheckpointError as exc:
        raise CheckpointError(
            f"the reference step {spec.reference_step} is needed first and could not be fetched: {exc}"
        ) from exc
    try:
        tokenizer = reference.load_tokenizer()
        model = load_checkpoint_model(reference, device, config.dtype)
        set_threads(config.threads, model)
        check_loaded_model(model, config.window, [("--cohort-percent", config.cohort_percent)], config.cohort_scope)
        window = default_window(model, config.window)
        protocol = resolve_protocol(config)
        wd_corpus, ppl_corpus, one_text = text_specs(config, protocol, spec.corpus, window)
        if ppl_corpus is None:
            wd_windows, ppl_windows = load_token_windows(wd_corpus, tokenizer), None
        else:
            wd_windows, ppl_windows, ppl_corpus = load_wd_and_ppl_windows(wd_corpus, ppl_corpus, tokenizer, one_text)
        with torch.inference_mode():
            reference_weights = input_weights(model)
    finally:
        # Every worker needs the reference step, and workers on one node may share a cache:
        # on a cluster it stays cached (deleting it could pull it from under a neighbour).
        if config.executor == "serial":
            source.release(reference)
    scan = spec.benchmarks
    benchmarks = Benchmarks(
        tokenizer,
        Scoring.of(protocol),
        tse=tuple(tse_sample(config.tse_per_case, config.seed)),
        blimp=scan.blimp,
        blimp_paradigms=scan.paradigms,
        ppl_windows=ppl_windows,
        batch_size=1,  # the scan's perplexity runs window by window, as it always has
        lmeval=LmevalTasks(scan.tasks, scan.tasks, config.lmeval_limit or None, scan.task_path, config.seed)
        if scan.tasks
        else None,
    )
    check_benchmarks(benchmarks, context_length(model.config))
    return WorkerContext(
        spec=spec,
        source=source,
        device=device,
        tokenizer=tokenizer,
        protocol=protocol,
        wd_corpus=wd_corpus,
        ppl_corpus=ppl_corpus,
        wd_windows=wd_windows,
        ppl_windows=ppl_windows,
        benchmarks=benchmarks,
        budget=pass_budget_for(model),
        context_length=context_length(model.config),
        reference_weights=reference_weights,
        reference_model=model if spec.cohort is None else None,
    )


def measure_step(spec: RunSpec, task: StepTask) -> xr.Dataset:
    """One step result; its checkpoint's record travels in ``attrs["checkpoint"]``."""
    if spec.cohort is None or spec.control is None:
        raise ValueError("measure_step needs the run's cohort: run prepare_reference first")
    context = worker_context(spec)
    checkpoint = context.fetch(task.step)
    try:
        context.prefetch(task.ahead)
        result = context.measure(checkpoint, spec.cohort, spec.control, spec.matched, spec.sized)
        record = checkpoint.record()  # the fingerprints are read from the files: before they are released
    finally:
        context.release(checkpoint)
    result.attrs["checkpoint"] = {
        **record,
        **result.attrs.pop("loaded", {}),
        "attempts": checkpoint.attempts,
        "host": platform.node(),
    }
    return result
