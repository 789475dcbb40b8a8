"""What a scan will do, checked before anything is downloaded or written: the model, the steps
and their revisions, the reference step, the corpus, the device and the benchmarks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from checkpoints.hub_errors import RetryPolicy
from checkpoints.hub_source import HubSource
from checkpoints.names import ModelRef, resolve_model
from checkpoints.revisions import DEFAULT_TEMPLATE, PYTHIA_TOKENS_PER_STEP, RevisionTemplate, tokens_of_steps
from checkpoints.source import CheckpointSource, open_source
from checkpoints.steps import parse_steps
from dynamics.config.paths import check_cube_out
from dynamics.config.preflight import check_model_fit, config_on_disk
from dynamics.errors import UserInputError
from dynamics.execution.executor import ExecutorSettings, check_settings
from dynamics.models.runtime import resolve_device
from dynamics.scan.benchmarks import ScanBenchmarks, check_benchmark_options, plan_benchmarks
from dynamics.scan.config import ScanConfig, check_scan_options
from dynamics.syntax.corpus import check_corpus_file, check_texts
from dynamics.toy.builtin import ensure_toy_suite, is_toy_alias
from store.cube import read_identity


@dataclass
class ScanPlan:
    source: CheckpointSource
    steps: list[int]
    reference_step: int
    corpus: str
    device: str
    tokens: dict[int, int] = field(default_factory=dict)  # step -> training tokens seen (-1: unknown)
    revisions: dict[int, str] | None = None  # step -> Hub revision name, as listed
    benchmarks: ScanBenchmarks = field(default_factory=ScanBenchmarks)


def plan_scan(config: ScanConfig, source: CheckpointSource | None = None) -> ScanPlan:
    """Validate the whole request before anything is downloaded or written."""
    ref = resolve_model(config.model)
    check_scan_options(config)
    template = RevisionTemplate(config.revision_template)  # a malformed template is one line
    if config.revision_template != DEFAULT_TEMPLATE and ref.kind != "hub":
        raise UserInputError(
            f"--revision-template {config.revision_template!r} applies to Hub repositories; "
            f"{config.model!r} is a {ref.kind.replace('_', ' ')} (its steps are step<N>/ directories)"
        )
    request = check_benchmark_options(
        config.blimp,
        config.blimp_per_paradigm,
        config.blimp_paradigms,
        config.tasks,
        config.task_path,
        config.seed,
        model_kind=ref.kind,
    )
    check_cube_out(config.out, "--out")  # a name ending in .zarr (x.zarr/ too), a usable place outside any cube
    check_settings(ExecutorSettings.of(config))
    device = resolve_device(config.device, here=config.executor == "serial")
    parse_steps(config.steps)  # the spec's form, before a toy suite is trained (its steps are checked below)
    if is_toy_alias(ref):  # every option checked: now the built-in suite may be trained (once)
        ensure_toy_suite(ref)
    corpus = _resolve_corpus(config.corpus, ref.location if ref.kind == "local_suite" else None)
    check_texts(config, corpus)
    for text in {config.wd_corpus or corpus, config.ppl_corpus or corpus}:
        check_corpus_file(text)
    if source is None:
        source = open_source(
            ref,
            cache_dir=config.cache_dir,
            retry=RetryPolicy(attempts=config.retries),
            keep=config.keep_checkpoints,
            revision_template=template.text,
        )
    # a Hub repo's refs, listed once: every step is checked against them
    available = source.verified_steps() if isinstance(source, HubSource) else source.available_steps()
    steps = parse_steps(config.steps, available, source=source.model_id)
    stored = read_identity(config.out).get("reference_step")  # a resumed or extended cube keeps its cohort
    reference = (
        config.reference_step if config.reference_step is not None else stored if stored is not None else steps[-1]
    )
    if config.reference_step is not None:
        parse_steps(str(reference), available, source=source.model_id)  # same check, same message
    source.check_available()  # a model missing from an offline cache: one line now, not one per step
    revision = getattr(source, "revision", None)
    on_disk = config_on_disk(
        ref, step=reference, revision=revision(reference) if revision else None, cache_dir=config.cache_dir
    )
    if on_disk is not None:  # else the same checks run when the reference step is loaded
        check_model_fit(on_disk, config.window, [("--cohort-percent", config.cohort_percent)], config.cohort_scope)
    index = source.revisions() if isinstance(source, HubSource) else None
    tokens = tokens_of_steps(steps, tokens_per_step(config, ref), index.tokens if index else None)
    revisions = {s: index.revisions[s] for s in {*steps, reference} if s in index.revisions} if index else None
    benchmarks = plan_benchmarks(request)
    return ScanPlan(source, steps, reference, corpus, device, tokens, revisions, benchmarks)


def tokens_per_step(config: ScanConfig, ref: ModelRef) -> int | None:
    """``--tokens-per-step``, else Pythia's 2,097,152, else a toy suite's batch x context, else None."""
    if config.tokens_per_step is not None:
        return config.tokens_per_step
    if ref.is_pythia:
        return PYTHIA_TOKENS_PER_STEP
    manifest = Path(ref.location) / "suite.json" if ref.kind == "local_suite" else None
    if manifest is not None and manifest.is_file():
        settings = json.loads(manifest.read_text(encoding="utf-8")).get("config", {})
        if isinstance(settings.get("batch_size"), int) and isinstance(settings.get("context"), int):
            return int(settings["batch_size"]) * int(settings["context"])
    return None


def _resolve_corpus(corpus: str, suite: str | None) -> str:
    if corpus == "auto":
        heldout = Path(suite) / "heldout.txt" if suite else None
        return str(heldout) if heldout is not None and heldout.is_file() else "wikitext2"
    if corpus != "wikitext2" and not corpus.startswith("wikitext2:") and not Path(corpus).expanduser().is_file():
        raise UserInputError(f"--corpus {corpus!r} is neither wikitext2, auto nor an existing text file")
    return corpus
