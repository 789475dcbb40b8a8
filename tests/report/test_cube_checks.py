"""A scan cube's cohort masks against its stored cohort rule (issue #21): refused in one line when they disagree."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dynamics.errors import DamagedCubeError
from dynamics.report.cube_checks import check_cohort_size


def cube(cohort: np.ndarray, percent=25.0, scope="layer", control: np.ndarray | None = None) -> xr.Dataset:
    layers, neurons = cohort.shape
    data = {"cohort": (("layer", "neuron"), cohort)}
    if control is not None:
        data["random_control"] = (("layer", "neuron"), control)
    ds = xr.Dataset(data, coords={"layer": np.arange(layers) + 10, "neuron": np.arange(neurons)})
    ds.attrs["identity"] = {"analysis": {"cohort_percent": percent, "cohort_scope": scope}}
    return ds


def top(counts: list[int], neurons: int = 8) -> np.ndarray:
    mask = np.zeros((len(counts), neurons), dtype=bool)
    for layer, count in enumerate(counts):
        mask[layer, :count] = True
    return mask


def test_masks_of_the_recorded_size_pass():
    check_cohort_size(cube(top([2, 2, 2]), control=top([2, 2, 2])[:, ::-1].copy()), "c.zarr")  # 25% of 8: 2
    check_cohort_size(cube(top([6, 0, 0]), scope="global", control=top([6, 0, 0])), "c.zarr")  # 25% of 24: 6
    check_cohort_size(cube(top([8, 8]), percent=100.0), "c.zarr")


@pytest.mark.parametrize(
    ("ds", "message"),
    [
        (
            cube(top([8, 8, 8])),
            "its cohort mask selects 8 neurons in layer 10, but cohort_percent=25.0 with cohort_scope=layer selects "
            "2 of 8 per layer",
        ),
        (cube(top([2, 3, 2])), "selects 3 neurons in layer 11, but cohort_percent=25.0"),
        (cube(top([2, 2, 0])), "selects 0 neurons in layer 12"),
        (
            cube(top([6, 1, 0]), scope="global"),
            "its cohort mask selects 7 neurons, but cohort_percent=25.0 with cohort_scope=global selects 6 of 24",
        ),
        (
            cube(top([2, 2, 2]), control=top([2, 8, 2])),
            "its random control selects 8 neurons in layer 11, but the cohort has 2 there",
        ),
        (cube(top([2, 2, 2]), percent="banana"), "records cohort_percent='banana', not a percent in (0, 100]"),
        (cube(top([2, 2, 2]), scope="row"), "cohort_scope='row' (expected a layer x neuron mask and one of layer"),
    ],
)
def test_a_mask_that_disagrees_with_the_rule_is_one_line(ds, message):
    with pytest.raises(DamagedCubeError) as caught:
        check_cohort_size(ds, "runs/c.zarr")
    text = str(caught.value)
    assert text.startswith("cube 'runs/c.zarr' is damaged: ") and message in text, text
    assert text.endswith("nothing was changed: restore the cube from a copy, or scan again into a new --out")
    assert "\n" not in text and caught.value.exit_code == 2


def test_cubes_without_a_recorded_rule_or_a_cohort_are_not_judged():
    no_rule = cube(top([8, 8]))
    no_rule.attrs["identity"] = {}
    check_cohort_size(no_rule, "c.zarr")
    check_cohort_size(cube(top([8, 8])).drop_vars("cohort"), "c.zarr")
    study = cube(top([8, 8]))
    study.attrs["cube_kind"] = "units"
    check_cohort_size(study, "c.zarr")
