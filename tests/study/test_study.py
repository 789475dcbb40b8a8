"""`dynamics ablate` end to end on a tiny random model of every supported family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fixtures.study import BLIMP_TINY, save_tiny_model
from fixtures.tiny_models import N_LAYERS, TINY_FAMILIES

from dynamics.ablation.hooks import ablate
from dynamics.stats.cohort import bisect_to_target, bottom_percent_mask, random_control_mask, top_percent_mask
from dynamics.study.conditions import layer_groups
from dynamics.study.config import StudyConfig
from dynamics.study.driver import run_study
from dynamics.syntax.blimp import blimp_accuracy, load_blimp
from dynamics.syntax.corpus import CorpusSpec, load_token_windows
from dynamics.syntax.pairs import stratified_sample
from dynamics.syntax.perplexity import perplexity
from dynamics.syntax.scoring import Batching, score_pairs
from dynamics.syntax.tse import TSE_CASES, sample_tse, tse_pairs
from store import open_cube

# Calls models: also run against the lowest transformers the project declares (.ci/run).
pytestmark = pytest.mark.models


def study_config(model_dir, out, study_data, **overrides) -> StudyConfig:
    values = dict(
        model=str(model_dir),
        out=str(out),
        corpus=str(study_data / "corpus.txt"),
        window=64,
        wd_tokens=512,
        ppl_tokens=256,
        percents="5,10",
        match_percent=10.0,
        match_tolerance=1e-4,
        match_iterations=4,
        tse_per_case=1,
        blimp=str(study_data / "blimp"),
        blimp_per_paradigm=2,
        blimp_paradigms=",".join(BLIMP_TINY),
        tasks="none",
        layer_groups=2,
        group_percent=10.0,
        pos="off",
        threads=1,
        protocol="strict",
    )  # strict: the scoring from before --protocol
    return StudyConfig(**{**values, **overrides})


# Each family's study takes seconds: two families (plain and gated MLP) stay in the quick run.
QUICK_FAMILIES = ("gpt_neox", "llama")


@pytest.fixture(
    scope="module",
    params=[f if f in QUICK_FAMILIES else pytest.param(f, marks=pytest.mark.slow) for f in TINY_FAMILIES],
)
def family_study(request, study_data, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"study_{family}")
    model_dir = save_tiny_model(family, root / family)
    config = study_config(model_dir, root / "study.zarr", study_data)
    summary = run_study(config)
    return family, config, summary


# ---------------------------------------------------------------------------- bisection


def test_bisection_finds_the_argument_of_a_monotone_function():
    result = bisect_to_target(lambda x: x**2, 50.0, 0.0, 10.0, tolerance=1e-4, max_iterations=40)
    assert result.converged and abs(result.value / 50 - 1) <= 1e-4
    assert result.argument == pytest.approx(math.sqrt(50), rel=1e-4)
    assert [t[0] for t in result.trials[:3]] == [0.0, 10.0, 5.0]  # the ends, then the midpoint


def test_bisection_reports_an_unreachable_target_honestly():
    above = bisect_to_target(lambda x: x, 200.0, 1.0, 100.0, tolerance=0.02)
    assert not above.converged and above.argument == 100.0 and "still below the target" in above.reason
    below = bisect_to_target(lambda x: x + 10, 5.0, 1.0, 100.0)
    assert not below.converged and below.argument == 1.0 and len(below.trials) == 1
    capped = bisect_to_target(lambda x: x, 37.3, 0.0, 100.0, tolerance=1e-9, max_iterations=3)
    assert not capped.converged and len(capped.trials) == 5 and "after 3 iterations" in capped.reason
    assert capped.argument == 37.5  # the closest of 0, 100, 50, 25, 37.5


def test_layer_groups_are_consecutive_and_at_most_one_per_layer():
    assert layer_groups(30, 8) == [
        list(range(0, 4)),
        list(range(4, 8)),
        list(range(8, 12)),
        list(range(12, 16)),
        list(range(16, 20)),
        list(range(20, 24)),
        list(range(24, 27)),
        list(range(27, 30)),
    ]
    assert layer_groups(3, 8) == [[0], [1], [2]]


# ---------------------------------------------------------------------------- end to end


def test_every_family_gives_a_complete_study_cube(family_study):
    family, config, summary = family_study
    assert summary.done == list(range(summary.units)) and summary.units == 1 + 2 * 4 + 1 + 2 * 2
    ds = open_cube(config.out)
    assert ds["condition"].values.tolist() == ["clean", "neg_top", "pos_top", "both_top", "neg_random", "neg_matched"]
    assert ds["percent"].values.tolist() == [5.0, 10.0]
    assert ds["tse_acc"].dims == ("condition", "percent", "tse_case") and ds.sizes["tse_case"] == len(TSE_CASES)
    assert ds["blimp_acc"].dims == ("condition", "percent", "blimp_paradigm")
    assert ds["blimp_paradigm"].values.tolist() == list(BLIMP_TINY)
    assert ds["group_tse_acc"].dims == ("group_scope", "layer_group", "tse_case")
    assert ds["layer_group_of"].values.tolist() == [0, 0, 1]  # 3 layers in 2 groups
    assert bool(ds["done"].sel(condition="neg_matched", percent=10.0)) and not bool(
        ds["done"].sel(condition="neg_matched", percent=5.0)
    )
    assert np.isnan(float(ds["ppl"].sel(condition="neg_matched", percent=5.0)))
    # clean does not depend on the percent: the same unit fills both columns
    np.testing.assert_array_equal(
        ds["tse_acc"].sel(condition="clean", percent=5.0), ds["tse_acc"].sel(condition="clean", percent=10.0)
    )
    assert ds.attrs["identity"]["analysis"]["percents"] == "5,10"
    assert ds.attrs["provenance"]["ppl_tokens"] == 256 and len(ds.attrs["provenance"]["corpus_hash"]) == 64


def _load(config):
    from transformers import AutoTokenizer

    model = tiny_model_from(config.model)
    tokenizer = AutoTokenizer.from_pretrained(config.model)  # as the study loads it (some families wrap it)
    windows = load_token_windows(CorpusSpec(source=config.corpus, window=64, token_budget=512 + 256), tokenizer)
    return model, tokenizer, windows[8:]  # one file: the perplexity windows follow the 8 WD windows


def tiny_model_from(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_clean_and_ablated_values_equal_direct_computations(family_study):
    family, config, _ = family_study
    ds = open_cube(config.out)
    model, tokenizer, windows = _load(config)
    ppl_windows = windows[:4]
    tse = sample_tse(tse_pairs(), per_case=1, seed=0)
    blimp = [p for p in load_blimp(config.blimp, BLIMP_TINY)]
    with torch.inference_mode():
        direct = score_pairs(model, tokenizer, tse, batching=Batching(progress=False), group_by="case")
        assert float(ds["tse_acc_all"].sel(condition="clean", percent=5.0)) == pytest.approx(direct.overall_accuracy)
        np.testing.assert_allclose(
            ds["tse_margin"].sel(condition="clean", percent=5.0).values,
            [direct.margin[direct.groups.index(c)] for c in TSE_CASES],
            rtol=1e-6,
        )
        assert float(ds["ppl"].sel(condition="clean", percent=5.0)) == pytest.approx(
            perplexity(model, ppl_windows, progress=False), rel=1e-6
        )
        top = torch.from_numpy(ds["top_mask"].sel(percent=10.0).values)
        with ablate(model, top, mode="positive"):
            ablated_ppl = perplexity(model, ppl_windows, progress=False)
        assert float(ds["ppl"].sel(condition="pos_top", percent=10.0)) == pytest.approx(ablated_ppl, rel=1e-6)
    sample = stratified_sample({p: {"": [x for x in blimp if x.case == p]} for p in BLIMP_TINY}, 2, seed=0)
    pairs = [x for p in BLIMP_TINY for x in sample[p][""]]
    with torch.inference_mode():
        correct = score_pairs(
            model, tokenizer, pairs, batching=Batching(progress=False), group_by="case", keep_pairs=True
        ).correct
    expected = blimp_accuracy(pairs, correct)
    clean = ds.sel(condition="clean", percent=5.0)
    assert float(clean["blimp_acc_all"]) == pytest.approx(expected.overall)
    assert clean["blimp_acc"].values.tolist() == pytest.approx([expected.per_paradigm[p] for p in BLIMP_TINY])
    assert clean["blimp_term_acc"].values.tolist() == pytest.approx(
        [expected.per_term[t] for t in ds["blimp_phenomenon"].values]
    )


def test_neuron_sets_follow_the_stored_wd(family_study):
    family, config, _ = family_study
    ds = open_cube(config.out)
    wd = torch.from_numpy(ds["wd"].values.astype(np.float64))
    for i, p in enumerate([5.0, 10.0]):
        top = top_percent_mask(wd, p)
        np.testing.assert_array_equal(ds["top_mask"].sel(percent=p).values, top.numpy())
        np.testing.assert_array_equal(ds["random_mask"].sel(percent=p).values, random_control_mask(top, seed=i).numpy())
    matched = bottom_percent_mask(wd, float(ds["matched_percent"]))
    np.testing.assert_array_equal(ds["matched_mask"].values, matched.numpy())


def test_the_matched_percent_reproduces_its_recorded_perplexity(family_study):
    family, config, _ = family_study
    ds = open_cube(config.out)
    model, _, windows = _load(config)
    with torch.inference_mode(), ablate(model, torch.from_numpy(ds["matched_mask"].values), mode="negative"):
        again = perplexity(model, windows[:4], progress=False)
    assert float(ds["matched_ppl"]) == pytest.approx(again, rel=1e-6)
    assert float(ds["ppl"].sel(condition="neg_matched", percent=10.0)) == pytest.approx(again, rel=1e-6)
    with torch.inference_mode(), ablate(model, torch.from_numpy(ds["top_mask"].sel(percent=10.0).values)):
        target = perplexity(model, windows[:4], progress=False)
    assert float(ds["matched_target_ppl"]) == pytest.approx(target, rel=1e-6)
    record = ds.attrs["provenance"]["matched_control"]
    assert record["m_percent"] == pytest.approx(float(ds["matched_percent"]))
    with torch.inference_mode():
        clean = perplexity(model, windows[:4], progress=False)
    assert float(ds["matched_clean_ppl"]) == pytest.approx(clean, rel=1e-6)
    # the tolerance (1e-4 here) is relative to the top set's increase over clean
    assert bool(ds["matched_converged"]) == (abs(again - target) <= 1e-4 * (target - clean)) == record["converged"]
    if family == "opt":  # ReLU: max(a, 0) before a ReLU changes nothing, so every negative ablation is clean
        clean = ds.sel(condition="clean", percent=10.0)
        for condition in ("neg_top", "neg_random", "neg_matched"):
            other = ds.sel(condition=condition, percent=10.0)
            assert float(other["ppl"]) == pytest.approx(float(clean["ppl"]), rel=1e-9)
            np.testing.assert_allclose(other["tse_margin"], clean["tse_margin"], rtol=1e-9)
            np.testing.assert_array_equal(other["blimp_acc"], clean["blimp_acc"])
        assert record["converged"] and record["m_percent"] == config.match_low


def test_layer_group_units_ablate_only_their_layers(family_study):
    family, config, _ = family_study
    ds = open_cube(config.out)
    model, tokenizer, _ = _load(config)
    top = torch.from_numpy(ds["top_mask"].sel(percent=10.0).values)
    tse = sample_tse(tse_pairs(), per_case=1, seed=0)
    alone = top.clone()
    alone[2:] = False  # group 0 = layers 0, 1
    with torch.inference_mode(), ablate(model, alone, mode="negative"):
        direct = score_pairs(model, tokenizer, tse, batching=Batching(progress=False), group_by="case")
    assert float(ds["group_tse_acc_all"].sel(group_scope="alone", layer_group=0)) == pytest.approx(
        direct.overall_accuracy
    )
    np.testing.assert_allclose(
        ds["group_tse_margin"].sel(group_scope="alone", layer_group=0).values,
        [direct.margin[direct.groups.index(c)] for c in TSE_CASES],
        rtol=1e-9,
    )
    # the cumulative last group is the whole top set: the same as neg_top at the group percent
    np.testing.assert_allclose(
        ds["group_tse_margin"].sel(group_scope="cumulative", layer_group=1),
        ds["tse_margin"].sel(condition="neg_top", percent=10.0),
        rtol=1e-9,
    )
    assert N_LAYERS == 3


def test_mapping_difficulty_goes_into_the_static_sets_and_the_report():
    """--mapping-difficulty in a study: md [layer, neuron] beside wd in the static variables; the report's
    Spearman table."""
    import xarray as xr
    from scipy.stats import spearmanr

    from dynamics.report.tables import wd_md_lines
    from dynamics.stats.cohort import BisectionResult
    from dynamics.study.conditions import static_dataset

    rng = np.random.default_rng(0)
    wd_values = rng.random((2, 20)).astype(np.float32)
    md_values = (wd_values + 0.3 * rng.random((2, 20))).astype(np.float32)
    dims = ("layer", "neuron")
    wd = xr.Dataset(
        {
            "wd": (dims, wd_values),
            "wd_neg": (dims, wd_values / 2),
            "wd_pos": (dims, wd_values / 2),
            "md": (dims, md_values),
        },
        coords={"layer": [0, 1], "neuron": np.arange(20)},
    )
    masks = np.zeros((1, 2, 20), bool)
    static = static_dataset(wd, [5.0], masks, masks, masks[0], BisectionResult(1.0, 2.0, 2.0, True, ()), 1.5, [[0, 1]])
    np.testing.assert_array_equal(static["md"].values, md_values)
    table = wd_md_lines(static["wd"].values, static["md"].values, "the WD windows")[1].splitlines()
    for layer in range(2):
        assert table[2 + layer].split() == [
            str(layer),
            f"{spearmanr(wd_values[layer], md_values[layer]).statistic:.3f}",
        ]
