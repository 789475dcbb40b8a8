"""The study figures carry their uncertainty and one colour per condition (issue #23): the whiskers are
the Wilson interval of each accuracy's pairs, a condition has one colour in every figure, an unmatched
control says so, and an old cube without per-pair results draws no whiskers and a note."""

import numpy as np
import pytest
from fixtures.study import save_tiny_model, write_blimp, write_corpus
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer, ErrorbarContainer
from scipy.stats import binomtest
from study.test_study import study_config

from dynamics.ablation.modes import MODES
from dynamics.report.condition_style import (
    CONDITION_LABELS,
    SPARE_COLOURS,
    condition_colour,
    condition_styles,
)
from dynamics.report.study_figures import (
    NO_ITEMS_NOTE,
    NO_PHENOMENON_NOTE,
    PPL_BOOT,
    conditions_figure,
    phenomena_figure,
)
from dynamics.report.study_text import study_report
from dynamics.stats.intervals import perplexity_interval
from dynamics.study.conditions import short_name
from dynamics.study.driver import run_study
from store import open_cube

pytestmark = pytest.mark.models
ITEM_VARIABLES = ["tse_item_margin", "blimp_item_margin", "ppl_window_nll"]


@pytest.fixture(scope="module")
def study_ds(tmp_path_factory):
    """A tiny GPT-NeoX study at 5 and 10%, with the fixture's BLiMP: one paradigm per phenomenon
    (``anaphor_gender_agreement`` as "anaphora", ``determiner_noun_agreement_1``)."""
    root = tmp_path_factory.mktemp("study_figures")
    write_corpus(root)
    write_blimp(root / "blimp", pairs=5)
    model = save_tiny_model("gpt_neox", root / "gpt_neox")
    overrides = {
        "tse_per_case": 3,
        "blimp_per_paradigm": 5,
        "protocol": "paper",
        "layer_groups": 8,
        "group_percent": 1.0,
    }
    config = study_config(model, root / "study.zarr", root, **overrides)
    run_study(config)
    return open_cube(root / "study.zarr")


def wilson(margins: np.ndarray) -> tuple[float, float]:
    """The 95% Wilson interval of the share of positive margins, computed apart from the product."""
    margins = margins[np.isfinite(margins)]
    ci = binomtest(int((margins > 0).sum()), margins.size).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def whiskers(ax, horizontal: bool = False) -> dict[float, tuple[float, float]]:
    """Each whisker of ``ax`` by the bar position it is drawn at: (low, high) of the value axis."""
    out = {}
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            for segment in container.lines[2][0].get_segments():
                (x0, y0), (x1, y1) = segment
                at, ends = (y0, (x0, x1)) if horizontal else (x0, (y0, y1))
                out[round(float(at), 6)] = (min(ends), max(ends))
    return out


def bars_by_label(fig) -> dict[str, list]:
    """The bars of every axes of ``fig``, by the legend label of their series."""
    out: dict[str, list] = {}
    for ax in fig.axes:
        for container in ax.containers:
            if isinstance(container, BarContainer):
                out.setdefault(container.get_label(), []).extend(container.patches)
    return out


def legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def figure_texts(fig) -> str:
    return " | ".join(t.get_text() for t in fig.texts)


def test_condition_whiskers_are_the_wilson_interval_of_each_accuracy(study_ds, pyplot):
    fig = conditions_figure(study_ds, *pyplot)
    tse, blimp, ppl = fig.axes
    percents = study_ds["percent"].values[np.asarray(study_ds["done"].any("condition"))]
    labels = {style.label: name for name, style in condition_styles(study_ds).items()}
    checked = 0
    for ax, items in ((tse, "tse_item_margin"), (blimp, "blimp_item_margin")):
        drawn = whiskers(ax)
        bars = [(c.get_label(), bar) for c in ax.containers if isinstance(c, BarContainer) for bar in c.patches]
        assert len(drawn) == len(bars) > 0  # every accuracy bar has its whisker
        for label, bar in bars:
            centre = bar.get_x() + bar.get_width() / 2
            percent = percents[int(round(centre))]
            margins = study_ds[items].sel(condition=labels[label], percent=percent).values
            assert drawn[round(centre, 6)] == pytest.approx(wilson(margins), abs=1e-9)
            assert bar.get_height() == pytest.approx(float(np.mean(margins[np.isfinite(margins)] > 0)))
            checked += 1
    assert checked == 2 * int(study_ds["done"].sum())
    assert "perplexity: 95% bootstrap interval over its windows" in figure_texts(fig)


def test_perplexity_whiskers_resample_the_windows_and_the_labels_sit_above_them(study_ds, pyplot):
    fig = conditions_figure(study_ds, *pyplot)
    ppl = fig.axes[2]
    percents = study_ds["percent"].values[np.asarray(study_ds["done"].any("condition"))]
    labels = {style.label: name for name, style in condition_styles(study_ds).items()}
    tokens = study_ds["window_tokens"].values
    drawn = whiskers(ppl)
    bars = [(c.get_label(), bar) for c in ppl.containers if isinstance(c, BarContainer) for bar in c.patches]
    assert len(drawn) == len(bars) == int(study_ds["done"].sum())
    texts = {round(t.xy[0], 6): t for t in ppl.texts}
    for label, bar in bars:
        centre = round(bar.get_x() + bar.get_width() / 2, 6)
        nll = study_ds["ppl_window_nll"].sel(condition=labels[label], percent=percents[int(round(centre))]).values
        assert bar.get_height() == pytest.approx(np.exp(nll.sum() / tokens.sum()), rel=1e-9)
        low, high = drawn[centre]
        assert low < bar.get_height() < high
        assert (low, high) == perplexity_interval(nll, tokens, PPL_BOOT)[1:]  # tests/stats/test_intervals.py checks it
        assert texts[centre].xy[1] == pytest.approx(high)  # the value is written above the whisker
        assert texts[centre].get_text() == f"{bar.get_height():.4g}"


def test_phenomenon_whiskers_pool_the_pairs_of_each_phenomenon(study_ds, pyplot):
    fig = phenomena_figure(study_ds, *pyplot)
    ax = fig.axes[0]
    phenomena = [t.get_text() for t in ax.get_yticklabels()]
    assert phenomena == ["anaphora", "determiner_noun_agreement"]
    paradigm_of = {"anaphora": "anaphor_gender_agreement", "determiner_noun_agreement": "determiner_noun_agreement_1"}
    percent = float(study_ds.attrs["identity"]["analysis"]["match_percent"])
    labels = {style.label: name for name, style in condition_styles(study_ds).items()}
    paradigm = study_ds["blimp_item_case"].values
    drawn = whiskers(ax, horizontal=True)
    whiskered = 0
    for container in (c for c in ax.containers if isinstance(c, BarContainer)):
        margins = study_ds["blimp_item_margin"].sel(condition=labels[container.get_label()], percent=percent).values
        for bar in container.patches:
            centre = round(bar.get_y() + bar.get_height() / 2, 6)
            pairs = margins[paradigm == paradigm_of[phenomena[int(round(centre))]]]
            assert drawn[centre] == pytest.approx(wilson(pairs))
            whiskered += 1
    assert whiskered == 8  # clean, top, random, matched x 2 phenomena


def test_a_cube_without_the_items_phenomenon_draws_the_phenomena_without_whiskers(study_ds, pyplot):
    fig = phenomena_figure(study_ds.drop_vars("blimp_item_phenomenon"), *pyplot)
    assert whiskers(fig.axes[0], horizontal=True) == {}
    assert NO_PHENOMENON_NOTE in figure_texts(fig)


def test_one_colour_per_condition_in_every_figure(study_ds, pyplot):
    conditions = bars_by_label(conditions_figure(study_ds, *pyplot))
    phenomena = bars_by_label(phenomena_figure(study_ds, *pyplot))
    assert len(phenomena) == 4 and set(phenomena) < set(conditions)
    for name, style in condition_styles(study_ds).items():
        colours = {bar.get_facecolor() for bar in conditions[style.label] + phenomena.get(style.label, [])}
        assert colours == {to_rgba(condition_colour(name))}, name
    shown = [to_rgba(condition_colour(str(c))) for c in study_ds["condition"].values]
    assert len(set(shown)) == len(shown)  # no two conditions share a colour


def test_an_unmatched_control_says_so_in_every_legend(study_ds, pyplot):
    assert not bool(study_ds["matched_converged"])  # the tiny model's top set does not raise perplexity
    caveat = (
        f"negative, bottom-m control (NOT matched: ppl {float(study_ds['matched_ppl']):.2f} "
        f"vs {float(study_ds['matched_target_ppl']):.2f})"
    )
    for make in (conditions_figure, phenomena_figure):
        assert caveat in legend_labels(make(study_ds, *pyplot))
    matched = study_ds.assign(matched_converged=((), True))
    for make in (conditions_figure, phenomena_figure):
        labels = legend_labels(make(matched, *pyplot))
        assert "negative, perplexity-matched control" in labels and caveat not in labels


def test_an_old_cube_without_per_pair_results_has_no_whiskers_and_a_note(study_ds, pyplot):
    old = study_ds.drop_vars(ITEM_VARIABLES)
    for make in (conditions_figure, phenomena_figure):
        fig = make(old, *pyplot)
        assert all(whiskers(ax) == {} for ax in fig.axes)
        assert NO_ITEMS_NOTE in figure_texts(fig) and NO_ITEMS_NOTE == "no per-item data: no intervals"
        assert sum(len(bars) for bars in bars_by_label(fig).values()) > 0  # the bars are still drawn


def test_every_mode_is_labelled_and_an_unknown_condition_has_a_fixed_colour():
    for mode in MODES:
        assert f"{short_name(mode)}_top" in CONDITION_LABELS  # the study's names for the modes' conditions
    assert CONDITION_LABELS["signflip_top"] == "signflip, top WD"
    assert CONDITION_LABELS["both_top"] == "both signs, top WD"
    assert condition_colour("my_new_top") == condition_colour("my_new_top") in SPARE_COLOURS


def test_a_study_ranked_by_md_says_so_in_its_labels_and_titles(study_ds, pyplot):
    assert study_ds.attrs["identity"]["analysis"]["rank_by"] == "wd"
    assert condition_styles(study_ds)["neg_top"].label == "negative, top WD"
    by_md = study_ds.copy()
    by_md.attrs = {**study_ds.attrs, "identity": {**study_ds.attrs["identity"]}}
    by_md.attrs["identity"]["analysis"] = {**study_ds.attrs["identity"]["analysis"], "rank_by": "md"}
    styles = condition_styles(by_md)
    assert styles["neg_top"].label == "negative, top MD" and styles["pos_top"].label == "positive, top MD"
    assert styles["neg_random"].label == "negative, random control"
    fig = conditions_figure(by_md, *pyplot)
    assert fig.get_suptitle() == "Ablation of the top-MD neurons and its controls"
    assert "negative, top MD" in legend_labels(fig) and "negative, top WD" not in legend_labels(fig)
    assert "% of each layer by MD;" in study_report(by_md) and "% of each layer by WD;" in study_report(study_ds)
