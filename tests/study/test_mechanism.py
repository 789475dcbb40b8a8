"""`dynamics ablate`'s mechanism options: the modes of the main table (sign-versus-magnitude controls),
the ranking of the top set by WD or MD, and the differentiated pairs stored with the neuron sets."""

from __future__ import annotations

import numpy as np
import pytest
from study.test_study import study_config

from dynamics.ablation.modes import MODES
from dynamics.errors import UserInputError
from dynamics.stats.cohort import top_percent_mask, wd_scores
from dynamics.study.config import ABLATION_MODES, resolve_modes
from dynamics.study.driver import run_study
from store import open_cube

pytestmark = pytest.mark.models


def test_the_mode_names_the_options_accept_are_the_mode_table():
    assert ABLATION_MODES == tuple(MODES)


def test_modes_resolve_as_documented():
    assert resolve_modes("auto", False, "paper") == ("negative", "positive", "both")
    assert resolve_modes("auto", True, "paper") == ("negative", "positive", "both", "signflip", "posrelu")
    assert resolve_modes("auto", True, "strict") == ("negative", "positive", "both")
    assert resolve_modes(" posrelu,negative ", False, "paper") == ("negative", "posrelu")  # the table's order
    for bad in ("sideways", "negative,negative", " , "):
        with pytest.raises(UserInputError, match="--modes .*expected auto or distinct comma-separated modes"):
            resolve_modes(bad, False, "paper")


@pytest.fixture(scope="module")
def mechanism_study(study_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mechanism") / "m.zarr"
    config = study_config(
        study_data / "llama",
        out,
        study_data,
        modes="negative,signflip,posrelu",
        rank_by="md",
        layer_groups=0,
        differentiation_tokens=128,
        differentiation_k=4,
        differentiation_pairs=5,
    )
    assert not run_study(config).failed
    return open_cube(out), config


def test_sign_controls_are_conditions_of_the_main_table(mechanism_study):
    ds, _ = mechanism_study
    conditions = ds["condition"].values.tolist()
    assert {"neg_top", "signflip_top", "posrelu_top"} <= set(conditions) and "pos_top" not in conditions
    ppl = ds["ppl"].sel(percent=10.0)
    values = {c: float(ppl.sel(condition=c)) for c in ("clean", "neg_top", "signflip_top", "posrelu_top")}
    assert len(set(values.values())) == 4, values  # each mode changes the model differently


def test_sign_controls_in_shared_passes_equal_one_condition_at_a_time(mechanism_study, study_data, tmp_path):
    ds, config = mechanism_study
    alone_config = study_config(
        study_data / "llama",
        tmp_path / "alone.zarr",
        study_data,
        modes="negative,signflip,posrelu",
        rank_by="md",
        layer_groups=0,
        differentiation_tokens=0,
        conditions_per_pass=1,
    )
    assert not run_study(alone_config).failed
    alone = open_cube(alone_config.out)
    for name in ("ppl", "tse_acc", "blimp_acc", "ppl_window_nll"):
        np.testing.assert_array_equal(ds[name].values, alone[name].values, err_msg=name)
    np.testing.assert_allclose(ds["tse_item_margin"].values, alone["tse_item_margin"].values, rtol=1e-5, atol=1e-5)


def test_rank_by_md_selects_exactly_the_top_md_neurons(mechanism_study):
    ds, _ = mechanism_study
    assert "md" in ds and ds.attrs["identity"]["analysis"]["rank_by"] == "md"
    for percent in ds["percent"].values:
        expected = top_percent_mask(wd_scores(ds["md"].values), float(percent)).numpy()
        np.testing.assert_array_equal(ds["top_mask"].sel(percent=percent).values, expected)
    by_wd = top_percent_mask(wd_scores(ds["wd"].values), 10.0).numpy()
    assert not np.array_equal(by_wd, ds["top_mask"].sel(percent=10.0).values)  # the two rankings differ here


def test_the_differentiated_pairs_of_the_headline_sets_are_stored(mechanism_study):
    ds, config = mechanism_study
    top, random = ds["top_mask"].sel(percent=10.0).values, ds["random_mask"].sel(percent=10.0).values
    members = list(zip(ds["diff_member_layer"].values.tolist(), ds["diff_member_neuron"].values.tolist()))
    assert members == [(int(a), int(b)) for a, b in zip(*np.nonzero(top | random))]
    np.testing.assert_array_equal(ds["diff_member_in_top"].values, top[tuple(np.asarray(members).T)])
    assert ds.sizes["diff_token"] == 128 and ds["diff_pair_token"].shape[1:] == (5, 2)
    fractions = ds["diff_region_frac"].values
    assert np.allclose(np.nansum(fractions, axis=1), 1.0)  # negative + positive + straddling
    tokens = ds["diff_pair_token"].values
    assert ((tokens >= -1) & (tokens < 128)).all() and (tokens[..., 0] < tokens[..., 1])[tokens[..., 0] >= 0].all()
    ratio = ds["diff_pair_ratio"].values  # each member's pairs from the largest |dy| / ||dx|| down
    assert (np.nan_to_num(np.diff(ratio, axis=1), nan=0.0) <= 0).all() and np.isfinite(ratio[:, 0]).all()


def test_a_study_cube_stores_its_conditions_along_condition(mechanism_study):
    import xarray as xr

    ds, config = mechanism_study
    raw = xr.open_zarr(config.out)
    assert "condition" in raw.dims and "step" not in raw.dims
    assert raw.attrs["unit_dim"] == "condition" and raw.sizes["condition"] == len(raw.attrs["units"])
