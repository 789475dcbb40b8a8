"""The benchmarks a scan measures at every step besides TSE: a BLiMP sample and optional lm-eval tasks.

Both are fixed once per run by the driver (:func:`plan_benchmarks`), before the cube is
created: the BLiMP sample (``--blimp-per-paradigm`` pairs of each of the 67 paradigms,
seeded as in `dynamics ablate`) travels to the workers with the run, and the lm-eval tasks
are probed once so that a task whose data cannot be reached is skipped with one line, not
retried at every step. A BLiMP source that cannot be reached (the Hub, offline) is skipped
the same way; a local directory that lacks a paradigm is a user error.

With ``--target-ci`` the pilot at the reference step chooses other sizes (:mod:`dynamics.evaluate.sizing`);
the driver then draws the TSE and BLiMP samples of those sizes once (:func:`sized_samples`, same seed) and
every step is scored on them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from dynamics.errors import DynamicsError, UserInputError
from dynamics.evaluate.benchmarks import items_hash
from dynamics.evaluate.sizing import SampleSizes
from dynamics.syntax.blimp import (
    check_blimp_source,
    hub_blimp_skip_reason,
    load_blimp,
    paradigm_sample,
    parse_paradigms,
)
from dynamics.syntax.hub_data import hub_offline
from dynamics.syntax.lmeval import check_task_names, parse_tasks, probe_tasks
from dynamics.syntax.pairs import MinimalPair
from dynamics.syntax.tse import sample_tse, tse_pairs

#: What the cube's content record calls the sized samples (beside the options' samples, which it keeps too).
SIZED_LABELS = {"sized_tse": "TSE sample sized by --target-ci", "sized_blimp": "BLiMP sample sized by --target-ci"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanBenchmarks:
    """What every step is evaluated on besides TSE and perplexity (small, picklable)."""

    blimp: tuple[MinimalPair, ...] = ()
    paradigms: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()  # runnable lm-eval tasks
    skipped: dict[str, str] = field(default_factory=dict)  # benchmark or task -> why it is not measured
    task_path: str | None = None  # extra lm-eval task YAML files

    def identity(self) -> dict[str, object]:
        """What of the benchmarks makes two cubes comparable (empty when neither is measured)."""
        out: dict[str, object] = {}
        if self.blimp:
            out["blimp_pairs"] = len(self.blimp)
            out["blimp_paradigms"] = len(self.paradigms)
        if self.tasks:
            out["lmeval_tasks"] = list(self.tasks)
        return out


@dataclass(frozen=True)
class BenchmarkRequest:
    """The benchmark options of a scan, checked (:func:`check_benchmark_options`)."""

    blimp: str
    per_paradigm: int
    paradigms: tuple[str, ...]
    tasks: tuple[str, ...]
    task_path: str | None
    seed: int
    model_kind: str = "hub"  # a local suite's scan asks nothing of the Hub (hub_blimp_skip_reason)


def check_benchmark_options(
    blimp: str,
    per_paradigm: int,
    paradigms: str,
    tasks: str,
    task_path: str | None,
    seed: int,
    model_kind: str = "hub",
) -> BenchmarkRequest:
    """One line for a bad --blimp, --blimp-per-paradigm, --blimp-paradigms, --tasks or --task-path."""
    chosen = parse_paradigms(paradigms)
    if per_paradigm:
        check_blimp_source(blimp, chosen)  # every line of a --blimp directory, before anything is written
    if task_path is not None and not Path(task_path).is_dir():
        raise UserInputError(f"--task-path {task_path!r} is not a directory of lm-eval task YAML files")
    names = parse_tasks(tasks)
    check_task_names(names, task_path)
    return BenchmarkRequest(blimp, per_paradigm, chosen, names, task_path, seed, model_kind)


def plan_benchmarks(request: BenchmarkRequest) -> ScanBenchmarks:
    """Load the BLiMP sample and probe the lm-eval tasks, once per run."""
    blimp, per_paradigm, paradigms = request.blimp, request.per_paradigm, request.paradigms
    skipped: dict[str, str] = {}
    pairs: list[MinimalPair] = []
    if per_paradigm and blimp == "hub" and hub_offline():
        log.info("BLiMP skipped: the Hub is offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE); pass --blimp DIR")
        skipped["blimp"] = "the Hub is offline; pass --blimp with a directory of <paradigm>.jsonl files"
    elif per_paradigm and (local := hub_blimp_skip_reason(blimp, request.model_kind)):
        log.info("BLiMP skipped: %s", local)
        skipped["blimp"] = local
    elif per_paradigm:
        try:
            loaded = load_blimp(blimp, paradigms)
        except DynamicsError as exc:
            if blimp != "hub":
                raise
            log.warning("BLiMP skipped: %s", exc)
            skipped["blimp"] = str(exc)
        else:
            pairs = paradigm_sample(loaded, paradigms, per_paradigm, request.seed)
    task_plan = probe_tasks(request.tasks, request.task_path)
    skipped.update({f"lmeval:{t}": why for t, why in task_plan.skipped.items()})
    return ScanBenchmarks(
        tuple(pairs), paradigms if pairs else (), tuple(task_plan.runnable), skipped, request.task_path
    )


def tse_sample(per_case: int, seed: int) -> list[MinimalPair]:
    """``per_case`` seeded TSE pairs of each case (all of a smaller one; 0: none)."""
    # sample_tse of a flat list is a flat list
    return cast(list[MinimalPair], sample_tse(tse_pairs(), per_case=per_case, seed=seed)) if per_case else []


@dataclass(frozen=True)
class SizedSamples:
    """The TSE and BLiMP samples of the sizes ``--target-ci`` chose (small enough to travel with the run)."""

    sizes: SampleSizes
    tse: tuple[MinimalPair, ...]
    blimp: tuple[MinimalPair, ...]

    def content(self) -> dict[str, str | None]:
        """Their content hashes (:data:`SIZED_LABELS`): a resumed run must score the same items."""
        return {"sized_tse": items_hash(self.tse), "sized_blimp": items_hash(self.blimp)}


def sized_samples(benchmarks: ScanBenchmarks, sizes: SampleSizes, blimp_source: str, seed: int) -> SizedSamples:
    """The samples of ``sizes``, drawn as the options' ones were (same seed, same paradigms); BLiMP only
    where the options' sample has it (a skipped source stays skipped)."""
    blimp: list[MinimalPair] = []
    if benchmarks.blimp and sizes.blimp_per_paradigm:
        loaded = load_blimp(blimp_source, benchmarks.paradigms)
        blimp = paradigm_sample(loaded, benchmarks.paradigms, sizes.blimp_per_paradigm, seed)
    tse = tse_sample(sizes.tse_per_case, seed)
    log.info(
        "--target-ci: every step scores %d TSE pairs (%d per case) and %d BLiMP pairs (%d per paradigm)",
        len(tse),
        sizes.tse_per_case,
        len(blimp),
        sizes.blimp_per_paradigm,
    )
    return SizedSamples(sizes, tuple(tse), tuple(blimp))
