"""Every figure: its axis labels, every plotted series present, and the fixes analysts asked for."""

import numpy as np
import pytest
from conftest import FAST_SCAN
from fixtures.study import BLIMP_TINY, save_tiny_model, write_blimp, write_corpus

from dynamics.report.condition_style import condition_styles
from dynamics.report.scan_figures import (
    CONDITION_LABELS,
    cohort_wd_figure,
    drift_figure,
    histogram_steps,
    plot_cube,
    tse_cases_figure,
    tse_figure,
    wd_histogram_figure,
)
from dynamics.report.study_figures import conditions_figure, layer_group_figure, phenomena_figure
from dynamics.scan.config import ScanConfig
from dynamics.scan.driver import run_scan
from dynamics.study.config import StudyConfig
from dynamics.study.driver import run_study
from store import open_cube

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def scan_ds(tiny_suite, tmp_path_factory):
    """Every scan condition, BLiMP per step, over the tiny suite's uneven step gaps (1, 1, 2, 4)."""
    root = tmp_path_factory.mktemp("figure_scan")
    blimp = write_blimp(root / "blimp", pairs=4)
    out = root / "scan.zarr"
    run_scan(
        ScanConfig(
            model=str(tiny_suite),
            out=str(out),
            steps="all",
            stepwise=True,
            matched=True,
            **{**FAST_SCAN, "blimp": str(blimp), "blimp_per_paradigm": 2, "blimp_paradigms": ",".join(BLIMP_TINY)},
        )
    )
    return open_cube(out)


def study_cube(root, **overrides):
    write_corpus(root)
    write_blimp(root / "blimp")
    model = save_tiny_model("gpt_neox", root / "gpt_neox")
    values = dict(
        model=str(model),
        out=str(root / "study.zarr"),
        corpus=str(root / "corpus.txt"),
        window=64,
        wd_tokens=512,
        ppl_tokens=256,
        percents="5,10",
        match_percent=10.0,
        match_tolerance=1e-4,
        match_iterations=4,
        tse_per_case=1,
        blimp=str(root / "blimp"),
        blimp_per_paradigm=2,
        blimp_paradigms=",".join(BLIMP_TINY),
        tasks="none",
        layer_groups=2,
        group_percent=10.0,
        pos="off",
        threads=1,
    )
    run_study(StudyConfig(**{**values, **overrides}))
    return open_cube(root / "study.zarr")


@pytest.fixture(scope="module")
def study_ds(tmp_path_factory):
    return study_cube(tmp_path_factory.mktemp("figure_study"))


def legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def line_labels(ax) -> list[str]:
    return [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]


def test_cohort_wd(scan_ds, pyplot):
    fig = cohort_wd_figure(scan_ds, pyplot[0])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training step (symlog scale)"
    assert ax.get_ylabel() == "Wasserstein-1 distance to N(0,1)\n(standardized pre-activation)"
    assert line_labels(ax) == [
        "all neurons, median",
        "all neurons, 90th percentile",
        "cohort (top WD at the reference step), mean",
        "random control, mean",
    ]
    assert "all neurons, median to 99th percentile" in legend_labels(fig)
    assert ax.get_xlim()[1] > scan_ds["step"].values.max()  # the last markers are not cut


def test_tse_accuracy_clean_on_top_and_last_markers_whole(scan_ds, pyplot):
    fig = tse_figure(scan_ds, *pyplot)
    tse, blimp, margin = fig.axes
    assert (tse.get_ylabel(), blimp.get_ylabel(), margin.get_ylabel()) == (
        "TSE accuracy (mean over cases)",
        "BLiMP accuracy (mean over paradigms)",
        "TSE margin change vs clean (nats)",
    )
    assert {ax.get_xlabel() for ax in fig.axes} == {"training step (symlog scale)"}
    conditions = [CONDITION_LABELS[str(c)] for c in scan_ds["condition"].values]
    for ax, name, over in ((tse, "tse_acc", "tse_case"), (blimp, "blimp_acc", "blimp_paradigm")):
        lines = {line.get_label(): line for line in ax.lines}
        assert set(conditions) | {"chance"} == set(lines)
        clean = lines["clean"]
        assert clean.get_zorder() > max(line.get_zorder() for label, line in lines.items() if label != "clean")
        assert clean.get_linewidth() > max(line.get_linewidth() for label, line in lines.items() if label != "clean")
        assert {lines[c].get_linestyle() for c in conditions if c != "clean"}.isdisjoint({"-"})  # ablations dashed
        for condition in scan_ds["condition"].values:
            np.testing.assert_allclose(
                lines[CONDITION_LABELS[str(condition)]].get_ydata(),
                scan_ds[name].sel(condition=condition).mean(over).values,
            )
        right = ax.get_xlim()[1]
        assert right >= 1.3 * scan_ds["step"].values.max()
    assert set(line_labels(margin)) == set(conditions[1:]) | {"clean (no change)"}
    assert set(legend_labels(fig)) == set(conditions) | {"chance", "clean (no change)"}
    assert all(ax.get_legend() is None for ax in fig.axes)  # one legend, below the axes: over no line


def test_drift_normalised_for_uneven_gaps(scan_ds, pyplot):
    fig = drift_figure(scan_ds, pyplot[0])
    ref, prev, per_step = fig.axes
    assert ref.get_ylabel() == prev.get_ylabel() == "1 - cos of input weights"
    assert per_step.get_ylabel() == "(1 - cos) / steps since the previous done step"
    assert line_labels(ref) == ["all neurons", "cohort", "random control"]
    assert line_labels(prev) == line_labels(per_step) == ["cohort", "random control"]
    note = " ".join(t.get_text() for t in prev.texts)
    assert "uneven gaps between checkpoints: 1 to 4 steps" in note
    gaps = np.array([np.nan, 1, 1, 2, 4])  # steps 0, 1, 2, 4, 8
    cohort_raw = next(line for line in prev.lines if line.get_label() == "cohort").get_ydata()
    cohort_per_step = next(line for line in per_step.lines if line.get_label() == "cohort").get_ydata()
    np.testing.assert_allclose(np.asarray(cohort_per_step), np.asarray(cohort_raw) / gaps, rtol=1e-6)


def test_wd_histograms(scan_ds, pyplot):
    steps = histogram_steps(scan_ds["step"].values)
    fig = wd_histogram_figure(scan_ds, pyplot[0], steps)
    assert [ax.get_title() for ax in fig.axes] == [f"step {s}" for s in steps]
    assert {ax.get_xlabel() for ax in fig.axes} == {"WD to N(0,1)"} and fig.axes[
        0
    ].get_ylabel() == "neurons (log scale)"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["all neurons", "cohort"]


def test_tse_cases_final_legend_clear_of_the_bars(scan_ds, pyplot):
    fig = tse_cases_figure(scan_ds, *pyplot)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("TSE accuracy", "TSE case")
    assert ax.get_legend() is None and len(fig.legends) == 1
    assert set(legend_labels(fig)) == {CONDITION_LABELS[str(c)] for c in scan_ds["condition"].values} | {"chance"}
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    axes_box = ax.get_window_extent()
    assert legend_box.y1 <= axes_box.y0  # entirely below the axes: it cannot cover a bar
    assert [len(bars) for bars in ax.containers] == [scan_ds.sizes["tse_case"]] * scan_ds.sizes["condition"]


def test_study_conditions_perplexity_linear_from_zero(study_ds, pyplot):
    fig = conditions_figure(study_ds, *pyplot)
    tse, blimp, ppl = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == ["TSE accuracy", "BLiMP accuracy", "perplexity"]
    assert {ax.get_xlabel() for ax in fig.axes} == {"percent of neurons per layer"}
    assert ppl.get_yscale() == "linear" and ppl.get_ylim()[0] == 0
    fig.canvas.draw()
    ticks = [t.get_text() for t in ppl.get_yticklabels()]
    assert ticks and all("10^" not in t and "×" not in t and "e+" not in t for t in ticks)
    labels = [t.get_text() for t in ppl.texts]
    done = study_ds["ppl"].where(study_ds["done"]).values
    assert sorted(labels) == sorted(f"{v:.4g}" for v in done[np.isfinite(done)])  # every bar's value, readable
    conditions = {str(c) for c in study_ds["condition"].values}
    assert len(legend_labels(fig)) == len(conditions) + 1  # every condition and chance


def test_study_blimp_phenomena(study_ds, pyplot):
    fig = phenomena_figure(study_ds, *pyplot)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("BLiMP accuracy", "phenomenon")
    assert set(legend_labels(fig)) == {
        "clean",
        "negative, top WD",
        "negative, random control",
        condition_styles(study_ds)["neg_matched"].label,  # with its caveat when it did not match
        "chance",
    }


def test_study_layer_groups_with_and_without_blimp(study_ds, tmp_path, pyplot):
    fig = layer_group_figure(study_ds, pyplot[0])
    assert [ax.get_ylabel() for ax in fig.axes] == ["TSE accuracy", "BLiMP accuracy"]
    assert {ax.get_xlabel() for ax in fig.axes} == {"layer group (layers)"}
    for ax in fig.axes:
        assert line_labels(ax) == ["alone", "cumulative", "clean"] and not ax.texts
    without = study_cube(tmp_path, blimp_per_paradigm=0)
    fig = layer_group_figure(without, pyplot[0])
    tse, blimp = fig.axes
    assert line_labels(tse) == ["alone", "cumulative", "clean"] and line_labels(blimp) == []
    assert blimp.get_ylabel() == "BLiMP accuracy"
    assert "no BLiMP in this study" in " ".join(t.get_text() for t in blimp.texts)
    paths = plot_cube(without, tmp_path / "figs", ["png"])
    expected = ["study_claims.png", "study_conditions.png", "study_differentiation.png", "study_layer_groups.png"]
    assert sorted(p.name for p in paths) == expected


def test_tokens_axis_needs_known_tokens(scan_ds, tmp_path):
    from dynamics.errors import UserInputError

    with pytest.raises(UserInputError, match=r"--x tokens: the cube does not know the tokens seen at step\(s\) 0, 1"):
        plot_cube(scan_ds.assign_coords(tokens=("step", [-1, -1, 2, 4, 8])), tmp_path, ["png"], x="tokens")
    paths = plot_cube(scan_ds, tmp_path / "tokens", ["png"], x="tokens")
    assert len(paths) == 6  # the five training-dynamics figures and the claims
