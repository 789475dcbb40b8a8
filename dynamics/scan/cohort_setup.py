"""What a scan fixes once, at the reference step: the cohort, its controls, the corpus provenance.

:func:`prepare_reference` runs once per run (in this process for ``--executor serial``,
on a Dask worker otherwise) before any step is measured: when the cube has no cohort yet it
fixes one at the reference step (:func:`fix_cohort`: the top WD neurons and a random
control; :func:`add_matched_control` with ``--matched``; with ``--target-ci`` the pilot that sizes
the TSE and BLiMP samples, :func:`pilot_at_reference`), and it returns the corpus provenance the
cube records. The reference step's statistics stay in the context, and that
step's measurement takes them instead of capturing the same windows again. It shares the
worker's per-run context (:func:`dynamics.scan.worker.worker_context`), so the reference
checkpoint is loaded once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import xarray as xr

from dynamics.ablation.matched import matched_control
from dynamics.config.protocol import resolve_protocol
from dynamics.evaluate.benchmarks import content_hashes
from dynamics.evaluate.conditions import Condition
from dynamics.evaluate.sizing import pilot_sizes
from dynamics.models.runtime import load_checkpoint_model
from dynamics.scan.config import ScanConfig
from dynamics.scan.worker import RunSpec, WorkerContext, worker_context
from dynamics.stats.activations import CaptureSettings
from dynamics.stats.cohort import random_control_mask, top_percent_mask
from dynamics.stats.neuron_differentiation import analysed_windows, set_differentiation
from dynamics.syntax.corpus import corpus_hash
from dynamics.syntax.tse import TSE_CASES

log = logging.getLogger(__name__)


def prepare_reference(spec: RunSpec) -> dict[str, Any]:
    """``{"static": the cohort Dataset or None if the spec has one, "provenance": {...}, "content": the input
    content hashes (:func:`dynamics.evaluate.benchmarks.content_hashes`)}``. With ``--target-ci`` the static
    variables hold the sizes and the provenance the pilot (``target_ci``) once they are chosen."""
    context = worker_context(spec)
    static, extra = fix_reference(context) if spec.cohort is None else (None, {})
    context.reference_model = None
    config = spec.config
    provenance = {
        "corpus": context.wd_corpus.to_attrs(),
        "corpus_hash": corpus_hash(context.wd_windows),
        "ppl_corpus": context.ppl_corpus.to_attrs() if context.ppl_corpus is not None else None,
        "ppl_corpus_hash": corpus_hash(context.ppl_windows) if context.ppl_windows is not None else None,
        "protocol": context.protocol.record(),
        "wd_tokens": int(context.wd_windows.numel()),
        "ppl_tokens": int(context.ppl_windows.numel()) if context.ppl_windows is not None else 0,
        "seed": config.seed,
        "tse_pairs": config.tse_per_case * len(TSE_CASES),
        **extra,
    }
    return {
        "static": static,
        "provenance": provenance,
        "content": content_hashes(context.benchmarks, context.wd_windows),
    }


def fix_reference(context: WorkerContext) -> tuple[xr.Dataset, dict[str, Any]]:
    """Everything fixed at the reference step (the cohort, its controls, the differentiated pairs, the
    ``--target-ci`` sizes) as static variables, and what the provenance adds (the pilot)."""
    config = context.spec.config
    model = context.reference_model or _reload_reference(context)
    start = time.perf_counter()
    with torch.inference_mode():
        wd = context.wasserstein(model, progress=True)
    context.reference_statistics = (wd, time.perf_counter() - start)
    static = fix_cohort(wd, config)
    if config.matched:
        assert context.ppl_windows is not None  # plan_scan: --matched needs --ppl-tokens > 0
        static = add_matched_control(static, model, context.ppl_windows, config, wd[config.rank_by].values)
    if config.differentiation_tokens:
        static = static.merge(reference_differentiation(context, model, static))
    if not config.target_ci:
        return static, {}
    sized, record = pilot_at_reference(context, model, static)
    return static.merge(sized), {"target_ci": record}


def pilot_at_reference(context: WorkerContext, model: Any, static: xr.Dataset) -> tuple[xr.Dataset, dict[str, Any]]:
    """``--target-ci``: the sample sizes from a pilot at the reference step on the options' samples, comparing
    the scan's headline pair, neg_cohort against clean (:mod:`dynamics.evaluate.sizing`): the sizes as static
    variables, and the pilot with the sizes it chose."""
    config = context.spec.config
    pair = (Condition("neg_cohort", torch.from_numpy(static["cohort"].values)), Condition("clean"))
    with torch.inference_mode():
        sizes, pilot = pilot_sizes(model, context.benchmarks, context.budget, pair, config.target_ci, config.seed)
    return sizes.to_static(pilot), sizes.record(pilot)


def reference_differentiation(context: WorkerContext, model: Any, static: xr.Dataset) -> xr.Dataset:
    """The differentiated pairs of the cohort and its random control at the reference step, on the first
    WD windows holding ``--differentiation-tokens`` tokens."""
    config = context.spec.config
    windows = analysed_windows(context.wd_windows, config.differentiation_tokens)
    with torch.inference_mode():
        found = set_differentiation(
            model,
            windows,
            {"top": static["cohort"].values, "random": static["random_control"].values},
            context.tokenizer,
            k=config.differentiation_k,
            top=config.differentiation_pairs,
            capture=CaptureSettings(memory_budget=context.memory_budget, batch_size=config.batch_size),
        )
    return found


def _reload_reference(context: WorkerContext) -> Any:
    checkpoint = context.fetch(context.spec.reference_step)
    try:
        return load_checkpoint_model(checkpoint, context.device, context.spec.config.dtype)
    finally:
        context.release(checkpoint)


def fix_cohort(wd: xr.Dataset, config: ScanConfig) -> xr.Dataset:
    """The cohort (top neurons by ``--rank-by``: WD, or MD on the same tokens) and its random control,
    from the reference step's statistics ``wd``."""
    scores = torch.from_numpy(np.nan_to_num(wd[config.rank_by].values, nan=-np.inf))
    cohort = top_percent_mask(scores, config.cohort_percent, config.cohort_scope)
    pool = resolve_protocol(config).random_control
    control = random_control_mask(cohort, seed=config.seed, pool=pool)
    return xr.Dataset(
        {
            "cohort": (
                ("layer", "neuron"),
                cohort.numpy(),
                {"long_name": f"top {config.rank_by.upper()} neurons at the reference step", "rank_by": config.rank_by},
            ),
            "random_control": (
                ("layer", "neuron"),
                control.numpy(),
                {"long_name": f"random neurons drawn from {pool} neurons, same count per layer"},
            ),
            "reference_wd": wd["wd"].astype("float32"),
        },
        coords=wd.coords,
    )


def add_matched_control(
    static: xr.Dataset, model: Any, ppl_windows: torch.Tensor, config: ScanConfig, scores: np.ndarray
) -> xr.Dataset:
    """The perplexity-matched control at the reference step (``--matched``), as in `dynamics ablate`.

    The bottom m% of each layer by the cohort's ranking (``--rank-by``) at the reference step, m
    bisected in [``--match-low``, ``--match-high``] until the negative ablation's perplexity increase
    over clean is within ``--match-tolerance`` of the cohort's (the closest trial is kept, and
    ``matched_converged`` says so, when it cannot be matched).
    """
    found = matched_control(
        model,
        ppl_windows,
        config.batch_size,
        scores,
        torch.from_numpy(static["cohort"].values),
        config,
    )
    match, target, clean, noise = found.match, found.target, found.clean, found.noise
    log.info(
        "matched control: m = %.4g%%, perplexity %.4f vs the cohort's %.4f (clean %.4f; %s)",
        match.argument,
        match.value,
        target,
        clean,
        "matched" if match.converged else match.reason,
    )
    return static.assign(
        matched_control=(
            ("layer", "neuron"),
            found.mask,
            {
                "long_name": "bottom-m% WD neurons per layer at the reference step, "
                "perplexity-matched to the cohort's ablation"
            },
        ),
        matched_percent=((), float(match.argument), {"units": "%", "long_name": "m"}),
        matched_ppl=((), float(match.value), {"long_name": "perplexity with neg_matched at the reference step"}),
        matched_target_ppl=((), float(target), {"long_name": "perplexity with neg_cohort at the reference step"}),
        matched_clean_ppl=((), clean, {"long_name": "clean perplexity at the reference step"}),
        matched_converged=(
            (),
            bool(match.converged),
            {
                "long_name": "increase over clean within 5% of the cohort's",
                "reason": match.reason,
                "noise_warning": noise,
            },
        ),
        matched_top_increase=((), found.increase, {"long_name": "relative perplexity increase of the cohort"}),
        matched_top_increase_se=((), found.increase_se, {"long_name": "its standard error (paired windows)"}),
    )
