"""What the scan measures on one loaded checkpoint, as labelled arrays.

Each function takes a model, or what was read from it (its input weights for
:func:`drift_measures`), and returns numpy arrays or an ``xarray.Dataset`` without a
``step`` dimension; :mod:`dynamics.scan` adds the step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import xarray as xr

from dynamics.ablation.hooks import ablate
from dynamics.ablation.rows import ablate_rows, conditions_per_pass
from dynamics.stats.neurons import weight_drift
from dynamics.syntax.blimp import blimp_accuracy
from dynamics.syntax.lmeval import METRICS, evaluate_tasks
from dynamics.syntax.perplexity import perplexity_each
from dynamics.syntax.scoring import DEFAULT_BATCH_TOKENS, score_pairs_each

log = logging.getLogger(__name__)

PHASES = ("download", "load", "statistics", "evaluation")


def syntax_and_perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    ppl_windows: torch.Tensor | None,
    conditions: Mapping[str, torch.Tensor | None],
    cases: Sequence[str],
    reduction: str = "sum",
    prefix: bool | str = "bos",
    npi: str = "intrusive",
    blimp: Sequence[Any] = (),
    paradigms: Sequence[str] = (),
    tasks: Sequence[str] = (),
    lmeval_limit: int | None = None,
    seed: int = 0,
    task_path: str | None = None,
    blimp_reduction: str = "sum",
) -> xr.Dataset:
    """TSE accuracy and margin per case, BLiMP accuracy per paradigm, lm-eval tasks and perplexity,
    under each condition.

    ``conditions`` maps a name to a neuron mask [layer, neuron] whose negative
    pre-activations are zeroed (``None``: the clean model). ``reduction``, ``prefix`` and
    ``npi``: the TSE scoring choices (:func:`dynamics.syntax.scoring.score_pairs`); BLiMP is
    scored with ``blimp_reduction`` and the same prefix; ``blimp_acc`` is absent without BLiMP
    pairs, and ``lmeval_acc`` without tasks. TSE, BLiMP and perplexity run their conditions
    together, each batch replicated once per condition (:func:`dynamics.ablation.rows.ablate_rows`),
    with the numbers of one condition at a time; lm-eval runs one condition at a time. Pairs are
    scored from their first difference on (``differences_only`` of
    :func:`dynamics.syntax.scoring.score_pairs_each`: the shared tokens before it cancel).
    """
    acc = np.full((len(conditions), len(cases)), np.nan)
    margin = np.full((len(conditions), len(cases)), np.nan)
    blimp_acc = np.full((len(conditions), len(paradigms)), np.nan)
    lmeval = np.full((len(conditions), len(tasks), len(METRICS)), np.nan)
    ppl = np.full(len(conditions), np.nan)
    masks = list(conditions.values())
    if pairs:
        for first, chunk in _condition_chunks(masks, DEFAULT_BATCH_TOKENS):
            with ablate_rows(model, chunk, mode="negative") as copies:
                per_condition = score_pairs_each(
                    model,
                    tokenizer,
                    pairs,
                    copies,
                    group_by="case",
                    reduction=reduction,  # type: ignore[arg-type]
                    prefix=prefix,
                    npi=npi,  # type: ignore[arg-type]
                    progress=False,
                    differences_only=True,
                )
            for i, scores in enumerate(per_condition, start=first):
                acc[i], margin[i] = scores.aligned("accuracy", cases), scores.aligned("margin", cases)
    if blimp:
        for first, chunk in _condition_chunks(masks, DEFAULT_BATCH_TOKENS):
            with ablate_rows(model, chunk, mode="negative") as copies:
                per_condition = score_pairs_each(
                    model,
                    tokenizer,
                    blimp,
                    copies,
                    group_by="case",
                    reduction=blimp_reduction,  # type: ignore[arg-type]
                    prefix=prefix,
                    progress=False,
                    keep_pairs=True,
                    differences_only=True,
                )
            for i, scores in enumerate(per_condition, start=first):
                assert scores.correct is not None  # keep_pairs=True
                per_paradigm = blimp_accuracy(blimp, scores.correct).per_paradigm
                blimp_acc[i] = [per_paradigm.get(p, np.nan) for p in paradigms]
    if tasks:
        for i, mask in enumerate(masks):
            with ablate(model, mask, mode="negative") if mask is not None else nullcontext():
                results = evaluate_tasks(model, tokenizer, tasks, lmeval_limit, include_path=task_path, seed=seed)
            lmeval[i] = [[results[t][m] for m in METRICS] for t in tasks]
    if ppl_windows is not None and len(ppl_windows):
        for first, chunk in _condition_chunks(masks, int(ppl_windows.shape[1])):
            with ablate_rows(model, chunk, mode="negative") as copies:
                ppl[first : first + copies] = perplexity_each(model, ppl_windows, copies, progress=False)
    coords: dict[str, Any] = {"condition": list(conditions), "tse_case": list(cases)}
    data: dict[str, Any] = {
        "tse_acc": (("condition", "tse_case"), acc, {"long_name": "TSE accuracy (good scores above bad)"}),
        "tse_margin": (
            ("condition", "tse_case"),
            margin,
            {"units": "nats", "long_name": "mean log p(good) - log p(bad)"},
        ),
        "ppl": (("condition",), ppl, {"long_name": "perplexity on the corpus windows"}),
    }
    if blimp:
        coords["blimp_paradigm"] = list(paradigms)
        data["blimp_acc"] = (
            ("condition", "blimp_paradigm"),
            blimp_acc,
            {"long_name": "BLiMP accuracy per paradigm (sampled pairs, the protocol's BLiMP score)"},
        )
    if tasks:
        coords["task"] = list(tasks)
        data["lmeval_acc"] = (("condition", "task"), lmeval[:, :, 0], {"long_name": "lm-eval acc,none"})
        data["lmeval_acc_norm"] = (("condition", "task"), lmeval[:, :, 1], {"long_name": "lm-eval acc_norm,none"})
    return xr.Dataset(data, coords=coords)


def _condition_chunks(masks: list[Any], tokens_per_batch: int) -> list[tuple[int, list[Any]]]:
    """The conditions in runs of at most :func:`conditions_per_pass`, with each run's first index."""
    size = conditions_per_pass(len(masks), tokens_per_batch)
    return [(first, masks[first : first + size]) for first in range(0, len(masks), size)]


def step_result(step: int, parts: list[xr.Dataset], timings: dict[str, float]) -> xr.Dataset:
    """Merge measurement datasets into one step result with a length-1 step dimension."""
    merged = xr.merge(parts, compat="no_conflicts", join="exact") if parts else xr.Dataset()
    merged = merged.expand_dims(step=[step])
    merged["seconds"] = xr.DataArray(
        [[timings.get(p, 0.0) for p in PHASES]],
        dims=("step", "phase"),
        coords={"step": [step], "phase": list(PHASES)},
        attrs={"units": "s"},
    )
    log.info("step %d: %s", step, ", ".join(f"{p} {timings.get(p, 0.0):.1f}s" for p in PHASES))
    return merged


def drift_measures(
    weights: torch.Tensor, reference: torch.Tensor, cohort: np.ndarray, control: np.ndarray
) -> xr.Dataset:
    """``drift_ref`` for every neuron, and the input-weight rows of the cohort and control neurons.

    ``cohort_weights`` [member, d_model] lists the members in (layer, neuron) order; the
    member coordinates say which neuron each row is and which set it belongs to.
    """
    layers, neurons = np.nonzero(cohort | control)
    member_set = np.where(cohort[layers, neurons], "cohort", "random_control")
    rows = weights[torch.from_numpy(layers), torch.from_numpy(neurons)].numpy()
    return xr.Dataset(
        {
            "drift_ref": (
                ("layer", "neuron"),
                weight_drift(weights, reference),
                {"long_name": "1 - cos of input weights vs the reference step"},
            ),
            "cohort_weights": (
                ("member", "d_model"),
                rows.astype(np.float32),
                {"long_name": "input-weight rows of the cohort and random-control neurons"},
            ),
        },
        coords={
            "member": np.arange(len(layers)),
            "member_layer": ("member", layers),
            "member_neuron": ("member", neurons),
            "member_set": ("member", member_set),
        },
    )
