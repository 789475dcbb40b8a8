"""What the scan measures on one loaded checkpoint, as labelled arrays.

Each function takes a model (and what it needs) and returns numpy arrays or an
``xarray.Dataset`` without a ``step`` dimension; :mod:`dynamics.scan` adds the step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import xarray as xr

from dynamics.ablation import ablate
from dynamics.syntax.perplexity import perplexity
from dynamics.syntax.scoring import score_pairs

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
) -> xr.Dataset:
    """TSE accuracy and margin per case, and perplexity, under each condition.

    ``conditions`` maps a name to a neuron mask [layer, neuron] whose negative
    pre-activations are zeroed (``None``: the clean model). ``reduction``, ``prefix`` and
    ``npi``: the TSE scoring choices (:func:`dynamics.syntax.scoring.score_pairs`).
    """
    acc = np.full((len(conditions), len(cases)), np.nan)
    margin = np.full((len(conditions), len(cases)), np.nan)
    ppl = np.full(len(conditions), np.nan)
    for i, mask in enumerate(conditions.values()):
        context = ablate(model, mask, mode="negative") if mask is not None else nullcontext()
        with context:
            if pairs:
                scores = score_pairs(model, tokenizer, pairs, group_by="case", reduction=reduction,  # type: ignore[arg-type]
                                     prefix=prefix, npi=npi, progress=False)  # type: ignore[arg-type]
                acc[i], margin[i] = scores.aligned("accuracy", cases), scores.aligned("margin", cases)
            if ppl_windows is not None and len(ppl_windows):
                ppl[i] = perplexity(model, ppl_windows, progress=False)
    coords = {"condition": list(conditions), "tse_case": list(cases)}
    return xr.Dataset(
        {
            "tse_acc": (("condition", "tse_case"), acc, {"long_name": "TSE accuracy (good scores above bad)"}),
            "tse_margin": (("condition", "tse_case"), margin, {"units": "nats", "long_name": "mean log p(good) - log p(bad)"}),
            "ppl": (("condition",), ppl, {"long_name": "perplexity on the corpus windows"}),
        },
        coords=coords,
    )


def step_result(step: int, parts: list[xr.Dataset], timings: dict[str, float]) -> xr.Dataset:
    """Merge measurement datasets into one step result with a length-1 step dimension."""
    merged = xr.merge(parts, compat="no_conflicts", join="exact") if parts else xr.Dataset()
    merged = merged.expand_dims(step=[step])
    merged["seconds"] = xr.DataArray([[timings.get(p, 0.0) for p in PHASES]], dims=("step", "phase"),
                                     coords={"step": [step], "phase": list(PHASES)}, attrs={"units": "s"})
    log.info("step %d: %s", step, ", ".join(f"{p} {timings.get(p, 0.0):.1f}s" for p in PHASES))
    return merged
