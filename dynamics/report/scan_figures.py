"""`dynamics plot`: seaborn figures of a scan cube, as PNG and PDF.

Each figure answers one of the paper's training-dynamics questions at a glance: does the
cohort's WD rise above the population, does the negative ablation of the cohort hurt TSE
more than the random control, how far do the weights move.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from dynamics.errors import UserInputError
from dynamics.report.figures import accuracy_bars_figure
from dynamics.report.study_figures import study_figures
from store.safe_files import atomic_write_bytes

log = logging.getLogger(__name__)

CONDITION_LABELS = {
    "clean": "clean",
    "neg_cohort": "negative ablation, cohort",
    "neg_random": "negative ablation, random control",
    "neg_stepwise": "negative ablation, top neurons of each step",
    "neg_matched": "negative ablation, perplexity-matched control",
}
# One colour per condition in every figure (seaborn's default would re-colour a panel
# that lacks "clean").
CONDITION_COLORS = dict(zip(CONDITION_LABELS.values(), ("0.2", "tab:red", "tab:blue", "tab:purple", "tab:green")))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _step_axis(ax) -> None:
    ax.set_xscale("symlog", linthresh=1)  # log-x that keeps step 0
    ax.set_xlim(left=0)  # seaborn's margins would otherwise open a negative decade
    ax.set_xlabel("training step (symlog scale)")


def _save(fig, out: Path, name: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    fig.tight_layout()
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        image = io.BytesIO()
        fig.savefig(image, format=fmt, dpi=150)
        atomic_write_bytes(path, image.getvalue())  # never written through a link planted at the name
        paths.append(path)
    return paths


def _require(ds: xr.Dataset, names: Sequence[str], figure: str) -> bool:
    missing = [n for n in names if n not in ds]
    if missing:
        log.warning("skipping %s: the cube has no %s", figure, ", ".join(missing))
    return not missing


def cohort_wd_figure(ds: xr.Dataset, plt) -> object:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = ds["step"].values
    wd = ds["wd"]
    flat = wd.stack(unit=("layer", "neuron"))
    quantiles = flat.quantile([0.5, 0.9, 0.99], dim="unit")
    ax.fill_between(steps, quantiles.sel(quantile=0.5), quantiles.sel(quantile=0.99), color="0.85",
                    label="all neurons, median to 99th percentile")
    ax.plot(steps, quantiles.sel(quantile=0.5), color="0.4", lw=1, label="all neurons, median")
    ax.plot(steps, quantiles.sel(quantile=0.9), color="0.4", lw=1, ls="--", label="all neurons, 90th percentile")
    for name, color, label in (("cohort", "C3", "cohort (top WD at the reference step)"),
                               ("random_control", "C0", "random control")):
        if name in ds:
            ax.plot(steps, wd.where(ds[name]).mean(("layer", "neuron")), marker="o", ms=3, color=color,
                    label=f"{label}, mean")
    _step_axis(ax)
    ax.set_ylabel("Wasserstein-1 distance to N(0,1)\n(standardized pre-activation)")
    ax.set_title("Do the Wasserstein neurons emerge during training?")
    ax.legend(fontsize=8)
    return fig


def _palette(frame) -> dict[str, str] | None:
    labels = set(frame["condition"])
    return {label: CONDITION_COLORS[label] for label in labels} if labels <= CONDITION_COLORS.keys() else None


def tse_figure(ds: xr.Dataset, plt, sns) -> object:
    """Accuracy per condition, and beside it the margin lost to each ablation (more sensitive)."""
    with_margin = "tse_margin" in ds and "clean" in ds["condition"].values
    fig, axes = plt.subplots(1, 2 if with_margin else 1, figsize=(12 if with_margin else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    frame = ds["tse_acc"].mean("tse_case").to_dataframe(name="accuracy").reset_index()
    frame["condition"] = frame["condition"].astype(str).map(lambda c: CONDITION_LABELS.get(c, c))
    sns.lineplot(frame, x="step", y="accuracy", hue="condition", marker="o", ax=ax, palette=_palette(frame))
    ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance")
    _step_axis(ax)
    ax.set_ylabel("TSE accuracy (mean over cases)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Grammar under negative ablation over training")
    ax.legend(fontsize=8)
    if with_margin:
        ax = axes[0, 1]
        margin = ds["tse_margin"].mean("tse_case")
        lost = (margin - margin.sel(condition="clean")).drop_sel(condition="clean")
        frame = lost.to_dataframe(name="change").reset_index()
        frame["condition"] = frame["condition"].astype(str).map(lambda c: CONDITION_LABELS.get(c, c))
        sns.lineplot(frame, x="step", y="change", hue="condition", marker="o", ax=ax, palette=_palette(frame))
        ax.axhline(0.0, color="0.5", ls=":", lw=1)
        _step_axis(ax)
        ax.set_ylabel("TSE margin change vs clean (nats)")
        ax.set_title("Margin lost to each ablation (below 0: hurts)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def drift_figure(ds: xr.Dataset, plt) -> object:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    steps = ds["step"].values
    for ax, name, title in ((axes[0], "drift_ref", "against the reference step"),
                            (axes[1], "drift_prev", "against the previous done step")):
        drift = ds[name]
        for group, color, label in (("all", "0.4", "all neurons"), ("cohort", "C3", "cohort"),
                                    ("random_control", "C0", "random control")):
            mean = _drift_mean(ds, drift, group)
            if mean is not None:
                ax.plot(steps, mean, color=color, marker="o", ms=3, label=label)
        _step_axis(ax)
        ax.set_ylabel("1 - cosine similarity of input weights")
        ax.set_title(f"Weight drift {title}")
        ax.legend(fontsize=8)
    return fig


def _drift_mean(ds: xr.Dataset, drift: xr.DataArray, group: str) -> xr.DataArray | None:
    """Mean drift of all neurons or of a neuron set per step (None where it is not tracked)."""
    if "member" in drift.dims:  # drift_prev: only the cohort and control neurons have stored weights
        return None if group == "all" else drift.where(ds["member_set"] == group).mean("member")
    if group == "all":
        return drift.mean(("layer", "neuron"))
    return drift.where(ds[group]).mean(("layer", "neuron")) if group in ds else None


def wd_histogram_figure(ds: xr.Dataset, plt, steps: Sequence[int]) -> object:
    fig, axes = plt.subplots(1, len(steps), figsize=(3.6 * len(steps), 3.6), sharey=True, squeeze=False)
    for ax, step in zip(axes[0], steps):
        wd = ds["wd"].sel(step=step)
        values = wd.values.ravel()
        bins = np.histogram_bin_edges(values[np.isfinite(values)], bins=40)
        ax.hist(values, bins=bins, color="0.6", label="all neurons")
        if "cohort" in ds:
            ax.hist(wd.where(ds["cohort"]).values.ravel(), bins=bins, color="C3", label="cohort")
        ax.set_yscale("log")
        ax.set_title(f"step {step}")
        ax.set_xlabel("WD to N(0,1)")
    axes[0][0].set_ylabel("neurons (log scale)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Distribution of neuron WD at selected steps")
    return fig


def tse_cases_figure(ds: xr.Dataset, plt, sns) -> object:
    final = ds["tse_acc"].isel(step=-1)
    frame = final.to_dataframe(name="accuracy").reset_index()
    frame["condition"] = frame["condition"].astype(str).map(lambda c: CONDITION_LABELS.get(c, c))
    return accuracy_bars_figure(frame, plt, sns, y="tse_case", x="accuracy", xlabel="TSE accuracy", ylabel="TSE case",
                                title=f"TSE per case at step {int(ds['step'].values[-1])}", size=(8, 7))


def histogram_steps(steps: Sequence[int] | np.ndarray, count: int = 3) -> list[int]:
    """First, middle and last step (fewer when the cube has fewer)."""
    steps = list(steps)
    picks = [steps[round(i * (len(steps) - 1) / max(count - 1, 1))] for i in range(count)]
    return sorted(set(picks))


def plot_cube(ds: xr.Dataset, out: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write every figure the cube has data for; returns the files written."""
    study = ds.attrs.get("cube_kind") == "units"  # a `dynamics ablate` cube: see dynamics/report/study_figures.py
    if (not study and ds.sizes.get("step", 0) == 0) or (study and not bool(ds["done"].any())):
        raise UserInputError(f"the cube has no done {'conditions' if study else 'steps'} to plot yet")
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad:
        raise UserInputError(f"figure format {bad[0]!r} is not one of png, pdf, svg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt, sns = _pyplot()
    written: list[Path] = []
    figures = study_figures(ds, plt, sns) if study else [
        ("cohort_wd", ["wd"], lambda: cohort_wd_figure(ds, plt)),
        ("tse_accuracy", ["tse_acc"], lambda: tse_figure(ds, plt, sns)),
        ("drift", ["drift_ref", "drift_prev"], lambda: drift_figure(ds, plt)),
        ("wd_histograms", ["wd"], lambda: wd_histogram_figure(ds, plt, histogram_steps(ds["step"].values))),
        ("tse_cases_final", ["tse_acc"], lambda: tse_cases_figure(ds, plt, sns)),
    ]
    for name, needs, make in figures:
        if not _require(ds, needs, name):
            continue
        fig = make()
        written += _save(fig, out, name, formats)
        plt.close(fig)
    return written

