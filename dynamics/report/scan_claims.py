"""The paper's training-dynamics claims tested on a scan cube: over the done steps, the cohort's WD and
clean TSE accuracy rise together (C10), and so does the harm of ablating the cohort (C11). Spearman
correlations over steps, with a CI from a moving-block bootstrap over steps (neighbouring checkpoints
are not independent)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from dynamics.report.claim_rows import Claim, Criterion, absent, comparison_row
from dynamics.report.claims import ClaimSettings
from dynamics.stats.paired import spearman_block_bootstrap

#: The fewest done steps a correlation over training is computed from.
MIN_STEPS = 4


def cohort_wd(ds: xr.Dataset) -> np.ndarray:
    """The cohort's mean WD at each done step."""
    return np.asarray(ds["wd"].where(ds["cohort"]).mean(("layer", "neuron")).values, dtype=float)


def clean_tse_accuracy(ds: xr.Dataset) -> np.ndarray:
    """Clean TSE accuracy per step over all pairs (older cubes: the mean over cases)."""
    if "tse_acc_all" in ds:
        return np.asarray(ds["tse_acc_all"].sel(condition="clean").values, dtype=float)
    return np.asarray(ds["tse_acc"].sel(condition="clean").mean("tse_case").values, dtype=float)


def cohort_harm(ds: xr.Dataset) -> np.ndarray:
    """Mean TSE margin lost per pair when the cohort's negative pre-activations are zeroed, per step."""
    if "tse_item_margin" in ds:
        margins = ds["tse_item_margin"]
        return np.asarray((margins.sel(condition="clean") - margins.sel(condition="neg_cohort")).mean("tse_item"))
    margins = ds["tse_margin"]
    return np.asarray((margins.sel(condition="clean") - margins.sel(condition="neg_cohort")).mean("tse_case"))


def scan_claims(ds: xr.Dataset, settings: ClaimSettings | None = None) -> list[Claim]:
    """Claims C10 and C11 of a scan cube (opened with :func:`store.open_cube`)."""
    settings = settings or ClaimSettings()
    rows = [
        (
            "C10",
            "the cohort's WD and clean TSE accuracy rise together over training",
            "Spearman rho over steps of the cohort's mean WD and clean TSE accuracy",
            clean_tse_accuracy,
        ),
        (
            "C11",
            "the cohort ablation's harm grows with the cohort's WD over training",
            "Spearman rho over steps of the cohort's mean WD and the TSE margin lost under neg_cohort",
            cohort_harm,
        ),
    ]
    steps = ds.sizes.get("step", 0)
    needed = {"wd", "cohort", "tse_acc"}
    out = []
    for cid, claim, comparison, series in rows:
        if not needed <= set(ds.variables) or steps < MIN_STEPS:
            out.append(absent(cid, claim, comparison, f"{steps} done steps; a trend needs at least {MIN_STEPS}"))
            continue
        result = spearman_block_bootstrap(
            cohort_wd(ds), series(ds), n_boot=settings.n_boot, seed=settings.seed, level=settings.level
        )
        out.append(comparison_row(cid, claim, comparison, result, Criterion(+1, "rho", 0.1, "steps")))
    return out
