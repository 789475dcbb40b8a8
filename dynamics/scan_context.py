"""What a scan fixes once per run, and the measurement of one checkpoint against it.

Once per run: the tokenizer and the corpus windows, the TSE sample, the reference step's
cohort (read from the cube when a previous run stored it) and input weights, and the input
weights of the step before the first one to compute (so ``drift_prev`` is the same whether
a scan ran in one go or was resumed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from checkpoints.source import Checkpoint
from dynamics.cohort import random_control_mask, top_percent_mask
from dynamics.corpus import CorpusSpec, corpus_hash, load_token_windows
from dynamics.errors import CheckpointError
from dynamics.measures import input_weights, neuron_wasserstein, syntax_and_perplexity, weight_drift
from dynamics.scan import ScanConfig, ScanPlan, step_result, timed
from dynamics.syntax.tse import TSE_CASES, sample_tse, tse_pairs
from store.cube import DONE, CubeWriter

log = logging.getLogger(__name__)


@dataclass
class ScanContext:
    config: ScanConfig
    plan: ScanPlan
    tokenizer: Any
    wd_windows: torch.Tensor
    ppl_windows: torch.Tensor | None
    pairs: list[Any]
    cohort: torch.Tensor  # [layer, neuron] bool
    control: torch.Tensor
    reference_weights: torch.Tensor  # [layer, neuron, d_model]
    previous: tuple[int, torch.Tensor] | None  # (step, input weights) of the last scanned step

    @property
    def memory_budget(self) -> int:
        return int(self.config.memory_budget_gib * 2**30)

    def measure(self, checkpoint: Checkpoint) -> xr.Dataset:
        """Load one checkpoint and turn it into a step result."""
        config = self.config
        timings = {"download": checkpoint.seconds}
        with timed(timings, "load"):
            model = _load(checkpoint, self.plan.device, config.dtype)
        with timed(timings, "statistics"), torch.inference_mode():
            wd = neuron_wasserstein(model, self.wd_windows, self.memory_budget, config.batch_size)
            weights = input_weights(model)
            prev_step, prev_weights = self.previous if self.previous else (-1, None)
            drift = xr.Dataset(
                {
                    "drift_ref": (("layer", "neuron"), weight_drift(weights, self.reference_weights),
                                  {"long_name": "1 - cos of input weights vs the reference step"}),
                    "drift_prev": (("layer", "neuron"), weight_drift(weights, prev_weights),
                                   {"long_name": "1 - cos of input weights vs drift_prev_from"}),
                    "drift_prev_from": ((), prev_step, {"long_name": "step drift_prev compares with (-1: none)"}),
                }
            )
        conditions: dict[str, torch.Tensor | None] = {"clean": None, "neg_cohort": self.cohort, "neg_random": self.control}
        if config.stepwise:
            conditions["neg_stepwise"] = top_percent_mask(torch.from_numpy(wd["wd"].values), config.cohort_percent,
                                                          config.cohort_scope)
        with timed(timings, "evaluation"), torch.inference_mode():
            evaluation = syntax_and_perplexity(model, self.tokenizer, self.pairs, self.ppl_windows, conditions,
                                               TSE_CASES, config.reduction, config.prefix)
        del model
        self.previous = (checkpoint.step, weights)
        return step_result(checkpoint.step, [wd, drift, evaluation], timings)


def prepare_context(config: ScanConfig, plan: ScanPlan, cube: CubeWriter) -> ScanContext:
    """Fix the run's inputs; fetch the reference step (and the step before the first to do)."""
    reference = _fetch(plan, plan.reference_step, "reference step")
    try:
        tokenizer = reference.load_tokenizer()
        model = _load(reference, plan.device, config.dtype)
        _set_threads(config.threads, model)
        window = config.window or min(2048, int(getattr(model.config, "max_position_embeddings", 2048) or 2048))
        spec = CorpusSpec(source=plan.corpus, split=config.corpus_split, window=window,
                          token_budget=max(config.wd_tokens, config.ppl_tokens, window))
        windows = load_token_windows(spec, tokenizer)
        wd_windows = windows[: max(1, config.wd_tokens // window)]
        ppl_windows = windows[: config.ppl_tokens // window] if config.ppl_tokens else None
        static = cube.read_static()
        if static is None:
            static = _fix_cohort(model, wd_windows, config)
            cube.write_static(static)
        with torch.inference_mode():
            reference_weights = input_weights(model)
        del model
    finally:
        plan.source.release(reference)
    cube.record_provenance({
        "corpus": spec.to_attrs(), "corpus_hash": corpus_hash(windows), "wd_tokens": int(wd_windows.numel()),
        "ppl_tokens": int(ppl_windows.numel()) if ppl_windows is not None else 0, "seed": config.seed,
        "tse_pairs": config.tse_per_case * len(TSE_CASES),
    })
    pairs = sample_tse(tse_pairs(), per_case=config.tse_per_case, seed=config.seed) if config.tse_per_case else []
    return ScanContext(
        config=config, plan=plan, tokenizer=tokenizer, wd_windows=wd_windows, ppl_windows=ppl_windows,
        pairs=list(pairs), cohort=torch.from_numpy(static["cohort"].values),
        control=torch.from_numpy(static["random_control"].values), reference_weights=reference_weights,
        previous=_previous_weights(config, plan, cube),
    )


def _fix_cohort(model: Any, windows: torch.Tensor, config: ScanConfig) -> xr.Dataset:
    with torch.inference_mode():
        wd = neuron_wasserstein(model, windows, int(config.memory_budget_gib * 2**30), config.batch_size, progress=True)
    scores = torch.from_numpy(np.nan_to_num(wd["wd"].values, nan=-np.inf))
    cohort = top_percent_mask(scores, config.cohort_percent, config.cohort_scope)
    control = random_control_mask(cohort, seed=config.seed)
    return xr.Dataset(
        {
            "cohort": (("layer", "neuron"), cohort.numpy(), {"long_name": "top WD neurons at the reference step"}),
            "random_control": (("layer", "neuron"), control.numpy(), {"long_name": "random non-cohort neurons, same count per layer"}),
            "reference_wd": wd["wd"].astype("float32"),
        },
        coords=wd.coords,
    )


def _previous_weights(config: ScanConfig, plan: ScanPlan, cube: CubeWriter) -> tuple[int, torch.Tensor] | None:
    """Input weights of the last done step before the first step this run computes."""
    first = cube.todo()[0]
    earlier = [s for s in cube.stored_steps() if s < first and cube.status(s) == DONE]
    if not earlier:
        return None
    step = max(earlier)
    checkpoint = _fetch(plan, step, "previous step")
    try:
        with torch.inference_mode():
            return step, input_weights(_load(checkpoint, plan.device, config.dtype))
    finally:
        plan.source.release(checkpoint)


SMALL_MODEL_PARAMETERS = 50_000_000


def _set_threads(threads: int, model: Any) -> None:
    """Measured on the toy organism on 2 loaded cores: 1 thread scored TSE 17x faster than 2."""
    if threads == 0:
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
        threads = 1 if small else torch.get_num_threads()
    torch.set_num_threads(threads)


def _fetch(plan: ScanPlan, step: int, what: str) -> Checkpoint:
    try:
        return plan.source.fetch(step)
    except CheckpointError as exc:
        raise CheckpointError(f"the {what} {step} is needed first and could not be fetched: {exc}") from exc


def _load(checkpoint: Checkpoint, device: str, dtype: str) -> Any:
    return checkpoint.load_model(device=device, dtype=getattr(torch, dtype))
