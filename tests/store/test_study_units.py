"""A units cube (store/units.py): labelled blocks from a plain CubeWriter, pending cells NaN."""

import numpy as np
import pytest
import xarray as xr

from dynamics.errors import CubeError
from store import open_cube
from store.cube import CubeWriter
from store.units import unit_attrs, write_unit_attrs

BLOCKS = {
    "main": {"dims": ["condition", "percent"], "prefix": "", "variables": ["score", "curve"]},
    "side": {"dims": ["group"], "prefix": "side_", "variables": ["score"]},
}
UNITS = [
    {"block": "main", "labels": {"condition": "base"}},  # no percent: applies to every percent
    {"block": "main", "labels": {"condition": "cut", "percent": 1.0}},
    {"block": "main", "labels": {"condition": "cut", "percent": 5.0}},
    {"block": "side", "labels": {"group": 0}},
    {"block": "side", "labels": {"group": 1}},
]


def unit_result(number: int, score: float) -> xr.Dataset:
    return xr.Dataset({"score": ((), score), "curve": ("x", [score, 2 * score])}, coords={"x": ["a", "b"]}).expand_dims(
        step=[number]
    )


def test_open_cube_assembles_blocks_and_broadcasts_unlabelled_units(tmp_path):
    path = tmp_path / "u.zarr"
    with CubeWriter(path, range(len(UNITS)), {"kind": "test"}) as cube:
        write_unit_attrs(path, unit_attrs(BLOCKS, UNITS))
        for number in (0, 1, 3):  # units 2 and 4 stay pending
            cube.write_step(unit_result(number, 10.0 + number))
    ds = open_cube(path)
    assert ds["condition"].values.tolist() == ["base", "cut"] and ds["percent"].values.tolist() == [1.0, 5.0]
    np.testing.assert_array_equal(ds["score"].values, [[10.0, 10.0], [11.0, np.nan]])
    np.testing.assert_array_equal(ds["curve"].sel(condition="cut", percent=1.0).values, [11.0, 22.0])
    np.testing.assert_array_equal(ds["done"].values, [[True, True], [True, False]])
    assert ds["side_score"].dims == ("group",) and ds["group"].values.tolist() == [0, 1]
    np.testing.assert_array_equal(ds["side_score"].values, [13.0, np.nan])
    assert "side_curve" not in ds  # the side block does not carry it
    assert ds.attrs["cube_kind"] == "units" and len(ds.attrs["units"]) == 5


def test_a_unit_outside_its_blocks_dims_is_refused():
    with pytest.raises(CubeError, match=r"unit 0 has labels \['layer'\] outside its block's dims"):
        unit_attrs(BLOCKS, [{"block": "main", "labels": {"layer": 3}}])
    with pytest.raises(CubeError, match="unit 0 names block 'nope'"):
        unit_attrs(BLOCKS, [{"block": "nope", "labels": {}}])
