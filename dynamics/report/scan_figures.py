"""`dynamics plot`: seaborn figures of a scan cube, as PNG and PDF.

Each figure answers one of the paper's training-dynamics questions at a glance: does the
cohort's WD rise above the population, does the negative ablation of the cohort hurt TSE
(and BLiMP) more than the random control, how far do the weights move. The x axis is the
training step or the tokens seen (``--x tokens``); a dataset with a ``seed`` dimension
(several cubes, :func:`store.open_cubes`) is drawn as the mean over seeds with a band from
the lowest to the highest seed.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from dynamics.errors import UserInputError
from dynamics.report.claim_figures import claims_figure
from dynamics.report.claims import cube_claim_settings
from dynamics.report.figures import AxisLabels, accuracy_bars_figure, legend_below
from dynamics.report.scan_claims import scan_claims
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
# One colour and line style per condition in every figure: the clean model a thick solid black
# line drawn on top (half transparent), each ablation a thinner dashed or dotted line beneath it.
CONDITION_COLORS = dict(zip(CONDITION_LABELS.values(), ("0.1", "tab:red", "tab:blue", "tab:purple", "tab:green")))
CONDITION_STYLES = {
    # on top, half transparent with hollow markers: an ablation line that coincides with it shows through
    "clean": {"ls": "-", "lw": 3.2, "marker": "o", "ms": 7, "mfc": "none", "mew": 1.6, "alpha": 0.55, "zorder": 10},
    "neg_cohort": {"ls": "--", "lw": 1.5, "marker": "s", "ms": 4, "zorder": 5},
    "neg_random": {"ls": ":", "lw": 1.5, "marker": "^", "ms": 4, "zorder": 4},
    "neg_stepwise": {"ls": "-.", "lw": 1.3, "marker": "v", "ms": 4, "zorder": 3},
    "neg_matched": {"ls": (0, (5, 1, 1, 1)), "lw": 1.3, "marker": "D", "ms": 3.5, "zorder": 3},
}
X_AXES = ("step", "tokens")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def x_values(ds: xr.Dataset, x: str) -> np.ndarray:
    """The x coordinate of every step: the step, or the tokens seen (one line when unknown)."""
    if x not in X_AXES:
        raise UserInputError(f"--x {x!r} is not one of {', '.join(X_AXES)}")
    if x == "step":
        return ds["step"].values
    tokens = ds["tokens"].values if "tokens" in ds.coords else np.full(ds.sizes["step"], -1)
    unknown = ds["step"].values[np.asarray(tokens) < 0]
    if len(unknown):
        raise UserInputError(
            f"--x tokens: the cube does not know the tokens seen at step(s) "
            f"{', '.join(map(str, unknown[:5]))}; scan with --tokens-per-step, or use --x step"
        )
    return np.asarray(tokens)


def _x_axis(ax, values: np.ndarray, x: str) -> None:
    """Symlog x (keeps step 0) from 0 to a little beyond the last value, so the last markers are whole."""
    ax.set_xscale("symlog", linthresh=1 if x == "step" else max(1.0, float(np.min(values[values > 0], initial=1))))
    top = float(np.max(values)) if len(values) else 1.0
    ax.set_xlim(left=0, right=top * 1.35 if top > 0 else 1)
    ax.set_xlabel("training step (symlog scale)" if x == "step" else "tokens seen (symlog scale)")


def _line(ax, x: np.ndarray, values: xr.DataArray, label: str, **style) -> None:
    """One series; over seeds: the mean, and a band from the lowest to the highest seed."""
    if "seed" in values.dims:
        ax.fill_between(
            x,
            values.min("seed"),
            values.max("seed"),
            color=style.get("color"),
            alpha=0.18,
            lw=0,
            zorder=style.get("zorder", 2) - 0.5,
        )
        values = values.mean("seed")
    ax.plot(x, np.asarray(values), label=label, **style)


def _seed_note(ds: xr.Dataset) -> str:
    return f" (mean of {ds.sizes['seed']} seeds, band: min to max)" if "seed" in ds.dims else ""


def _save(fig, out: Path, name: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    if not fig.legends:  # a figure legend below the axes is placed after its own tight layout
        fig.tight_layout()
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        image = io.BytesIO()
        fig.savefig(image, format=fmt, dpi=150, bbox_inches="tight")  # legends below the axes are part of it
        atomic_write_bytes(path, image.getvalue())  # never written through a link planted at the name
        paths.append(path)
    return paths


def _require(ds: xr.Dataset, names: Sequence[str], figure: str) -> bool:
    missing = [n for n in names if n not in ds]
    if missing:
        log.warning("skipping %s: the cube has no %s", figure, ", ".join(missing))
    return not missing


def cohort_wd_figure(ds: xr.Dataset, plt, x: str = "step") -> object:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = x_values(ds, x)
    wd = ds["wd"]
    quantiles = wd.stack(unit=("layer", "neuron")).quantile([0.5, 0.9, 0.99], dim="unit")
    if "seed" in quantiles.dims:
        quantiles = quantiles.mean("seed")
    ax.fill_between(
        xs,
        quantiles.sel(quantile=0.5),
        quantiles.sel(quantile=0.99),
        color="0.85",
        label="all neurons, median to 99th percentile",
    )
    ax.plot(xs, quantiles.sel(quantile=0.5), color="0.4", lw=1, label="all neurons, median")
    ax.plot(xs, quantiles.sel(quantile=0.9), color="0.4", lw=1, ls="--", label="all neurons, 90th percentile")
    for name, color, label in (
        ("cohort", "C3", "cohort (top WD at the reference step)"),
        ("random_control", "C0", "random control"),
    ):
        if name in ds:
            _line(
                ax,
                xs,
                wd.where(ds[name]).mean(("layer", "neuron")),
                f"{label}, mean",
                marker="o",
                ms=3,
                color=color,
                zorder=3,
            )
    _x_axis(ax, xs, x)
    ax.set_ylabel("Wasserstein-1 distance to N(0,1)\n(standardized pre-activation)")
    ax.set_title("Do the Wasserstein neurons emerge during training?" + _seed_note(ds), fontsize=11)
    legend_below(ax, fig)
    return fig


def _condition_lines(ax, xs: np.ndarray, values: xr.DataArray) -> None:
    """One line per condition, the ablations first and the clean model last, on top."""
    names = [str(c) for c in values["condition"].values]
    for name in sorted(names, key=lambda n: n == "clean"):
        label = CONDITION_LABELS.get(name, name)
        style = CONDITION_STYLES.get(name, {"ls": "--", "lw": 1.3, "marker": "x", "ms": 4, "zorder": 2})
        _line(ax, xs, values.sel(condition=name), label, color=CONDITION_COLORS.get(label), **style)


def tse_figure(ds: xr.Dataset, plt, sns=None, x: str = "step") -> object:
    """Accuracy per condition (TSE, and BLiMP when the cube has it), and the TSE margin lost to each ablation."""
    xs = x_values(ds, x)
    panels = [("tse_acc", "tse_case", "TSE accuracy (mean over cases)", "TSE under negative ablation")]
    if "blimp_acc" in ds:
        panels.append(
            ("blimp_acc", "blimp_paradigm", "BLiMP accuracy (mean over paradigms)", "BLiMP under negative ablation")
        )
    with_margin = "tse_margin" in ds and "clean" in ds["condition"].values
    count = len(panels) + with_margin
    fig, axes = plt.subplots(1, count, figsize=(5.4 * count, 4.4), squeeze=False)
    for ax, (name, over, ylabel, title) in zip(axes[0], panels):
        _condition_lines(ax, xs, ds[name].mean(over))
        ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance", zorder=1)
        _x_axis(ax, xs, x)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.set_title(title + _seed_note(ds), fontsize=11)
    if with_margin:
        ax = axes[0, -1]
        margin = ds["tse_margin"].mean("tse_case")
        lost = (margin - margin.sel(condition="clean")).drop_sel(condition="clean")
        _condition_lines(ax, xs, lost)
        ax.axhline(0.0, color="0.1", ls="-", lw=1.2, label="clean (no change)", zorder=1)
        _x_axis(ax, xs, x)
        ax.set_ylabel("TSE margin change vs clean (nats)")
        ax.set_title("Margin lost to each ablation (below 0: hurts)", fontsize=11)
    legend_below(axes[0, 0], fig, columns=3)
    return fig


def drift_figure(ds: xr.Dataset, plt, x: str = "step") -> object:
    """Drift against the reference step; against the previous done step, raw and divided by the gap in steps."""
    xs = x_values(ds, x)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    gaps = _gaps(ds)
    panels = (
        (axes[0], "drift_ref", 1.0, "1 - cos of input weights", "against the reference step"),
        (axes[1], "drift_prev", 1.0, "1 - cos of input weights", "against the previous done step"),
        (
            axes[2],
            "drift_prev",
            gaps,
            "(1 - cos) / steps since the previous done step",
            "vs the previous done step, per step of gap",
        ),
    )
    for ax, name, scale, ylabel, title in panels:
        for group, color, label in (
            ("all", "0.4", "all neurons"),
            ("cohort", "C3", "cohort"),
            ("random_control", "C0", "random control"),
        ):
            mean = _drift_mean(ds, ds[name], group)
            if mean is not None:
                _line(ax, xs, mean / scale, label, color=color, marker="o", ms=3)
        _x_axis(ax, xs, x)
        ax.set_ylabel(ylabel)
        ax.set_title(f"Weight drift {title}", fontsize=10.5)
    legend_below(axes[0], fig, columns=3)
    if gaps is not None and len(np.unique(gaps[np.isfinite(gaps)])) > 1:
        finite = gaps[np.isfinite(gaps)]
        low, high = axes[1].get_ylim()
        axes[1].set_ylim(low, high + 0.25 * (high - low))  # room for the note above the curves
        axes[1].text(
            0.02,
            0.97,
            f"uneven gaps between checkpoints: {int(finite.min())} to {int(finite.max())} "
            "steps;\neach point compares with the step before it (see the right panel)",
            transform=axes[1].transAxes,
            va="top",
            fontsize=7.5,
            color="0.25",
        )
    return fig


def _gaps(ds: xr.Dataset) -> np.ndarray:
    """Steps between each step and the previous done step it is compared with (NaN for the first)."""
    steps = ds["step"].values.astype(float)
    previous = ds["drift_prev_from"].values.astype(float) if "drift_prev_from" in ds else np.r_[-1, steps[:-1]]
    if previous.ndim > 1:  # several seeds share their steps
        previous = previous[0]
    return np.where(previous >= 0, steps - previous, np.nan)


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
    fig.suptitle("Distribution of neuron WD at selected steps" + _seed_note(ds))
    return fig


def tse_cases_figure(ds: xr.Dataset, plt, sns) -> object:
    final = ds["tse_acc"].isel(step=-1)
    frame = final.to_dataframe(name="accuracy").reset_index()
    frame["condition"] = frame["condition"].astype(str).map(lambda c: CONDITION_LABELS.get(c, c))
    palette = {label: CONDITION_COLORS[label] for label in set(frame["condition"]) if label in CONDITION_COLORS}
    return accuracy_bars_figure(
        frame,
        plt,
        sns,
        y="tse_case",
        x="accuracy",
        labels=AxisLabels(
            "TSE accuracy", "TSE case", f"TSE per case at step {int(ds['step'].values[-1])}" + _seed_note(ds)
        ),
        size=(8, 8),
        palette=palette or None,
    )


def histogram_steps(steps: Sequence[int] | np.ndarray, count: int = 3) -> list[int]:
    """First, middle and last step (fewer when the cube has fewer)."""
    steps = list(steps)
    picks = [steps[round(i * (len(steps) - 1) / max(count - 1, 1))] for i in range(count)]
    return sorted(set(picks))


def plot_cube(ds: xr.Dataset, out: str | Path, formats: Sequence[str] = ("png", "pdf"), x: str = "step") -> list[Path]:
    """Write every figure the cube has data for; returns the files written."""
    study = ds.attrs.get("cube_kind") == "units"  # a `dynamics ablate` cube: see dynamics/report/study_figures.py
    if (not study and ds.sizes.get("step", 0) == 0) or (study and not bool(ds["done"].any())):
        raise UserInputError(f"the cube has no done {'conditions' if study else 'steps'} to plot yet")
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad:
        raise UserInputError(f"figure format {bad[0]!r} is not one of png, pdf, svg")
    if not study:
        x_values(ds, x)  # an unknown --x, or tokens the cube does not have: one line before any file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt, sns = _pyplot()
    written: list[Path] = []
    figures = (
        study_figures(ds, plt, sns)
        if study
        else [
            ("cohort_wd", ["wd"], lambda: cohort_wd_figure(ds, plt, x)),
            ("tse_accuracy", ["tse_acc"], lambda: tse_figure(ds, plt, sns, x)),
            ("drift", ["drift_ref", "drift_prev"], lambda: drift_figure(ds, plt, x)),
            ("wd_histograms", ["wd"], lambda: wd_histogram_figure(ds, plt, histogram_steps(ds["step"].values))),
            ("tse_cases_final", ["tse_acc"], lambda: tse_cases_figure(ds, plt, sns)),
        ]
    )
    if not study and "seed" not in ds.dims:  # claims are a cube's own: several seeds' cubes have none together
        figures.append(("claims", ["tse_acc"], lambda: claims_figure(scan_claims(ds, cube_claim_settings(ds)), plt)))
    for name, needs, make in figures:
        if not _require(ds, needs, name):
            continue
        fig = make()
        written += _save(fig, out, name, formats)
        plt.close(fig)
    return written
